"""Calling an endpoint's instances: discovery-driven instance choice and gRPC channels."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dynamo.runtime.discovery.base import Discovery
from dynamo.runtime.discovery.records import InstanceRecord, InstanceWatcher
from dynamo.runtime.identity import EndpointAddress
from dynamo.runtime.rpc import local_socket, tls

log = logging.getLogger(__name__)

# How long an instance that refused a connection stays out of rotation: past the discovery TTL, so
# a dead one is gone from discovery before it could be tried again; a live one (a blip) comes back.
UNREACHABLE_HOLD_S = 30.0
# A held-out instance is asked for its grpc.health.v1 status this often (each probe with this
# deadline); SERVING puts it back in rotation before its hold ends (a stopped worker resumed).
HEALTH_PROBE_INTERVAL_S = 1.0
HEALTH_PROBE_TIMEOUT_S = 2.0

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Fail fast when a peer is gone instead of backing off for up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),
]

Resp = TypeVar("Resp")


def channel_target(record: InstanceRecord) -> str:
    """Where to connect to an instance: its Unix socket when this process can reach it (same
    machine and mount namespace, the socket in place), else its TCP `host:port`."""
    if local_socket.reachable(record.local_socket, record.host_id):
        return f"unix:{record.local_socket}"
    return record.target


def open_channel(record: InstanceRecord) -> grpc.aio.Channel:
    """A channel to an instance, over TLS when its record says it serves TLS only."""
    if record.tls:
        return tls.secure_channel(record.target, CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(channel_target(record), options=CHANNEL_OPTIONS)


class NoInstancesError(RuntimeError):
    """No live instance of the endpoint (after the optional wait)."""


class InstanceUnreachableError(RuntimeError):
    """The chosen instance did not answer (connection refused, reset, or deadline while connecting)."""

    def __init__(self, record: InstanceRecord, detail: str) -> None:
        super().__init__(f"instance {record.instance_id} of {record.address} at {record.target} "
                         f"is unreachable: {detail}")
        self.record = record


class EndpointClient:
    """Watches one endpoint's instances and opens calls to them.

    Instance choice here is round-robin or direct (by instance id); callers with a policy of
    their own (the frontend's router) pick from `instances()` and `inflight()` and pass the
    record. Channels are cached per instance and closed when the instance leaves discovery.
    """

    def __init__(self, discovery: Discovery | None, address: EndpointAddress | str, *,
                 watcher: InstanceWatcher | None = None,
                 predicate: Callable[[InstanceRecord], bool] | None = None) -> None:
        """`address`: one endpoint, or a label for a pool given as `watcher` + `predicate`
        (e.g. every prefill instance of a model in a namespace; the caller owns that watcher)."""
        self.address = address
        self._predicate = predicate
        self._owns_watcher = watcher is None
        if watcher is None:
            if discovery is None or not isinstance(address, EndpointAddress):
                raise ValueError("give discovery and an EndpointAddress, or a watcher")
            watcher = InstanceWatcher.for_endpoint(discovery, address)
        self._watcher = watcher
        self._watcher.on_change(self._on_change)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[object, ...], grpc.aio.UnaryStreamMultiCallable] = {}
        self._inflight: dict[str, int] = {}
        self._held: dict[str, float] = {}  # instance id -> when it may be tried again (monotonic)
        self._probes: dict[str, asyncio.Task[None]] = {}  # instance id -> its health probe while held
        self.probe_interval = HEALTH_PROBE_INTERVAL_S  # 0: no probes, holds end by time alone
        self._rr = itertools.count()

    async def start(self) -> EndpointClient:
        if self._owns_watcher:
            await self._watcher.start()
        return self

    @property
    def watcher(self) -> InstanceWatcher:
        return self._watcher

    def instances(self) -> list[InstanceRecord]:
        """The live instances: registered, and not held out after refusing a connection."""
        recs = list(self._watcher.instances.values())
        if self._predicate is not None:
            recs = [r for r in recs if self._predicate(r)]
        if self._held:
            now = time.monotonic()
            for instance_id in [i for i, until in self._held.items() if until <= now]:
                del self._held[instance_id]
            recs = [r for r in recs if r.instance_id not in self._held]
        return sorted(recs, key=lambda r: r.instance_id)

    def hold_out(self, instance_id: str, seconds: float = UNREACHABLE_HOLD_S, *,
                 why: str = "is unreachable") -> None:
        """Take an instance that did not answer out of rotation now, not when its discovery record
        expires (a SIGKILLed worker's stays for its TTL). It comes back when the hold ends, or
        earlier when its health probe answers SERVING (a blip, a stopped process resumed)."""
        if instance_id not in self._held:
            log.warning("instance %s of %s %s: out of rotation for up to %.0f s (until it answers health "
                        "checks or leaves discovery)", instance_id, self.address, why, seconds)
        self._held[instance_id] = time.monotonic() + seconds
        if self.probe_interval > 0 and instance_id not in self._probes:
            self._probes[instance_id] = asyncio.get_running_loop().create_task(
                self._probe(instance_id), name=f"health probe {instance_id}")

    def held(self) -> list[str]:
        """Instances out of rotation now."""
        now = time.monotonic()
        return sorted(i for i, until in self._held.items() if until > now)

    async def _probe(self, instance_id: str) -> None:
        """While the instance is held out: a health check every probe_interval; SERVING ends the hold."""
        try:
            while True:
                await asyncio.sleep(self.probe_interval)
                until = self._held.get(instance_id)
                record = self._watcher.get(instance_id)
                if until is None or until <= time.monotonic() or record is None:
                    return  # the hold ended (or the instance left discovery): nothing to probe
                if await self.healthy(record):
                    self._held.pop(instance_id, None)
                    log.info("instance %s of %s answers health checks again: back in rotation",
                             instance_id, self.address)
                    return
        finally:
            if self._probes.get(instance_id) is asyncio.current_task():
                del self._probes[instance_id]

    async def healthy(self, record: InstanceRecord, timeout: float = HEALTH_PROBE_TIMEOUT_S) -> bool:
        """The instance's grpc.health.v1 overall status is SERVING (answered within `timeout`)."""
        stub = health_pb2_grpc.HealthStub(self.channel(record))
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def inflight(self, instance_id: str) -> int:
        return self._inflight.get(instance_id, 0)

    def acquire(self, instance_id: str) -> None:
        """Count a request as in flight on the instance (least-loaded routing reads it); `stream()`
        does it itself, requests that travel another way call this and `release`."""
        self._inflight[instance_id] = self._inflight.get(instance_id, 0) + 1

    def release(self, instance_id: str) -> None:
        self._inflight[instance_id] -= 1

    async def wait_for_instances(self, timeout: float) -> list[InstanceRecord]:
        if not await self._watcher.wait_for(lambda _: bool(self.instances()), timeout):
            raise NoInstancesError(f"no instance of {self.address} appeared within {timeout:g} s")
        return self.instances()

    def select(self, *, instance_id: str | None = None, exclude: Iterable[str] = ()) -> InstanceRecord:
        """The instance `instance_id`, or the next live one round-robin (skipping `exclude`)."""
        if instance_id is not None:
            rec = self._watcher.get(instance_id)
            if rec is None or (self._predicate is not None and not self._predicate(rec)):
                raise NoInstancesError(f"instance {instance_id} of {self.address} is not registered")
            return rec
        excluded = set(exclude)
        candidates = [r for r in self.instances() if r.instance_id not in excluded]
        if not candidates:
            raise NoInstancesError(f"no live instance of {self.address}"
                                   + (f" (excluding {sorted(excluded)})" if excluded else ""))
        return candidates[next(self._rr) % len(candidates)]

    def channel(self, record: InstanceRecord) -> grpc.aio.Channel:
        ch = self._channels.get(record.instance_id)
        if ch is None:
            ch = open_channel(record)
            self._channels[record.instance_id] = ch
        return ch

    async def stream(self, method: str, request: Any, *,
                     request_serializer: Callable[[Any], bytes] | None,
                     response_deserializer: Callable[[bytes], Resp] | None,
                     timeout: float | None = None, instance_id: str | None = None,
                     record: InstanceRecord | None = None,
                     metadata: tuple[tuple[str, str], ...] | None = None) -> AsyncGenerator[Resp, None]:
        """A server-streaming call to one instance.

        Closing the iterator (or cancelling the task that drives it) cancels the call, and the
        server handler sees the cancellation. Connection failures raise InstanceUnreachableError
        naming the instance; other gRPC errors propagate as grpc.aio.AioRpcError.
        """
        rec = record or self.select(instance_id=instance_id)
        call = self._callable(rec, method, request_serializer, response_deserializer)(
            request, timeout=timeout, metadata=metadata)
        self.acquire(rec.instance_id)
        try:
            while True:
                try:
                    msg = await call.read()
                except grpc.aio.AioRpcError as e:
                    raise translate_rpc_error(e, rec) from e
                if msg is grpc.aio.EOF:
                    return
                yield msg  # type: ignore[misc]  # read() is typed as object: the deserializer's type
        finally:
            self.release(rec.instance_id)
            if not call.done():
                call.cancel()

    def _callable(self, record: InstanceRecord, method: str, serializer: Callable[[Any], bytes] | None,
                  deserializer: Callable[[bytes], Any] | None) -> grpc.aio.UnaryStreamMultiCallable:
        """One multi-callable per (instance, method, codecs): building it per call costs CPU."""
        key = (record.instance_id, method, serializer, deserializer)
        fn = self._callables.get(key)
        if fn is None:
            fn = self.channel(record).unary_stream(method, request_serializer=serializer,
                                                   response_deserializer=deserializer,
                                                   _registered_method=True)  # type: ignore[call-arg]  # grpc's own generated stubs pass it; the type stubs lack it
            self._callables[key] = fn
        return fn

    def _on_change(self, instance_id: str, record: InstanceRecord | None) -> None:
        if record is None:
            self._held.pop(instance_id, None)
            probe = self._probes.pop(instance_id, None)
            if probe is not None:
                probe.cancel()
            for key in [k for k in self._callables if k[0] == instance_id]:
                del self._callables[key]
            ch = self._channels.pop(instance_id, None)
            if ch is not None:
                # Let calls still running on it end on their own; close in the background.
                asyncio.get_running_loop().create_task(ch.close(grace=5.0))

    async def close(self) -> None:
        probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        if self._owns_watcher:
            await self._watcher.close()
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)


def translate_rpc_error(e: grpc.aio.AioRpcError, record: InstanceRecord) -> Exception:
    """Connection-level failures become InstanceUnreachableError; the rest stay as they are."""
    if e.code() == grpc.StatusCode.UNAVAILABLE:
        return InstanceUnreachableError(record, e.details() or "unavailable")
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "connect" in (e.debug_error_string() or "").lower():
        return InstanceUnreachableError(record, "deadline exceeded while connecting")
    return e
