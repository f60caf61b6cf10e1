"""Prefix caching, KV events and eviction, seen through the mocker engine's public API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from dynamo.llm.protocol import GenerateOutput, GenerateRequest, KvEvent, KvEventKind, StopConditions
from dynamo.mocker.args import MockerConfig
from dynamo.mocker.engine import MockerEngine
from dynamo.mocker.sequence import block_hashes

BS = 16


def config(**kw: object) -> MockerConfig:
    base: dict[str, object] = dict(vocab_size=1000, max_model_len=1024, block_size=BS, num_gpu_blocks=256,
                                   speedup_ratio=1000.0)
    base.update(kw)
    return MockerConfig(**base)  # type: ignore[arg-type]


async def run(engine: MockerEngine, rid: str, prompt: list[int], max_tokens: int) -> tuple[list[int], GenerateOutput]:
    tokens: list[int] = []
    last = None
    async for out in engine.generate(GenerateRequest(rid, prompt, stop=StopConditions(max_tokens=max_tokens))):
        tokens += out.token_ids
        last = out
    assert last is not None and last.finish_reason is not None
    return tokens, last


async def drain(events: AsyncIterator[KvEvent]) -> list[KvEvent]:
    """Everything published so far (the engine loop has already run)."""
    got: list[KvEvent] = []
    while True:
        try:
            got.append(await asyncio.wait_for(events.__anext__(), timeout=0.05))
        except TimeoutError:
            return got


def hashes(events: list[KvEvent], kind: KvEventKind) -> list[int]:
    return [h for e in events if e.kind is kind for h in e.block_hashes]


@pytest.fixture
async def engine() -> AsyncIterator[MockerEngine]:
    e = MockerEngine(config())
    await e.start()
    yield e
    await e.shutdown()


async def test_same_prompt_twice_hits_the_prefix_cache(engine: MockerEngine) -> None:
    events = engine.kv_events()
    assert events is not None
    prompt = list(range(1, 101))  # 100 tokens: 6 full blocks
    out1, last1 = await run(engine, "a", prompt, 5)
    out2, last2 = await run(engine, "b", prompt, 5)
    assert last1.usage is not None and last2.usage is not None
    assert last1.usage.cached_tokens == 0
    assert last2.usage.cached_tokens == 6 * BS
    assert out1 == out2  # the cache changes timing, never tokens

    got = await drain(events)
    stored = [e for e in got if e.kind is KvEventKind.STORED]
    # 104 of the 105 tokens get KV computed: 6 full blocks, all prompt blocks, stored once
    assert hashes(got, KvEventKind.STORED) == block_hashes(prompt, BS)
    assert stored[0].parent_hash is None and stored[0].block_size == BS
    assert [t for e in stored for t in e.token_ids] == prompt[:6 * BS]
    assert not hashes(got, KvEventKind.REMOVED)


async def test_decode_blocks_are_stored_with_their_chain(engine: MockerEngine) -> None:
    events = engine.kv_events()
    assert events is not None
    prompt = list(range(500, 520))  # 20 tokens; with 30 outputs, 49 tokens computed -> 3 full blocks
    out, _ = await run(engine, "a", prompt, 30)
    got = await drain(events)
    assert hashes(got, KvEventKind.STORED) == block_hashes((prompt + out)[:49], BS)
    for event in got:  # each event chains onto the previous block
        first = hashes(got, KvEventKind.STORED).index(event.block_hashes[0])
        assert event.parent_hash == (hashes(got, KvEventKind.STORED)[first - 1] if first else None)


async def test_eviction_publishes_removed_and_keeps_shared_prefixes_longest() -> None:
    engine = MockerEngine(config(num_gpu_blocks=8, max_model_len=128))
    await engine.start()
    try:
        events = engine.kv_events()
        assert events is not None
        a = list(range(1, 101))
        b = list(range(200, 300))
        await run(engine, "a", a, 2)  # caches a's 6 full blocks; 7 blocks used, 1 never touched
        _, last_b = await run(engine, "b", b, 2)  # needs 7 blocks, 2 are empty: evicts cached ones
        got = await drain(events)
        removed = hashes(got, KvEventKind.REMOVED)
        assert removed and set(removed) <= set(block_hashes(a, BS))
        assert engine.counters()["kv_cached_blocks"] == 6 + 6 - len(removed)
        # a's tail blocks go first, so a's first block survives and is still a hit
        _, last_a = await run(engine, "a2", a, 2)
        assert last_a.usage is not None and 0 < last_a.usage.cached_tokens < 6 * BS
        assert last_b.usage is not None and last_b.usage.cached_tokens == 0
        assert engine.stats().kv_active_blocks == 0
    finally:
        await engine.shutdown()


async def test_clear_kv_blocks_publishes_cleared_and_forgets_the_cache(engine: MockerEngine) -> None:
    events = engine.kv_events()
    assert events is not None
    prompt = list(range(1, 60))
    await run(engine, "a", prompt, 2)
    await engine.clear_kv_blocks()
    _, last = await run(engine, "b", prompt, 2)
    assert last.usage is not None and last.usage.cached_tokens == 0
    kinds = [e.kind for e in await drain(events)]
    assert KvEventKind.CLEARED in kinds
    # after the clear, the second request stores its blocks again
    assert kinds[kinds.index(KvEventKind.CLEARED) + 1:].count(KvEventKind.STORED) >= 1


async def test_no_prefix_caching_no_hits_and_no_events() -> None:
    engine = MockerEngine(config(enable_prefix_caching=False))
    await engine.start()
    try:
        assert engine.kv_events() is None
        prompt = list(range(1, 101))
        await run(engine, "a", prompt, 2)
        _, last = await run(engine, "b", prompt, 2)
        assert last.usage is not None and last.usage.cached_tokens == 0
    finally:
        await engine.shutdown()


async def test_unread_events_drop_oldest_without_blocking_the_engine() -> None:
    engine = MockerEngine(config(kv_event_buffer=3))
    await engine.start()
    try:
        for i in range(5):  # 5 distinct prompts of 2 full blocks each; nobody reads the events
            await run(engine, f"r{i}", [i + 1] * 40, 2)
        assert engine.counters()["kv_events_dropped"] == engine.counters()["kv_events_published"] - 3 > 0
        events = engine.kv_events()
        assert events is not None
        got = await drain(events)
        assert len(got) == 3 and got[-1].block_hashes == block_hashes([5] * 40, BS)
    finally:
        await engine.shutdown()


def test_block_hashes_are_stable_across_processes() -> None:
    tokens = list(range(3, 3 + 5 * BS))
    code = ("from dynamo.mocker.sequence import block_hashes; "
            f"print(block_hashes(list(range(3, {3 + 5 * BS})), {BS}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert other.stdout.strip() == str(block_hashes(tokens, BS))
    assert len(set(block_hashes(tokens, BS))) == 5
    assert all(0 <= h < 2**64 for h in block_hashes(tokens, BS))
