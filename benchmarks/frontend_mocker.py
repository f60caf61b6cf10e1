"""Output tokens/s through the whole serving path: HTTP frontend -> gRPC -> mocker worker(s).

    .venv/bin/python -m benchmarks.frontend_mocker [--workers 1] [--requests 256] [--requests-c1 32]
                                                  [--max-tokens 128] [--profile]

Starts `python -m dynamo.frontend` and --workers `python -m dynamo.mocker --speedup-ratio 1000`
processes (file discovery), then drives streaming chat completions (max_tokens 128, ignore_eos,
stream_options.include_usage) from an independent load-generator process (benchmarks/_loadgen.py
http: raw asyncio sockets, HTTP/1.1 keep-alive, SSE parsing; completion tokens come from the final
usage chunk) at concurrency 64 and 1. The baseline, measured in the same run at the same
concurrency, is the first mocker worker alone through gRPC (_loadgen.py grpc), so the ratio shows
what the HTTP layer costs.

Prints one table: output tokens/s, TTFT p50/p99, mean ITL, tokens per SSE content chunk (per gRPC
message for the baseline), CPU cores used by the load generator and by the servers, the ratio to
the baseline, and a second table splitting the servers' CPU into frontend and workers.
With --profile (needs `pip install py-spy`), the frontend is sampled during the c=64 HTTP run and
its top functions (self and inclusive) are printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    HEADER,
    LEGEND,
    ensure_tiny_model,
    row,
    run_loadgen,
    run_main,
    summarise,
    track,
)
from dynamo.runtime.rpc.client import channel_target
from tests.support.processes import FrontendProcess, WorkerProcess

MODEL_NAME = "tiny"


def start_frontend(discovery: Path, namespace: str) -> FrontendProcess:
    fe = FrontendProcess(discovery, "--log-level", "warning", namespace=namespace)
    track(fe.proc.pid)
    return fe


async def start_workers(n: int, discovery: Path, speedup: float) -> list[WorkerProcess]:
    model = ensure_tiny_model()
    workers = []
    try:
        for i in range(n):
            w = WorkerProcess("mocker", ["--model", str(model), "--served-model-name", MODEL_NAME,
                                         "--speedup-ratio", str(speedup)], discovery, namespace="bench",
                              name=f"mocker{i}")
            track(w.pid)
            workers.append(w)
        for w in workers:
            await w.wait_registered(60)
    except BaseException:
        for w in workers:
            await w.close()
        raise
    return workers


async def run(a: argparse.Namespace) -> None:
    t_start = time.monotonic()
    ensure_tiny_model()
    lines = [HEADER]
    split = [f"{'run':<34} {'c':>3} {'frontend':>8} {'workers':>8} {'client':>7}  (CPU cores)"]
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="bench-frontend-mocker-") as d:
        discovery = Path(d)
        workers: list[WorkerProcess] = []
        frontend: FrontendProcess | None = None
        try:
            workers = await start_workers(a.workers, discovery, a.speedup)
            frontend = start_frontend(discovery, "bench")
            await frontend.wait_models({MODEL_NAME}, 90)
            pids = [frontend.proc.pid] + [w.pid for w in workers]
            for concurrency, requests in ((64, a.requests), (1, a.requests_c1)):
                common = ["--concurrency", str(concurrency), "--requests", str(requests),
                          "--max-tokens", str(a.max_tokens), "--prompt-len", str(a.prompt_len),
                          "--warmup", str(min(concurrency, requests))]
                sampler = None
                if a.profile and concurrency == 64:
                    from benchmarks._profile import Sampler
                    sampler = Sampler(frontend.proc.pid, Path(tempfile.gettempdir()) / "frontend_mocker.pyspy.txt")
                try:
                    raw, cpu = await run_loadgen(["http", "--url", frontend.url, "--model", MODEL_NAME, *common],
                                                 a.timeout, pids)
                finally:
                    if sampler is not None:
                        from benchmarks._profile import summarise as summarise_profile
                        out = sampler.stop()
                        profile_text = f"(collapsed stacks: {out})\n" + summarise_profile(out)
                http = summarise(f"HTTP frontend + {a.workers} mocker", concurrency, raw, cpu,
                                 expected_tokens=requests * a.max_tokens)
                split.append(f"{http.label:<34} {concurrency:>3} {cpu[0] / http.wall:>8.2f} "
                             f"{sum(cpu[1:]) / http.wall:>8.2f} {http.client_cores:>7.2f}")
                w0 = workers[0]
                assert w0.record is not None
                raw, cpu = await run_loadgen(["grpc", "--target", channel_target(w0.record), "--model", MODEL_NAME,
                                              *common], a.timeout, [w0.pid])
                base = summarise("gRPC, 1 mocker alone (baseline)", concurrency, raw, cpu,
                                 expected_tokens=requests * a.max_tokens)
                split.append(f"{base.label:<34} {concurrency:>3} {'-':>8} {base.server_cores:>8.2f} "
                             f"{base.client_cores:>7.2f}")
                lines += [row(http, base), row(base)]
                print(lines[-2] + "\n" + lines[-1], flush=True)
        finally:
            if frontend is not None:
                frontend.close()
            for w in workers:
                await w.close()
                w.log_path.unlink(missing_ok=True)
    print(f"\nstreaming chat completions, {a.max_tokens} output tokens each (ignore_eos), mocker speedup "
          f"{a.speedup:g}; total {time.monotonic() - t_start:.0f} s")
    print("\n".join(lines))
    print(LEGEND + "\ntok/msg: output tokens per SSE content chunk (HTTP) or per gRPC message (baseline).")
    print("\n" + "\n".join(split))
    if profile_text:
        print("\npy-spy profile of the frontend during the c=64 HTTP run:\n" + profile_text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1, help="mocker worker processes")
    p.add_argument("--requests", type=int, default=256, help="requests at c=64")
    p.add_argument("--requests-c1", type=int, default=32, help="requests at c=1")
    p.add_argument("--speedup", type=float, default=1000.0, help="the workers' --speedup-ratio")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64, help="prompt size (gRPC tokens; HTTP about half as many words)")
    p.add_argument("--timeout", type=float, default=180.0, help="limit per load-generator run, seconds")
    p.add_argument("--profile", action="store_true", help="sample the frontend with py-spy during the c=64 run")
    run_main(run(p.parse_args()))


if __name__ == "__main__":
    main()
