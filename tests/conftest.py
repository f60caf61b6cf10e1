"""Shared pytest fixtures, and the capability marks of the backend-parametrized suites."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo.llm.tiny_model import build_tiny_model
from tests.support.backends import DOUBLES, BackendSpec

# mark -> the BackendSpec capability it needs. A test so marked is deselected (not skipped) for a
# backend without the capability: the mocker has no real weights to compare with a reference.
CAPABILITY_MARKS = {"real_weights": "real_weights", "disagg": "disagg", "pull_handoff": "pull_handoff",
                    "engine_reference": "engine_reference"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline Llama model (random weights, seed 0), built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture
def trtllm_double(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`import tensorrt_llm` finds the TensorRT-LLM test double (tests/doubles/tensorrt_llm) in this
    test, and only in it."""
    def forget() -> None:
        for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
            del sys.modules[name]

    forget()
    monkeypatch.syspath_prepend(str(DOUBLES))
    yield
    forget()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        spec = next((p for p in params.values() if isinstance(p, BackendSpec)), None)
        lacks = spec is not None and any(
            item.get_closest_marker(mark) and not getattr(spec, capability)
            for mark, capability in CAPABILITY_MARKS.items())
        if lacks and spec is not None and spec.double and item.get_closest_marker("real_weights"):
            # the real engine has the capability; its double cannot show it: say so, do not hide it
            item.add_marker(pytest.mark.skip(reason=f"{spec.id}: {spec.double}"))
            lacks = False
        (drop if lacks else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
