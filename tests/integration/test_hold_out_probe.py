"""An instance held out of rotation (it refused a connection, or went silent on a request) comes
back as soon as its grpc.health.v1 probe answers SERVING, not only when its hold ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from dynamo.runtime.rpc.client import EndpointClient
from dynamo.runtime.runtime import DistributedRuntime
from tests.integration.test_rpc import ECHO, EchoServer, echo_config

PROBE_S = 0.2


async def _until(predicate: object, timeout: float) -> float:
    t0 = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@contextlib.asynccontextmanager
async def _echo_and_client(tmp_path: Path) -> AsyncIterator[tuple[EchoServer, EndpointClient]]:
    """An echo instance, and a client in another runtime that has seen it, probing every PROBE_S."""
    server = await EchoServer(tmp_path).start()
    caller = DistributedRuntime(echo_config(str(tmp_path)))
    await caller.start()
    try:
        client = await caller.client(ECHO)
        client.probe_interval = PROBE_S
        await client.wait_for_instances(5)
        yield server, client
    finally:
        await caller.shutdown()
        await server.stop()


async def test_a_held_instance_returns_when_its_health_probe_passes(tmp_path: Path) -> None:
    async with _echo_and_client(tmp_path) as (server, client):
        iid = server.instance_id
        await server.runtime.server.set_serving(False)  # answering, but not serving: stays out
        client.hold_out(iid, 60, why="went silent")
        assert client.instances() == [] and client.held() == [iid]
        await asyncio.sleep(5 * PROBE_S)
        assert client.instances() == [], "a NOT_SERVING instance came back"

        await server.runtime.server.set_serving(True)
        took = await _until(lambda: [r.instance_id for r in client.instances()] == [iid], 2.0)
        assert took < 60  # long before the hold would have ended
        assert client.held() == []


async def test_a_dead_instance_stays_held_and_its_probe_ends_with_its_record(tmp_path: Path) -> None:
    async with _echo_and_client(tmp_path) as (server, client):
        iid = server.instance_id
        await server.runtime.server.stop(0)  # nothing answers on its port; its record lingers
        client.hold_out(iid, 60)
        await asyncio.sleep(5 * PROBE_S)
        assert client.instances() == [] and client.held() == [iid]
        await server.runtime.deregister_all()  # the record leaves discovery: hold and probe go with it
        await _until(lambda: not client.watcher.instances, 5.0)
        assert client.held() == [] and not client._probes
