"""Continuous batching under pressure: queueing, chunked prefill, preemption; nothing is dropped."""

from __future__ import annotations

import asyncio

from dynamo.llm.protocol import FinishReason, GenerateRequest, StopConditions
from dynamo.mocker.args import MockerConfig, TimingModel
from dynamo.mocker.engine import MockerEngine


def config(**kw: object) -> MockerConfig:
    base: dict[str, object] = dict(vocab_size=1000, max_model_len=1024, block_size=16, num_gpu_blocks=256,
                                   speedup_ratio=1000.0)
    base.update(kw)
    return MockerConfig(**base)  # type: ignore[arg-type]


async def run(engine: MockerEngine, rid: str, prompt: list[int], max_tokens: int) -> tuple[list[int], FinishReason]:
    tokens: list[int] = []
    reason = None
    async for out in engine.generate(GenerateRequest(rid, prompt, stop=StopConditions(max_tokens=max_tokens))):
        tokens += out.token_ids
        reason = out.finish_reason
        assert out.usage is None or out.usage.completion_tokens == len(tokens)
    assert reason is not None
    return tokens, reason


def prompts(n: int, length: int) -> list[list[int]]:
    return [[(i * 37 + j) % 997 + 1 for j in range(length)] for i in range(n)]


async def run_all(engine: MockerEngine, ps: list[list[int]], max_tokens: int) -> list[tuple[list[int], FinishReason]]:
    return await asyncio.wait_for(
        asyncio.gather(*(run(engine, f"r{i}", p, max_tokens) for i, p in enumerate(ps))), timeout=60)


async def test_cache_pressure_preempts_and_every_request_completes() -> None:
    # 16 blocks x 16 tokens = 256 tokens of KV; 12 requests each grow to 100 tokens (7 blocks)
    ps = prompts(12, 40)
    small = MockerEngine(config(num_gpu_blocks=16, max_model_len=256))
    roomy = MockerEngine(config())
    await small.start()
    await roomy.start()
    try:
        squeezed = await run_all(small, ps, 60)
        reference = await run_all(roomy, ps, 60)
        assert all(len(toks) == 60 and reason is FinishReason.LENGTH for toks, reason in squeezed)
        # preemption (recompute) changes timing only, never the tokens
        assert [t for t, _ in squeezed] == [t for t, _ in reference]
        c = small.counters()
        assert c["preemptions"] > 0 and c["admission_waits"] > 0
        assert roomy.counters()["preemptions"] == 0
        assert small.num_unfinished_requests() == 0 and small.stats().kv_active_blocks == 0
    finally:
        await small.shutdown()
        await roomy.shutdown()


async def test_max_num_seqs_bounds_the_batch() -> None:
    # real-time steps (0.5 ms each) so that the watcher sees the engine between steps
    engine = MockerEngine(config(max_num_seqs=2, speedup_ratio=1.0, timing=TimingModel(0.5, 0.0, 0.0, 0.0, 0.0)))
    await engine.start()
    seen_running: list[int] = []
    seen_waiting: list[int] = []

    async def watch() -> None:
        while True:
            s = engine.stats()
            seen_running.append(s.running_requests)
            seen_waiting.append(s.waiting_requests)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        results = await run_all(engine, prompts(6, 20), 10)
        assert all(len(t) == 10 for t, _ in results)
        assert max(seen_running) == 2 and max(seen_waiting) >= 1
    finally:
        watcher.cancel()
        await engine.shutdown()


async def test_long_prompt_prefills_in_chunks() -> None:
    engine = MockerEngine(config(max_num_batched_tokens=64))
    await engine.start()
    try:
        tokens, _ = await run(engine, "long", prompts(1, 600)[0], 3)
        assert len(tokens) == 3
        # 600 prompt tokens at 64 per step: 10 prefill steps (the last yields token 1), then 2 decodes
        assert engine.counters()["steps"] == 10 + 2
    finally:
        await engine.shutdown()


async def test_decode_continues_while_a_long_prompt_prefills() -> None:
    # real-time steps (0.5 ms each) so that the long request arrives while the short one decodes
    engine = MockerEngine(config(max_num_batched_tokens=32, speedup_ratio=1.0,
                                 timing=TimingModel(0.5, 0.0, 0.0, 0.0, 0.0)))
    await engine.start()
    try:
        short = asyncio.create_task(run(engine, "short", [5] * 10, 40))
        await asyncio.sleep(0)
        long = asyncio.create_task(run(engine, "long", prompts(1, 900)[0], 1))
        (short_toks, _), _ = await asyncio.wait_for(asyncio.gather(short, long), timeout=30)
        assert len(short_toks) == 40
        # the decode's one token fits in each step next to a 31-token prefill chunk
        assert engine.counters()["steps"] < 40 + 900 // 31
    finally:
        await engine.shutdown()
