"""The TensorRT-LLM worker's flags, and the LLM arguments they describe.

The arguments are built the way `trtllm-serve` builds them (a dict of `tensorrt_llm.LLM` keyword
arguments), then `--extra-engine-args FILE.yaml` is laid over them and `--override-engine-args JSON`
over that. Both merges are deep: a mapping merges key by key into the mapping it lands on, anything
else replaces what was there (TensorRT-LLM >= 1.3 merges `kv_cache_config` that way; 1.0-1.2 replace
a whole nested config, which silently drops the flags' values). Every key is checked against the
installed TensorRT-LLM's own argument models before the engine starts: an unknown key is an error
naming it, its file and the nearest known names (TensorRT-LLM itself would only fail deep inside its
start-up, or not at all for a key its merge drops).
"""

from __future__ import annotations

import argparse
import difflib
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dynamo.llm.model_card import ModelSource
from dynamo.runtime.config import add_env_flag, float_range, int_range

DEFAULT_KV_BLOCK_SIZE = 32  # TensorRT-LLM's KvCacheConfig.tokens_per_block default
DEFAULT_FREE_GPU_MEMORY_FRACTION = 0.9  # trtllm-serve's default
KV_EVENT_BUFFER = 1024  # events TensorRT-LLM keeps for a slow reader (upstream Dynamo's default)
GUIDED_DECODING_BACKENDS = ("xgrammar", "llguidance")  # TorchLlmArgs.guided_decoding_backend's values


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("TensorRT-LLM")
    add_env_flag(parser, "--model", "--model-path", env_var="DYN_TRTLLM_MODEL", default=None, group=g,
                 help="model directory or Hugging Face id (--model-path is the same flag)")
    g.add_argument("--served-model-name", default=None, help="the name clients ask for (default: --model)")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or id (default: --model)")
    g.add_argument("--tensor-parallel-size", type=int_range(1), default=1, help="tensor parallel GPUs")
    g.add_argument("--pipeline-parallel-size", type=int_range(1), default=1, help="pipeline stages")
    g.add_argument("--expert-parallel-size", type=int_range(1), default=None, help="MoE expert parallel size")
    g.add_argument("--kv-block-size", type=int_range(1), default=DEFAULT_KV_BLOCK_SIZE,
                   help="tokens per KV block (kv_cache_config.tokens_per_block) [default: 32]")
    g.add_argument("--max-batch-size", type=int_range(1), default=None, help="requests per engine step")
    g.add_argument("--max-num-tokens", type=int_range(1), default=None, help="tokens per engine step")
    g.add_argument("--max-seq-len", type=int_range(1), default=None, help="prompt + output tokens per request")
    g.add_argument("--free-gpu-memory-fraction", type=float_range(0.0, lo_open=True),
                   default=DEFAULT_FREE_GPU_MEMORY_FRACTION,
                   help="share of free GPU memory for the KV cache [default: 0.9]")
    g.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    g.add_argument("--guided-decoding-backend", choices=GUIDED_DECODING_BACKENDS, default=None,
                   help="TensorRT-LLM's guided decoding backend (guided_decoding_backend), which structured-output "
                        "requests need; without one they are refused [default: none]")
    g.add_argument("--extra-engine-args", metavar="FILE.yaml", default=None,
                   help="TensorRT-LLM LLM arguments laid over the flags' (YAML wins; nested keys merge), "
                        "e.g. engine_configs/trtllm/<model>/agg.yaml")
    g.add_argument("--override-engine-args", metavar="JSON", default=None,
                   help="LLM arguments as a JSON object, laid over the YAML's the same way")


def flag_llm_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The LLM keyword arguments the flags alone describe."""
    if not ns.model:
        raise ValueError("--model (or --model-path) is required: a model directory or Hugging Face id")
    args: dict[str, Any] = {
        "model": ns.model,
        "backend": "pytorch",
        "tensor_parallel_size": ns.tensor_parallel_size,
        "pipeline_parallel_size": ns.pipeline_parallel_size,
        "trust_remote_code": ns.trust_remote_code,
        "kv_cache_config": {"free_gpu_memory_fraction": ns.free_gpu_memory_fraction,
                            "tokens_per_block": ns.kv_block_size},
    }
    optional = {"tokenizer": ns.tokenizer, "moe_expert_parallel_size": ns.expert_parallel_size,
                "max_batch_size": ns.max_batch_size, "max_num_tokens": ns.max_num_tokens,
                "max_seq_len": ns.max_seq_len, "guided_decoding_backend": ns.guided_decoding_backend}
    args.update({k: v for k, v in optional.items() if v is not None})
    return args


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_engine_yaml(path: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"--extra-engine-args {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--extra-engine-args {path}: not valid YAML ({e})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"--extra-engine-args {path}: the file must hold a mapping of LLM arguments")
    return raw


def parse_override(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--override-engine-args is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("--override-engine-args must be a JSON object of LLM arguments")
    return raw


def _model_class(annotation: Any) -> type | None:
    """The pydantic model class an argument's annotation allows, if any (Optional[Config] -> Config)."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and hasattr(candidate, "model_fields"):
            return candidate
    return None


def check_keys(values: Mapping[str, Any], model: type, source: str, prefix: str = "") -> None:
    """Raise ValueError naming the first key `model` (a pydantic model class) has no field for."""
    fields: dict[str, Any] = model.model_fields  # type: ignore[attr-defined]
    aliases = {f.alias for f in fields.values() if getattr(f, "alias", None)}
    for key, value in values.items():
        if key not in fields and key not in aliases:
            near = difflib.get_close_matches(key, list(fields), n=3)
            hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
            raise ValueError(f"{source}: unknown TensorRT-LLM argument '{prefix}{key}' "
                             f"({model.__name__} has no such field){hint}")
        if key in fields and isinstance(value, Mapping):
            nested = _model_class(fields[key].annotation)
            if nested is not None:
                check_keys(value, nested, source, f"{prefix}{key}.")


def llm_args_model() -> type:
    """TensorRT-LLM's argument model of its PyTorch backend (what `tensorrt_llm.LLM` validates)."""
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

    return TorchLlmArgs


def engine_llm_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags' arguments, then the YAML's, then the JSON override's, checked; plus what the
    worker needs (KV events and iteration stats on, unless the files turn them off)."""
    schema = llm_args_model()
    args = flag_llm_args(ns)
    if ns.extra_engine_args:
        extra = read_engine_yaml(ns.extra_engine_args)
        check_keys(extra, schema, ns.extra_engine_args)
        args = deep_merge(args, extra)
    if ns.override_engine_args:
        override = parse_override(ns.override_engine_args)
        check_keys(override, schema, "--override-engine-args")
        args = deep_merge(args, override)
    if args.get("backend", "pytorch") != "pytorch":
        raise ValueError(f"backend {args['backend']!r}: dynamo.trtllm runs TensorRT-LLM's PyTorch backend only")
    kv = args.setdefault("kv_cache_config", {})
    if isinstance(kv, dict):
        kv.setdefault("event_buffer_max_size", KV_EVENT_BUFFER)  # 0 in a file turns KV events off
    args.setdefault("enable_iter_perf_stats", True)  # the stats stream (SubscribeStats)
    return args


def model_source_of(ns: argparse.Namespace, args: Mapping[str, Any]) -> ModelSource:
    model = str(args["model"])
    return ModelSource(served_model_name=ns.served_model_name or model, model_path=model,
                       tokenizer=str(args.get("tokenizer") or model))
