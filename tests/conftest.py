"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo.llm.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline Llama model (random weights, seed 0), built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)
