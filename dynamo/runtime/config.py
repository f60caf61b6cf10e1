"""Runtime flags shared by every process: CLI flag first, DYN_* environment variable second, default last."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def env_default(var: str, default: str | None) -> str | None:
    return os.environ.get(var, default)


def env_int(var: str, default: int | None) -> int | None:
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"environment variable {var}={raw!r} must be an integer") from None


def env_float(var: str, default: float, env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(var)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"environment variable {var}={raw!r} must be a number") from None


def add_discovery_args(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """The discovery flags of every process (workers, frontend, CLI); defaults from `env`
    (os.environ unless given)."""
    env = os.environ if env is None else env
    g = parser.add_argument_group("discovery")
    g.add_argument("--namespace", default=env.get("DYN_NAMESPACE") or "dynamo",
                   help="Dynamo namespace to register in / watch (env DYN_NAMESPACE; default: dynamo)")
    g.add_argument("--discovery-backend", choices=("file", "etcd"),
                   default=env.get("DYN_DISCOVERY_BACKEND") or "file",
                   help="file: embedded, one shared directory (single machine); etcd: many machines "
                        "(env DYN_DISCOVERY_BACKEND; default: file)")
    g.add_argument("--discovery-dir", default=env.get("DYN_FILE_KV") or None,
                   help="directory of the file backend (env DYN_FILE_KV; default ~/.cache/dynamo/discovery)")
    g.add_argument("--etcd-endpoints", default=env.get("ETCD_ENDPOINTS") or "127.0.0.1:2379",
                   help="comma-separated etcd endpoints host:port (env ETCD_ENDPOINTS)")
    g.add_argument("--discovery-ttl", type=float, default=env_float("DYN_DISCOVERY_TTL", 10.0, env),
                   help="seconds a dead process stays registered (lease TTL; env DYN_DISCOVERY_TTL)")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """Flags of a serving process (a worker): discovery plus the gRPC and system servers."""
    add_discovery_args(parser)
    g = parser.add_argument_group("serving")
    g.add_argument("--grpc-host", default=env_default("DYN_GRPC_HOST", "0.0.0.0"),
                   help="address the gRPC server binds (env DYN_GRPC_HOST; default 0.0.0.0)")
    g.add_argument("--grpc-port", type=int, default=env_int("DYN_GRPC_PORT", 0),
                   help="gRPC port; 0 picks a free one (env DYN_GRPC_PORT)")
    g.add_argument("--grpc-local-socket", default=env_default("DYN_GRPC_LOCAL_SOCKET", "auto"),
                   help="also serve gRPC on a Unix socket, which clients on this machine use instead "
                        "of TCP: auto (a fresh path in $XDG_RUNTIME_DIR or the temp dir), off, or a "
                        "path (env DYN_GRPC_LOCAL_SOCKET; default auto)")
    g.add_argument("--advertise-host", default=env_default("DYN_ADVERTISE_HOST", None),
                   help="host other processes reach this one at (env DYN_ADVERTISE_HOST; default: "
                        "POD_IP in Kubernetes, else this host's address, else 127.0.0.1)")
    g.add_argument("--system-port", type=int, default=env_int("DYN_SYSTEM_PORT", None),
                   help="HTTP port for /health, /live and /metrics; 0 picks a free one; unset: off "
                        "(env DYN_SYSTEM_PORT)")
    g.add_argument("--drain-timeout", type=float, default=env_float("DYN_DRAIN_TIMEOUT", 30.0),
                   help="seconds in-flight requests may take to finish after SIGTERM (env DYN_DRAIN_TIMEOUT)")


@dataclass
class RuntimeConfig:
    namespace: str = "dynamo"
    discovery_backend: str = "file"
    discovery_dir: str | None = None
    etcd_endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    discovery_ttl: float = 10.0
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 0
    grpc_local_socket: str | None = "auto"
    advertise_host: str | None = None
    system_port: int | None = None
    drain_timeout: float = 30.0

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RuntimeConfig:
        def get(name: str, default: object) -> object:
            return getattr(ns, name, default)
        endpoints = str(get("etcd_endpoints", "127.0.0.1:2379"))
        return cls(
            namespace=str(get("namespace", "dynamo")),
            discovery_backend=str(get("discovery_backend", "file")),
            discovery_dir=get("discovery_dir", None),  # type: ignore[arg-type]
            etcd_endpoints=[e.strip() for e in endpoints.split(",") if e.strip()],
            discovery_ttl=float(get("discovery_ttl", 10.0)),  # type: ignore[arg-type]
            grpc_host=str(get("grpc_host", "0.0.0.0")),
            grpc_port=int(get("grpc_port", 0)),  # type: ignore[arg-type]
            grpc_local_socket=get("grpc_local_socket", "auto"),  # type: ignore[arg-type]
            advertise_host=get("advertise_host", None),  # type: ignore[arg-type]
            system_port=get("system_port", None),  # type: ignore[arg-type]
            drain_timeout=float(get("drain_timeout", 30.0)),  # type: ignore[arg-type]
        )
