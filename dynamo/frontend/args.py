"""Frontend configuration: CLI flag first, DYN_* environment variable second, default last."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynamo.frontend.router import DEFAULT_ROUTER_MODE, ROUTER_MODE_ENV, ROUTER_MODES
from dynamo.llm.transport import DEFAULT_TRANSPORT, add_transport_arg
from dynamo.runtime.config import (
    DiscoveryConfig,
    add_discovery_args,
    add_env_flag,
    add_log_level_arg,
    choice,
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
    migration_limit: int = 0  # how many times a broken stream may move to another worker
    max_inflight_per_worker: int = 0  # 0: no limit; else busier workers answer 429
    api_key: str | None = None
    log_level: str = "info"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_transport: str = DEFAULT_TRANSPORT  # requests to a worker: all on one GenerateStream, or a call each


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
    add_env_flag(p, "--router-mode", env_var=ROUTER_MODE_ENV, default=d.router_mode, env=env,
                 type=choice(*ROUTER_MODES), help="how a worker is picked for each request")
    add_env_flag(p, "--max-inflight-per-worker", env_var="DYN_MAX_INFLIGHT_PER_WORKER",
                 default=d.max_inflight_per_worker, env=env, type=int_range(0),
                 help="requests this frontend keeps in flight per worker; when every worker of a model "
                      "is at the limit, new requests get 429 (0: no limit)")
    add_env_flag(p, "--migration-limit", env_var="DYN_MIGRATION_LIMIT", default=d.migration_limit, env=env,
                 type=int_range(0), help="times a broken stream may be retried on another worker")
    add_env_flag(p, "--api-key", env_var="DYN_API_KEY", default=d.api_key, env=env,
                 help="require 'Authorization: Bearer KEY' on /v1/*")
    add_log_level_arg(p, env)
    add_env_flag(p, "--max-body-bytes", env_var="DYN_HTTP_MAX_BODY_BYTES", default=d.max_body_bytes,
                 env=env, type=int_range(1024), help="largest accepted request body")
    add_transport_arg(p, env)
    return p


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> FrontendConfig:
    ns = build_parser(env).parse_args(argv)
    return FrontendConfig(
        http_host=ns.http_host, http_port=ns.http_port, namespace=ns.namespace,
        discovery=DiscoveryConfig.from_args(ns), router_mode=ns.router_mode,
        migration_limit=ns.migration_limit, max_inflight_per_worker=ns.max_inflight_per_worker,
        api_key=ns.api_key or None, log_level=ns.log_level, max_body_bytes=ns.max_body_bytes,
        request_transport=ns.request_transport)
