"""The one discovery interface: a key-value store whose keys live as long as their owner's lease.

Backends: `file` (embedded default, a shared directory) and `etcd` (etcd v3 leases and watches).
Keys are '/'-separated strings; values are bytes (instance records are JSON).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass


class WatchEventType(str, enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    type: WatchEventType
    key: str
    value: bytes | None = None  # None for DELETE


class DiscoveryError(RuntimeError):
    pass


class Discovery(abc.ABC):
    """A process's handle on discovery.

    Every key `put` by this handle is attached to the handle's lease: it disappears within the
    lease TTL after the process dies, and at once on `close()`. When the lease is lost while the
    process lives (the store restarted, the network was cut), the backend gets a new lease and puts
    its keys again by itself.
    """

    backend: str = "base"

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and take the lease. Raises DiscoveryError (with the endpoint) when unreachable."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Create or replace `key`, attached to this handle's lease."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a key this handle put; a no-op if absent."""

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """All live keys under `prefix`, from every process."""

    @abc.abstractmethod
    def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """PUT events for the keys live now, then every change under `prefix` until cancelled.

        Never ends by itself: on a store outage it keeps trying and, when the store is back,
        emits the differences (DELETE for keys that vanished meanwhile, PUT for new ones).
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Remove this handle's keys (revoke the lease) and disconnect. Idempotent."""

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
