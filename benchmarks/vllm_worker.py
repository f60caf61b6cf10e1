"""What the `python -m dynamo.vllm` worker costs over vLLM's AsyncLLM driven directly.

    .venv/bin/python -m benchmarks.vllm_worker [--requests-c1 16] [--requests-c16 128]
        [--max-tokens 128] [--requests-long 8] [--long-prompt 500] [--repeat 5] [--no-disagg] [--profile]
        [--no-unary] [--no-control]

Two engines run side by side, pinned to the same core (0), and take turns; only one is busy at a
time (an idle vLLM engine uses ~0.01 core here), every engine on the conformance suite's CPU flags
(fp32, eager, max-model-len 1024, KV blocks of 32):
- an aggregated `python -m dynamo.vllm` worker, driven by an independent load-generator process
  (benchmarks/_loadgen.py grpc) through its gRPC Generate (one call per request) and through
  GenerateStream (all requests on one call, what the frontend uses);
- the baseline: the same engine flags parsed by vLLM's own parser into AsyncLLM, plus what the
  worker adds to them (its ZMQ KV-event publisher, so both engines do the same work: the events
  cost vLLM ~6% at c=16 here; pass --engine-flags "--kv-events-config
  '{\"enable_kv_cache_events\": false}'" to measure both sides without them), driven in a child
  process (this file with --inprocess) by the same request loop (_loadgen.drive) with the same
  prompt token ids and the sampling the worker sends vLLM (greedy, ignore_eos, DELTA outputs, no
  detokenization);
- the control (unless --no-control): the baseline measured a second time in each repetition, on other
  prompts, like any other setup. The same engine and code against itself shows how far this machine
  alone moves the figures from one phase to the next (on 2026-12-01 two back-to-back c=16 phases of
  one worker differed by -24% to +9% in throughput and -4.5 to +5.9 ms in TTFT p50), so a worker
  figure can be read against it.
Everything else (the worker's and the baseline's own processes, their engine-core processes, the
load generator) goes where the OS puts it (--front-cpus none, the default), or with --front-cpus
auto on the other cores, on both sides alike (vLLM's model threads bind themselves to
VLLM_CPU_OMP_THREADS_BIND whatever they inherit). Front-end work that lands on the model's core
preempts its forward passes (~900 times a second at c=16 here); kept off it, c=16 gains, but at
c=1 the load generator, the front end and the engine core then share one core.
Why side by side: one engine's speed drifts by ±20% over minutes on these machines (it also gets
faster over its first minutes), more than the overhead measured. So each repetition measures the
three setups back to back (their order rotating), and each figure is the median over repetitions of
the per-repetition ratio or difference against the baseline measured right next to it.

Then, unless --no-disagg: a prefill worker (core 0) and a decode worker (core 1); requests go to the
decode worker, which has the prefill worker compute the prompt's KV and pulls it over NIXL.

Phases: c=1 and c=16 with --max-tokens output tokens (ignore_eos) on 64-token prompts, and c=1
with ~--long-prompt-token prompts and 16 output tokens (TTFT; aggregated vs disaggregated). Each
phase and repetition uses its own prompts (no prefix-cache hits across them), identical across the
worker's Generate run and the baseline; GenerateStream gets others (the worker's engine saw those).

Prints a table of medians over the repetitions (out tok/s, TTFT p50/p99, mean ITL, tokens per
message, CPU cores of the load generator / the server processes, ratio to the baseline, `others`:
cores used by other people's processes, and `front`: CPU per output token of the process running
AsyncLLM's front end), the throughput ratio (goal >= 0.95) and the TTFT p50 overhead (goal <= 2 ms)
with their spread over the repetitions, and the KV bytes a disaggregated request moves (computed from
config.json, and measured: the mean NIXL transfer size from vLLM's "KV Transfer metrics" log lines
on the decode worker). --engine-flags adds vLLM flags to every engine (to try engine settings on both
sides alike). With --profile (needs `pip install py-spy`), the worker is sampled during c=16.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import (
    HEADER,
    LEGEND,
    Result,
    ensure_tiny_model,
    median_result,
    process_cpu,
    row,
    run_loadgen,
    summarise,
)
from benchmarks._vllm_common import (
    ENGINE_ENV,
    EXTRA_FLAGS_ENV,
    MODEL_NAME,
    CpuWindow,
    JsonChild,
    answer,
    baseline_llm,
    baseline_sampling,
    kv_bytes_per_token,
    nixl_transfer_mb,
    start_worker,
    wait_quiet,
)
from dynamo.runtime.rpc.client import channel_target

CONTROL_LABEL = "AsyncLLM in-process (control)"
#: where the aggregated engines' model (OpenMP) threads run: VLLM_CPU_OMP_THREADS_BIND of ENGINE_ENV["agg"]
MODEL_CPU = int(ENGINE_ENV["agg"]["VLLM_CPU_OMP_THREADS_BIND"])
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
        return dataclasses.replace(self, vocab=self.vocab - 3 * k)

    def loadgen_args(self) -> list[str]:
        return ["--concurrency", str(self.concurrency), "--requests", str(self.requests),
                "--warmup", str(self.warmup), "--max-tokens", str(self.max_tokens),
                "--prompt-len", str(self.prompt_len), "--vocab", str(self.vocab)]


def make_phases(a: argparse.Namespace) -> list[Phase]:
    phases = [Phase("c1", 1, a.requests_c1, 2, a.max_tokens, 64, 1024),
              Phase("c16", 16, a.requests_c16, 16, a.max_tokens, 64, 1023),
              Phase("long", 1, a.requests_long, 2, 16, a.long_prompt, 1022)]
    chosen = a.phases.split(",")
    unknown = set(chosen) - {ph.name for ph in phases}
    if unknown:
        sys.exit(f"--phases: unknown phase(s) {', '.join(sorted(unknown))}; choose from c1, c16, long")
    return [ph for ph in phases if ph.name in chosen]


def warmup_phase(a: argparse.Namespace) -> Phase:
    """Run once on every engine before measuring: the engines get faster over their first
    thousands of steps (vLLM's CPU kernels meet new batch shapes)."""
    return Phase("warm-up", 16, a.warmup_requests, 0, a.max_tokens, 64, 1019)


# --- the in-process baseline (a child process, answering one JSON command per phase) ---------

async def inprocess(a: argparse.Namespace) -> None:
    from vllm.inputs import tokens_input

    from benchmarks._loadgen import Record, drive, prompt_ids

    loop = asyncio.get_running_loop()
    with baseline_llm(Path(a.model_dir)) as llm:
        answer(a.answer_file, {"ready": True})
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            ph = Phase(**json.loads(line))
            params = baseline_sampling(ph.max_tokens)

            async def one(i: int, t0: float, arrived: float, ph: Phase = ph, params: Any = params) -> Record:
                prompt = tokens_input(prompt_ids(i, ph.prompt_len, ph.vocab))
                start = time.perf_counter()
                first = float("nan")
                tokens = messages = 0
                async for out in llm.generate(prompt, params, f"bench-{ph.name}-{ph.vocab}-{i}"):
                    n = len(out.outputs[0].token_ids)
                    if n and tokens == 0:
                        first = time.perf_counter()
                    tokens += n
                    messages += 1
                end = time.perf_counter()
                return Record(arrived - t0, first - arrived, end - t0, tokens, messages, start - arrived)

            await drive(one, ph.warmup, 0, ph.concurrency)
            tree0 = process_cpu([os.getpid()])  # this process and its engine-core children
            raw = await drive(one, 0, ph.requests, ph.concurrency)
            tree = process_cpu([os.getpid()]) - tree0
            answer(a.answer_file, {"tree_cpu": tree, **raw})


# --- the parent ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Measured:
    result: Result
    others: float  # cores other people's processes used meanwhile
    # CPU µs per output token of the process running AsyncLLM's front end (worker / baseline child),
    # children excluded
    front_us_per_token: float


def own_cpu(pid: int) -> float:
    """CPU seconds of one process, without its children (measured while the load generator runs,
    so it includes the phase's warm-up requests)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def median_measured(ms: list[Measured]) -> Measured:
    """Field by field, the median over repetitions."""
    return Measured(median_result([m.result for m in ms]), statistics.median(m.others for m in ms),
                    statistics.median(m.front_us_per_token for m in ms))


class Setup:
    """One thing measured: a transport of the worker, or the baseline. `results[phase]` collects
    its repetitions."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.results: dict[str, list[Measured]] = {}

    async def measure(self, ph: Phase) -> Measured:
        raise NotImplementedError

    async def run(self, ph: Phase, record: bool = True) -> Measured:
        m = await self.measure(ph)
        print(f"  {self.label} {ph.name}: {m.result.tok_s:,.0f} tok/s, TTFT p50 {m.result.ttft_p50 * 1e3:.1f} ms, "
              f"others {m.others:.2f} cores", flush=True)
        if record:
            self.results.setdefault(ph.name, []).append(m)
        return m


class WorkerSetup(Setup):
    """The worker through one transport; `pids`: its processes (prefill worker first, if any; the
    process running the front end last); `others_pids`: ours too, idle meanwhile."""

    def __init__(self, label: str, target: str, pids: list[int], transport: str, timeout: float,
                 prompt_offset: int = 0, others_pids: list[int] | None = None) -> None:
        super().__init__(label)
        self.target, self.pids, self.transport, self.timeout = target, pids, transport, timeout
        self.prompt_offset = prompt_offset  # another transport on the same engine must not reuse prompts
        self.others_pids = others_pids or []
        self.profile_pid: int | None = None
        self.profile_text = ""

    async def measure(self, ph: Phase) -> Measured:
        ph = dataclasses.replace(ph, vocab=ph.vocab - self.prompt_offset)
        sampler = None
        if self.profile_pid is not None and ph.name == "c16" and not self.profile_text:
            from benchmarks._profile import Sampler
            sampler = Sampler(self.profile_pid, Path(tempfile.gettempdir()) / "vllm_worker.pyspy.txt")
        window = CpuWindow(self.pids + self.others_pids)
        front0 = own_cpu(self.pids[-1])
        try:
            raw, cpu = await run_loadgen(["grpc", "--target", self.target, "--model", MODEL_NAME,
                                          "--transport", self.transport, *ph.loadgen_args()], self.timeout,
                                         self.pids)
        finally:
            if sampler is not None:
                from benchmarks._profile import summarise as summarise_profile
                path = sampler.stop()
                self.profile_text = f"(collapsed stacks: {path})\n" + summarise_profile(path)
        res = summarise(self.label, ph.concurrency, raw, cpu, expected_tokens=ph.requests * ph.max_tokens)
        front_tokens = (ph.requests + ph.warmup) * ph.max_tokens
        return Measured(res, window.others(), (own_cpu(self.pids[-1]) - front0) / front_tokens * 1e6)


class BaselineSetup(Setup):
    """`others_pids`: our processes idle meanwhile (the worker). The control is the same child
    measured a second time, on other prompts (`prompt_offset`: no prefix-cache hits on the baseline's)."""

    def __init__(self, child: JsonChild, timeout: float, others_pids: list[int],
                 label: str = "AsyncLLM in-process (baseline)", prompt_offset: int = 0) -> None:
        super().__init__(label)
        self.child, self.timeout, self.others_pids = child, timeout, others_pids
        self.prompt_offset = prompt_offset

    async def measure(self, ph: Phase) -> Measured:
        ph = dataclasses.replace(ph, vocab=ph.vocab - self.prompt_offset)
        window = CpuWindow([self.child.pid, *self.others_pids])
        raw = await self.child.ask(dataclasses.asdict(ph), self.timeout)
        res = summarise(self.label, ph.concurrency, raw, [raw["tree_cpu"]],
                        expected_tokens=ph.requests * ph.max_tokens)
        return Measured(res, window.others(), raw["cpu"] / res.tokens * 1e6)


async def run(a: argparse.Namespace) -> None:
    t_start = time.monotonic()
    model = ensure_tiny_model()
    phases = make_phases(a)
    load = wait_quiet(a.max_load, a.max_wait)
    print(f"load average (1 min) before measuring: {load:.2f}", flush=True)
    setups: list[Setup] = []
    profiled: WorkerSetup | None = None
    disagg: Setup | None = None
    transfer: tuple[int, float, float] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-vllm-worker-") as d:
        discovery = Path(d)
        # 1. the aggregated worker and the in-process baseline, side by side on core 0
        t = time.monotonic()
        all_cpus = os.sched_getaffinity(0)
        front = front_cpus(a.front_cpus, all_cpus)
        if front:
            set_process_affinity(front)
        print(f"engines' model threads on CPU {MODEL_CPU}; everything else on "
              f"{','.join(map(str, sorted(front or all_cpus)))}", flush=True)
        started = await asyncio.gather(
            start_worker(discovery, model, "agg", "vllm-agg"),
            JsonChild.start([__file__, "--inprocess", "--model-dir", str(model)], {**ENGINE_ENV["agg"]}, 300),
            return_exceptions=True)
        w = started[0] if not isinstance(started[0], BaseException) else None
        child = started[1][0] if not isinstance(started[1], BaseException) else None
        try:
            for x in started:
                if isinstance(x, BaseException):
                    raise x
            assert w is not None and w.record is not None and child is not None
            target = channel_target(w.record)
            print(f"worker and in-process engine ready in {time.monotonic() - t:.0f} s; the load generator "
                  f"reaches the worker at {target}, as dynamo's own clients would", flush=True)
            gen = WorkerSetup("dynamo.vllm (Generate)", target, [w.pid], "unary", a.timeout,
                              others_pids=[child.pid])
            stream = WorkerSetup("dynamo.vllm (GenerateStream)", target, [w.pid], "stream", a.timeout,
                                 prompt_offset=3 * a.repeat + 3, others_pids=[child.pid])
            if a.profile:
                stream.profile_pid, profiled = w.pid, stream
            base = BaselineSetup(child, a.timeout, others_pids=[w.pid])
            setups = [gen, stream] if a.unary else [stream]
            if a.tcp and target != w.record.target:
                # what the worker's Unix socket buys (clients on other machines use TCP)
                setups.append(WorkerSetup("dynamo.vllm (GenerateStream TCP)", w.record.target, [w.pid], "stream",
                                          a.timeout, prompt_offset=6 * a.repeat + 6, others_pids=[child.pid]))
            if a.control:
                # the noise floor: the baseline against itself, measured like every other setup
                setups.append(BaselineSetup(child, a.timeout, others_pids=[w.pid], label=CONTROL_LABEL,
                                            prompt_offset=9 * a.repeat + 9))
            setups.append(base)
            t = time.monotonic()
            for s in (base, setups[0]):  # the other worker setups run on the (then warm) same engine
                await s.run(warmup_phase(a), record=False)
            print(f"warm-up done in {time.monotonic() - t:.0f} s", flush=True)
            for k in range(a.repeat):
                order = setups[k % len(setups):] + setups[:k % len(setups)]  # no setup always measured first
                for ph in phases:
                    for s in order:
                        await s.run(ph.repetition(k))
        finally:
            if w is not None:
                await w.close()
                w.log_path.unlink(missing_ok=True)
            if child is not None:
                await child.close()
        set_process_affinity(all_cpus)
        # 2. disaggregated: prefill worker on core 0, decode worker on core 1
        if not a.no_disagg and any(ph.name == "long" for ph in phases):
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
                long = [p for p in phases if p.name == "long"][0]
                local0 = dw.metric("dynamo_worker_prefills_total", location="local")
                disagg = WorkerSetup("disagg: decode worker + prefill", channel_target(dw.record), [pw.pid, dw.pid],
                                     "unary", a.timeout)
                for k in range(a.repeat):
                    await disagg.run(long.repetition(k))
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
    report(a, model, phases, setups, disagg, transfer, load, time.monotonic() - t_start)
    if profiled is not None and profiled.profile_text:
        print("\npy-spy profile of the worker process (gRPC + AsyncLLM front) during a GenerateStream "
              "c=16 run:\n" + profiled.profile_text)


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


def front_cpus(spec: str, allowed: set[int]) -> set[int]:
    """--front-cpus: "auto" = the allowed CPUs but the models' (none if that leaves nothing),
    "none" = no pinning, else a list like "1" or "2-3,6"."""
    if spec == "none":
        return set()
    if spec == "auto":
        return allowed - {MODEL_CPU}
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def set_process_affinity(cpus: set[int]) -> None:
    """Every thread of this process (what it starts from now on inherits it)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


@dataclasses.dataclass
class Reference:
    tok_s: float
    ttft_p50: float
    itl_mean: float


def reference(base: Measured, control: Measured | None) -> Reference:
    """What a worker figure of one repetition is compared with: the baseline's, or with the control,
    the mean of both in-process measurements (throughput: geometric mean). Each phase on the same
    engine also depends on what ran just before it (an engine that was just busy is faster), so two
    measurements at two places in the rotation make a steadier reference than one."""
    b = base.result
    if control is None:
        return Reference(b.tok_s, b.ttft_p50, b.itl_mean)
    c = control.result
    return Reference(math.sqrt(b.tok_s * c.tok_s), (b.ttft_p50 + c.ttft_p50) / 2, (b.itl_mean + c.itl_mean) / 2)


def spread(values: list[float], fmt: str) -> str:
    return f"{min(values):{fmt}} .. {max(values):{fmt}}"


def report(a: argparse.Namespace, model: Path, phases: list[Phase], setups: list[Setup], disagg: Setup | None,
           transfer: tuple[int, float, float] | None, load: float, total: float) -> None:
    *workers, base = setups
    print(f"\nvLLM worker vs AsyncLLM in-process; tiny model, both engines' model threads on core {MODEL_CPU}, "
          f"taking turns; front-end CPUs {a.front_cpus}; "
          f"load average {load:.2f} at start, now {os.getloadavg()[0]:.2f}; total {total:.0f} s")
    print(HEADER + f" {'others':>6} {'front':>8}")
    for ph in phases:
        b = median_measured(base.results[ph.name])
        print(f"-- {ph.name}: c={ph.concurrency}, {ph.requests} requests, {ph.prompt_len}-token prompts, "
              f"{ph.max_tokens} output tokens")
        rows = [(median_measured(s.results[ph.name]), b.result) for s in workers]
        if disagg is not None and ph.name in disagg.results:
            rows.append((median_measured(disagg.results[ph.name]), b.result))
        for m, ref in (*rows[:len(workers)], (b, None), *rows[len(workers):]):
            print(row(m.result, ref) + f" {m.others:>6.2f} {m.front_us_per_token:>5.0f} µs")
    print(LEGEND + "\nserver (in-process row): the benchmark's child process (AsyncLLM + request loop) and "
          "its engine core.\nfront: CPU µs per output token of the process running AsyncLLM's front end, "
          "children excluded (worker: its main process, per token of the run and its warm-up; in-process: "
          "the request loop's process, request loop included; disagg: the decode worker).\nothers: cores "
          "used by other people's processes during the phase (this machine has 2).\n"
          f"Every figure is the median over {a.repeat} repetitions; a row's ratio is the ratio of medians.")
    ctrl = next((s for s in workers if s.label == CONTROL_LABEL), None)
    against = ("the mean of the baseline and the control measured in the same repetition (the in-process "
               "engine measured twice, at two places in the rotation)" if ctrl is not None
               else "the baseline measured next to it")
    print(f"\nGoals: throughput ratio >= 0.95; TTFT p50 overhead <= 2 ms. Per repetition, against {against}; "
          f"median [min .. max] over {a.repeat} repetitions:")
    for s in workers:
        is_control = s is ctrl
        for name in [ph.name for ph in phases if ph.name != "long"]:
            # the control is compared with the baseline alone: the machine's spread between two phases
            controls = ctrl.results[name] if ctrl is not None and not is_control else [None] * a.repeat
            refs = [reference(b, c) for b, c in zip(base.results[name], controls)]
            mine = [m.result for m in s.results[name]]
            ratios = [w.tok_s / r.tok_s for w, r in zip(mine, refs)]
            overs = [(w.ttft_p50 - r.ttft_p50) * 1e3 for w, r in zip(mine, refs)]
            itl_over = [(w.itl_mean - r.itl_mean) * 1e3 for w, r in zip(mine, refs)]
            ratio, over = statistics.median(ratios), statistics.median(overs)
            verdicts = ("", "") if is_control else (" ok" if ratio >= 0.95 else " MISSED",
                                                    " ok" if over <= 2 else " MISSED")
            print(f"  {s.label.split('(')[-1].rstrip(')'):>14} {name:>4}: "
                  f"ratio {ratio:.3f} [{spread(ratios, '.2f')}]{verdicts[0]}   "
                  f"TTFT p50 overhead {over:+.2f} ms [{spread(overs, '+.1f')}]{verdicts[1]}   "
                  f"ITL overhead {statistics.median(itl_over):+.2f} ms")
    if ctrl is not None:
        print("control: against the baseline alone, so the same engine and code against itself: how far "
              "this machine moves the figures between two phases (no goal applies; a worker figure "
              "within that spread of its goal is not told apart from meeting it by this run)")
    print("TTFT counts from a request's arrival: for the in-process baseline, the event-loop turn that "
          "delivered the completion freeing its user (benchmarks/_loadgen.Arrivals); its requests then "
          "waited p50 " + ", ".join(
              f"{name} {median_measured(base.results[name]).result.queued_p50 * 1e3:.2f} ms"
              for name in [ph.name for ph in phases if ph.name != "long"])
          + " for the submissions of those that arrived with them")
    long = next((p for p in phases if p.name == "long"), None)
    if long is None:
        return
    agg = median_measured(workers[0].results["long"]).result  # the first worker setup
    print(f"\n~{long.prompt_len}-token prompts, c=1: TTFT p50 aggregated worker {agg.ttft_p50 * 1e3:.1f} ms "
          f"(in-process {median_measured(base.results['long']).result.ttft_p50 * 1e3:.1f} ms)", end="")
    if disagg is not None and "long" in disagg.results:
        d = median_measured(disagg.results["long"]).result
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
    elif disagg is not None:
        print("KV per request (measured): vLLM logged no 'KV Transfer metrics' line on the decode worker")



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests-c1", type=int, default=16)
    p.add_argument("--requests-c16", type=int, default=128)
    p.add_argument("--requests-long", type=int, default=8, help="requests with long prompts (c=1)")
    p.add_argument("--long-prompt", type=int, default=500, help="tokens in a long prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--no-disagg", action="store_true", help="skip the prefill + decode run")
    p.add_argument("--no-unary", dest="unary", action="store_false",
                   help="skip the Generate setup (one call per request; the frontend uses GenerateStream)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control (the baseline measured a second time per repetition)")
    p.add_argument("--tcp", action="store_true",
                   help="also GenerateStream over TCP (clients reach a worker on their machine by its Unix socket)")
    p.add_argument("--profile", action="store_true", help="sample the worker with py-spy during c=16")
    p.add_argument("--repeat", type=int, default=5, help="repetitions of every phase (figures are medians)")
    p.add_argument("--warmup-requests", type=int, default=128,
                   help="c=16 requests every engine serves before anything is measured")
    p.add_argument("--timeout", type=float, default=120.0, help="limit per phase, seconds")
    p.add_argument("--time-limit", type=float, default=1800.0, help="limit for the whole run, seconds")
    p.add_argument("--engine-flags", default="", help="extra vLLM flags for every engine, e.g. "
                   "'--distributed-executor-backend uni'")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=180.0, help="longest wait for that, seconds")
    p.add_argument("--phases", default="c1,c16,long", help="which phases to run (comma-separated)")
    p.add_argument("--front-cpus", default="none",
                   help="CPUs for everything but the engines' model threads (the worker's and the baseline's "
                   "processes, their engine cores, the load generator): 'auto' (every CPU but the models' "
                   f"core {MODEL_CPU}), 'none' (no pinning) or a list, e.g. 1")
    p.add_argument("--inprocess", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--answer-file", help=argparse.SUPPRESS)
    p.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)  # diagnosis: the worker's event loop
    a = p.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends a run like Ctrl-C
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
