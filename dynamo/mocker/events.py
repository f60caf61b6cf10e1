"""A bounded buffer of KV events between the engine loop and one reader (the worker's relay)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from dynamo.llm.protocol import KvEvent


class KvEventBuffer:
    """The engine publishes without ever blocking; when the reader lags, the oldest events go first."""

    def __init__(self, capacity: int) -> None:
        self._events: deque[KvEvent] = deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0  # events lost because nobody read them in time
        self.published = 0

    def publish(self, event: KvEvent) -> None:
        if self._closed:
            return
        if len(self._events) == self._events.maxlen:
            self.dropped += 1
        self._events.append(event)
        self.published += 1
        self._ready.set()

    def close(self) -> None:
        """End the reader's iteration once it has drained what is buffered."""
        self._closed = True
        self._ready.set()

    async def __aiter__(self) -> AsyncIterator[KvEvent]:
        while True:
            while self._events:
                yield self._events.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()
