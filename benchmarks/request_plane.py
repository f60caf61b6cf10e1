"""Request-plane throughput: tokens streamed through dynamo.runtime's gRPC plane vs in-process.

    .venv/bin/python -m benchmarks.request_plane [--tokens 4096] [--seconds-limit 60]

A server process (this file with --serve) registers an endpoint whose handler streams
GenerateResponse messages (1 or 8 token ids each) with `context.write`; the client discovers it and
reads through EndpointClient.stream, as the frontend does. The baseline is the same generator
consumed in-process (message build + serialize + parse, no transport). Prints tokens/s, messages/s,
the ratio to in-process, and the per-message overhead (1/rate_grpc - 1/rate_inproc).
Also prints the time of `import dynamo.runtime` in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import grpc

from benchmarks._common import REPO
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.runtime.config import RuntimeConfig
from dynamo.runtime.identity import EndpointAddress
from dynamo.runtime.runtime import DistributedRuntime

ADDRESS = EndpointAddress("bench", "stream", "tokens")
METHOD = "/bench.Stream/Tokens"


def make_messages(n_tokens: int, per_msg: int):  # type: ignore[no-untyped-def]
    """The generator both sides run: n_tokens token ids in messages of per_msg."""
    for start in range(0, n_tokens, per_msg):
        yield pb.GenerateResponse(token_ids=range(start, min(start + per_msg, n_tokens)))


async def serve(discovery_dir: str) -> None:
    rt = DistributedRuntime(RuntimeConfig(namespace="bench", discovery_dir=discovery_dir, grpc_host="127.0.0.1",
                                          advertise_host="127.0.0.1"))
    rt.install_signal_handlers()

    async def tokens(request: bytes, context: grpc.aio.ServicerContext) -> None:
        n, per = (int(x) for x in request.decode().split(","))
        for msg in make_messages(n, per):
            await context.write(msg)

    handler = grpc.method_handlers_generic_handler("bench.Stream", {
        "Tokens": grpc.unary_stream_rpc_method_handler(tokens, response_serializer=pb.GenerateResponse.SerializeToString)})
    rt.add_service(lambda _s, server: server.add_generic_rpc_handlers((handler,)), None, "bench.Stream")
    await rt.start()
    await rt.start_server()
    await rt.register(ADDRESS)
    await rt.set_ready()
    print("READY", flush=True)
    await rt.wait_for_shutdown()
    await rt.shutdown(grace=1)


async def in_process(streams: int, n_tokens: int, per_msg: int) -> tuple[float, int]:
    async def one() -> int:
        got = 0
        for msg in make_messages(n_tokens, per_msg):
            got += len(pb.GenerateResponse.FromString(msg.SerializeToString()).token_ids)
            await asyncio.sleep(0)
        return got
    t0 = time.perf_counter()
    total = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return time.perf_counter() - t0, total


async def over_grpc(client, streams: int, n_tokens: int, per_msg: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    async def one() -> int:
        got = 0
        async for msg in client.stream(METHOD, f"{n_tokens},{per_msg}".encode(), request_serializer=None,
                                       response_deserializer=pb.GenerateResponse.FromString, timeout=300):
            got += len(msg.token_ids)
        return got
    t0 = time.perf_counter()
    total = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return time.perf_counter() - t0, total


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        server = subprocess.Popen([sys.executable, __file__, "--serve", d], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            rt = DistributedRuntime(RuntimeConfig(namespace="bench", discovery_dir=d))
            await rt.start()
            client = await rt.client(ADDRESS)
            await client.wait_for_instances(10)
            print(f"{'streams':>7} {'tok/msg':>7} {'grpc tok/s':>12} {'grpc msg/s':>11} {'inproc tok/s':>13} "
                  f"{'ratio':>6} {'overhead/msg':>13}")
            for streams in (1, 64):
                for per in (1, 8):
                    n = args.tokens if streams == 1 else max(args.tokens // 16, 64)
                    await over_grpc(client, min(streams, 4), 64, per)  # warm up channel and code paths
                    g_t, g_tok = await over_grpc(client, streams, n, per)
                    i_t, i_tok = await in_process(streams, n, per)
                    assert g_tok == i_tok == streams * n
                    msgs = streams * ((n + per - 1) // per)
                    overhead_us = (g_t - i_t) / msgs * 1e6
                    print(f"{streams:>7} {per:>7} {g_tok / g_t:>12,.0f} {msgs / g_t:>11,.0f} {i_tok / i_t:>13,.0f} "
                          f"{(g_tok / g_t) / (i_tok / i_t):>6.2f} {overhead_us:>10.1f} µs")
            await rt.shutdown()
        finally:
            server.terminate()
            server.wait(10)
    t = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import dynamo.runtime"], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        last = [ln for ln in out.stderr.splitlines() if ln.rstrip().endswith("dynamo.runtime")]
        t.append(int(last[-1].split("|")[1]) / 1000 if last else float("nan"))
    print(f"import dynamo.runtime: {min(t):.1f} ms (best of 3, -X importtime cumulative)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", metavar="DISCOVERY_DIR")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per stream at c=1 (c=64: /16)")
    args = p.parse_args()
    try:  # both sides on uvloop, as the worker and the frontend run
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.serve:
        asyncio.run(serve(args.serve))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
