"""Discovery: register keys with a lease, list a prefix, watch a prefix.

`open_discovery()` picks the backend from arguments, then `DYN_*` environment variables, then
defaults. The etcd backend (and its gRPC client) is imported only when chosen, so importing this
package stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Discovery, DiscoveryError, WatchEvent, WatchEventType
from .file import FileDiscovery

if TYPE_CHECKING:
    from .etcd import EtcdDiscovery

__all__ = [
    "BACKENDS",
    "Discovery",
    "DiscoveryError",
    "EtcdDiscovery",
    "FileDiscovery",
    "WatchEvent",
    "WatchEventType",
    "default_discovery_dir",
    "open_discovery",
]

BACKENDS = ("file", "etcd")
DEFAULT_TTL_S = 10.0
DEFAULT_ETCD_ENDPOINT = "127.0.0.1:2379"


def default_discovery_dir() -> Path:
    """`$DYN_FILE_KV`, else `$XDG_CACHE_HOME/dynamo/discovery`, else `~/.cache/dynamo/discovery`."""
    if env := os.environ.get("DYN_FILE_KV"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "dynamo" / "discovery"


def _ttl_from_env() -> float:
    raw = os.environ.get("DYN_DISCOVERY_TTL")
    if not raw:
        return DEFAULT_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        raise ValueError(f"DYN_DISCOVERY_TTL={raw!r} is not a number of seconds") from None
    if ttl <= 0:
        raise ValueError(f"DYN_DISCOVERY_TTL={raw!r} must be > 0 seconds")
    return ttl


def open_discovery(
    backend: str | None = None,
    *,
    discovery_dir: str | os.PathLike[str] | None = None,
    etcd_endpoints: list[str] | None = None,
    ttl: float | None = None,
) -> Discovery:
    """A discovery handle (not started yet: `await d.start()` or `async with d`)."""
    backend = (backend or os.environ.get("DYN_DISCOVERY_BACKEND") or "file").strip().lower()
    ttl = ttl if ttl is not None else _ttl_from_env()
    if backend == "file":
        return FileDiscovery(Path(discovery_dir).expanduser() if discovery_dir else default_discovery_dir(), ttl=ttl)
    if backend == "etcd":
        if not etcd_endpoints:
            env = os.environ.get("ETCD_ENDPOINTS", "")
            etcd_endpoints = [e.strip() for e in env.split(",") if e.strip()] or [DEFAULT_ETCD_ENDPOINT]
        try:
            from .etcd import EtcdDiscovery
        except ImportError as exc:
            raise DiscoveryError(
                f"the etcd discovery backend needs the etcd3aio package ({exc}); "
                "install dynamo-worker-runtime[etcd] or use --discovery-backend file"
            ) from exc
        return EtcdDiscovery(etcd_endpoints, ttl=ttl)
    raise ValueError(f"unknown discovery backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def __getattr__(name: str) -> Any:
    # `from dynamo.runtime.discovery import EtcdDiscovery` works without an eager etcd import.
    if name == "EtcdDiscovery":
        from .etcd import EtcdDiscovery

        return EtcdDiscovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
