"""Flags every worker shares, defined once (engine flags are the adapters' business)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dynamo.llm.model_card import Role
from dynamo.llm.transport import DEFAULT_TRANSPORT, add_transport_arg
from dynamo.runtime.config import (
    Environ,
    RuntimeConfig,
    add_env_flag,
    add_runtime_args,
    choice,
    float_range,
    int_range,
)
from dynamo.runtime.identity import EndpointAddress

DEFAULT_COMPONENT = {Role.AGGREGATED: "backend", Role.DECODE: "backend", Role.PREFILL: "prefill"}
DEFAULT_ENDPOINT = "generate"


def add_worker_args(parser: argparse.ArgumentParser, env: Environ | None = None) -> None:
    add_runtime_args(parser, env)
    g = parser.add_argument_group("dynamo worker")
    add_env_flag(parser, "--component", env_var="DYN_COMPONENT", default=None, env=env, group=g,
                 help="component to register under (default: 'backend', or 'prefill' for a prefill worker)")
    add_env_flag(parser, "--endpoint", env_var="DYN_ENDPOINT", default=None, env=env, group=g,
                 help="full address dyn://namespace.component.endpoint (overrides --namespace/--component)")
    g.add_argument("--is-prefill-worker", action="store_true", help="same as --disaggregation-mode prefill")
    add_env_flag(parser, "--disaggregation-mode", env_var="DYN_DISAGGREGATION_MODE", default=None, env=env,
                 group=g, type=choice(*(r.value for r in Role)),
                 help="agg: prefill and decode here (default); prefill: compute prompts' KV for decode "
                      "workers; decode: take prompts prefilled by a prefill worker")
    add_env_flag(parser, "--max-local-prefill-length", env_var="DYN_MAX_LOCAL_PREFILL_LENGTH", default=0,
                 env=env, group=g, type=int_range(0),
                 help="decode role: prompts up to this many tokens are prefilled locally; longer ones by a "
                      "prefill worker when one exists (0: always remote)")
    add_env_flag(parser, "--prefill-timeout", env_var="DYN_PREFILL_TIMEOUT", default=30.0, env=env, group=g,
                 type=float_range(0.0, lo_open=True),
                 help="decode role: seconds to wait for a remote prefill before failing the request")
    add_env_flag(parser, "--prefill-fallback-local", env_var="DYN_PREFILL_FALLBACK_LOCAL", default=False,
                 env=env, group=g, switch=True,
                 help="decode role: prefill locally when the remote prefill fails, instead of failing")
    add_transport_arg(parser, env, g)
    add_env_flag(parser, "--dyn-tool-call-parser", env_var="DYN_TOOL_CALL_PARSER", default=None, env=env,
                 group=g, help="published in the model card: how the frontend finds tool calls in this model's "
                               "output (hermes, llama3_json, mistral, pythonic)")
    add_env_flag(parser, "--dyn-reasoning-parser", env_var="DYN_REASONING_PARSER", default=None, env=env,
                 group=g, help="published in the model card: how the frontend splits this model's reasoning "
                               "from its answer (deepseek_r1, qwen3)")
    add_env_flag(parser, "--canary-interval", env_var="DYN_CANARY_INTERVAL", default=30.0, env=env, group=g,
                 type=float_range(0.0),
                 help="seconds of idleness after which a 1-token canary request checks the engine really "
                      "generates (0: off)")


@dataclass
class WorkerConfig:
    runtime: RuntimeConfig
    role: Role
    address: EndpointAddress
    max_local_prefill_length: int = 0
    prefill_timeout: float = 30.0
    prefill_fallback_local: bool = False
    request_transport: str = DEFAULT_TRANSPORT  # to prefill workers
    canary_interval: float = 30.0
    tool_call_parser: str | None = None  # for the model card
    reasoning_parser: str | None = None

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> WorkerConfig:
        """Raises ValueError naming the flags that contradict each other."""
        runtime = RuntimeConfig.from_args(ns)
        mode = ns.disaggregation_mode
        if ns.is_prefill_worker:
            if mode not in (None, Role.PREFILL.value):
                raise ValueError(f"--is-prefill-worker conflicts with --disaggregation-mode {mode}")
            mode = Role.PREFILL.value
        role = Role(mode or Role.AGGREGATED.value)
        if ns.endpoint:
            try:
                address = EndpointAddress.parse(ns.endpoint)
            except ValueError as e:
                raise ValueError(f"--endpoint: {e}") from None
            runtime.namespace = address.namespace
        else:
            try:
                address = EndpointAddress(runtime.namespace, ns.component or DEFAULT_COMPONENT[role],
                                          DEFAULT_ENDPOINT)
            except ValueError as e:
                raise ValueError(f"--namespace/--component: {e}") from None
        return cls(runtime=runtime, role=role, address=address,
                   max_local_prefill_length=ns.max_local_prefill_length,
                   prefill_timeout=ns.prefill_timeout, prefill_fallback_local=ns.prefill_fallback_local,
                   request_transport=ns.request_transport, canary_interval=ns.canary_interval,
                   tool_call_parser=ns.dyn_tool_call_parser, reasoning_parser=ns.dyn_reasoning_parser)
