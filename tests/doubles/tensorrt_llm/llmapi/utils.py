"""TEST DOUBLE of the ``AsyncQueue`` in ``tensorrt_llm/llmapi/utils.py``.

A queue filled from the engine's thread and drained either synchronously (``sync_q.get``) or from the
event loop that was running when it was created (``await get(timeout)``), like the real one.
"""

import asyncio
import collections
import queue
import threading
from typing import Any, Optional


class AsyncQueue:
    """Thread-safe producer side; async consumer bound to the loop running at construction."""

    class EventLoopShutdownError(Exception):
        pass

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.sync_q = _SyncQueue(self)

    def put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the loop is closed: only the sync side can still read
            pass

    put_nowait = put

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    async def get(self, timeout: Optional[float] = None) -> Any:
        """Wait for the next item; ``asyncio.TimeoutError`` after ``timeout`` seconds (as the real one)."""

        async def _next() -> Any:
            while True:
                with self._cond:
                    if self._items:
                        return self._items.popleft()
                    self._event.clear()
                await self._event.wait()

        if timeout is None:
            return await _next()
        return await asyncio.wait_for(_next(), timeout)


class _SyncQueue:
    """``queue.Queue``-like view (``get(timeout)`` raising ``queue.Empty``) of an AsyncQueue."""

    def __init__(self, owner: "AsyncQueue") -> None:
        self._owner = owner

    def put(self, item: Any) -> None:
        self._owner.put(item)

    put_nowait = put

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        cond = self._owner._cond
        with cond:
            if not cond.wait_for(lambda: bool(self._owner._items), timeout if block else 0):
                raise queue.Empty
            return self._owner._items.popleft()

    def empty(self) -> bool:
        return self._owner.empty()


class ThreadQueue:
    """The plain ``queue.Queue`` used when no event loop runs at construction (real: ``queue.Queue()``)."""

    def __init__(self) -> None:
        self._q: "queue.Queue[Any]" = queue.Queue()

    def put(self, item: Any) -> None:
        self._q.put(item)

    put_nowait = put

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        return self._q.get(block, timeout)

    def empty(self) -> bool:
        return self._q.empty()
