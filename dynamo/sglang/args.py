"""`python -m dynamo.sglang`'s command line: SGLang's own ServerArgs flags, unchanged, plus the
shared worker flags, and the settings Dynamo needs on top.

SGLang's flags come from `ServerArgs.add_cli_args` (never re-declared here); `--config FILE.yaml`
expands as SGLang's own launcher expands it (its ConfigArgumentMerger: the file's keys first, so
explicit flags win). Where a worker flag has the same name (`--disaggregation-mode`, `--grpc-port`)
the worker's wins: the role is the worker's, and SGLang's gRPC server is not used here.

What Dynamo sets itself (`server_args_of`):
- skip_tokenizer_init (token ids in and out; the frontend tokenizes), incremental (disjoint)
  streaming output, enable_metrics (re-exported on the worker's /metrics). With
  --enable-structured-output SGLang keeps its tokenizer (skip_tokenizer_init off): its grammar backend
  compiles json_schema / regex / ebnf constraints against the vocabulary and is not built without it;
  the price is SGLang's detokenizer process working on every output token;
- KV events on a private ZMQ publisher bound to a free loopback port, unless --kv-events-config;
- disaggregation_mode from the worker's role; a prefill worker's bootstrap port a free one unless
  --disaggregation-bootstrap-port, and its bootstrap server on all interfaces unless --host;
- on CPU (SGLANG_USE_CPU_ENGINE=1): sleep_on_idle, or the idle scheduler spins a core.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from dynamo.llm.model_card import ModelSource, Role
from dynamo.runtime.ports import free_port

# SGLang's values of the worker's role (ServerArgs.disaggregation_mode)
SGLANG_MODE = {Role.AGGREGATED: "null", Role.PREFILL: "prefill", Role.DECODE: "decode"}
# the flags both define; the worker's win (see the module docstring)
SHADOWED = ("disaggregation_mode", "grpc_port")
# defaults we must tell apart from a value the user gave
_UNSET_BY_DEFAULT = ("disaggregation_bootstrap_port", "host", "kv_events_config", "sleep_on_idle")


def on_cpu() -> bool:
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "").lower() in ("1", "true", "yes")


def sglang_parser() -> argparse.ArgumentParser:
    """A parser with SGLang's flags alone (what its own launcher parses)."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(add_help=False)
    ServerArgs.add_cli_args(parser)
    return parser


class SGLangArgumentParser(argparse.ArgumentParser):
    """Expands SGLang's `--config FILE.yaml` before parsing, as `sglang serve` does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")  # the worker's flags are added last and win
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        if "--config" in argv:
            from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

            try:
                argv = ConfigArgumentMerger(parser=sglang_parser()).merge_config_with_args(argv)
            except (ValueError, OSError) as e:
                self.error(f"--config: {e}")
        return super().parse_known_args(argv, namespace)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    from sglang.srt.server_args import ServerArgs

    ServerArgs.add_cli_args(parser)
    parser.set_defaults(**{name: None for name in _UNSET_BY_DEFAULT})
    parser.add_argument("--enable-structured-output", action="store_true",
                        help="serve structured-output constraints (JSON schema, regex, choice, grammar): SGLang "
                             "then loads its own tokenizer, which its grammar backend needs (costs its "
                             "detokenizer's work per token); without it such requests are refused")


def serves_structured_output(server_args: dict[str, Any]) -> str | None:
    """None when an engine with these ServerArgs honours structured-output constraints, else why not."""
    if server_args.get("skip_tokenizer_init"):
        return ("this SGLang worker runs without SGLang's tokenizer, which SGLang's grammar backend needs; "
                "start it with --enable-structured-output")
    if server_args.get("grammar_backend") == "none":
        return "this SGLang worker was started with --grammar-backend none; start it with another grammar backend"
    return None


def model_source_of(ns: argparse.Namespace) -> ModelSource:
    if not ns.model_path:
        raise ValueError("--model-path is required (a Hugging Face model id or directory)")
    return ModelSource(served_model_name=ns.served_model_name or ns.model_path, model_path=ns.model_path,
                       tokenizer=getattr(ns, "tokenizer_path", None) or ns.model_path)


def kv_events_config_of(ns: argparse.Namespace) -> dict[str, Any]:
    """The KV-events config to give SGLang: the user's, else a private publisher on loopback."""
    given = ns.kv_events_config
    if given is None:
        return {"publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{free_port()}", "topic": "kv", "bind": True}
    try:
        config = json.loads(given)
    except json.JSONDecodeError as e:
        raise ValueError(f"--kv-events-config is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--kv-events-config must be a JSON object, got {given!r}")
    return config


def server_args_of(ns: argparse.Namespace, role: Role) -> dict[str, Any]:
    """ServerArgs keyword arguments: every SGLang flag as parsed, then what Dynamo needs."""
    from sglang.srt.server_args import ServerArgs

    plain = sglang_parser()
    defaults = {a.dest: a.default for a in plain._actions if a.dest != "help"}
    fields = set(getattr(ServerArgs, "__struct_fields__", ())) or set(defaults)
    kwargs = {name: getattr(ns, name) for name in fields if hasattr(ns, name) and name in defaults}
    for name in SHADOWED:
        if name in defaults:
            kwargs[name] = defaults[name]
    for name in _UNSET_BY_DEFAULT:
        if kwargs.get(name) is None and defaults.get(name) is not None:
            kwargs[name] = defaults[name]
    kwargs["disaggregation_mode"] = SGLANG_MODE[role]
    kwargs["skip_tokenizer_init"] = not getattr(ns, "enable_structured_output", False)
    kwargs["enable_metrics"] = True
    streaming = "incremental_streaming_output" if "incremental_streaming_output" in fields else "stream_output"
    kwargs[streaming] = True
    events = kv_events_config_of(ns)
    kwargs["kv_events_config"] = json.dumps(events)
    if role is Role.PREFILL:
        if ns.disaggregation_bootstrap_port is None:
            kwargs["disaggregation_bootstrap_port"] = free_port()
        if ns.host is None:
            kwargs["host"] = "0.0.0.0"  # the bootstrap server binds it; decode workers are elsewhere
    if on_cpu() and ns.sleep_on_idle is None:
        kwargs["sleep_on_idle"] = True
    if on_cpu() and not kwargs.get("device"):
        kwargs["device"] = "cpu"
    return kwargs
