"""Fixtures for the vLLM adapter tests: env for vLLM on CPU, engine args, a HF reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynamo.vllm.args import NIXL_PORT_ENV
from tests.support.hf_reference import HfReference, random_prompt

# vLLM on CPU: no hub access, a small KV cache (GiB). Set before any engine process is spawned.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# A NIXL side-channel port picked by an in-process engine (dynamo.vllm.args.configure_disaggregation
# writes it to os.environ for vLLM's engine core) must not leak into the worker processes later
# tests spawn: two engines on one port collide. Empty = unset: each engine picks its own.
@pytest.fixture(autouse=True)
def _no_leaked_nixl_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NIXL_PORT_ENV, "")


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
