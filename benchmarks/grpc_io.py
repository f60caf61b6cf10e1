"""What dynamo's gRPC I/O settings (dynamo/runtime/rpc/grpc_io.py) change, against grpc's own defaults.

    .venv/bin/python -m benchmarks.grpc_io [--repeat 6] [--calls 2000] [--messages 600]

Both settings run the same pair of processes: a grpc.aio server (dynamo's server options, uvloop)
and a client (dynamo's channel options, uvloop), each started with the setting in its environment
before grpc is imported: `dynamo` (GRPC_EXPERIMENTS unset, so dynamo applies its default) and
`grpc` (GRPC_EXPERIMENTS='', grpc's own experiment defaults). The client measures, over the Unix
socket a worker serves locally and over TCP loopback:
- unary: round-trip time of a small unary call, one at a time (p50 / p90);
- stream c=1: one server stream with a message every 3 ms (a decoding request's pace here): client
  and server CPU per message;
- stream c=16: 16 such streams at once: client and server CPU per message.
Server CPU comes from the server itself (a unary call returning its CPU seconds, read before and
after). The two settings alternate, `--repeat` times each; every figure is the median over the
repetitions, and the ratio column is dynamo / grpc of those medians (below 1: dynamo's costs less).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Importing these imports dynamo, which applies its gRPC setting unless GRPC_EXPERIMENTS is set:
# in the server and client processes, before they import grpc.
from benchmarks._common import REPO, percentile
from benchmarks._loadgen import cpu_seconds

SETTINGS = {"dynamo": None, "grpc": ""}  # the GRPC_EXPERIMENTS each side starts with (None: unset)
PACE_S = 0.003
SERVICE = "bench.Io"


async def serve(path: str) -> None:
    import grpc

    from dynamo.runtime.rpc.server import SERVER_OPTIONS

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def cpu(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return repr(cpu_seconds()).encode()

    async def paced(request: bytes, context: grpc.aio.ServicerContext) -> None:
        n = int(request)
        for i in range(n):
            await context.write(i.to_bytes(4, "little") * 4)  # ~a one-token output message
            await asyncio.sleep(PACE_S)

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Cpu": grpc.unary_unary_rpc_method_handler(cpu),
        "Paced": grpc.unary_stream_rpc_method_handler(paced)})
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    print(f"READY {port}", flush=True)
    await server.wait_for_termination()


async def client(targets: dict[str, str], calls: int, messages: int) -> dict[str, float]:
    import grpc

    from dynamo.runtime.rpc.client import CHANNEL_OPTIONS

    out: dict[str, float] = {}
    for transport, target in targets.items():
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as ch:
            echo = ch.unary_unary(f"/{SERVICE}/Echo")
            server_cpu = ch.unary_unary(f"/{SERVICE}/Cpu")
            paced = ch.unary_stream(f"/{SERVICE}/Paced")
            for _ in range(200):  # warm up the channel and both sides' code paths
                await echo(b"x" * 16)
            rtts = []
            for _ in range(calls):
                t = time.perf_counter()
                await echo(b"x" * 16)
                rtts.append(time.perf_counter() - t)
            out[f"{transport} unary RTT p50 (us)"] = percentile(rtts, 50) * 1e6
            out[f"{transport} unary RTT p90 (us)"] = percentile(rtts, 90) * 1e6

            async def one(n: int) -> int:
                return sum([1 async for _ in paced(str(n).encode())])

            for streams in (1, 16):
                n = messages if streams == 1 else max(messages // 4, 50)
                s0, c0 = float(await server_cpu(b"")), cpu_seconds()
                got = sum(await asyncio.gather(*(one(n) for _ in range(streams))))
                c1, s1 = cpu_seconds(), float(await server_cpu(b""))
                assert got == streams * n, (got, streams * n)
                out[f"{transport} stream c={streams} client CPU/msg (us)"] = (c1 - c0) / got * 1e6
                out[f"{transport} stream c={streams} server CPU/msg (us)"] = (s1 - s0) / got * 1e6
    return out


def run_pair(setting: str | None, calls: int, messages: int, tmp: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = str(REPO)
    if setting is not None:
        env["GRPC_EXPERIMENTS"] = setting
    path = tmp / f"grpc-io-{os.getpid()}.sock"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError("the benchmark server did not start")
        targets = json.dumps({"unix": f"unix:{path}", "tcp": f"127.0.0.1:{line[1]}"})
        res = subprocess.run([sys.executable, __file__, "--client", targets, "--calls", str(calls),
                              "--messages", str(messages)], capture_output=True, text=True, env=env, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"the benchmark client failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        server.kill()
        server.wait(10)
        path.unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=6, help="runs of each setting, alternating")
    p.add_argument("--calls", type=int, default=2000, help="unary calls timed per run")
    p.add_argument("--messages", type=int, default=600, help="messages of the c=1 stream (c=16: a quarter each)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve or a.client:
        import uvloop
        uvloop.install()  # as the worker and the frontend run
        if a.serve:
            asyncio.run(serve(a.serve))
        else:
            print(json.dumps(asyncio.run(client(json.loads(a.client), a.calls, a.messages))))
        return
    import tempfile
    results: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-io-") as d:
        for k in range(a.repeat):
            order = list(SETTINGS) if k % 2 == 0 else list(reversed(SETTINGS))  # neither always first
            for name in order:
                results[name].append(run_pair(SETTINGS[name], a.calls, a.messages, Path(d)))
                print(f"  run {k + 1}/{a.repeat} {name}: unix unary RTT p50 "
                      f"{results[name][-1]['unix unary RTT p50 (us)']:.0f} us", flush=True)
    from dynamo.runtime.rpc.grpc_io import DEFAULT_EXPERIMENTS
    print(f"\ndynamo: GRPC_EXPERIMENTS={DEFAULT_EXPERIMENTS} (dynamo's default); grpc: GRPC_EXPERIMENTS='' "
          f"(grpc's own); medians of {a.repeat} alternating runs each; total {time.monotonic() - t0:.0f} s")
    print(f"{'measure':<40} {'dynamo':>9} {'grpc':>9} {'ratio':>6}")
    for key in results["dynamo"][0]:
        dyn = statistics.median(r[key] for r in results["dynamo"])
        ref = statistics.median(r[key] for r in results["grpc"])
        print(f"{key:<40} {dyn:>9.0f} {ref:>9.0f} {dyn / ref:>6.2f}")


if __name__ == "__main__":
    main()
