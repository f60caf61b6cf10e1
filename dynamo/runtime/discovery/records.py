"""Instance records (what a registered endpoint instance publishes) and a live view of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynamo.runtime.discovery import malformed
from dynamo.runtime.discovery.base import Discovery, WatchEventType
from dynamo.runtime.identity import INSTANCES_ROOT, EndpointAddress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceRecord:
    """One registered endpoint instance: where to reach it and what it says about itself."""

    namespace: str
    component: str
    endpoint: str
    instance_id: str
    host: str
    port: int
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    pid: int = 0
    # a Unix socket the same server listens on, and the id of the machine and mount namespace
    # where that path means it (rpc/local_socket.py); empty when the server has none
    local_socket: str = ""
    host_id: str = ""
    tls: bool = False  # the instance serves gRPC over TLS only (dynamo.runtime.rpc.tls)

    @property
    def address(self) -> EndpointAddress:
        return EndpointAddress(self.namespace, self.component, self.endpoint)

    @property
    def key(self) -> str:
        return self.address.instances_prefix + self.instance_id

    @property
    def target(self) -> str:
        """gRPC target `host:port` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    def to_json(self) -> bytes:
        return json.dumps({
            "namespace": self.namespace, "component": self.component, "endpoint": self.endpoint,
            "instance_id": self.instance_id, "host": self.host, "port": self.port, "pid": self.pid,
            "metadata": self.metadata,
            **({"local_socket": self.local_socket, "host_id": self.host_id} if self.local_socket else {}),
            **({"tls": True} if self.tls else {}),
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> InstanceRecord:
        """Decode a record; raises ValueError for anything that is not a well-formed record."""
        try:
            d = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        try:
            rec = cls(
                namespace=str(d["namespace"]), component=str(d["component"]),
                endpoint=str(d["endpoint"]), instance_id=str(d["instance_id"]),
                host=str(d["host"]), port=int(d["port"]), pid=int(d.get("pid", 0)),
                metadata=dict(d.get("metadata") or {}),
                local_socket=str(d.get("local_socket") or ""), host_id=str(d.get("host_id") or ""),
                tls=d.get("tls") is True,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"missing or malformed field: {e}") from None
        if not 0 < rec.port < 65536:
            raise ValueError(f"port {rec.port} out of range")
        rec.address  # validates the names
        return rec


def parse_instance_key(key: str) -> tuple[EndpointAddress, str] | None:
    if not key.startswith(INSTANCES_ROOT):
        return None
    parts = key[len(INSTANCES_ROOT):].split("/")
    if len(parts) != 4:
        return None
    try:
        return EndpointAddress(*parts[:3]), parts[3]
    except ValueError:
        return None


class InstanceWatcher:
    """A live map instance_id -> InstanceRecord for every instance under a key prefix.

    Garbage records are skipped with a warning; the watcher itself never dies on bad data, and a
    failing discovery watch is restarted (with a pause) until `close()`.
    """

    def __init__(self, discovery: Discovery, prefix: str) -> None:
        self._discovery = discovery
        self._prefix = prefix
        self._instances: dict[str, InstanceRecord] = {}
        self._by_key: dict[str, str] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, InstanceRecord | None], None]] = []
        self._synced = asyncio.Event()

    @classmethod
    def for_endpoint(cls, discovery: Discovery, address: EndpointAddress) -> InstanceWatcher:
        return cls(discovery, address.instances_prefix)

    async def start(self, sync_timeout: float = 5.0) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch {self._prefix}")
        # The first batch of events is the snapshot: wait until it has been applied.
        snapshot = await self._discovery.get_prefix(self._prefix)
        for key, raw in snapshot.items():
            self._apply_put(key, raw)
        self._synced.set()

    def on_change(self, fn: Callable[[str, InstanceRecord | None], None]) -> None:
        """fn(instance_id, record or None when it left); called on the event loop."""
        self._listeners.append(fn)

    @property
    def instances(self) -> dict[str, InstanceRecord]:
        return dict(self._instances)

    def get(self, instance_id: str) -> InstanceRecord | None:
        return self._instances.get(instance_id)

    async def wait_for(self, predicate: Callable[[dict[str, InstanceRecord]], bool], timeout: float) -> bool:
        """Wait until predicate(instances) holds; False on timeout."""
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self._instances))
        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _run(self) -> None:
        while True:
            try:
                async for event in self._discovery.watch_prefix(self._prefix):
                    if event.type == WatchEventType.PUT and event.value is not None:
                        self._apply_put(event.key, event.value)
                    else:
                        self._apply_delete(event.key)
                    async with self._changed:
                        self._changed.notify_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("discovery watch on %s failed; retrying in 1 s", self._prefix, exc_info=True)
                await asyncio.sleep(1.0)

    def _apply_put(self, key: str, raw: bytes) -> None:
        try:
            rec = InstanceRecord.from_json(raw)
        except ValueError as e:
            malformed.skip("record", key, raw, str(e))
            return
        malformed.forget("record", key)
        old_id = self._by_key.get(key)
        if old_id is not None and old_id != rec.instance_id:
            self._instances.pop(old_id, None)
        self._by_key[key] = rec.instance_id
        old = self._instances.get(rec.instance_id)
        self._instances[rec.instance_id] = rec
        if old is None or old.to_json() != rec.to_json():
            self._notify(rec.instance_id, rec)

    def _apply_delete(self, key: str) -> None:
        malformed.forget("record", key)
        instance_id = self._by_key.pop(key, None)
        if instance_id is not None and self._instances.pop(instance_id, None) is not None:
            self._notify(instance_id, None)

    def _notify(self, instance_id: str, rec: InstanceRecord | None) -> None:
        for fn in self._listeners:
            try:
                fn(instance_id, rec)
            except Exception:
                log.exception("instance listener failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
