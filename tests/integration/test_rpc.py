"""The gRPC request plane: instance choice, cancellation, unreachable instances, health, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dynamo.runtime.config import DiscoveryConfig, RuntimeConfig
from dynamo.runtime.discovery.records import InstanceRecord, InstanceWatcher
from dynamo.runtime.identity import EndpointAddress
from dynamo.runtime.rpc.client import EndpointClient, InstanceUnreachableError, NoInstancesError
from dynamo.runtime.runtime import DistributedRuntime

ECHO = EndpointAddress("rpctest", "echo", "count")
COUNT = "/test.Echo/Count"
ECHO_WORKER = Path(__file__).with_name("echo_worker.py")
REPO = Path(__file__).resolve().parents[2]



def echo_config(discovery_dir: str, **kw: object) -> RuntimeConfig:
    """A runtime in the echo namespace on a file-discovery directory with a 3 s TTL."""
    return RuntimeConfig(namespace=ECHO.namespace, discovery=DiscoveryConfig(directory=discovery_dir, ttl=3),
                         **kw)  # type: ignore[arg-type]

class EchoServer:
    """An in-process runtime serving /test.Echo/Count; records calls and cancellations."""

    def __init__(self, discovery_dir: Path, local_socket: str = "auto") -> None:
        self.runtime = DistributedRuntime(echo_config(str(discovery_dir), grpc_host="127.0.0.1",
                                                        advertise_host="127.0.0.1",
                                                        grpc_local_socket=local_socket))
        self.calls = 0
        self.peers: list[str] = []
        self.cancelled_at: float | None = None

        async def count(request: bytes, context: grpc.aio.ServicerContext) -> None:
            self.calls += 1
            self.peers.append(context.peer())
            n, delay_ms = (int(x) for x in request.decode().split(","))
            try:
                for i in range(n):
                    await context.write(f"{self.instance_id}:{i}".encode())
                    await asyncio.sleep(delay_ms / 1000)
            except asyncio.CancelledError:
                self.cancelled_at = time.monotonic()
                raise

        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Count": grpc.unary_stream_rpc_method_handler(count)})
        self.runtime.add_service(lambda _s, server: server.add_generic_rpc_handlers((handler,)), None,
                                 "test.Echo")
        self.instance_id = ""

    async def start(self) -> EchoServer:
        await self.runtime.start()
        await self.runtime.start_server()
        rec = await self.runtime.register(ECHO)
        self.instance_id = rec.instance_id
        self.record = rec
        await self.runtime.set_ready()
        return self

    async def stop(self) -> None:
        await self.runtime.shutdown(grace=1)


def stream(client: EndpointClient, payload: bytes, **kw: object) -> AsyncIterator[bytes]:
    return client.stream(COUNT, payload, request_serializer=None, response_deserializer=None, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def two_servers(tmp_path: Path) -> AsyncIterator[tuple[list[EchoServer], EndpointClient, DistributedRuntime]]:
    servers = [await EchoServer(tmp_path).start() for _ in range(2)]
    caller = DistributedRuntime(echo_config(str(tmp_path)))
    await caller.start()
    client = await caller.client(ECHO)
    await client.wait_for_instances(5)
    assert await client.watcher.wait_for(lambda inst: len(inst) == 2, 5)
    yield servers, client, caller
    await caller.shutdown()
    for s in servers:
        await s.stop()


async def test_round_robin_alternates(two_servers) -> None:  # type: ignore[no-untyped-def]
    servers, client, _ = two_servers
    seen = []
    for _ in range(6):
        msgs = [m async for m in stream(client, b"1,0", timeout=5)]
        seen.append(msgs[0].decode().split(":")[0])
    assert seen[0] != seen[1]
    assert seen == [seen[0], seen[1]] * 3
    assert [s.calls for s in servers] == [3, 3]


async def test_direct_choice(two_servers) -> None:  # type: ignore[no-untyped-def]
    servers, client, _ = two_servers
    target = servers[1].instance_id
    for _ in range(3):
        msgs = [m async for m in stream(client, b"1,0", instance_id=target, timeout=5)]
        assert msgs[0].decode().startswith(target)
    picks = {client.select().instance_id for _ in range(4)}  # round-robin without a policy of the caller's
    assert picks == {s.instance_id for s in servers}
    with pytest.raises(NoInstancesError, match="not registered"):
        client.select(instance_id="ffffffffffffffff")


async def test_cancel_mid_stream_reaches_server(two_servers) -> None:  # type: ignore[no-untyped-def]
    servers, client, _ = two_servers
    it = stream(client, b"1000,10", timeout=30)
    got = [await it.__anext__() for _ in range(3)]
    assert len(got) == 3
    owner = next(s for s in servers if got[0].decode().startswith(s.instance_id))
    t0 = time.monotonic()
    await it.aclose()
    deadline = t0 + 2
    while owner.cancelled_at is None and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert owner.cancelled_at is not None, "server handler never saw the cancellation"
    assert owner.cancelled_at - t0 < 1.0  # the stream would run 10 s more: the cancel got through


async def test_cancel_by_task_cancellation(two_servers) -> None:  # type: ignore[no-untyped-def]
    servers, client, _ = two_servers
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in stream(client, b"1000,10", timeout=30):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = t0 + 2
    while all(s.cancelled_at is None for s in servers) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    cancelled = [s.cancelled_at for s in servers if s.cancelled_at is not None]
    assert cancelled and cancelled[0] - t0 < 1.0  # the stream would run 10 s more


async def test_unreachable_instance_names_it(tmp_path: Path) -> None:
    rt = DistributedRuntime(echo_config(str(tmp_path)))
    await rt.start()
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    rec = InstanceRecord(ECHO.namespace, ECHO.component, ECHO.endpoint, "deadbeefdeadbeef", "127.0.0.1", dead_port)
    await rt.discovery.put(rec.key, rec.to_json())
    client = await rt.client(ECHO)
    await client.wait_for_instances(5)
    t0 = time.monotonic()
    with pytest.raises(InstanceUnreachableError, match="deadbeefdeadbeef") as err:
        async for _ in stream(client, b"1,0", timeout=3):
            pass
    assert time.monotonic() - t0 < 3.5
    assert str(dead_port) in str(err.value)
    await rt.shutdown()


async def test_no_instances_error_after_wait(tmp_path: Path) -> None:
    rt = DistributedRuntime(echo_config(str(tmp_path)))
    await rt.start()
    client = await rt.client(ECHO)
    t0 = time.monotonic()
    with pytest.raises(NoInstancesError, match="rpctest.echo.count"):
        await client.wait_for_instances(0.5)
    assert 0.4 < time.monotonic() - t0 < 2
    with pytest.raises(NoInstancesError):
        client.select()
    await rt.shutdown()


async def test_garbage_records_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = await EchoServer(tmp_path).start()
    rt = DistributedRuntime(echo_config(str(tmp_path)))
    await rt.start()
    for i, junk in enumerate([b"\x00\xffgarbage", b'{"namespace": "rpctest"', b"[1,2,3]",
                              b'{"namespace":"rpctest","component":"echo","endpoint":"count",'
                              b'"instance_id":"x","host":"h","port":99999}']):
        await rt.discovery.put(f"{ECHO.instances_prefix}junk{i}", junk)
    watcher = InstanceWatcher.for_endpoint(rt.discovery, ECHO)
    with caplog.at_level(logging.WARNING):
        await watcher.start()
        assert await watcher.wait_for(lambda inst: server.instance_id in inst, 5)
        assert set(watcher.instances) == {server.instance_id}
        # A later good record still arrives after the junk.
        second = await EchoServer(tmp_path).start()
        assert await watcher.wait_for(lambda inst: second.instance_id in inst, 5)
    assert "skipping malformed instance record" in caplog.text and "junk3" in caplog.text
    await watcher.close()
    await second.stop()
    await server.stop()
    await rt.shutdown()


# --- a real worker process: health states and SIGTERM drain ------------------------------------

def start_echo_worker(discovery_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(ECHO_WORKER), "--namespace", ECHO.namespace, "--discovery-dir", str(discovery_dir),
         "--discovery-ttl", "3", "--grpc-host", "127.0.0.1", "--advertise-host", "127.0.0.1",
         "--drain-timeout", "20", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


async def read_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 20) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline),  # type: ignore[union-attr]
                                      deadline - time.monotonic())
        if not line:
            raise AssertionError(f"worker exited before {prefix!r}: {proc.stderr.read()}")  # type: ignore[union-attr]
        if line.startswith(prefix):
            return line.split()
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


async def health_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return resp.status


async def test_health_not_serving_until_ready(tmp_path: Path) -> None:
    proc = start_echo_worker(tmp_path, "--ready-delay", "1.5")
    try:
        _, port = await read_line(proc, "STARTED")
        assert await health_status(int(port)) == health_pb2.HealthCheckResponse.NOT_SERVING
        await read_line(proc, "READY")
        assert await health_status(int(port)) == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.kill()
        proc.wait(10)


async def test_sigterm_drains_in_flight_streams(tmp_path: Path) -> None:
    proc = start_echo_worker(tmp_path)
    rt = DistributedRuntime(echo_config(str(tmp_path)))
    await rt.start()
    try:
        _, instance_id, port = await read_line(proc, "READY")
        client = await rt.client(ECHO)
        await client.wait_for_instances(5)
        started = [asyncio.Event() for _ in range(8)]

        async def run(i: int) -> int:
            n = 0
            async for _ in stream(client, b"15,100", timeout=30):
                n += 1
                started[i].set()
            return n

        tasks = [asyncio.create_task(run(i)) for i in range(8)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 10)
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Deregistered at once: the instance leaves the watcher well before the streams end.
        assert await client.watcher.wait_for(lambda inst: instance_id not in inst, 1.0)
        # Health says NOT_SERVING while draining.
        assert await health_status(int(port)) == health_pb2.HealthCheckResponse.NOT_SERVING
        # No new stream is admitted.
        rec = InstanceRecord(ECHO.namespace, ECHO.component, ECHO.endpoint, instance_id, "127.0.0.1", int(port))
        with pytest.raises((InstanceUnreachableError, grpc.aio.AioRpcError)):
            async for _ in stream(client, b"1,0", record=rec, timeout=5):
                pass
        counts = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert counts == [15] * 8
        assert proc.wait(15) == 0
        assert time.monotonic() - t_term < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await rt.shutdown()


async def test_drain_lets_finished_calls_send_their_status(tmp_path: Path) -> None:
    """A handler leaves the tracked part before grpc sends its final status (here: it returns a
    moment later). The drain must not cancel such a call: its client gets every message and OK."""
    rt = DistributedRuntime(echo_config(str(tmp_path), grpc_host="127.0.0.1", advertise_host="127.0.0.1",
                                          grpc_local_socket="off"))
    left_tracking = asyncio.Event()

    async def count(request: bytes, context: grpc.aio.ServicerContext) -> None:
        with rt.server.track():
            for i in range(3):
                await context.write(str(i).encode())
        left_tracking.set()
        await asyncio.sleep(0.3)  # the work after tracking (metrics, status) takes its time

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Count": grpc.unary_stream_rpc_method_handler(count)})
    rt.add_service(lambda _s, server: server.add_generic_rpc_handlers((handler,)), None, "test.Echo")
    await rt.start()
    port = await rt.start_server()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_stream(COUNT)(b"", timeout=10)
            await asyncio.wait_for(left_tracking.wait(), 10)
            t0 = time.monotonic()
            await rt.shutdown(grace=5)
            assert time.monotonic() - t0 < 4  # it waited for that call, not for the whole grace
            assert [m async for m in call] == [b"0", b"1", b"2"]
            assert await call.code() == grpc.StatusCode.OK
    finally:
        await rt.shutdown()


async def test_server_reflection_lists_services(two_servers) -> None:  # type: ignore[no-untyped-def]
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    servers, _, _ = two_servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers[0].runtime.server.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        resp = await call.read()
        await call.done_writing()
    names = {s.name for s in resp.list_services_response.service}
    assert {"test.Echo", "grpc.health.v1.Health"} <= names


# --- same-machine clients use the server's Unix socket ------------------------------------------

@pytest.mark.parametrize("setting", ["auto", "off"])
async def test_a_client_on_this_machine_uses_the_local_socket(tmp_path: Path, setting: str) -> None:
    server = await EchoServer(tmp_path / "discovery", local_socket=setting).start()
    caller = DistributedRuntime(echo_config(str(tmp_path / "discovery")))
    await caller.start()
    try:
        client = await caller.client(ECHO)
        await client.wait_for_instances(5)
        record = client.select()
        msgs = [m async for m in stream(client, b"2,0", timeout=5)]
        assert len(msgs) == 2
        if setting == "off":
            assert record.local_socket == "" and server.peers[0].startswith("ipv4:")
            return
        path = Path(record.local_socket)
        assert path.is_socket() and record.host_id
        assert server.peers[0].startswith("unix:"), server.peers  # not through TCP
        # the TCP port serves as well (clients on other machines)
        async with grpc.aio.insecure_channel(record.target) as ch:
            got = [m async for m in ch.unary_stream(COUNT)(b"1,0", timeout=5)]
        assert len(got) == 1 and server.peers[1].startswith("ipv4:")
    finally:
        await caller.shutdown()
        await server.stop()
    if setting == "auto":
        assert not path.exists(), "the socket file outlived its server"


async def test_a_path_taken_by_another_file_leaves_tcp_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    taken = tmp_path / "taken.sock"
    taken.write_text("not a socket")
    with caplog.at_level(logging.WARNING):
        server = await EchoServer(tmp_path / "discovery", local_socket=str(taken)).start()
    try:
        assert server.record.local_socket == ""
        assert "not listening on local socket" in caplog.text and "not a socket" in caplog.text
        async with grpc.aio.insecure_channel(server.record.target) as ch:
            assert len([m async for m in ch.unary_stream(COUNT)(b"1,0", timeout=5)]) == 1
    finally:
        await server.stop()
    assert taken.read_text() == "not a socket"  # left alone
