"""Output tokens/s of one mocker worker through its gRPC Generate, vs the same engine in-process.

    .venv/bin/python -m benchmarks.mocker_grpc [--requests 256] [--requests-c1 32] [--max-tokens 128]
                                              [--slow-requests 64] [--skip-slow] [--profile]

Starts `python -m dynamo.mocker --model TINY --speedup-ratio 1000` (file discovery, uvloop) and
drives it from a separate load-generator process (benchmarks/_loadgen.py grpc: one grpc.aio channel,
streaming Generate, 128 output tokens per request with ignore_eos) at concurrency 1 and 64. The
baseline, measured in the same run, is the same MockerEngine driven in a process of its own with
no gRPC at all (_loadgen.py inproc). Then the same at --speedup-ratio 1 (fewer requests), where the
timing model, not the CPU, sets the rate: the `model` row is what the timing model predicts for
steady decode (step = overhead + per-seq + per-context-token costs).

Prints one table: output tokens/s, TTFT p50/p99, mean ITL, tokens per gRPC message, CPU cores used
by the client and by the worker, and the ratio to the in-process baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks._common import (
    HEADER,
    LEGEND,
    Result,
    ensure_tiny_model,
    row,
    run_loadgen,
    run_main,
    summarise,
    track,
)
from dynamo.mocker.args import TimingModel
from dynamo.runtime.rpc.client import channel_target
from tests.support.processes import WorkerProcess

MODEL_NAME = "tiny"


def predicted_tok_s(concurrency: int, prompt_len: int, max_tokens: int) -> float:
    """Steady-decode rate the default timing model gives at speedup 1 (mean context mid-way)."""
    t = TimingModel()
    ctx = prompt_len + max_tokens / 2
    step_ms = t.step_overhead_ms + t.decode_ms_per_seq * concurrency + t.decode_ms_per_context_token * concurrency * ctx
    return concurrency / step_ms * 1000


async def start_worker(discovery: Path, speedup: float) -> WorkerProcess:
    w = WorkerProcess("mocker", ["--model", str(ensure_tiny_model()), "--served-model-name", MODEL_NAME,
                                 "--speedup-ratio", str(speedup)], discovery, namespace="bench")
    track(w.pid)
    return await w.ready(60)


async def measure(w: WorkerProcess, speedup: float, concurrency: int, requests: int, a: argparse.Namespace,
                  timeout: float, profile: bool = False) -> tuple[Result, Result, str]:
    """The gRPC run and its in-process baseline; with `profile`, py-spy's summary of the worker."""
    common = ["--concurrency", str(concurrency), "--requests", str(requests), "--max-tokens", str(a.max_tokens),
              "--prompt-len", str(a.prompt_len), "--warmup", str(min(concurrency, requests))]
    assert w.record is not None
    sampler = None
    if profile:
        from benchmarks._profile import Sampler
        sampler = Sampler(w.pid, Path(tempfile.gettempdir()) / "mocker_grpc.pyspy.txt")
    profile_text = ""
    try:
        raw, server_cpu = await run_loadgen(["grpc", "--target", channel_target(w.record), "--model", MODEL_NAME,
                                             *common], timeout, [w.pid])
    finally:
        if sampler is not None:
            from benchmarks._profile import summarise as summarise_profile
            out = sampler.stop()
            profile_text = f"(collapsed stacks: {out})\n" + summarise_profile(out)
    grpc_r = summarise(f"gRPC worker, speedup {speedup:g}", concurrency, raw, server_cpu,
                       expected_tokens=requests * a.max_tokens)
    raw, _ = await run_loadgen(["inproc", "--model-dir", str(ensure_tiny_model()), "--speedup-ratio",
                                str(speedup), *common], timeout)
    base = summarise(f"in-process engine, speedup {speedup:g}", concurrency, raw,
                     expected_tokens=requests * a.max_tokens)
    return grpc_r, base, profile_text


async def run(a: argparse.Namespace) -> None:
    t_start = time.monotonic()
    ensure_tiny_model()
    plans: list[tuple[float, list[tuple[int, int]]]] = [(a.speedup, [(1, a.requests_c1), (64, a.requests)])]
    if not a.skip_slow:
        plans.append((1.0, [(1, a.slow_requests_c1), (64, a.slow_requests)]))
    lines = [HEADER]
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="bench-mocker-grpc-") as d:
        for speedup, sizes in plans:
            w = await start_worker(Path(d), speedup)
            try:
                for concurrency, requests in sizes:
                    profile = a.profile and speedup == a.speedup and concurrency == 64
                    g, b, text = await measure(w, speedup, concurrency, requests, a, a.timeout, profile)
                    profile_text = profile_text or text
                    lines += [row(g, b), row(b)]
                    print(lines[-2], "\n" + lines[-1], flush=True)
                    if speedup == 1.0:
                        lines.append(f"{'timing model (steady decode)':<34} {concurrency:>3} {'':>5} "
                                     f"{predicted_tok_s(concurrency, a.prompt_len, a.max_tokens):>10,.0f}")
            finally:
                await w.close()
                w.log_path.unlink(missing_ok=True)
    print(f"\n{a.max_tokens} output tokens per request (ignore_eos), prompts of {a.prompt_len} tokens; "
          f"total {time.monotonic() - t_start:.0f} s")
    print("\n".join(lines))
    print(LEGEND)
    if profile_text:
        print(f"\npy-spy profile of the worker during the c=64 gRPC run (speedup {a.speedup:g}):\n" + profile_text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=256, help="requests at c=64 (fast clock)")
    p.add_argument("--requests-c1", type=int, default=32, help="requests at c=1 (fast clock)")
    p.add_argument("--speedup", type=float, default=1000.0, help="--speedup-ratio of the fast runs")
    p.add_argument("--slow-requests", type=int, default=64, help="requests at c=64, speedup 1")
    p.add_argument("--slow-requests-c1", type=int, default=4, help="requests at c=1, speedup 1")
    p.add_argument("--skip-slow", action="store_true", help="skip the speedup-1 runs")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120.0, help="limit per load-generator run, seconds")
    p.add_argument("--profile", action="store_true",
                   help="sample the worker with py-spy during the fast c=64 run (pip install py-spy)")
    run_main(run(p.parse_args()))


if __name__ == "__main__":
    main()
