"""Our serving path (HTTP frontend -> gRPC -> dynamo.sglang worker) vs SGLang's own OpenAI server.

    .venv-sglang/bin/python -m benchmarks.frontend_sglang [--requests-c1 8] [--requests-c16 64]
                                                         [--max-tokens 128] [--repeat 3]

Runs in .venv-sglang (scripts/setup-sglang.sh), on CPU with SGLang's CPU engine (SGLANG_USE_CPU_ENGINE=1
and the kernel stand-in, set here), side by side on the same engine settings (the conformance suite's
SGLang flags: torch_native attention, fp32, 1k context, 16k KV tokens, pages of 16; sleep-on-idle and
metrics on in both; both engines' model threads on core 0, taking turns):
1. `python -m dynamo.frontend` + one `python -m dynamo.sglang` worker (file discovery);
2. the baseline: `python -m sglang.launch_server`.
Both are driven by the same independent load-generator process (benchmarks/_loadgen.py http) with
streaming chat completions (ignore_eos, --max-tokens output tokens) at c=1 and c=16; both servers
apply the model's chat template to the same messages. Each repetition runs, per level, SGLang's
server, ours, SGLang's server again (A B A'): our ratio is to the mean of the two baseline runs, and
the control A'/A is the baseline against itself, the machine's noise in the same minutes. Goals are
judged on the median of the per-repetition ratios, with the control's spread beside them.
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
from pathlib import Path

from benchmarks._common import HEADER, LEGEND, Result, ensure_tiny_model, row, track
from benchmarks._servers import BaselineServer
from benchmarks._vllm_common import MODEL_NAME, wait_quiet
from benchmarks.frontend_mocker import start_frontend
from benchmarks.frontend_vllm import Measured, measure, median_of
from tests.support.backends import SGLANG
from tests.support.processes import FrontendProcess, WorkerProcess

ENV = SGLANG.env["agg"]  # CPU engine, kernel stand-in, model threads on core 0


def engine_flags(model: Path) -> list[str]:
    return [*SGLANG.args(model), "--served-model-name", MODEL_NAME]


def sglang_server(model: Path) -> BaselineServer:
    return BaselineServer(
        "SGLang's server",
        lambda port: [sys.executable, "-m", "sglang.launch_server", *engine_flags(model), "--device", "cpu",
                      "--enable-metrics", "--sleep-on-idle", "--host", "127.0.0.1", "--port", str(port)],
        ENV, "/health")


async def start_worker(discovery: Path, model: Path) -> WorkerProcess:
    w = WorkerProcess("sglang", engine_flags(model), discovery, namespace="bench", name="sglang-agg", env=ENV)
    track(w.pid)
    return await w.ready(SGLANG.startup_timeout)


async def run(a: argparse.Namespace) -> None:
    t_start = time.monotonic()
    model = ensure_tiny_model()
    load = wait_quiet(a.max_load, a.max_wait)
    print(f"load average (1 min) before measuring: {load:.2f}", flush=True)
    levels = [(1, a.requests_c1), (16, a.requests_c16)]
    ours: dict[int, list[Measured]] = {c: [] for c, _ in levels}
    first: dict[int, list[Measured]] = {c: [] for c, _ in levels}
    second: dict[int, list[Measured]] = {c: [] for c, _ in levels}
    with tempfile.TemporaryDirectory(prefix="bench-frontend-sglang-") as d:
        t = time.monotonic()
        server = sglang_server(model)
        worker = None
        frontend: FrontendProcess | None = None
        try:
            worker = await start_worker(Path(d), model)
            frontend = start_frontend(Path(d), "bench")
            await frontend.wait_models({MODEL_NAME}, 90)
            await server.wait_ready(SGLANG.startup_timeout)
            print(f"frontend + worker and SGLang's server ready in {time.monotonic() - t:.0f} s", flush=True)
            ours_pids = [frontend.proc.pid, worker.pid]
            for _ in range(a.repeat):
                for c, n in levels:
                    first[c].append(await measure(server.url, [server.proc.pid], "SGLang server (A)", a, c, n,
                                                  idle_pids=ours_pids))
                    ours[c].append(await measure(frontend.url, ours_pids, "dynamo frontend + sglang worker", a,
                                                 c, n, idle_pids=[server.proc.pid]))
                    second[c].append(await measure(server.url, [server.proc.pid], "SGLang server (A')", a, c, n,
                                                   idle_pids=ours_pids))
        finally:
            if frontend is not None:
                frontend.close()
            if worker is not None:
                await worker.close()
                worker.log_path.unlink(missing_ok=True)
            server.close()
    report(a, ours, first, second, load, time.monotonic() - t_start)


def _mean(x: Result, y: Result, field: str) -> float:
    return (getattr(x, field) + getattr(y, field)) / 2


def report(a: argparse.Namespace, ours_runs: dict[int, list[Measured]], first: dict[int, list[Measured]],
           second: dict[int, list[Measured]], load: float, total: float) -> None:
    print(f"\nstreaming chat completions, {a.max_tokens} output tokens (ignore_eos), ~{a.prompt_len}-token "
          f"prompts; tiny model on SGLang's CPU engine, model threads on core 0, taking turns (A B A'); "
          f"load average {load:.2f} at start, now {os.getloadavg()[0]:.2f}; total {total:.0f} s; each "
          f"figure the median of {a.repeat} repetitions")
    print(HEADER + f" {'others':>6}")
    for c in sorted(ours_runs):
        base = median_of(first[c] + second[c])
        print(row(median_of(ours_runs[c]).result, base.result) + f" {median_of(ours_runs[c]).others:>6.2f}")
        print(row(base.result) + f" {base.others:>6.2f}")
    print(LEGEND + "\nothers: cores used by other people's processes during the run (this machine has 2).")
    print("\nGoal: output tok/s ratio >= 1.0 within the control's spread. Per repetition: ours / mean(A, A'); "
          "control: A' / A (SGLang's server against itself). Median [min .. max] over repetitions.")
    for c in sorted(ours_runs):
        reps = list(zip(ours_runs[c], first[c], second[c]))
        ratios = [o.result.tok_s / _mean(x.result, y.result, "tok_s") for o, x, y in reps]
        control = [y.result.tok_s / x.result.tok_s for _, x, y in reps]
        ttft = [o.result.ttft_p50 / _mean(x.result, y.result, "ttft_p50") for o, x, y in reps]
        itl = [o.result.itl_mean / _mean(x.result, y.result, "itl_mean") for o, x, y in reps]
        ratio, spread = statistics.median(ratios), max(abs(r - 1) for r in control)
        verdict = ("ok" if ratio >= 1.0 else "within the control's spread" if ratio >= 1.0 - spread else "MISSED")
        o, base = median_of(ours_runs[c]).result, median_of(first[c] + second[c]).result
        print(f"  c={c:>2}: tok/s ratio {ratio:.3f} [{min(ratios):.2f} .. {max(ratios):.2f}]  control "
              f"{statistics.median(control):.3f} [{min(control):.2f} .. {max(control):.2f}]  {verdict}")
        print(f"        TTFT p50 {o.ttft_p50 * 1e3:.1f} vs {base.ttft_p50 * 1e3:.1f} ms (ratio "
              f"{statistics.median(ttft):.2f}), ITL {o.itl_mean * 1e3:.2f} vs {base.itl_mean * 1e3:.2f} ms "
              f"(ratio {statistics.median(itl):.2f})")



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests-c1", type=int, default=8)
    p.add_argument("--requests-c16", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64, help="prompt size (about half as many words)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions (A B A' each; figures are medians)")
    p.add_argument("--timeout", type=float, default=300.0, help="limit per load-generator run, seconds")
    p.add_argument("--time-limit", type=float, default=1500.0, help="limit for the whole run, seconds")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=180.0, help="longest wait for that, seconds")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends a run like Ctrl-C
    try:
        asyncio.run(asyncio.wait_for(run(a), a.time_limit + a.max_wait))
    except TimeoutError:
        sys.exit(f"the benchmark took longer than --time-limit {a.time_limit:g} s (+ load wait); stopped")


if __name__ == "__main__":
    main()
