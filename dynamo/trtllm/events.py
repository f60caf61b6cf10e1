"""TensorRT-LLM's KV-cache events and iteration stats as our KvEvents and EngineStats.

Both come from the LLM's async getters (`get_kv_cache_events_async`, `get_stats_async`): one JSON
dict per event or per iteration, an iterable that ends at the first `timeout` without an item and
must be re-armed (`mark_undone`) to wait again. Formats (tensorrt_llm/_utils.py
KVCacheEventSerializer, the executor's iteration-stats JSON):
  {"event_id", "window_size", "data": {"type": "created" | "stored" | "removed" | "updated", ...}}
  stored: {"parent_hash", "blocks": [{"block_hash", "tokens": [{"token_id", ...}], ...}]}
  removed: {"block_hashes": [...]}
  stats: {"numActiveRequests", "numQueuedRequests", "kvCacheStats": {"maxNumBlocks", "usedNumBlocks", ...}}
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from dynamo.llm.protocol import EngineStats, KvEvent, KvEventKind

log = logging.getLogger(__name__)

_U64 = (1 << 64) - 1
_REARM_PAUSE_S = 0.05  # after an idle timeout, before waiting again (no spinning on an idle engine)


class KvEventTranslator:
    """Stateful: TensorRT-LLM reports partial blocks (a prompt's tail) in `stored`; a router only
    knows full blocks, so a partial block is dropped and so is its later removal. Models with several
    attention windows report each window's pool; only the largest window's events are relayed."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._partial: set[int] = set()
        self._window: int | None = None

    def translate(self, item: Mapping[str, Any]) -> list[KvEvent]:
        data = item.get("data")
        if not isinstance(data, Mapping):
            return []
        window = item.get("window_size")
        kind = data.get("type")
        if kind == "created":
            if isinstance(window, int):
                self._window = window if self._window is None else max(self._window, window)
            return []
        if self._window is not None and isinstance(window, int) and window != self._window:
            return []
        if kind == "stored":
            return self._stored(data)
        if kind == "removed":
            hashes = [h & _U64 for h in data.get("block_hashes", ()) if h & _U64 not in self._partial]
            self._partial.difference_update(h & _U64 for h in data.get("block_hashes", ()))
            return [KvEvent(kind=KvEventKind.REMOVED, block_hashes=hashes)] if hashes else []
        return []  # "updated" (priority / cache level moves) changes nothing a router tracks

    def _stored(self, data: Mapping[str, Any]) -> list[KvEvent]:
        hashes: list[int] = []
        tokens: list[int] = []
        for block in data.get("blocks", ()):
            block_tokens = [t["token_id"] for t in block.get("tokens", ())]
            block_hash = int(block["block_hash"]) & _U64
            if len(block_tokens) != self.block_size:
                self._partial.add(block_hash)  # the prompt's tail: nothing after it is full either
                break
            hashes.append(block_hash)
            tokens.extend(block_tokens)
        if not hashes:
            return []
        parent = data.get("parent_hash")
        return [KvEvent(kind=KvEventKind.STORED, block_hashes=hashes,
                        parent_hash=None if parent is None else int(parent) & _U64,
                        token_ids=tokens, block_size=self.block_size)]


def stats_of(item: Mapping[str, Any]) -> EngineStats:
    kv = item.get("kvCacheStats") or {}
    total = int(kv.get("maxNumBlocks") or 0)
    used = int(kv.get("usedNumBlocks") or 0)
    return EngineStats(running_requests=int(item.get("numActiveRequests") or 0),
                       waiting_requests=int(item.get("numQueuedRequests") or 0),
                       kv_usage=used / total if total else 0.0, kv_total_blocks=total, kv_active_blocks=used)


async def poll(getter: Callable[[], Any], running: Callable[[], bool]) -> AsyncIterator[dict[str, Any]]:
    """Every item of one of the LLM's async getters while `running()`: the getter's iterable ends at
    each idle timeout and is re-armed here. `running` matters because cancelling a task that waits
    in the getter is not enough on Python 3.11: its `asyncio.wait_for` swallows a cancellation that
    lands as an item arrives, and the loop would go on."""
    while running():
        result = getter()
        async for item in result:
            if not running():
                return
            if isinstance(item, dict):
                yield item
        rearm = getattr(result, "mark_undone", None)
        if rearm is not None:
            rearm()
        await asyncio.sleep(_REARM_PAUSE_S)


async def kv_events(getter: Callable[[], Any], block_size: int, running: Callable[[], bool]
                    ) -> AsyncIterator[KvEvent]:
    translator = KvEventTranslator(block_size)
    async for item in poll(getter, running):
        for event in translator.translate(item):
            yield event


def events_from(items: Iterable[Mapping[str, Any]], block_size: int) -> list[KvEvent]:
    """Translate a finished list of event dicts (tests, and the synchronous getter)."""
    translator = KvEventTranslator(block_size)
    return [e for item in items for e in translator.translate(item)]
