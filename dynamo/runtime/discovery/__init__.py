"""Discovery: register keys with a lease, list a prefix, watch a prefix.

`open_discovery(config)` opens the configured backend; without a config it takes the one the
environment describes (`DiscoveryConfig.from_env()`: DYN_DISCOVERY_BACKEND, DYN_FILE_KV,
ETCD_ENDPOINTS, DYN_DISCOVERY_TTL). The etcd backend (and its gRPC client) is imported only when
chosen, so importing this package stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynamo.runtime.config import DISCOVERY_BACKENDS, DiscoveryConfig

from .base import Discovery, DiscoveryError, WatchEvent, WatchEventType
from .file import FileDiscovery

if TYPE_CHECKING:
    from .etcd import EtcdDiscovery

__all__ = [
    "DISCOVERY_BACKENDS",
    "Discovery",
    "DiscoveryConfig",
    "DiscoveryError",
    "EtcdDiscovery",
    "FileDiscovery",
    "WatchEvent",
    "WatchEventType",
    "default_discovery_dir",
    "open_discovery",
]


def default_discovery_dir() -> Path:
    """`$XDG_CACHE_HOME/dynamo/discovery`, else `~/.cache/dynamo/discovery` (DYN_FILE_KV, read by
    DiscoveryConfig, overrides it)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "dynamo" / "discovery"


def open_discovery(config: DiscoveryConfig | None = None) -> Discovery:
    """A discovery handle (not started yet: `await d.start()` or `async with d`)."""
    config = DiscoveryConfig.from_env() if config is None else config
    if config.backend == "file":
        root = Path(config.directory).expanduser() if config.directory else default_discovery_dir()
        return FileDiscovery(root, ttl=config.ttl)
    if config.backend == "etcd":
        try:
            from .etcd import EtcdDiscovery
        except ImportError as exc:
            raise DiscoveryError(
                f"the etcd discovery backend needs the etcd3aio package ({exc}); "
                "install dynamo-worker-runtime[etcd] or use --discovery-backend file"
            ) from exc
        return EtcdDiscovery(config.etcd_endpoints, ttl=config.ttl, tls=config.etcd_tls)
    raise ValueError(f"unknown discovery backend {config.backend!r}: choose one of "
                     f"{', '.join(DISCOVERY_BACKENDS)}")


def __getattr__(name: str) -> Any:
    # `from dynamo.runtime.discovery import EtcdDiscovery` works without an eager etcd import.
    if name == "EtcdDiscovery":
        from .etcd import EtcdDiscovery

        return EtcdDiscovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
