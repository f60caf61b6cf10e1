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
With --profile (needs `pip install py-spy`), the frontend is sampled during the HTTP run at the
highest level and its top functions (self and inclusive) are printed, as shares of its CPU and as
CPU microseconds per request and per output token.

With --ai-dynamo PYTHON (a Python with PyPI's `ai-dynamo` installed, e.g. `python -m venv /tmp/aidyn &&
/tmp/aidyn/bin/pip install --no-deps ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1` plus its dependencies
but `aisimulate`, which only its planner uses and which downloads from pypi.nvidia.com), NVIDIA Dynamo's
own frontend over its own mocker (same speedup, same count) is measured at each level too, taking
turns with ours, and the goal line compares the two at c=256.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
from pathlib import Path

import psutil

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
from benchmarks._servers import AiDynamoGraph
from dynamo.runtime.rpc.client import channel_target
from tests.support.processes import FrontendProcess, WorkerProcess

MODEL_NAME = "tiny"


def start_frontend(discovery: Path, namespace: str, *args: str) -> FrontendProcess:
    fe = FrontendProcess(discovery, "--log-level", "warning", *args, namespace=namespace)
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
    split = [f"{'run':<34} {'c':>4} {'frontend':>8} {'workers':>8} {'client':>7}  (CPU cores)  "
             f"{'fe us/token':>11} {'fe us/req':>9} {'fe RSS':>8}"]
    http_tok_s: dict[int, float] = {}
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="bench-frontend-mocker-") as d:
        discovery = Path(d)
        workers: list[WorkerProcess] = []
        frontend: FrontendProcess | None = None
        theirs: AiDynamoGraph | None = None
        theirs_tok_s: dict[int, float] = {}
        try:
            workers = await start_workers(a.workers, discovery, a.speedup)
            frontend = start_frontend(discovery, "bench", *shlex.split(a.frontend_args))
            await frontend.wait_models({MODEL_NAME}, 90)
            if a.ai_dynamo:
                theirs = AiDynamoGraph(a.ai_dynamo, ensure_tiny_model(), MODEL_NAME, a.workers, a.speedup)
                await theirs.wait_ready(120)
            pids = [frontend.proc.pid] + [w.pid for w in workers]
            levels = [int(c) for c in a.levels.split(",")]
            for concurrency, requests in ((c, a.requests_c1 if c == 1 else max(a.requests, 4 * c)) for c in levels):
                common = ["--concurrency", str(concurrency), "--requests", str(requests),
                          "--max-tokens", str(a.max_tokens), "--prompt-len", str(a.prompt_len),
                          "--warmup", str(min(concurrency, requests))]
                sampler = None
                cpu: list[float] = []
                if a.profile and concurrency == max(levels):
                    from benchmarks._profile import Sampler
                    sampler = Sampler(frontend.proc.pid, Path(tempfile.gettempdir()) / "frontend_mocker.pyspy.txt")
                try:
                    raw, cpu = await run_loadgen(["http", "--url", frontend.url, "--model", MODEL_NAME, *common],
                                                 a.timeout, pids)
                finally:
                    if sampler is not None:
                        from benchmarks._profile import Cost
                        from benchmarks._profile import summarise as summarise_profile
                        out = sampler.stop()
                        cost = Cost(cpu[0], requests, requests * a.max_tokens) if cpu else None
                        profile_text = (f"py-spy profile of the frontend at c={concurrency} (collapsed stacks: "
                                        f"{out})\n" + summarise_profile(out, cost=cost))
                http = summarise(f"HTTP frontend + {a.workers} mocker", concurrency, raw, cpu,
                                 expected_tokens=requests * a.max_tokens)
                tokens = requests * a.max_tokens
                parent = psutil.Process(frontend.proc.pid)  # (with --num-workers: its serving children too)
                rss = sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2**20
                http_tok_s[concurrency] = http.tok_s
                split.append(f"{http.label:<34} {concurrency:>4} {cpu[0] / http.wall:>8.2f} "
                             f"{sum(cpu[1:]) / http.wall:>8.2f} {http.client_cores:>7.2f}               "
                             f"{cpu[0] / tokens * 1e6:>11.1f} {cpu[0] / requests * 1e6:>9.0f} {rss:>6.0f}Mi")
                if theirs is not None:
                    raw, cpu = await run_loadgen(["http", "--url", theirs.frontend.url, "--model", MODEL_NAME,
                                                  *common], a.timeout, theirs.pids)
                    other = summarise(f"NVIDIA Dynamo + {a.workers} its mocker", concurrency, raw, cpu,
                                      expected_tokens=requests * a.max_tokens)
                    theirs_tok_s[concurrency] = other.tok_s
                    split.append(f"{other.label:<34} {concurrency:>4} {cpu[0] / other.wall:>8.2f} "
                                 f"{sum(cpu[1:]) / other.wall:>8.2f} {other.client_cores:>7.2f}               "
                                 f"{cpu[0] / tokens * 1e6:>11.1f} {cpu[0] / requests * 1e6:>9.0f}")
                w0 = workers[0]
                assert w0.record is not None
                # one GenerateStream call carries every request, as the frontend does: unary calls
                # past ~1000 at once on one channel were CANCELLED by grpc (c=768 ran, c=1024 did not)
                raw, cpu = await run_loadgen(["grpc", "--target", channel_target(w0.record), "--model", MODEL_NAME,
                                              "--transport", "stream", *common], a.timeout, [w0.pid])
                base = summarise("gRPC stream, 1 mocker (baseline)", concurrency, raw, cpu,
                                 expected_tokens=requests * a.max_tokens)
                split.append(f"{base.label:<34} {concurrency:>4} {'-':>8} {base.server_cores:>8.2f} "
                             f"{base.client_cores:>7.2f}")
                lines += [row(http, base)] + ([row(other, base)] if theirs is not None else []) + [row(base)]
                print("\n".join(lines[-3 if theirs is not None else -2:]), flush=True)
        finally:
            if theirs is not None:
                theirs.close()
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
    print("fe us/token, fe us/req: the frontend's CPU per output token, per request; fe RSS: its resident memory after the level. "
          "A client near 1 core means the load generator, not the frontend, set the pace.")
    if 64 in http_tok_s and 256 in http_tok_s:
        held = http_tok_s[256] / http_tok_s[64]
        print(f"goal: output tok/s at c=256 >= 0.9x c=64: {held:.2f}x {'ok' if held >= 0.9 else 'MISSED'}")
    for c in sorted(set(theirs_tok_s) & set(http_tok_s)):
        vs = http_tok_s[c] / theirs_tok_s[c]
        goal = f" (goal >= 2x: {'ok' if vs >= 2 else 'MISSED'})" if c == 256 else ""
        print(f"ours / NVIDIA Dynamo's frontend at c={c}: {vs:.2f}x{goal}")
    if profile_text:
        print("\n" + profile_text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1, help="mocker worker processes")
    p.add_argument("--levels", default="64,1", help="concurrency levels, comma-separated (e.g. 64,256,1024)")
    p.add_argument("--requests", type=int, default=256, help="requests per level (at least 4x its concurrency)")
    p.add_argument("--requests-c1", type=int, default=32, help="requests at c=1")
    p.add_argument("--speedup", type=float, default=1000.0, help="the workers' --speedup-ratio")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64, help="prompt size (gRPC tokens; HTTP about half as many words)")
    p.add_argument("--timeout", type=float, default=180.0, help="limit per load-generator run, seconds")
    p.add_argument("--profile", action="store_true", help="sample the frontend with py-spy during the highest level's HTTP run")
    p.add_argument("--frontend-args", default="", help="more flags for our frontend, e.g. '--num-workers 2'")
    p.add_argument("--ai-dynamo", metavar="PYTHON", default=None,
                   help="also measure NVIDIA Dynamo's frontend + mocker from this Python (ai-dynamo installed)")
    run_main(run(p.parse_args()))


if __name__ == "__main__":
    main()
