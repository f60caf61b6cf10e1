"""etcd restarted without its data (a fresh data dir: every key, lease and revision gone). The
owners of live keys put them again within a second or two; a watch that lists the prefix before
they do must not report those keys deleted (a frontend would drop every worker meanwhile), while a
key whose owner is gone for good is deleted once the grace has passed."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator

import pytest

from dynamo.runtime.discovery.base import WatchEvent, WatchEventType
from dynamo.runtime.discovery.etcd import EtcdDiscovery
from tests.support.etcd import EtcdServer

pytestmark = pytest.mark.etcd

PREFIX = "dataloss/"
TTL_S = 3.0
OWNER_LATE_S = 2.5  # the live owner puts its key again this long after finding its lease gone


@contextlib.asynccontextmanager
async def handle(etcd: EtcdServer) -> AsyncIterator[EtcdDiscovery]:
    d = EtcdDiscovery([etcd.endpoint], ttl=TTL_S)
    await d.start()
    try:
        yield d
    finally:
        await d.close()


async def test_a_watch_keeps_live_keys_through_an_etcd_data_loss(own_etcd_server: EtcdServer) -> None:
    etcd = own_etcd_server
    events: list[tuple[float, WatchEvent]] = []
    async with handle(etcd) as reader, handle(etcd) as owner, handle(etcd) as dead:
        for i in range(20):  # a revision well above what the fresh etcd will be at when listed
            await reader.put(f"{PREFIX}scratch", str(i).encode())
        await reader.delete(f"{PREFIX}scratch")
        await owner.put(f"{PREFIX}live", b"live")
        await dead.put(f"{PREFIX}dead", b"dead")

        async def watch() -> None:
            async for ev in reader.watch_prefix(PREFIX):
                events.append((time.monotonic(), ev))

        task = asyncio.create_task(watch())
        try:
            await _until(lambda: {e.key for _, e in events} >= {f"{PREFIX}live", f"{PREFIX}dead"}, 5)
            assert dead._keeper is not None
            dead._keeper.cancel()  # its owner is gone: nobody puts it again

            put_again = owner._grant_and_put_all

            async def late() -> None:  # the live owner takes a while to come back
                await asyncio.sleep(OWNER_LATE_S)
                await put_again()

            owner._grant_and_put_all = late  # type: ignore[method-assign]
            etcd.kill()
            shutil.rmtree(etcd.data_dir)
            await asyncio.sleep(3)  # the watch's retry backoff is at its longest
            etcd.start()
            back = time.monotonic()
            await _until(lambda: any(e.type is WatchEventType.DELETE and e.key == f"{PREFIX}dead"
                                     for _, e in events), 20)
            deletes = [(round(t - back, 1), e.key) for t, e in events if e.type is WatchEventType.DELETE]
            assert deletes and all(key == f"{PREFIX}dead" for _, key in deletes), deletes
            assert (await reader.get_prefix(PREFIX)).get(f"{PREFIX}live") == b"live"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.05)
