"""Subscribe to vLLM's ZMQ KV-event publisher and turn its batches into our KvEvents.

Wire format (vllm/distributed/kv_events.py, ZmqEventPublisher): multipart messages
(topic, 8-byte big-endian sequence number, msgpack(KVEventBatch)); each batch holds BlockStored,
BlockRemoved and AllBlocksCleared events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

import msgspec
import zmq
import zmq.asyncio
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

from dynamo.llm.protocol import KvEvent, KvEventKind

log = logging.getLogger(__name__)

_U64 = (1 << 64) - 1
_POLL_MS = 100  # how often a waiting subscriber checks for close() and injected events


def block_hash_to_u64(block_hash: bytes | int) -> int:
    """vLLM block hashes (bytes, or ints when VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1) as uint64.

    Uses vLLM's own int conversion (big-endian, low 64 bits), so both settings give the same value.
    """
    if isinstance(block_hash, (bytes, bytearray)):
        return int.from_bytes(block_hash, "big") & _U64
    return int(block_hash) & _U64


def convert_event(event: object) -> KvEvent | None:
    """One vLLM KV-cache event as our KvEvent (None for a kind we do not relay)."""
    if isinstance(event, BlockStored):
        return KvEvent(
            kind=KvEventKind.STORED,
            block_hashes=[block_hash_to_u64(h) for h in event.block_hashes],
            parent_hash=(None if event.parent_block_hash is None
                         else block_hash_to_u64(event.parent_block_hash)),
            token_ids=list(event.token_ids),
            block_size=event.block_size,
        )
    if isinstance(event, BlockRemoved):
        return KvEvent(kind=KvEventKind.REMOVED,
                       block_hashes=[block_hash_to_u64(h) for h in event.block_hashes])
    if isinstance(event, AllBlocksCleared):
        return KvEvent(kind=KvEventKind.CLEARED)
    return None


def subscriber_endpoint(publisher_endpoint: str) -> str:
    """Where to connect to reach a publisher bound at `publisher_endpoint` on this host."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if publisher_endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + publisher_endpoint[len(wildcard):]
    return publisher_endpoint


class KvEventSubscriber:
    """A SUB socket on one vLLM publisher; `events()` yields our KvEvents until `close()`."""

    def __init__(self, publisher_endpoints: list[str], topic: str = "") -> None:
        """Connect to every publisher (one per data-parallel rank) on one SUB socket."""
        if not publisher_endpoints:
            raise ValueError("KvEventSubscriber needs at least one publisher endpoint")
        self.endpoints = [subscriber_endpoint(e) for e in publisher_endpoints]
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.setsockopt(zmq.LINGER, 0)
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        for endpoint in self.endpoints:
            self._sock.connect(endpoint)
        self._decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        self._closed = False
        self._last_seq: dict[int, int] = {}  # per data-parallel rank: sequence numbers are per publisher
        self._injected: deque[KvEvent] = deque()

    def inject(self, event: KvEvent) -> None:
        """Yield `event` from `events()` soon, ahead of later engine events (see VllmEngine's
        clear_kv_blocks: vLLM publishes its own "cleared" only at its next scheduler step)."""
        self._injected.append(event)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until every connection is up, so the first events are not lost (PUB drops events
        until a subscriber is connected). Returns False if they are not up within `timeout` s."""

        async def handshakes() -> None:
            for _ in self.endpoints:
                await self._monitor.recv_multipart()

        try:
            await asyncio.wait_for(handshakes(), timeout)
            return True
        except asyncio.TimeoutError:
            log.warning("KV event subscriber not connected to %s after %.1f s; early events may be "
                        "lost", ", ".join(self.endpoints), timeout)
            return False
        finally:
            if not self._closed:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)

    async def events(self) -> AsyncIterator[KvEvent]:
        while not self._closed:
            while self._injected:
                yield self._injected.popleft()
            try:
                if not await self._sock.poll(_POLL_MS):  # (POLLIN is poll's default)
                    continue
                _topic, seq_bytes, payload = await self._sock.recv_multipart()
            except zmq.ZMQError:
                if self._closed:
                    return
                raise
            seq = int.from_bytes(seq_bytes, "big")
            try:
                batch = self._decoder.decode(payload)
            except msgspec.DecodeError as exc:
                log.warning("undecodable KV event batch (seq %d): %s", seq, exc)
                continue
            rank = batch.data_parallel_rank or 0
            last = self._last_seq.get(rank)
            if last is not None and seq != last + 1:
                log.warning("lost %d KV event batch(es) from data-parallel rank %d (seq %d -> %d); "
                            "the router's view of this worker's cache may be stale",
                            seq - last - 1, rank, last, seq)
            self._last_seq[rank] = seq
            for event in batch.events:
                converted = convert_event(event)
                if converted is not None:
                    yield converted

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.destroy(linger=0)  # closes the SUB and monitor sockets too
