"""What the `python -m dynamo.vllm` worker costs over vLLM's AsyncLLM driven directly.

    .venv/bin/python benchmarks/vllm_worker.py [--requests-c1 16] [--requests-c16 64]
        [--max-tokens 128] [--requests-long 8] [--long-prompt 500] [--no-disagg] [--profile]

Runs, one after the other (never more than two engines at once; every engine on the conformance
suite's CPU flags: fp32, eager, max-model-len 1024, KV blocks of 32):
1. an aggregated `python -m dynamo.vllm` worker (engine pinned to core 0), driven through its gRPC
   Generate (one call per request), then through GenerateStream (all requests on one call, what the
   frontend uses), by an independent load-generator process (benchmarks/_loadgen.py grpc);
2. the baseline: the same engine flags parsed by vLLM's own parser into AsyncLLM, plus what the
   worker adds to them (its ZMQ KV-event publisher, so both engines do the same work: the events
   cost vLLM ~6% at c=16 here; pass --engine-flags "--kv-events-config
   '{\"enable_kv_cache_events\": false}'" to measure both sides without them), driven in a child
   process (this file with --inprocess; engine pinned to core 0) by the same request loop
   (_loadgen.drive) with the same prompt token ids and the sampling the worker sends vLLM (greedy,
   ignore_eos, DELTA outputs, no detokenization);
3. disaggregated: a prefill worker (core 0) and a decode worker (core 1); requests go to the
   decode worker, which has the prefill worker compute the prompt's KV and pulls it over NIXL.

Phases: c=1 and c=16 with --max-tokens output tokens (ignore_eos) on 64-token prompts, and c=1
with ~--long-prompt-token prompts and 16 output tokens (TTFT; aggregated vs disaggregated). Each
phase uses its own prompts (no prefix-cache hits across phases), identical across the three setups.

Prints a table (out tok/s, TTFT p50/p99, mean ITL, tokens per message, CPU cores of the load
generator / the server processes, ratio to the in-process run of the same phase, and `others`: cores
used by other people's processes on this machine during the phase), the throughput ratio (goal
>= 0.95) and the TTFT p50 overhead (goal <= 2 ms), and the KV bytes a disaggregated request moves
(computed from config.json, and measured: the mean NIXL transfer size from vLLM's "KV Transfer
metrics" log lines on the decode worker). Each phase runs --repeat times (other
prompts each time) and the fastest repetition is kept; the per-repetition figures are printed too.
--engine-flags adds vLLM flags to every engine (to try engine settings on both sides alike).
With --profile (needs `pip install py-spy`), the worker process is sampled during the c=16 run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import (  # noqa: E402
    HEADER,
    LEGEND,
    Result,
    ensure_tiny_model,
    process_cpu,
    row,
    run_loadgen,
    summarise,
)
from benchmarks._vllm_common import (  # noqa: E402
    ENGINE_ENV,
    EXTRA_FLAGS_ENV,
    MODEL_NAME,
    RESULT,
    CpuWindow,
    engine_flags,
    kv_bytes_per_token,
    nixl_transfer_mb,
    run_phases,
    start_worker,
    wait_quiet,
)


# vLLM logs (and resets) its NIXL transfer stats every VLLM_LOG_STATS_INTERVAL s, at DEBUG level when
# the engine looks idle, which a c=1 decode engine mostly does while it waits for the prefill.
DECODE_STATS_ENV = {"VLLM_LOG_STATS_INTERVAL": "1", "VLLM_LOGGING_LEVEL": "DEBUG"}


@dataclasses.dataclass
class Phase:
    name: str
    concurrency: int
    requests: int
    warmup: int
    max_tokens: int
    prompt_len: int
    vocab: int  # the modulus of _loadgen.prompt_ids: a different one gives other prompts

    def repetition(self, k: int) -> Phase:
        """The phase with other prompts for repetition k (no prefix-cache hits on earlier ones)."""
        return dataclasses.replace(self, vocab=self.vocab - 3 * k, warmup=self.warmup if k == 0 else 0)

    def loadgen_args(self) -> list[str]:
        return ["--concurrency", str(self.concurrency), "--requests", str(self.requests),
                "--warmup", str(self.warmup), "--max-tokens", str(self.max_tokens),
                "--prompt-len", str(self.prompt_len), "--vocab", str(self.vocab)]


def make_phases(a: argparse.Namespace) -> list[Phase]:
    return [Phase("c1", 1, a.requests_c1, 2, a.max_tokens, 64, 1024),
            Phase("c16", 16, a.requests_c16, 16, a.max_tokens, 64, 1023),
            Phase("long", 1, a.requests_long, 2, 16, a.long_prompt, 1022)]


# --- the in-process baseline (a child process: one engine at a time) -------------------------

async def inprocess(a: argparse.Namespace) -> None:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    from benchmarks._loadgen import Record, drive, prompt_ids

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())  # type: ignore[arg-type]
    engine_args = AsyncEngineArgs.from_cli_args(parser.parse_args(engine_flags(Path(a.model_dir))))
    # The engine configuration the worker runs: the user's flags plus its KV-event publisher.
    from dynamo.vllm.args import prepare_engine_args, remove_kv_events_socket
    engine_args = prepare_engine_args(engine_args, "agg")
    llm = AsyncLLM.from_engine_args(engine_args)
    try:
        for spec in json.loads(a.inprocess):
            ph = Phase(**spec)
            params = SamplingParams(temperature=0.0, max_tokens=ph.max_tokens, ignore_eos=True,
                                    detokenize=False, output_kind=RequestOutputKind.DELTA)

            async def one(i: int, t0: float, vocab: int, ph: Phase = ph, params: SamplingParams = params) -> Record:
                prompt = tokens_input(prompt_ids(i, ph.prompt_len, vocab))
                start = time.perf_counter()
                first = float("nan")
                tokens = messages = 0
                async for out in llm.generate(prompt, params, f"bench-{ph.name}-{i}"):
                    n = len(out.outputs[0].token_ids)
                    if n and tokens == 0:
                        first = time.perf_counter()
                    tokens += n
                    messages += 1
                end = time.perf_counter()
                return Record(start - t0, first - start, end - t0, tokens, messages)

            for k in range(a.repeat):
                rep = ph.repetition(k)
                run_one = functools.partial(one, vocab=rep.vocab)
                await drive(run_one, rep.warmup, 0, ph.concurrency)
                window = CpuWindow([os.getpid()])
                tree0 = process_cpu([os.getpid()])  # this process and its engine-core children
                raw = await drive(run_one, 0, ph.requests, ph.concurrency)
                tree = process_cpu([os.getpid()]) - tree0
                print(RESULT + json.dumps({"phase": ph.name, "others": window.others(), "tree_cpu": tree, **raw}),
                      flush=True)
    finally:
        llm.shutdown()
        remove_kv_events_socket(engine_args)


# --- the parent: runs the setups one after the other -------------------------------------------

@dataclasses.dataclass
class Measured:
    result: Result
    others: float  # cores other people's processes used meanwhile
    front_cpu: float  # CPU s of the process running AsyncLLM's front end (worker / benchmark), not children
    front_tokens: int  # output tokens produced while front_cpu was measured

    @property
    def front_us_per_token(self) -> float:
        return self.front_cpu / self.front_tokens * 1e6


def own_cpu(pid: int) -> float:
    """CPU seconds of one process, without its children (measured while the load generator runs,
    so it includes the warm-up: a few requests of the first repetition)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def best(a: Measured | None, b: Measured) -> Measured:
    """Of two repetitions, the faster: on a shared machine the slower one met more interference."""
    return b if a is None or b.result.tok_s > a.result.tok_s else a


async def measure_worker(target: str, pids: list[int], phases: list[Phase], label: str, timeout: float,
                         repeat: int, profile_pid: int | None = None, transport: str = "unary",
                         first_repetition: int = 0) -> tuple[dict[str, Measured], str]:
    """`first_repetition`: where this run's prompts start (a second run on the same worker must not
    reuse the first run's prompts: they would hit the prefix cache)."""
    out: dict[str, Measured] = {}
    profile_text = ""
    for ph in phases:
        sampler = None
        if profile_pid is not None and ph.name == "c16":
            from benchmarks._profile import Sampler
            sampler = Sampler(profile_pid, Path(tempfile.gettempdir()) / "vllm_worker.pyspy.txt")
        for k in range(first_repetition, first_repetition + repeat):
            window = CpuWindow(pids)
            front0 = own_cpu(pids[-1])
            args = ph.repetition(k).loadgen_args()
            try:
                raw, cpu = await run_loadgen(["grpc", "--target", target, "--model", MODEL_NAME,
                                              "--transport", transport, *args], timeout, pids)
            finally:
                if sampler is not None:
                    from benchmarks._profile import summarise as summarise_profile
                    path = sampler.stop()
                    sampler = None
                    profile_text = f"(collapsed stacks: {path})\n" + summarise_profile(path)
            res = summarise(label, ph.concurrency, raw, cpu, expected_tokens=ph.requests * ph.max_tokens)
            rep = ph.repetition(k)
            m = Measured(res, window.others(), own_cpu(pids[-1]) - front0,
                         (rep.requests + rep.warmup) * rep.max_tokens)
            print(f"  {label} {ph.name}: {res.tok_s:,.0f} tok/s, TTFT p50 {res.ttft_p50 * 1e3:.1f} ms, "
                  f"others {m.others:.2f} cores", flush=True)
            out[ph.name] = best(out.get(ph.name), m)
    return out, profile_text


async def run(a: argparse.Namespace) -> None:
    t_start = time.monotonic()
    model = ensure_tiny_model()
    phases = make_phases(a)
    load = wait_quiet(a.max_load, a.max_wait)
    print(f"load average (1 min) before measuring: {load:.2f}", flush=True)
    worker: dict[str, Measured] = {}
    worker_stream: dict[str, Measured] = {}
    inproc: dict[str, Measured] = {}
    disagg: dict[str, Measured] = {}
    profile_text = ""
    transfer: tuple[int, float, float] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-vllm-worker-") as d:
        discovery = Path(d)
        # 1. the aggregated worker through gRPC
        t = time.monotonic()
        w = await start_worker(discovery, model, "agg", "vllm-agg")
        print(f"worker ready in {time.monotonic() - t:.0f} s", flush=True)
        try:
            assert w.record is not None
            worker, profile_text = await measure_worker(w.record.target, [w.pid], phases,
                                                        "dynamo.vllm (Generate)", a.timeout, a.repeat,
                                                        w.pid if a.profile else None)
            worker_stream, _ = await measure_worker(w.record.target, [w.pid], phases,
                                                    "dynamo.vllm (GenerateStream)", a.timeout, a.repeat,
                                                    transport="stream", first_repetition=a.repeat)
        finally:
            await w.close()
            w.log_path.unlink(missing_ok=True)
        # 2. AsyncLLM in a child process, same phases
        t = time.monotonic()
        raws = await run_phases([__file__, "--inprocess", json.dumps([dataclasses.asdict(p) for p in phases]),
                                 "--model-dir", str(model), "--repeat", str(a.repeat)],
                                a.timeout * len(phases) * a.repeat + 240, {**ENGINE_ENV["agg"]})
        print(f"in-process run done in {time.monotonic() - t:.0f} s", flush=True)
        by_name = {ph.name: ph for ph in phases}
        for raw in raws:
            ph = by_name[raw["phase"]]
            res = summarise("AsyncLLM in-process (baseline)", ph.concurrency, raw, [raw["tree_cpu"]],
                            expected_tokens=ph.requests * ph.max_tokens)
            print(f"  in-process {ph.name}: {res.tok_s:,.0f} tok/s, TTFT p50 {res.ttft_p50 * 1e3:.1f} ms, "
                  f"others {raw['others']:.2f} cores", flush=True)
            inproc[ph.name] = best(inproc.get(ph.name), Measured(res, raw["others"], raw["cpu"], res.tokens))
        # 3. disaggregated: prefill worker on core 0, decode worker on core 1
        if not a.no_disagg:
            t = time.monotonic()
            pw, dw = await asyncio.gather(
                start_worker(discovery, model, "prefill", "vllm-prefill"),
                start_worker(discovery, model, "decode", "vllm-decode", env=DECODE_STATS_ENV),
                return_exceptions=True)
            try:
                for x in (pw, dw):
                    if isinstance(x, BaseException):
                        raise x
                assert not isinstance(pw, BaseException) and not isinstance(dw, BaseException)
                print(f"prefill + decode workers ready in {time.monotonic() - t:.0f} s", flush=True)
                await wait_remote_prefill(dw, a.long_prompt)
                assert dw.record is not None
                long = [p for p in phases if p.name == "long"]
                local0 = dw.metric("dynamo_worker_prefills_total", location="local")
                disagg, _ = await measure_worker(dw.record.target, [pw.pid, dw.pid], long,
                                                 "disagg: decode worker + prefill", a.timeout, a.repeat)
                # vLLM logs the transfers once per stats interval (1 s here): poll with a deadline.
                deadline = time.monotonic() + 10
                while (transfer := nixl_transfer_mb(dw.log())) is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                local = dw.metric("dynamo_worker_prefills_total", location="local") - local0
                if local:
                    print(f"  WARNING: {local:.0f} measured prompts were prefilled locally on the decode worker",
                          flush=True)
            finally:
                for x in (pw, dw):
                    if not isinstance(x, BaseException):
                        await x.close()
                        x.log_path.unlink(missing_ok=True)
    report(a, model, phases, {"Generate": worker, "GenerateStream": worker_stream}, inproc, disagg, transfer, load,
           time.monotonic() - t_start)
    if profile_text:
        print("\npy-spy profile of the worker process (gRPC + AsyncLLM front) during the c=16 run:\n"
              + profile_text)


async def wait_remote_prefill(decode, prompt_len: int, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    """Send 1-token requests to the decode worker until one is prefilled remotely: it must have
    discovered the prefill worker, or the figures would be of local prefills."""
    from benchmarks._loadgen import prompt_ids
    from dynamo.llm.protocol import GenerateRequest, StopConditions

    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        before = decode.metric("dynamo_worker_prefills_total", location="remote")
        i += 1
        await decode.generate(GenerateRequest(request_id=f"probe-{i}", model=MODEL_NAME,
                                              token_ids=prompt_ids(20_000_000 + i, prompt_len, 1013),
                                              stop=StopConditions(max_tokens=2, ignore_eos=True)))
        if decode.metric("dynamo_worker_prefills_total", location="remote") > before:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the decode worker never used the prefill worker within {timeout} s:\n"
                       f"{decode.log()[-3000:]}")


def report(a: argparse.Namespace, model: Path, phases: list[Phase], workers: dict[str, dict[str, Measured]],
           inproc: dict[str, Measured], disagg: dict[str, Measured], transfer: tuple[int, float, float] | None,
           load: float, total: float) -> None:
    print(f"\nvLLM worker vs AsyncLLM in-process; tiny model, engine pinned to core 0; load average "
          f"{load:.2f} at start, now {os.getloadavg()[0]:.2f}; total {total:.0f} s")
    print(HEADER + f" {'others':>6} {'front':>8}")
    for ph in phases:
        base = inproc[ph.name]
        print(f"-- {ph.name}: c={ph.concurrency}, {ph.requests} requests, {ph.prompt_len}-token prompts, "
              f"{ph.max_tokens} output tokens")
        rows = [(w[ph.name], base.result) for w in workers.values()]
        for m, b in (*rows, (base, None), (disagg.get(ph.name), base.result)):
            if m is not None:
                print(row(m.result, b) + f" {m.others:>6.2f} {m.front_us_per_token:>5.0f} µs")
    print(LEGEND + "\nserver (in-process row): the benchmark process itself (AsyncLLM + request loop) and its "
          "engine core.\nfront: CPU µs per output token of the process running AsyncLLM's front end, children "
          "excluded (worker: its main process, per token of the run and its warm-up; in-process: the benchmark process, request loop "
          "included; disagg: the decode worker).\nothers: cores used by other people's processes during the "
          "phase (this machine has 2); "
          f"each row is the fastest of {a.repeat} repetitions.")
    print("\nGoals: throughput ratio >= 0.95; TTFT p50 overhead <= 2 ms")
    for transport, worker in workers.items():
        for name in ("c1", "c16"):
            w, b = worker[name].result, inproc[name].result
            ratio = w.tok_s / b.tok_s
            over = (w.ttft_p50 - b.ttft_p50) * 1e3
            print(f"  {transport:>14} {name:>4}: ratio {ratio:.3f} [{'ok' if ratio >= 0.95 else 'MISSED'}]   "
                  f"TTFT p50 overhead {over:+.2f} ms [{'ok' if over <= 2 else 'MISSED'}]   "
                  f"ITL {w.itl_mean * 1e3:.2f} vs {b.itl_mean * 1e3:.2f} ms")
    long = [p for p in phases if p.name == "long"][0]
    agg = workers["Generate"]["long"].result
    print(f"\n~{long.prompt_len}-token prompts, c=1: TTFT p50 aggregated worker {agg.ttft_p50 * 1e3:.1f} ms "
          f"(in-process {inproc['long'].result.ttft_p50 * 1e3:.1f} ms)", end="")
    if "long" in disagg:
        d = disagg["long"].result
        print(f", disaggregated {d.ttft_p50 * 1e3:.1f} ms (p99 {d.ttft_p99 * 1e3:.1f} ms): "
              f"{(d.ttft_p50 - agg.ttft_p50) * 1e3:+.1f} ms")
    else:
        print()
    per_token = kv_bytes_per_token(model)
    cfg = json.loads((model / "config.json").read_text())
    block = 32
    blocks = math.ceil(long.prompt_len / block)
    print(f"KV per request (computed from config.json: 2 x {cfg['num_hidden_layers']} layers x "
          f"{cfg.get('num_key_value_heads')} kv heads x {cfg['hidden_size'] // cfg['num_attention_heads']} "
          f"head_dim x 4 B = {per_token} B/token): {long.prompt_len} tokens = "
          f"{per_token * long.prompt_len / 1024:.0f} KiB; whole blocks of {block}: {blocks} blocks = "
          f"{per_token * blocks * block / 1024:.0f} KiB")
    if transfer is not None:
        n, mb, ms = transfer
        print(f"KV per request (measured: vLLM's NIXL stats on the decode worker, over {n} transfers incl. "
              f"probes and warm-up): {mb * 1024:.0f} KiB, {ms:.1f} ms per transfer ({mb / ms * 1e3:.0f} MB/s)")
    elif disagg:
        print("KV per request (measured): vLLM logged no 'KV Transfer metrics' line on the decode worker")


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends a run like Ctrl-C: the finally blocks and _common's atexit kill what it started."""
    raise KeyboardInterrupt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests-c1", type=int, default=16)
    p.add_argument("--requests-c16", type=int, default=64)
    p.add_argument("--requests-long", type=int, default=8, help="requests with long prompts (c=1)")
    p.add_argument("--long-prompt", type=int, default=500, help="tokens in a long prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--no-disagg", action="store_true", help="skip the prefill + decode run")
    p.add_argument("--profile", action="store_true", help="sample the worker with py-spy during c=16")
    p.add_argument("--repeat", type=int, default=2, help="measure each phase this often; keep the fastest")
    p.add_argument("--timeout", type=float, default=120.0, help="limit per phase, seconds")
    p.add_argument("--time-limit", type=float, default=420.0, help="limit for the whole run, seconds")
    p.add_argument("--engine-flags", default="", help="extra vLLM flags for every engine, e.g. "
                   "'--distributed-executor-backend uni'")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=180.0, help="longest wait for that, seconds")
    p.add_argument("--inprocess", metavar="PHASES_JSON", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)  # diagnosis: the worker's event loop
    a = p.parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    if a.engine_flags:
        os.environ[EXTRA_FLAGS_ENV] = a.engine_flags
    if a.inprocess:
        if a.uvloop:
            import uvloop
            uvloop.install()
        asyncio.run(inprocess(a))
        return
    try:  # waiting for a quiet machine (up to --max-wait) does not count against --time-limit
        asyncio.run(asyncio.wait_for(run(a), a.time_limit + a.max_wait))
    except TimeoutError:
        sys.exit(f"the benchmark took longer than --time-limit {a.time_limit:g} s (+ load wait); stopped")


if __name__ == "__main__":
    main()
