"""Does the frontend scale out with `--num-workers N` on a machine with more cores?

    .venv/bin/python -m benchmarks.frontend_scaleout [--procs 1,2,4] [--mockers 4] [--levels 256,1024]
                                                    [--loadgens 4] [--requests-per-slot 4]

For each N in --procs: one `python -m dynamo.frontend --num-workers N` (N processes on one port)
over --mockers mocker workers (speedup 1000, file discovery), driven by --loadgens load-generator
processes at once (benchmarks/_loadgen.py http; each holds level / loadgens streams), so that the
load generator is not the bottleneck. Prints per N and level: output tokens/s (all load generators'
tokens over the longest wall time), TTFT p50/p99, the frontend's CPU cores (all its processes), the
workers' and the load generators', and the speed-up over N=1 at that level, measured in the same run.

On 2 cores this only checks that the processes share the port and the load (the load generators
and mockers take the cores); run it on a machine with 16+ cores (tests/gpu/README.md: the device
script) to see scaling. Streaming chat, 128 output tokens (ignore_eos).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from benchmarks._common import ensure_tiny_model, percentile, process_cpu, run_loadgen, run_main, track
from benchmarks.frontend_mocker import MODEL_NAME, start_workers
from tests.support.processes import FrontendProcess


async def measure(fe: FrontendProcess, worker_pids: list[int], level: int, a: argparse.Namespace
                  ) -> dict[str, float]:
    per = max(1, level // a.loadgens)
    requests = per * a.requests_per_slot
    common = ["http", "--url", fe.url, "--model", MODEL_NAME, "--concurrency", str(per), "--requests",
              str(requests), "--max-tokens", str(a.max_tokens), "--warmup", str(per)]
    cpu0 = process_cpu([fe.proc.pid]), process_cpu(worker_pids)
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(run_loadgen(common, a.timeout) for _ in range(a.loadgens)))
    elapsed = time.perf_counter() - t0
    fe_cpu, workers_cpu = process_cpu([fe.proc.pid]) - cpu0[0], process_cpu(worker_pids) - cpu0[1]
    records = [r for raw, _ in runs for r in raw["records"]]
    tokens = sum(r["tokens"] for r in records)
    expected = a.loadgens * requests * a.max_tokens
    if tokens != expected:
        raise RuntimeError(f"c={level}: {tokens} output tokens, expected {expected}")
    wall = max(raw["wall"] for raw, _ in runs)
    return {"tok_s": tokens / wall, "ttft_p50": percentile([r["ttft"] for r in records], 50),
            "ttft_p99": percentile([r["ttft"] for r in records], 99),
            # CPU over the whole gather (warm-up included): cores = seconds / elapsed
            "fe_cores": fe_cpu / elapsed, "worker_cores": workers_cpu / elapsed,
            "client_cores": sum(raw["cpu"] for raw, _ in runs) / wall}


async def run(a: argparse.Namespace) -> None:
    ensure_tiny_model()
    levels = [int(c) for c in a.levels.split(",")]
    results: dict[tuple[int, int], dict[str, float]] = {}
    print(f"{os.cpu_count()} cores; {a.mockers} mockers (speedup {a.speedup:g}); {a.loadgens} load generators; "
          f"{a.max_tokens} output tokens per request", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as d:
        discovery = Path(d)
        workers = await start_workers(a.mockers, discovery, a.speedup)
        try:
            for n in (int(p) for p in a.procs.split(",")):
                fe = FrontendProcess(discovery, "--log-level", "warning", "--num-workers", str(n), namespace="bench")
                track(fe.proc.pid)
                try:
                    await fe.wait_models({MODEL_NAME}, 120)
                    for level in levels:
                        r = results[(n, level)] = await measure(fe, [w.pid for w in workers], level, a)
                        base = results[(int(a.procs.split(",")[0]), level)]["tok_s"]
                        print(f"N={n:<2} c={level:<5} {r['tok_s']:>10,.0f} tok/s  x{r['tok_s'] / base:.2f} vs "
                              f"N={a.procs.split(',')[0]}  TTFT p50 {r['ttft_p50'] * 1e3:7.1f} ms  p99 "
                              f"{r['ttft_p99'] * 1e3:7.1f} ms  frontend {r['fe_cores']:.2f} cores, workers "
                              f"{r['worker_cores']:.2f}, load generators {r['client_cores']:.2f}", flush=True)
                finally:
                    fe.close()
        finally:
            for w in workers:
                await w.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2,4", help="frontend process counts (--num-workers), comma-separated")
    p.add_argument("--mockers", type=int, default=4)
    p.add_argument("--levels", default="256,1024", help="concurrent streams, comma-separated")
    p.add_argument("--loadgens", type=int, default=4, help="load-generator processes sharing each level")
    p.add_argument("--requests-per-slot", type=int, default=4, help="requests per concurrent stream")
    p.add_argument("--speedup", type=float, default=1000.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--timeout", type=float, default=240.0)
    run_main(run(p.parse_args()))


if __name__ == "__main__":
    main()
