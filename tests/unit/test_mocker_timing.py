"""The timing model at speedup 1: TTFT follows prompt length, ITL follows batch size; and throughput."""

from __future__ import annotations

import asyncio
import statistics
import time

from dynamo.llm.model_card import Role
from dynamo.llm.protocol import GenerateRequest, StopConditions
from dynamo.mocker.args import MockerConfig, TimingModel
from dynamo.mocker.engine import MockerEngine

# Small constants keep the test quick: a step costs 1 ms + 0.1 ms per prompt token + 1 ms per decode.
TIMING = TimingModel(step_overhead_ms=1.0, prefill_ms_per_token=0.1, prefill_attn_ms_per_token_pair=0.0,
                     decode_ms_per_seq=1.0, decode_ms_per_context_token=0.0)


def config(**kw: object) -> MockerConfig:
    base: dict[str, object] = dict(vocab_size=1000, max_model_len=2048, block_size=16, num_gpu_blocks=1024,
                                   speedup_ratio=1.0, timing=TIMING)
    base.update(kw)
    return MockerConfig(**base)  # type: ignore[arg-type]


async def timed(engine: MockerEngine, rid: str, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """(time to first token, mean inter-token latency) in seconds."""
    t0 = time.perf_counter()
    stamps: list[float] = []
    async for out in engine.generate(GenerateRequest(rid, prompt, stop=StopConditions(max_tokens=max_tokens))):
        stamps += [time.perf_counter()] * len(out.token_ids)
    itl = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.0
    return stamps[0] - t0, itl


async def test_ttft_grows_with_prompt_length() -> None:
    engine = MockerEngine(config())
    await engine.start()
    try:
        # model: 1 + 0.1 * 32 = 4.2 ms vs 1 + 0.1 * 1024 = 103.4 ms. A busy host only adds delay, so
        # the short prompt's best of three is the least noisy measure.
        short = min([(await timed(engine, f"s{k}", [k + 1 + i % 900 for i in range(32)], 1))[0] for k in range(3)])
        long, _ = await timed(engine, "l", [2 + i % 900 for i in range(1024)], 1)
        assert long >= 0.1034 * 0.95
        assert long > 3 * short
        assert long - short < 0.0992 * 3
    finally:
        await engine.shutdown()


async def test_itl_grows_with_batch_size() -> None:
    engine = MockerEngine(config())
    await engine.start()
    try:
        itl_1 = min([(await timed(engine, f"solo{k}", [7 + k] * 16, 20))[1] for k in range(2)])
        batch = await asyncio.gather(*(timed(engine, f"b{i}", [i + 10] * 16, 20) for i in range(16)))
        itl_16 = statistics.median(itl for _, itl in batch)
        # model: 1 + 1 = 2 ms per step alone, 1 + 16 * 1 = 17 ms per step for 16
        assert itl_16 >= 0.017 * 0.95
        assert itl_16 > 3 * itl_1
        assert itl_1 >= 0.002 * 0.9
        assert itl_16 < 0.017 * 3
    finally:
        await engine.shutdown()


async def test_kv_transfer_time_delays_decode_first_token() -> None:
    # 100 prompt tokens x 1 MB at 1 GB/s = 0.1 s of simulated transfer
    cfg = config(kv_bytes_per_token=1_000_000, kv_transfer_bandwidth=1.0)
    prefill, decode = MockerEngine(cfg, role=Role.PREFILL), MockerEngine(cfg, role=Role.DECODE)
    await prefill.start()
    await decode.start()
    try:
        prompt = [3] * 100
        params = None
        async for out in prefill.generate(GenerateRequest("p", prompt, stop=StopConditions(max_tokens=1))):
            params = out.disaggregated_params
        assert params is not None
        t0 = time.perf_counter()
        async for _ in decode.generate(GenerateRequest("d", prompt, stop=StopConditions(max_tokens=3),
                                                       disaggregated_params=params)):
            break
        assert time.perf_counter() - t0 >= 0.1 * 0.95
    finally:
        await prefill.shutdown()
        await decode.shutdown()


async def test_throughput_at_high_speedup_is_far_above_what_grpc_needs() -> None:
    """Not a timed assertion: prints tokens/s of 64 streams x 128 tokens in-process at speedup 1000."""
    engine = MockerEngine(config(speedup_ratio=1000.0, timing=TimingModel()))
    await engine.start()
    try:
        messages = 0

        async def stream(i: int) -> int:
            nonlocal messages
            n = 0
            async for out in engine.generate(GenerateRequest(f"t{i}", [1 + (i * 13 + j) % 999 for j in range(64)],
                                                             stop=StopConditions(max_tokens=128))):
                n += len(out.token_ids)
                messages += 1
            return n

        t0, cpu0 = time.perf_counter(), time.process_time()
        counts = await asyncio.wait_for(asyncio.gather(*(stream(i) for i in range(64))), timeout=60)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert counts == [128] * 64
        total = 64 * 128
        print(f"\nmocker in-process: {total / elapsed:,.0f} tok/s wall, {total / cpu:,.0f} tok/s per CPU second "
              f"({total} tokens in {elapsed * 1000:.0f} ms, {total / messages:.1f} tokens per message)")
    finally:
        await engine.shutdown()
