"""A minimal serving process for runtime tests: registers dyn://NS.echo.count and streams counts.

Method /test.Echo/Count: request b"N,DELAY_MS" -> N messages b"0", b"1", ... one every DELAY_MS.
Prints "READY <instance_id> <port>" once registered and SERVING; exits 0 after a graceful drain.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from dynamo.runtime.config import RuntimeConfig, add_runtime_args
from dynamo.runtime.identity import EndpointAddress
from dynamo.runtime.runtime import DistributedRuntime


def echo_handler(server_track) -> grpc.GenericRpcHandler:  # type: ignore[no-untyped-def]
    async def count(request: bytes, context: grpc.aio.ServicerContext) -> None:
        n, delay_ms = (int(x) for x in request.decode().split(","))
        with server_track():
            for i in range(n):
                await context.write(str(i).encode())
                await asyncio.sleep(delay_ms / 1000)

    return grpc.method_handlers_generic_handler(
        "test.Echo", {"Count": grpc.unary_stream_rpc_method_handler(count)})


async def main() -> int:
    parser = argparse.ArgumentParser()
    add_runtime_args(parser)
    parser.add_argument("--ready-delay", type=float, default=0.0)
    args = parser.parse_args()
    runtime = DistributedRuntime(RuntimeConfig.from_args(args))
    runtime.install_signal_handlers()
    handler = echo_handler(runtime.server.track)
    runtime.add_service(lambda _s, server: server.add_generic_rpc_handlers((handler,)), None, "test.Echo")
    await runtime.start()
    port = await runtime.start_server()
    print(f"STARTED {port}", flush=True)
    await asyncio.sleep(args.ready_delay)
    rec = await runtime.register(EndpointAddress(args.namespace, "echo", "count"))
    await runtime.set_ready()
    print(f"READY {rec.instance_id} {port}", flush=True)
    try:
        await runtime.wait_for_shutdown()
    finally:
        await runtime.shutdown()
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
