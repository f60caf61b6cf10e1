"""Shared pytest fixtures, and the capability marks of the backend-parametrized suites."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamo.llm.tiny_model import build_tiny_model
from tests.support.backends import BackendSpec

# mark -> the BackendSpec capability it needs. A test so marked is deselected (not skipped) for a
# backend without the capability: the mocker has no real weights to compare with a reference.
CAPABILITY_MARKS = {"real_weights": "real_weights", "disagg": "disagg"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline Llama model (random weights, seed 0), built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        spec = next((p for p in params.values() if isinstance(p, BackendSpec)), None)
        lacks = spec is not None and any(
            item.get_closest_marker(mark) and not getattr(spec, capability)
            for mark, capability in CAPABILITY_MARKS.items())
        (drop if lacks else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
