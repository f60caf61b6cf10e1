"""Frontend configuration: CLI flag first, DYN_* environment variable second, default last."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dynamo.runtime.config import add_discovery_args

ROUTER_MODES = ("round-robin", "random", "least-loaded")
DISCOVERY_BACKENDS = ("file", "etcd")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
REQUEST_TRANSPORTS = ("stream", "unary")  # = dynamo.llm.rpc_client.TRANSPORTS (not imported: heavy)


@dataclass
class FrontendConfig:
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    namespace: str = "dynamo"
    discovery_backend: str = "file"
    discovery_dir: str | None = None  # file backend; None: the backend's own default
    etcd_endpoints: str = "127.0.0.1:2379"  # comma-separated
    router_mode: str = "round-robin"
    migration_limit: int = 0  # how many times a broken stream may move to another worker
    max_inflight_per_worker: int = 0  # 0: no limit; else busier workers answer 429
    api_key: str | None = None
    log_level: str = "info"
    max_body_bytes: int = 8 * 1024 * 1024
    request_transport: str = "stream"  # requests to a worker: all on one GenerateStream, or a call each


# flag name -> (environment variables, first wins; type)
_ENV: dict[str, tuple[tuple[str, ...], type]] = {
    "http_host": (("DYN_HTTP_HOST",), str),
    "http_port": (("DYN_HTTP_PORT",), int),
    "router_mode": (("DYN_ROUTER_MODE",), str),
    "migration_limit": (("DYN_MIGRATION_LIMIT",), int),
    "max_inflight_per_worker": (("DYN_MAX_INFLIGHT_PER_WORKER",), int),
    "api_key": (("DYN_API_KEY",), str),
    "log_level": (("DYN_LOG_LEVEL",), str),
    "max_body_bytes": (("DYN_HTTP_MAX_BODY_BYTES",), int),
    "request_transport": (("DYN_GENERATE_TRANSPORT",), str),
}


def _env_default(name: str, env: Mapping[str, str]) -> object:
    names, kind = _ENV[name]
    for var in names:
        raw = env.get(var)
        if raw:
            try:
                return kind(raw)
            except ValueError:
                raise SystemExit(f"environment variable {var}={raw!r} is not a valid "
                                 f"{kind.__name__}") from None
    return getattr(FrontendConfig, name)


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    d = {name: _env_default(name, env) for name in _ENV}
    p = argparse.ArgumentParser(
        prog="python -m dynamo.frontend",
        description="OpenAI-compatible HTTP frontend: discovers workers in a namespace and serves "
                    "their models on /v1/chat/completions, /v1/completions and /v1/models.")
    p.add_argument("--http-host", default=d["http_host"], help="address to listen on [DYN_HTTP_HOST]")
    p.add_argument("--http-port", type=int, default=d["http_port"],
                   help="port to listen on [DYN_HTTP_PORT]")
    add_discovery_args(p, env)  # --namespace, --discovery-backend, --discovery-dir, --etcd-endpoints
    p.add_argument("--router-mode", choices=ROUTER_MODES, default=d["router_mode"],
                   help="how a worker is picked for each request [DYN_ROUTER_MODE]")
    p.add_argument("--max-inflight-per-worker", type=int, default=d["max_inflight_per_worker"],
                   help="requests this frontend keeps in flight per worker; when every worker of a "
                        "model is at the limit, new requests get 429 (0: no limit) "
                        "[DYN_MAX_INFLIGHT_PER_WORKER]")
    p.add_argument("--migration-limit", type=int, default=d["migration_limit"],
                   help="times a broken stream may be retried on another worker "
                        "[DYN_MIGRATION_LIMIT]")
    p.add_argument("--api-key", default=d["api_key"],
                   help="require 'Authorization: Bearer KEY' on /v1/* [DYN_API_KEY]")
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, default=d["log_level"],
                   help="[DYN_LOG_LEVEL]")
    p.add_argument("--max-body-bytes", type=int, default=d["max_body_bytes"],
                   help="largest accepted request body [DYN_HTTP_MAX_BODY_BYTES]")
    p.add_argument("--request-transport", choices=REQUEST_TRANSPORTS, default=d["request_transport"],
                   help="how requests travel to a worker: 'stream' (default) multiplexes them all on "
                        "one gRPC GenerateStream per worker, outputs ready together in one message; "
                        "'unary' opens one Generate call per request [DYN_GENERATE_TRANSPORT]")
    return p


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
               ) -> FrontendConfig:
    parser = build_parser(env)
    ns = parser.parse_args(argv)
    # Environment values bypass argparse's choices: check them here with the same words.
    if ns.router_mode not in ROUTER_MODES:
        parser.error(f"router mode {ns.router_mode!r} is not one of {', '.join(ROUTER_MODES)}")
    if ns.discovery_backend not in DISCOVERY_BACKENDS:
        parser.error(f"discovery backend {ns.discovery_backend!r} is not one of "
                     f"{', '.join(DISCOVERY_BACKENDS)}")
    if ns.log_level.lower() not in LOG_LEVELS:
        parser.error(f"log level {ns.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if not 0 <= ns.http_port <= 65535:
        parser.error(f"--http-port must be in 0..65535 (0: any free port), got {ns.http_port}")
    if ns.max_inflight_per_worker < 0:
        parser.error(f"--max-inflight-per-worker must be >= 0, got {ns.max_inflight_per_worker}")
    if ns.migration_limit < 0:
        parser.error(f"--migration-limit must be >= 0, got {ns.migration_limit}")
    if ns.request_transport not in REQUEST_TRANSPORTS:
        parser.error(f"request transport {ns.request_transport!r} is not one of {', '.join(REQUEST_TRANSPORTS)}")
    if ns.max_body_bytes < 1024:
        parser.error(f"--max-body-bytes must be at least 1024, got {ns.max_body_bytes}")
    return FrontendConfig(
        http_host=ns.http_host, http_port=ns.http_port, namespace=ns.namespace,
        discovery_backend=ns.discovery_backend, discovery_dir=ns.discovery_dir,
        etcd_endpoints=ns.etcd_endpoints, router_mode=ns.router_mode,
        migration_limit=ns.migration_limit, max_inflight_per_worker=ns.max_inflight_per_worker,
        api_key=ns.api_key or None,
        log_level=ns.log_level.lower(), max_body_bytes=ns.max_body_bytes,
        request_transport=ns.request_transport)
