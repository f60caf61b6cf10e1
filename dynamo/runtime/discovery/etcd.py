"""etcd discovery: keys attached to an etcd v3 lease kept alive by this handle; prefix watches.

Built on etcd3aio's KV and Lease services over a channel we configure ourselves (short reconnect
backoff, so a restarted etcd is found again within a second or two). Two things are ours rather
than etcd3aio's, because its helpers do not survive an etcd that comes back with a fresh data dir:
- the keep-alive loop: when etcd says the lease is gone, take a new lease and put every key again;
- the watch loop: on any stream failure, list the prefix again and emit the differences, then
  watch from the listed revision (etcd3aio would resume at the old revision, which a fresh etcd
  has not reached yet). When etcd came back without its data (its revision went back), the keys
  that vanished are deleted only if their owners have not put them again after a grace of one
  lease TTL (plus a retry): live owners re-put within a second or two, and a watcher that listed
  first would otherwise drop every live key for that long (a frontend: every worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
from etcd3aio import EtcdError, prefix_range_end
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchStub
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService

from dynamo.runtime.config import TlsConfig

from . import malformed
from .base import Discovery, DiscoveryError, WatchEvent, WatchEventType

log = logging.getLogger(__name__)

# What a failed etcd call can raise: etcd3aio's errors, raw gRPC errors (non-transient codes and
# streams), and our own deadlines.
_ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError)
_PUT, _DELETE = 0, 1  # mvccpb.Event.EventType
_RETRY_MIN_S, _RETRY_MAX_S = 0.25, 2.0


class _StreamEnded(Exception):
    """A watch or keep-alive stream closed without an error (etcd shutting down)."""


def parse_endpoints(endpoints: Sequence[str]) -> list[tuple[str, int]]:
    """'host:port', 'http://host:port' or 'https://host:port' -> (host, port)."""
    out = []
    for raw in endpoints:
        text = raw.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"invalid etcd endpoint {raw!r}: expected host:port or http://host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no etcd endpoints given: set ETCD_ENDPOINTS (e.g. 127.0.0.1:2379)")
    return out


def _grpc_target(endpoints: list[tuple[str, int]]) -> str:
    if len(endpoints) == 1:
        host, port = endpoints[0]
        return f"dns:///{host}:{port}"  # re-resolved on every reconnect
    # Several endpoints: gRPC's ipv4 resolver balances over a fixed list of addresses.
    addrs = []
    for host, port in endpoints:
        try:
            ipaddress.IPv4Address(host)
            addrs.append(f"{host}:{port}")
        except ValueError:
            try:
                info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                raise DiscoveryError(f"cannot resolve etcd endpoint {host}:{port} ({exc}); check ETCD_ENDPOINTS") from exc
            addrs.append(f"{info[0][4][0]}:{port}")
    return "ipv4:" + ",".join(addrs)


_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.lb_policy_name", "round_robin"),
    # gRPC's default reconnect backoff grows to 2 minutes; etcd restarts must be noticed in seconds.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Detects a silent network cut; etcd rejects pings more often than every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


class EtcdDiscovery(Discovery):
    """Discovery in etcd v3. Every key this handle puts is attached to one lease of `ttl` seconds."""

    backend = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        ttl: float = 10.0,
        *,
        connect_timeout: float = 5.0,
        op_timeout: float = 5.0,
        tls: TlsConfig | None = None,
    ) -> None:
        """TLS when `tls` names a CA or a client certificate, or an endpoint is https://."""
        if ttl <= 0:
            raise ValueError(f"discovery ttl must be > 0, got {ttl}")
        self.endpoints = [f"{h}:{p}" for h, p in parse_endpoints(endpoints)]
        self._target = _grpc_target(parse_endpoints(endpoints))
        wants_tls = tls is not None and bool(tls.ca or tls.cert) or any(e.strip().startswith("https://")
                                                                         for e in endpoints)
        self.tls: TlsConfig | None = (tls or TlsConfig()) if wants_tls else None
        self.ttl = float(ttl)
        self._lease_ttl = max(2, math.ceil(ttl))  # etcd leases are whole seconds, 2 s at least
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self._channel: grpc.aio.Channel | None = None
        self._kv: KVService | None = None
        self._lease: LeaseService | None = None
        self._watch_stub: WatchStub | None = None
        self._lease_id = 0
        self._keys: dict[str, bytes] = {}
        self._lock = asyncio.Lock()  # lease changes and puts: never put with a lease being replaced
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdDiscovery(endpoints={self.endpoints}, ttl={self.ttl})"

    @property
    def lease_id(self) -> int:
        return self._lease_id

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._channel is not None:
            return
        if self._closed:
            raise DiscoveryError("this discovery handle is closed")
        if self.tls is not None:
            def read(path: str | None) -> bytes | None:
                return Path(path).read_bytes() if path else None
            credentials = grpc.ssl_channel_credentials(read(self.tls.ca), read(self.tls.key), read(self.tls.cert))
            self._channel = grpc.aio.secure_channel(self._target, credentials, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self._target, options=_CHANNEL_OPTIONS)
        # One attempt per call: our loops do the retrying, with their own deadlines.
        self._kv = KVService(self._channel, max_attempts=1)
        self._lease = LeaseService(self._channel, max_attempts=1)
        self._watch_stub = WatchStub(self._channel)
        try:
            await self._wait_reachable()
            async with self._lock:
                await self._grant_and_put_all()
        except BaseException:
            await self._channel.close()
            self._channel = None
            raise
        self._keeper = asyncio.create_task(self._keep_alive_loop(), name=f"etcd-lease-keeper {self.endpoints}")
        log.info("discovery: etcd at %s, lease %x (ttl %d s)", ",".join(self.endpoints), self._lease_id, self._lease_ttl)

    async def _wait_reachable(self) -> None:
        assert self._kv is not None
        deadline = time.monotonic() + self.connect_timeout
        last: BaseException | None = None
        while (left := deadline - time.monotonic()) > 0:
            try:
                await self._kv.get(b"\0dynamo-probe", timeout=min(1.0, left), serializable=True)
                return
            except _ETCD_ERRORS as exc:
                last = exc
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        raise DiscoveryError(
            f"etcd at {','.join(self.endpoints)} is unreachable (no answer within {self.connect_timeout:g} s: "
            f"{_describe(last)}); start etcd there or point ETCD_ENDPOINTS / --etcd-endpoints at it, "
            "or use --discovery-backend file"
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._lease is not None and self._lease_id:
            try:  # revoking deletes every key at once; if etcd is away, the lease expires anyway
                await self._lease.revoke(self._lease_id, timeout=min(2.0, self.op_timeout))
            except _ETCD_ERRORS as exc:
                log.warning("discovery: could not revoke etcd lease %x (%s); its keys expire within %d s",
                            self._lease_id, _describe(exc), self._lease_ttl)
        self._keys.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryError("this discovery handle is closed")
        if self._channel is None:
            raise DiscoveryError("discovery handle not started: call start() (or use `async with`) first")

    # -- keys ---------------------------------------------------------------------------------

    async def put(self, key: str, value: bytes) -> None:
        self._check_open()
        assert self._kv is not None
        async with self._lock:
            # Remembered first: if etcd is away now, the keeper puts it when etcd is back.
            self._keys[key] = bytes(value)
            try:
                await self._kv.put(key, bytes(value), lease=self._lease_id, timeout=self.op_timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: "requested lease not found"
                    raise self._error(f"put {key!r}", exc) from exc
                log.warning("discovery: etcd lease %x is gone; taking a new one", self._lease_id)
                try:
                    await self._grant_and_put_all()
                except _ETCD_ERRORS as exc2:
                    raise self._error(f"put {key!r}", exc2) from exc2
            except _ETCD_ERRORS as exc:
                raise self._error(f"put {key!r}", exc) from exc

    async def delete(self, key: str) -> None:
        self._check_open()
        assert self._kv is not None
        async with self._lock:
            if self._keys.pop(key, None) is None:
                return
            try:
                await self._kv.delete(key, timeout=self.op_timeout)
            except _ETCD_ERRORS as exc:
                raise self._error(f"delete {key!r}", exc) from exc

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        self._check_open()
        try:
            items, _ = await self._range(prefix)
        except _ETCD_ERRORS as exc:
            raise self._error(f"list {prefix!r}", exc) from exc
        return items

    def _error(self, what: str, exc: BaseException) -> DiscoveryError:
        return DiscoveryError(f"etcd at {','.join(self.endpoints)}: {what} failed: {_describe(exc)}")

    async def _range(self, prefix: str) -> tuple[dict[str, bytes], int]:
        assert self._kv is not None
        resp = await self._kv.get(prefix, prefix_range_end(prefix), timeout=self.op_timeout)
        items: dict[str, bytes] = {}
        for kv in resp.kvs:
            key = _decode_key(kv.key)
            if key is not None:
                items[key] = kv.value
        return items, resp.header.revision

    # -- lease --------------------------------------------------------------------------------

    async def _grant_and_put_all(self) -> None:
        """Take a new lease and attach all our keys to it. Caller holds self._lock."""
        assert self._lease is not None and self._kv is not None
        resp = await self._lease.grant(self._lease_ttl, timeout=self.op_timeout)
        self._lease_id = resp.ID
        for key, value in list(self._keys.items()):
            await self._kv.put(key, value, lease=self._lease_id, timeout=self.op_timeout)

    async def _keep_alive_once(self) -> int:
        """Renew the lease once; returns the TTL etcd reports (<= 0: the lease is gone)."""
        assert self._lease is not None
        call = self._lease.keep_alive(self._lease_id)
        try:
            async with asyncio.timeout(self.op_timeout):
                async for resp in call:
                    return int(resp.TTL)
            raise _StreamEnded("keep-alive stream closed without an answer")
        finally:
            call.cancel()

    async def _keep_alive_loop(self) -> None:
        interval = self._lease_ttl / 3
        outage_since: float | None = None
        while True:
            await asyncio.sleep(interval)
            interval = self._lease_ttl / 3
            try:
                ttl = await self._keep_alive_once()
                if ttl <= 0:
                    async with self._lock:
                        old = self._lease_id
                        await self._grant_and_put_all()
                    log.warning(
                        "discovery: etcd lease %x was lost (etcd restarted or the lease expired); "
                        "took lease %x and put %d key(s) again", old, self._lease_id, len(self._keys),
                    )
            except _ETCD_ERRORS + (_StreamEnded,) as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("discovery: etcd at %s unreachable (%s); retrying, keys will be put again",
                                ",".join(self.endpoints), _describe(exc))
                interval = min(_RETRY_MIN_S * 2, interval)
                continue
            except Exception:  # never let the keeper die: every key would expire
                log.exception("discovery: etcd lease keeper failed; retrying")
                interval = _RETRY_MAX_S
                continue
            if outage_since is not None:
                log.info("discovery: etcd at %s reachable again after %.1f s",
                         ",".join(self.endpoints), time.monotonic() - outage_since)
                outage_since = None

    # -- watch --------------------------------------------------------------------------------

    async def watch_prefix(self, prefix: str) -> AsyncIterator[WatchEvent]:
        self._check_open()
        try:
            async with contextlib.aclosing(self._watch_loop(prefix)) as events:
                async for event in events:
                    yield event
        except (asyncio.CancelledError, Exception):
            # close() closes the channel under us, which cancels our calls: that ends the watch
            # quietly. A cancel aimed at our consumer's task is passed on.
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                return
            raise

    async def _watch_loop(self, prefix: str) -> AsyncGenerator[WatchEvent, None]:
        known: dict[str, bytes] = {}
        backoff = _RETRY_MIN_S
        outage_since: float | None = None
        seen = [0]  # the newest revision this watch has seen (a list: _watch_from updates it)
        while not self._closed:
            try:
                snapshot, revision = await self._range(prefix)
            except _ETCD_ERRORS as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("discovery: watch on %r lost etcd (%s); retrying", prefix, _describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)
                continue
            vanished = [k for k in known if k not in snapshot]
            if revision < seen[0] and vanished:
                # etcd lost its data: give the owners of the vanished keys time to put them again
                # (their keep-alive finds the lease gone) before believing they are gone.
                grace = self._lease_ttl + _RETRY_MAX_S
                log.warning("discovery: etcd came back without its data (revision %d, was %d); waiting %.0f s "
                            "for the owners of %d vanished key(s) under %r to put them again",
                            revision, seen[0], grace, len(vanished), prefix)
                seen[0] = revision  # once per loss
                await asyncio.sleep(grace)
                continue
            seen[0] = max(seen[0], revision)
            if outage_since is not None:
                log.info("discovery: watch on %r resumed after %.1f s", prefix, time.monotonic() - outage_since)
                outage_since = None
            backoff = _RETRY_MIN_S
            for key in vanished:
                del known[key]
                yield WatchEvent(WatchEventType.DELETE, key)
            for key, value in snapshot.items():
                if known.get(key) != value:
                    known[key] = value
                    yield WatchEvent(WatchEventType.PUT, key, value)
            try:
                # aclosing: cancelling our consumer must end the gRPC stream now, not at GC.
                async with contextlib.aclosing(self._watch_from(prefix, revision + 1, seen)) as events:
                    async for event in events:
                        if event.type == WatchEventType.PUT:
                            assert event.value is not None
                            if known.get(event.key) == event.value:
                                continue  # e.g. our keys put again on a new lease: nothing changed
                            known[event.key] = event.value
                        elif known.pop(event.key, None) is None:
                            continue
                        yield event
            except _ETCD_ERRORS + (_StreamEnded,) as exc:
                if self._closed:
                    return
                outage_since = time.monotonic()
                log.warning("discovery: watch on %r interrupted (%s); listing again when etcd answers",
                            prefix, _describe(exc))
                await asyncio.sleep(backoff)

    async def _watch_from(self, prefix: str, start_revision: int, seen: list[int]) -> AsyncGenerator[WatchEvent, None]:
        """Events under `prefix` from `start_revision` on; `seen[0]` follows the revisions etcd reports."""
        assert self._watch_stub is not None
        create = WatchCreateRequest(key=prefix.encode(), range_end=prefix_range_end(prefix),
                                    start_revision=start_revision)

        done = asyncio.Event()

        async def requests() -> AsyncIterator[WatchRequest]:
            yield WatchRequest(create_request=create)
            # Keep our side open until we are done; then end, or gRPC's request task would stay
            # pending forever (call.cancel() does not cancel it once the call has failed).
            await done.wait()

        call = self._watch_stub.Watch(requests())
        try:
            async for resp in call:
                if resp.canceled:  # e.g. the revision was compacted away: list again
                    raise _StreamEnded(f"etcd cancelled the watch ({resp.cancel_reason or 'no reason given'})")
                seen[0] = max(seen[0], resp.header.revision)
                for ev in resp.events:
                    key = _decode_key(ev.kv.key)
                    if key is None:
                        continue
                    if ev.type == _DELETE:
                        yield WatchEvent(WatchEventType.DELETE, key)
                    else:
                        yield WatchEvent(WatchEventType.PUT, key, ev.kv.value)
            raise _StreamEnded("watch stream closed by etcd")
        finally:
            done.set()
            call.cancel()


def _decode_key(raw: bytes) -> str | None:
    """Keys are UTF-8 text; a key that is not cannot be one of ours: skip it (counted, warned once)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        malformed.skip("key", repr(raw), raw, "not UTF-8 text")
        return None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no attempt finished"
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
