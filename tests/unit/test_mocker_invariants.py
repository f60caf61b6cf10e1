"""Randomised workloads: under any cache size, budget and batch limit, with aborts and shared prefixes,
every request gets exactly the tokens an unconstrained engine gives, nothing stays allocated, and
replaying the KV events reproduces the cache's contents."""

from __future__ import annotations

import asyncio
import random

import pytest

from dynamo.llm.protocol import GenerateRequest, KvEvent, KvEventKind, StopConditions
from dynamo.mocker.args import MockerConfig
from dynamo.mocker.engine import MockerEngine

VOCAB = 100


async def run(engine: MockerEngine, rid: str, prompt: list[int], max_tokens: int,
              stop_after: int | None) -> list[int]:
    tokens: list[int] = []
    async for out in engine.generate(GenerateRequest(rid, prompt, stop=StopConditions(max_tokens=max_tokens))):
        tokens += out.token_ids
        if stop_after is not None and len(tokens) >= stop_after:
            break  # an abandoned stream
    return tokens


def replay(events: list[KvEvent]) -> set[int]:
    live: set[int] = set()
    for event in events:
        if event.kind is KvEventKind.STORED:
            assert not live & set(event.block_hashes), "a block was stored twice without removal"
            live |= set(event.block_hashes)
        elif event.kind is KvEventKind.REMOVED:
            assert set(event.block_hashes) <= live, "a block was removed that was never stored"
            live -= set(event.block_hashes)
        else:
            live.clear()
    return live


@pytest.mark.parametrize("seed", range(8))
async def test_random_workload_keeps_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    bs = rng.choice([4, 8, 16])
    blocks = rng.randint(20, 60)
    capacity = blocks * bs
    engine = MockerEngine(MockerConfig(
        vocab_size=VOCAB, max_model_len=capacity, block_size=bs, num_gpu_blocks=blocks, speedup_ratio=1000.0,
        max_num_seqs=rng.randint(1, 20), max_num_batched_tokens=rng.randint(8, 200)))
    reference = MockerEngine(MockerConfig(vocab_size=VOCAB, max_model_len=capacity, block_size=bs,
                                          num_gpu_blocks=4096, speedup_ratio=1000.0))
    await engine.start()
    await reference.start()
    try:
        events_iter = engine.kv_events()
        assert events_iter is not None
        bases = [[rng.randrange(VOCAB) for _ in range(rng.randint(1, capacity // 3))] for _ in range(4)]
        requests = []
        for i in range(rng.randint(10, 30)):
            base = rng.choice(bases)  # shared prefixes exercise the prefix cache
            prompt = (base[:rng.randint(1, len(base))] + [rng.randrange(VOCAB) for _ in range(rng.randint(0, 10))])
            prompt = prompt[:capacity // 2]
            max_tokens = min(rng.randint(1, capacity - len(prompt)), 150)
            stop_after = rng.randint(1, max_tokens) if rng.random() < 0.2 else None
            requests.append((f"r{i}", prompt, max_tokens, stop_after))

        results = await asyncio.wait_for(asyncio.gather(*(run(engine, *r) for r in requests)), timeout=60)
        for (rid, prompt, max_tokens, stop_after), tokens in zip(requests, results, strict=True):
            expected = await run(reference, rid, prompt, max_tokens, None)
            if stop_after is None:
                assert tokens == expected and len(tokens) == max_tokens, rid
            else:
                assert tokens == expected[:len(tokens)], rid

        deadline = asyncio.get_running_loop().time() + 5
        while engine.num_unfinished_requests():
            assert asyncio.get_running_loop().time() < deadline, "abandoned requests were not aborted"
            await asyncio.sleep(0.01)
        assert engine.stats().kv_active_blocks == 0

        events: list[KvEvent] = []
        while True:
            try:
                events.append(await asyncio.wait_for(events_iter.__anext__(), timeout=0.02))
            except TimeoutError:
                break
        assert engine.counters()["kv_events_dropped"] == 0
        assert len(replay(events)) == engine.counters()["kv_cached_blocks"]
    finally:
        await engine.shutdown()
        await reference.shutdown()
