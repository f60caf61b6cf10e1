"""Fixtures for the vLLM adapter tests: env for vLLM on CPU, engine args, a HF reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.hf_reference import HfReference, random_prompt

# vLLM on CPU: no hub access, a small KV cache (GiB). Set before any engine process is spawned.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

@pytest.fixture(scope="session")
def tiny_engine_kwargs(tiny_model_dir: Path) -> dict[str, object]:
    """AsyncEngineArgs for the tiny model on CPU (fp32: greedy output then equals HF)."""
    return dict(model=str(tiny_model_dir), dtype="float32", enforce_eager=True, max_model_len=1024)

@pytest.fixture(scope="session")
def make_prompt():
    """`make_prompt(seed, length)`: deterministic token ids without special tokens."""
    return random_prompt

@pytest.fixture(scope="session")
def hf_reference(tiny_model_dir: Path) -> HfReference:
    return HfReference(tiny_model_dir)
