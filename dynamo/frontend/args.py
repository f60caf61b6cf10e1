"""Frontend configuration: CLI flag first, DYN_* environment variable second, default last."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynamo.frontend.parsers import REASONING_PARSERS, TOOL_PARSERS
from dynamo.frontend.router import DEFAULT_ROUTER_MODE, ROUTER_MODE_ENV, ROUTER_MODES
from dynamo.frontend.router.settings import CostWeights, KvRouterSettings
from dynamo.llm.transport import DEFAULT_TRANSPORT, add_transport_arg
from dynamo.runtime.config import (
    DiscoveryConfig,
    TlsConfig,
    add_discovery_args,
    add_env_flag,
    add_log_level_arg,
    add_tls_args,
    choice,
    float_range,
    int_range,
)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class FrontendConfig:
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    namespace: str = "dynamo"
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    router_mode: str = DEFAULT_ROUTER_MODE
    kv_router: KvRouterSettings = field(default_factory=KvRouterSettings)  # --router-mode kv
    migration_limit: int = 0  # how many times a broken stream may move to another worker
    # s a worker may send nothing for a request (0: no limit). Long enough for a first token behind a
    # deep queue; a hung (SIGSTOPped, wedged) worker then costs its requests minutes, not forever.
    request_progress_timeout: float = 300.0
    max_inflight_per_worker: int = 0  # 0: no limit; else busier workers answer 429
    max_inflight: int = 0  # generate requests one frontend process serves at once (0: no limit); past it, 503
    num_workers: int = 1  # frontend processes sharing the HTTP port (multiprocess.py)
    # SSE chunks per second one process aims to write at most, shared by its open streams (0: one
    # chunk per worker output, unpaced); see dynamo.llm.stream_client.OutputPacing
    stream_chunk_rate: float = 8000.0
    api_key: str | None = None
    log_level: str = "info"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_transport: str = DEFAULT_TRANSPORT  # requests to a worker: all on one GenerateStream, or a call each
    tls: TlsConfig = field(default_factory=TlsConfig)  # how to reach workers that serve TLS
    tool_call_parser: str | None = None  # overrides the model cards' (dynamo.frontend.parsers)
    reasoning_parser: str | None = None


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """`env` (default os.environ) gives the flags' defaults."""
    d = FrontendConfig()
    p = argparse.ArgumentParser(
        prog="python -m dynamo.frontend",
        description="OpenAI-compatible HTTP frontend: discovers workers in a namespace and serves "
                    "their models on /v1/chat/completions, /v1/completions and /v1/models.")
    add_env_flag(p, "--http-host", env_var="DYN_HTTP_HOST", default=d.http_host, env=env,
                 help="address to listen on")
    add_env_flag(p, "--http-port", env_var="DYN_HTTP_PORT", default=d.http_port, env=env,
                 type=int_range(0, 65535), help="port to listen on (0: any free port)")
    add_discovery_args(p, env)  # --namespace, --discovery-backend, --discovery-dir, --etcd-endpoints, --discovery-ttl
    add_tls_args(p, env)  # --tls-ca (and --tls-cert/--tls-key for mutual TLS) to reach TLS workers
    add_env_flag(p, "--router-mode", env_var=ROUTER_MODE_ENV, default=d.router_mode, env=env,
                 type=choice(*ROUTER_MODES), help="how a worker is picked for each request")
    k = p.add_argument_group("KV-aware routing (--router-mode kv)")
    add_env_flag(p, "--kv-overlap-score-weight", env_var="DYN_KV_OVERLAP_SCORE_WEIGHT", default=1.0, env=env,
                 group=k, type=float_range(0.0),
                 help="weight of the blocks a worker would have to prefill against its decode load "
                      "(0: route by load alone)")
    add_env_flag(p, "--router-temperature", env_var="DYN_ROUTER_TEMPERATURE", default=0.0, env=env, group=k,
                 type=float_range(0.0), help="0: the cheapest worker; above 0: drawn at random, cheaper more "
                                             "likely, the spread growing with the temperature")
    add_env_flag(p, "--kv-busy-threshold", env_var="DYN_KV_BUSY_THRESHOLD", default=None, env=env, group=k,
                 type=float_range(0.0, lo_open=True),
                 help="leave out workers whose active KV blocks fill more than this fraction of their cache "
                      "(while any other is below it); unset: none left out")
    add_env_flag(p, "--no-kv-events", env_var="DYN_ROUTER_NO_KV_EVENTS", default=False, env=env, group=k,
                 switch=True, help="approximate mode: learn what workers hold from routing decisions, not "
                                   "from their KV events (for engines without events)")
    add_env_flag(p, "--router-ttl", env_var="DYN_ROUTER_TTL", default=120.0, env=env, group=k,
                 type=float_range(0.0, lo_open=True),
                 help="approximate mode: seconds a decision's prompt blocks count as held by its worker")
    add_env_flag(p, "--router-predicted-ttl", env_var="DYN_ROUTER_PREDICTED_TTL", default=5.0, env=env, group=k,
                 type=float_range(0.0),
                 help="with KV events: seconds a decision's prompt blocks count as held by its worker until "
                      "the worker's own events say so (a burst of requests sharing a new prefix then "
                      "lands on one worker); 0: trust the events alone")
    add_env_flag(p, "--max-inflight-per-worker", env_var="DYN_MAX_INFLIGHT_PER_WORKER",
                 default=d.max_inflight_per_worker, env=env, type=int_range(0),
                 help="requests this frontend keeps in flight per worker; when every worker of a model "
                      "is at the limit, new requests get 429 (0: no limit)")
    add_env_flag(p, "--max-inflight", env_var="DYN_MAX_INFLIGHT", default=d.max_inflight, env=env,
                 type=int_range(0),
                 help="generate requests one frontend process serves at once; past it new ones get 503 with "
                      "Retry-After at once, before any work (0: no limit)")
    add_env_flag(p, "--num-workers", "--api-server-count", env_var="DYN_FRONTEND_NUM_WORKERS",
                 default=d.num_workers, env=env, type=int_range(1),
                 help="frontend processes serving the one HTTP port (each with its own discovery watch, "
                      "router state and event loop; /metrics adds them up)")
    add_env_flag(p, "--stream-chunk-rate", env_var="DYN_STREAM_CHUNK_RATE", default=d.stream_chunk_rate, env=env,
                 type=float_range(0.0),
                 help="output deliveries (SSE chunks) per second one frontend process aims to stay under, "
                      "shared by its open requests: with S of them, each gets its tokens at most every "
                      "S / RATE s (not below 1 ms, at most 1 s; a request's last output never waits), "
                      "tokens arriving meanwhile joined into one chunk. Under load a stream's chunks grow "
                      "instead of the writes per second (0: every worker output on its own)")
    add_env_flag(p, "--migration-limit", env_var="DYN_MIGRATION_LIMIT", default=d.migration_limit, env=env,
                 type=int_range(0), help="times a broken stream may be retried on another worker")
    add_env_flag(p, "--request-progress-timeout", env_var="DYN_REQUEST_PROGRESS_TIMEOUT",
                 default=d.request_progress_timeout, env=env, type=float_range(0.0),
                 help="seconds a worker may send nothing for a request (no first token, or no further "
                      "output); then the worker is out of rotation until it answers health checks, and the "
                      "request moves to another worker (within --migration-limit) or fails with 504 "
                      "(0: wait forever)")
    add_env_flag(p, "--api-key", env_var="DYN_API_KEY", default=d.api_key, env=env,
                 help="require 'Authorization: Bearer KEY' on /v1/*")
    add_log_level_arg(p, env)
    add_env_flag(p, "--max-body-bytes", env_var="DYN_HTTP_MAX_BODY_BYTES", default=d.max_body_bytes,
                 env=env, type=int_range(1024), help="largest accepted request body")
    add_transport_arg(p, env)
    o = p.add_argument_group("OpenAI output parsing (default: what each model's card says)")
    add_env_flag(p, "--tool-call-parser", env_var="DYN_TOOL_CALL_PARSER", default=None, env=env, group=o,
                 type=choice(*TOOL_PARSERS),
                 help="find tool calls in every model's output this way (tool_choice auto); else the model "
                      "card's --dyn-tool-call-parser; neither: tool_choice auto is refused")
    add_env_flag(p, "--reasoning-parser", env_var="DYN_REASONING_PARSER", default=None, env=env, group=o,
                 type=choice(*REASONING_PARSERS),
                 help="split every model's <think> part into reasoning_content; else the model card's "
                      "--dyn-reasoning-parser")
    return p


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> FrontendConfig:
    parser = build_parser(env)
    ns = parser.parse_args(argv)
    try:
        tls = TlsConfig.from_args(ns)
    except ValueError as e:
        parser.error(str(e))
    kv_router = KvRouterSettings(
        weights=CostWeights(overlap_weight=ns.kv_overlap_score_weight, temperature=ns.router_temperature,
                            busy_threshold=ns.kv_busy_threshold),
        kv_events=not ns.no_kv_events, approximate_ttl=ns.router_ttl, predicted_ttl=ns.router_predicted_ttl)
    return FrontendConfig(
        kv_router=kv_router,
        http_host=ns.http_host, http_port=ns.http_port, namespace=ns.namespace,
        discovery=DiscoveryConfig.from_args(ns), router_mode=ns.router_mode,
        migration_limit=ns.migration_limit, max_inflight_per_worker=ns.max_inflight_per_worker,
        request_progress_timeout=ns.request_progress_timeout,
        max_inflight=ns.max_inflight, num_workers=ns.num_workers, stream_chunk_rate=ns.stream_chunk_rate,
        api_key=ns.api_key or None, log_level=ns.log_level, max_body_bytes=ns.max_body_bytes,
        request_transport=ns.request_transport, tls=tls,
        tool_call_parser=ns.tool_call_parser, reasoning_parser=ns.reasoning_parser)
