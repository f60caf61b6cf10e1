"""Flags every worker shares, defined once (engine flags are the adapters' business)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dynamo.llm.model_card import Role
from dynamo.runtime.config import RuntimeConfig, add_runtime_args, env_default, env_float, env_int
from dynamo.runtime.identity import EndpointAddress

DEFAULT_COMPONENT = {Role.AGGREGATED: "backend", Role.DECODE: "backend", Role.PREFILL: "prefill"}
DEFAULT_ENDPOINT = "generate"


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    add_runtime_args(parser)
    g = parser.add_argument_group("dynamo worker")
    g.add_argument("--component", default=env_default("DYN_COMPONENT", None),
                   help="component to register under (default: 'backend', or 'prefill' for a prefill worker)")
    g.add_argument("--endpoint", default=env_default("DYN_ENDPOINT", None),
                   help="full address dyn://namespace.component.endpoint (overrides --namespace/--component)")
    g.add_argument("--is-prefill-worker", action="store_true",
                   help="same as --disaggregation-mode prefill")
    g.add_argument("--disaggregation-mode", choices=[r.value for r in Role],
                   default=env_default("DYN_DISAGGREGATION_MODE", None),
                   help="agg: prefill and decode here (default); prefill: compute prompts' KV for decode "
                        "workers; decode: take prompts prefilled by a prefill worker")
    g.add_argument("--max-local-prefill-length", type=int,
                   default=env_int("DYN_MAX_LOCAL_PREFILL_LENGTH", 0),
                   help="decode role: prompts up to this many tokens are prefilled locally; longer ones "
                        "by a prefill worker when one exists (default 0: always remote)")
    g.add_argument("--prefill-timeout", type=float, default=env_float("DYN_PREFILL_TIMEOUT", 30.0),
                   help="decode role: seconds to wait for a remote prefill before failing the request")
    g.add_argument("--prefill-fallback-local", action="store_true",
                   default=env_default("DYN_PREFILL_FALLBACK_LOCAL", "0") in ("1", "true", "yes"),
                   help="decode role: prefill locally when the remote prefill fails, instead of failing")
    g.add_argument("--canary-interval", type=float, default=env_float("DYN_CANARY_INTERVAL", 30.0),
                   help="seconds of idleness after which a 1-token canary request checks the engine "
                        "really generates (0: off)")


@dataclass
class WorkerConfig:
    runtime: RuntimeConfig
    role: Role
    address: EndpointAddress
    max_local_prefill_length: int = 0
    prefill_timeout: float = 30.0
    prefill_fallback_local: bool = False
    canary_interval: float = 30.0

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> WorkerConfig:
        runtime = RuntimeConfig.from_args(ns)
        mode = ns.disaggregation_mode
        if ns.is_prefill_worker:
            if mode not in (None, Role.PREFILL.value):
                raise SystemExit(f"--is-prefill-worker conflicts with --disaggregation-mode {mode}")
            mode = Role.PREFILL.value
        role = Role(mode or Role.AGGREGATED.value)
        if ns.endpoint:
            try:
                address = EndpointAddress.parse(ns.endpoint)
            except ValueError as e:
                raise SystemExit(f"--endpoint: {e}") from None
            runtime.namespace = address.namespace
        else:
            try:
                address = EndpointAddress(runtime.namespace, ns.component or DEFAULT_COMPONENT[role],
                                          DEFAULT_ENDPOINT)
            except ValueError as e:
                raise SystemExit(f"--namespace/--component: {e}") from None
        if ns.max_local_prefill_length < 0:
            raise SystemExit("--max-local-prefill-length must be >= 0")
        return cls(runtime=runtime, role=role, address=address,
                   max_local_prefill_length=ns.max_local_prefill_length,
                   prefill_timeout=ns.prefill_timeout, prefill_fallback_local=ns.prefill_fallback_local,
                   canary_interval=ns.canary_interval)
