"""Subscribe to a vLLM-family ZMQ KV-event publisher (vLLM's, and SGLang's, which copied it) and
turn its batches into our KvEvents.

Wire format (vllm/distributed/kv_events.py, ZmqEventPublisher; SGLang's srt/disaggregation/kv_events.py):
multipart messages (topic, 8-byte big-endian sequence number, msgpack(KVEventBatch)). Decoded by
dynamo.llm.kv_event_wire without the engines' own classes, so every encoding they have used (array
or map events, int or bytes hashes) works, whichever version is installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio

from dynamo.llm.kv_event_wire import WireError, decode_batch
from dynamo.llm.protocol import KvEvent

log = logging.getLogger(__name__)

_POLL_MS = 100  # how often a waiting subscriber checks for close() and injected events


def subscriber_endpoint(publisher_endpoint: str) -> str:
    """Where to connect to reach a publisher bound at `publisher_endpoint` on this host."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if publisher_endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + publisher_endpoint[len(wildcard):]
    return publisher_endpoint


class KvEventSubscriber:
    """A SUB socket on an engine's publishers; `events()` yields our KvEvents until `close()`."""

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
                batch = decode_batch(payload)
            except WireError as exc:
                log.warning("undecodable KV event batch (seq %d): %s", seq, exc)
                continue
            if batch.skipped:
                log.debug("skipped %d KV event(s) of kinds a router does not track (seq %d)", batch.skipped, seq)
            rank = batch.data_parallel_rank
            last = self._last_seq.get(rank)
            if last is not None and seq != last + 1:
                log.warning("lost %d KV event batch(es) from data-parallel rank %d (seq %d -> %d); "
                            "the router's view of this worker's cache may be stale",
                            seq - last - 1, rank, last, seq)
            self._last_seq[rank] = seq
            for event in batch.events:
                yield event

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.destroy(linger=0)  # closes the SUB and monitor sockets too
