"""How long the worker's GenerateStream session takes from an engine step to the write carrying it.

    .venv/bin/python -m benchmarks.stream_session [--requests 16] [--steps 8] [--waves 300]

No engine, no network: the worker's real request path (`WorkerServicer.serve_request`, metrics
included) and `StreamSession`, over an engine double that gives every request one output per step,
all requests in the same step (as vLLM does at c=16 with equal prompts and output lengths), and a
transport double that timestamps each write. Per wave of --requests requests (--steps outputs each),
it measures the time from the step being released to the write that carries it:
- a middle step: the outputs of every request, then one write;
- the last step: the requests' last outputs, then the write that ends them. In a closed loop the
  client's next requests wait for this message, so every microsecond here is TTFT of the next wave.
The figure to read is last / middle: work that a request does when it ends (metrics, closing the
engine stream) belongs after the write, so the last step should cost about what a middle one does.
Measured on 2026-12-01 (defaults: 16 requests, 8 steps, p50 over 250 waves, uvloop): a middle step
57 µs; the last step 102 µs (1.78x). The code before the session sent a last output ahead of that
work (commit 0cfccca's parent), the same day: middle 58 µs, last 212 µs (3.67x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import nullcontext

from prometheus_client import CollectorRegistry

from benchmarks._common import percentile
from dynamo.llm import codec
from dynamo.llm.model_card import ModelCard
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import (
    EngineInfo,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    StopConditions,
    Usage,
)
from dynamo.llm.worker.metrics import WorkerMetrics
from dynamo.llm.worker.servicer import WorkerServicer
from dynamo.llm.worker.stream_session import StreamSession
from dynamo.runtime.rpc.server import RpcServer


class SteppedEngine:
    """Every request waits for step i's future, then yields its i-th output; the last one finishes it."""

    def __init__(self, steps: int) -> None:
        self.n_steps = steps
        self.steps: list[asyncio.Future[None]] = []

    async def generate(self, request: GenerateRequest):  # type: ignore[no-untyped-def]
        steps = self.steps
        for i in range(self.n_steps):
            await steps[i]
            last = i == self.n_steps - 1
            yield GenerateOutput(token_ids=[3 + i], finish_reason=FinishReason.LENGTH if last else None,
                                 usage=Usage(prompt_tokens=3, completion_tokens=self.n_steps) if last else None)


class Handler:
    def __init__(self, engine: SteppedEngine) -> None:
        self.engine = engine

    def generate(self, request: GenerateRequest):  # type: ignore[no-untyped-def]
        return self.engine.generate(request)


class TimedContext:
    """A grpc.aio ServicerContext double: records when each write starts, and whether it ends requests."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bool]] = []
        self.ended = asyncio.Event()

    async def write(self, message: pb.StreamResponse) -> None:
        done = any(item.done for item in message.items)
        self.writes.append((time.perf_counter(), done))
        if done:
            self.ended.set()

    def peer(self) -> str:
        return "bench"


async def wave(servicer: WorkerServicer, engine: SteppedEngine, requests: int) -> tuple[float, float]:
    """One wave; returns (middle step → its write, last step → the write ending the requests), seconds."""
    loop = asyncio.get_running_loop()
    ctx = TimedContext()
    items = [pb.StreamRequestItem(stream_id=k + 1, generate=codec.request_to_pb(GenerateRequest(
        request_id=f"r{k}", model="m", token_ids=[5, 6, 7],
        stop=StopConditions(max_tokens=engine.n_steps, ignore_eos=True)))) for k in range(requests)]
    close = asyncio.Event()

    async def incoming():  # type: ignore[no-untyped-def]
        yield pb.StreamRequest(items=items)
        await close.wait()

    engine.steps = [loop.create_future() for _ in range(engine.n_steps)]
    session = asyncio.create_task(StreamSession(servicer, ctx, nullcontext).run(incoming()))  # type: ignore[arg-type]
    await asyncio.sleep(0.001)  # every request is waiting for step 0
    middle = engine.n_steps // 2
    released: list[float] = []
    for i in range(engine.n_steps):
        n_writes = len(ctx.writes)
        released.append(time.perf_counter())
        engine.steps[i].set_result(None)
        if i < engine.n_steps - 1:
            async with asyncio.timeout(5):
                while len(ctx.writes) == n_writes:
                    await asyncio.sleep(0)
            if i == middle:
                middle_delay = ctx.writes[n_writes][0] - released[i]
            await asyncio.sleep(0.0005)  # the engine's next step
    await asyncio.wait_for(ctx.ended.wait(), 5)
    last_delay = next(t for t, done in ctx.writes if done) - released[-1]
    close.set()
    await asyncio.wait_for(session, 5)
    return middle_delay, last_delay


async def main(a: argparse.Namespace) -> None:
    registry = CollectorRegistry()
    servicer = WorkerServicer(RpcServer(), WorkerMetrics(registry, model="m", role="agg").bind())
    engine = SteppedEngine(a.steps)
    info = EngineInfo(vocab_size=1024, context_length=1024, kv_block_size=16, total_kv_blocks=64)
    card = ModelCard(served_model_name="m", model_path="m", tokenizer="m", context_length=1024,
                     kv_block_size=16, total_kv_blocks=64)
    servicer.attach(engine, Handler(engine), info, card, "bench")  # type: ignore[arg-type]
    results = [await wave(servicer, engine, a.requests) for _ in range(a.waves)]
    results = results[a.waves // 6:]  # warm-up
    middle = sorted(r[0] for r in results)
    last = sorted(r[1] for r in results)
    m50, l50 = statistics.median(middle), statistics.median(last)
    print(f"{a.requests} requests, {a.steps} steps, {len(results)} waves (after {a.waves - len(results)} warm-up)")
    print(f"  middle step -> its write:            p50 {m50 * 1e6:6.0f} µs   p90 {percentile(middle, 90) * 1e6:6.0f} µs")
    print(f"  last step -> write ending requests:  p50 {l50 * 1e6:6.0f} µs   p90 {percentile(last, 90) * 1e6:6.0f} µs")
    print(f"  last / middle (p50): {l50 / m50:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--waves", type=int, default=300)
    args = p.parse_args()
    if args.steps < 3 or args.requests < 1 or args.waves < 6:
        p.error("needs --steps >= 3 (a middle step besides the first and the last), --requests >= 1, --waves >= 6")
    try:
        import uvloop  # as the worker runs
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
