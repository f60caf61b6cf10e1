"""Feeding the KV router: every worker's KV events and load stats, for as long as it is registered.

For each live instance with a model card: one SubscribeKvEvents stream (unless the router runs
without events) and one SubscribeStats stream, each re-opened with backoff when it breaks. An event
the index cannot use is counted and skipped; a broken stream's worker is resynced by the index when
the stream comes back (its first batch says where the new subscription starts). An instance that
leaves discovery is forgotten at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc

from dynamo.frontend.router.kv import KvRouter
from dynamo.llm import codec
from dynamo.llm.model_pool import card_of
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.proto import worker_pb2_grpc as pb_grpc
from dynamo.runtime.discovery.records import InstanceRecord, InstanceWatcher
from dynamo.runtime.rpc.client import open_channel

log = logging.getLogger(__name__)

STATS_INTERVAL_MS = 500
_BACKOFF_S = (0.2, 5.0)  # first and longest wait before re-opening a broken stream


class _Follower:
    """The streams of one worker instance."""

    def __init__(self, record: InstanceRecord, router: KvRouter, kv_events: bool) -> None:
        self.record = record
        self._router = router
        self._channel = open_channel(record)
        stub = pb_grpc.WorkerStub(self._channel)
        self._stub = stub
        self._tasks = [asyncio.create_task(self._keep(self._events, "KV events"), name=f"kv events {record.instance_id}")
                       ] if kv_events else []
        self._tasks.append(asyncio.create_task(self._keep(self._stats, "stats"), name=f"stats {record.instance_id}"))

    async def _keep(self, follow: Callable[[], Awaitable[None]], what: str) -> None:
        delay = _BACKOFF_S[0]
        while True:
            try:
                await follow()
                delay = _BACKOFF_S[0]
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.debug("%s of %s: stream ended (%s); re-opening in %.1f s", what, self.record.instance_id,
                          e.code().name, delay)
            except Exception:
                log.exception("%s of %s failed; re-opening in %.1f s", what, self.record.instance_id, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_S[1])

    async def _events(self) -> None:
        wid = self.record.instance_id
        index = self._router.index
        call = self._stub.SubscribeKvEvents(pb.SubscribeRequest())
        first = True
        async for batch in call:
            if first:  # the subscription is live from here (worker.proto)
                first = False
                index.subscribed(wid, batch.next_event_id)
            for message in batch.events:
                try:
                    event = codec.kv_event_from_pb(message)
                except (KeyError, ValueError):  # an event kind this frontend does not know
                    index.counters.events_dropped += 1
                    continue
                index.apply(wid, event)

    async def _stats(self) -> None:
        call = self._stub.SubscribeStats(pb.SubscribeRequest(interval_ms=STATS_INTERVAL_MS))
        async for stats in call:
            self._router.loads.reported(self.record.instance_id, stats.kv_active_blocks,
                                        stats.waiting_requests, stats.kv_total_blocks)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._channel.close()


class KvIntake:
    """Follows every instance `watcher` sees (the frontend's namespace) for `router`."""

    def __init__(self, watcher: InstanceWatcher, router: KvRouter) -> None:
        self._watcher = watcher
        self._router = router
        self._followers: dict[str, _Follower] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._watcher.on_change(self._on_change)
        for record in list(self._watcher.instances.values()):
            self._on_change(record.instance_id, record)

    def _on_change(self, instance_id: str, record: InstanceRecord | None) -> None:
        if record is None:
            follower = self._followers.pop(instance_id, None)
            self._router.forget(instance_id)
            if follower is not None:
                task = asyncio.get_running_loop().create_task(follower.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return
        card = card_of(record)
        if card is None or instance_id in self._followers:
            return
        self._router.index.add_worker(instance_id, card.kv_block_size or 16)
        self._router.loads.load(instance_id).total_blocks = card.total_kv_blocks
        self._followers[instance_id] = _Follower(record, self._router, self._router.settings.kv_events)

    async def close(self) -> None:
        followers, self._followers = list(self._followers.values()), {}
        await asyncio.gather(*(f.close() for f in followers), *self._closing, return_exceptions=True)
