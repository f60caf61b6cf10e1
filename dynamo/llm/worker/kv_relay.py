"""Relays an engine's KV events to any number of subscribers, numbering them.

A slow subscriber loses its oldest events (bounded queue) rather than slowing the engine; the
event ids show the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

from dynamo.llm.protocol import KvEvent

log = logging.getLogger(__name__)


class KvEventRelay:
    def __init__(self, queue_size: int = 4096) -> None:
        self._subscribers: set[asyncio.Queue[KvEvent]] = set()
        self._queue_size = queue_size
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, source: AsyncIterator[KvEvent]) -> None:
        self._task = asyncio.create_task(self._pump(source), name="kv-event relay")

    async def _pump(self, source: AsyncIterator[KvEvent]) -> None:
        try:
            async for event in source:
                self.publish(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("KV event source failed; no more KV events from this worker")

    @property
    def next_event_id(self) -> int:
        return self._next_id

    def publish(self, event: KvEvent) -> None:
        event.event_id = self._next_id
        self._next_id += 1
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[KvEvent]]:
        q: asyncio.Queue[KvEvent] = asyncio.Queue(self._queue_size)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop relaying; the engine's event source gets `timeout` seconds to end (a source that
        swallows the cancellation is left to the engine's own shutdown)."""
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                log.warning("the engine's KV-event source did not stop within %.0f s", timeout)
            self._task = None
