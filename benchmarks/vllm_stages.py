"""Where the time to first token goes: `dynamo.vllm` through GenerateStream vs AsyncLLM in-process.

    .venv/bin/python -m benchmarks.vllm_stages [--requests 32] [--rounds 4] [--warmup 32] [--concurrency 1]

vllm_worker.py says how much TTFT the worker adds; this says where. As there, a worker and an
in-process AsyncLLM (a child process; same engine flags) run side by side with their model threads
on the same core and take turns: after a warm-up on each, every round runs --requests requests
(64 prompt tokens, --max-tokens output tokens, --concurrency at a time) on one side, then the same
prompts on the other, the side going first alternating. Both processes load a probe
(benchmarks/_stage_probe) that timestamps vLLM's add_request, the engine core's first output reaching
the front end, and in the worker the GenerateStream dispatch and the first output handed to gRPC.
Every timestamp is on the machine's monotonic clock, so the client's and the servers' marks line up.
The worker's client is a process of its own on uvloop, sending as the frontend does (one
GenerateStream call, requests batched per write: benchmarks/_loadgen's driver).

Stages of one request (p50 and p90 over every measured request of a side, milliseconds):
- `client→worker`: the client queues the request → the worker's session dispatches it (gRPC in);
- `worker→add`: dispatch → vLLM's add_request starts (our conversion, validation, SamplingParams);
- `add_request`: vLLM's own input processing and the send to its engine core, and `(its CPU)`: the
  thread's CPU time in it (wall time above that is waiting for a core);
- `engine`: add_request done → the engine core's first output reaches the front end (scheduling,
  the prefill step, waiting behind a running step);
- `vllm→emit`: vLLM's output processing and our adapter, up to the transport;
- `emit→client`: the first output through gRPC to the client;
- in-process, `queued`: the request's arrival (the loop turn that delivered the completion freeing
  its user, as vllm_worker.py counts it) → its own code runs: the submissions of the requests that
  arrived with it; `own→add`: → add_request starts; `vllm→client`: vLLM's output processing up to
  the request loop;
- `TTFT`, and `TTFT − engine`: what the front end costs, the engine's time taken out.
Then, per round, the worker's p50s minus the baseline's: TTFT, engine time, and TTFT − engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import REPO, ensure_tiny_model, percentile, run_main, track
from benchmarks._loadgen import Arrivals, prompt_ids
from benchmarks._vllm_common import (
    ENGINE_ENV,
    MODEL_NAME,
    JsonChild,
    answer,
    baseline_llm,
    baseline_sampling,
    start_worker,
)
from dynamo.runtime.rpc.client import channel_target

PROBE_DIR = Path(__file__).resolve().parent / "_stage_probe"
#: (name, start mark, end mark) of the stages printed, in request order; "t0"/"first" are the client's
WORKER_STAGES = [("client→worker", "t0", "in"), ("worker→add", "in", "add0"), ("add_request", "add0", "add1"),
                 ("engine", "add1", "engine"), ("vllm→emit", "engine", "emit"), ("emit→client", "emit", "first")]
BASELINE_STAGES = [("queued", "t0", "own"), ("own→add", "own", "add0"), ("add_request", "add0", "add1"),
                   ("engine", "add1", "engine"), ("vllm→client", "engine", "first")]
Marks = dict[str, dict[str, float]]  # request id -> stage -> monotonic seconds


async def client(a: argparse.Namespace) -> None:
    """The worker's client (a process of its own, on uvloop): one GenerateStream call, requests
    batched per write (benchmarks/_loadgen's driver, as the frontend's client does). Writes its
    marks to --out."""
    import grpc

    from benchmarks._loadgen import _GenerateStreamDriver
    from dynamo.llm.proto import worker_pb2 as pb
    from dynamo.llm.proto import worker_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(a.target)
    mux = _GenerateStreamDriver(pb_grpc.WorkerStub(channel), pb)

    async def one(i: int, arrived: float) -> dict[str, float]:
        req = pb.GenerateRequest(request_id=request_id(a.vocab, i), model=MODEL_NAME,
                                 token_ids=prompt_ids(i, 64, a.vocab))
        req.stop.max_tokens = a.max_tokens
        req.stop.ignore_eos = True
        marks = {"t0": arrived}
        async for out in mux.generate(i, req):
            if out.token_ids and "first" not in marks:
                marks["first"] = time.monotonic()
        return marks

    try:
        Path(a.out).write_text(json.dumps(await closed_loop(one, a.warmup, a.requests, a.concurrency, a.vocab)))
    finally:
        mux.close()
        await channel.close()


def request_id(vocab: int, i: int) -> str:
    return f"stage-{vocab}-{i}"


async def closed_loop(one, warmup: int, requests: int, concurrency: int,  # type: ignore[no-untyped-def]
                      vocab: int) -> Marks:
    """`concurrency` request loops over warm-up then measured requests; the measured ones' marks.
    A request's clock ("t0") starts at its arrival (_loadgen.Arrivals), as in vllm_worker.py."""
    marks: Marks = {}
    ids = iter(range(warmup + requests))
    arrivals = Arrivals(time.monotonic)

    async def loop() -> None:
        for i in ids:
            m = await one(i, arrivals.now())
            if i >= warmup:
                marks[request_id(vocab, i)] = m

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return marks


async def inprocess(a: argparse.Namespace) -> None:
    """The baseline, a JsonChild: for each command {vocab, warmup, requests, concurrency} on stdin,
    runs that closed loop on its AsyncLLM and answers the measured requests' marks."""
    from vllm.inputs import tokens_input

    params = baseline_sampling(a.max_tokens)
    loop = asyncio.get_running_loop()
    with baseline_llm(Path(a.model_dir)) as llm:
        answer(a.answer_file, {"ready": True})
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            vocab = cmd["vocab"]

            async def one(i: int, arrived: float, vocab: int = vocab) -> dict[str, float]:
                marks = {"t0": arrived, "own": time.monotonic()}
                async for out in llm.generate(tokens_input(prompt_ids(i, 64, vocab)), params,
                                              request_id(vocab, i)):
                    if out.outputs[0].token_ids and "first" not in marks:
                        marks["first"] = time.monotonic()
                return marks

            answer(a.answer_file, await closed_loop(one, cmd["warmup"], cmd["requests"], cmd["concurrency"], vocab))


def read_probe(folder: Path, marks: Marks) -> None:
    """Add the servers' first mark of each stage to `marks` (vLLM's internal ids lose their suffix)."""
    for path in folder.glob("*.tsv"):
        for line in path.read_text().splitlines():
            stage, rid, t = line.split("\t")
            if rid not in marks:
                rid = rid.rsplit("-", 1)[0]
            if rid in marks:
                marks[rid].setdefault(stage, float(t))


def table(label: str, marks: Marks, stages: list[tuple[str, str, str]]) -> dict[str, float]:
    """Print p50 / p90 of each stage; return the p50s (ms)."""
    rows = [*stages, ("TTFT", "t0", "first")]
    p50: dict[str, float] = {}
    complete = [m for m in marks.values() if all(k in m for _, s, e in rows for k in (s, e))]
    print(f"{label} ({len(complete)} of {len(marks)} requests with every mark)")

    def show(name: str, xs: list[float]) -> None:
        p50[name] = statistics.median(xs)
        print(f"  {name:>14}  p50 {p50[name]:6.2f}  p90 {percentile(xs, 90):6.2f}")

    if not complete:
        return p50
    cpu = [m["add_cpu"] * 1e3 for m in complete if "add_cpu" in m]
    for name, start, end in rows:
        show(name, [(m[end] - m[start]) * 1e3 for m in complete])
        if name == "add_request" and cpu:
            show("(its CPU)", cpu)
    show("TTFT − engine", [((m["first"] - m["t0"]) - (m["engine"] - m["add1"])) * 1e3 for m in complete])
    return p50


async def run(a: argparse.Namespace) -> None:
    model = ensure_tiny_model()
    env = {**ENGINE_ENV["agg"], "PYTHONPATH": f"{PROBE_DIR}{os.pathsep}{REPO}"}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-stages-") as d:
        w_probe, b_probe = Path(d, "worker"), Path(d, "baseline")
        w_probe.mkdir()
        b_probe.mkdir()
        started = await asyncio.gather(
            start_worker(Path(d, "discovery"), model, "agg", "vllm-stages",
                         env={**env, "DYN_STAGE_PROBE": str(w_probe)}),
            JsonChild.start([__file__, "--inprocess", "--model-dir", str(model), "--max-tokens", str(a.max_tokens)],
                            {**env, "DYN_STAGE_PROBE": str(b_probe)}, 300),
            return_exceptions=True)
        w = started[0] if not isinstance(started[0], BaseException) else None
        child = started[1][0] if not isinstance(started[1], BaseException) else None
        worker_marks: list[Marks] = []
        base_marks: list[Marks] = []
        try:
            for x in started:
                if isinstance(x, BaseException):
                    raise x
            assert w is not None and w.record is not None and child is not None
            target = channel_target(w.record)

            async def on_worker(vocab: int, warmup: int, requests: int) -> Marks:
                out = Path(d, f"client-{vocab}.json")
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--client", target, "--out", str(out), "--vocab", str(vocab),
                    "--warmup", str(warmup), "--requests", str(requests), "--concurrency", str(a.concurrency),
                    "--max-tokens", str(a.max_tokens), env={**os.environ, "PYTHONPATH": str(REPO)},
                    process_group=0)
                track(proc.pid)
                if await asyncio.wait_for(proc.wait(), a.timeout) != 0:
                    raise RuntimeError(f"the client failed (exit {proc.returncode})")
                return json.loads(out.read_text())

            async def on_baseline(vocab: int, warmup: int, requests: int) -> Marks:
                return await child.ask({"vocab": vocab, "warmup": warmup, "requests": requests,  # type: ignore[union-attr]
                                        "concurrency": a.concurrency}, a.timeout)

            # Warm-up on both engines (their speed rises over their first thousands of steps), then
            # rounds that take turns, each side first in every other round; new prompts every run.
            await on_worker(a.vocab, a.warmup, 0)
            await on_baseline(a.vocab, a.warmup, 0)
            for r in range(a.rounds):
                vocab = a.vocab - 1 - r
                sides = [(on_worker, worker_marks), (on_baseline, base_marks)]
                for drive, sink in sides if r % 2 == 0 else sides[::-1]:
                    sink.append(await drive(vocab, 0, a.requests))
        finally:
            if w is not None:
                await w.close()  # SIGTERM: the worker drains and exits; its probe writes its file
                w.log_path.unlink(missing_ok=True)
            if child is not None:
                await child.close()  # likewise
        for marks in worker_marks:
            read_probe(w_probe, marks)
        for marks in base_marks:
            read_probe(b_probe, marks)
    print(f"\nc={a.concurrency}, {a.rounds} rounds of {a.requests} requests on each side (after {a.warmup} "
          f"warm-up), 64-token prompts, {a.max_tokens} output tokens; milliseconds")
    wp = table("dynamo.vllm (GenerateStream)", {k: v for m in worker_marks for k, v in m.items()}, WORKER_STAGES)
    bp = table("AsyncLLM in-process (baseline)", {k: v for m in base_marks for k, v in m.items()}, BASELINE_STAGES)
    if not (wp and bp):
        return
    print(f"TTFT p50 overhead: {wp['TTFT'] - bp['TTFT']:+.2f} ms; with each side's engine time taken out: "
          f"{wp['TTFT − engine'] - bp['TTFT − engine']:+.2f} ms")
    print("per round, worker − baseline (p50 of the round): TTFT, engine, TTFT − engine:")
    for r, (wm, bm) in enumerate(zip(worker_marks, base_marks)):
        w50, b50 = quiet_p50s(wm), quiet_p50s(bm)
        if w50 and b50:
            print(f"  round {r}: {w50[0] - b50[0]:+6.2f} {w50[1] - b50[1]:+6.2f} {w50[2] - b50[2]:+6.2f}")


def quiet_p50s(marks: Marks) -> tuple[float, float, float] | None:
    """p50 (ms) of TTFT, engine time and their difference over the requests with every mark."""
    full = [m for m in marks.values() if all(k in m for k in ("t0", "first", "add1", "engine"))]
    if not full:
        return None
    ttft = [(m["first"] - m["t0"]) * 1e3 for m in full]
    engine = [(m["engine"] - m["add1"]) * 1e3 for m in full]
    return (statistics.median(ttft), statistics.median(engine),
            statistics.median(t - e for t, e in zip(ttft, engine)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=32, help="measured requests per round and side")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=1000, help="prompt token ids are below this")
    p.add_argument("--timeout", type=float, default=300.0, help="limit per run, seconds")
    p.add_argument("--inprocess", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client", dest="target", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--answer-file", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inprocess:
        asyncio.run(inprocess(a))
    elif a.target:
        import uvloop

        uvloop.install()  # as the frontend, the worker's real client, runs
        asyncio.run(client(a))
    else:
        run_main(run(a))


if __name__ == "__main__":
    main()
