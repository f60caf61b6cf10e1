"""Output tokens (determinism, vocabulary, stop conditions), streaming, abort and lifecycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dynamo.llm.engine import EngineError
from dynamo.llm.model_card import Role
from dynamo.llm.protocol import (
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    OutputOptions,
    SamplingOptions,
    StopConditions,
)
from dynamo.mocker.args import MockerConfig
from dynamo.mocker.engine import MockerEngine

VOCAB = 50
EOS = 7
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def config(**kw: object) -> MockerConfig:
    base: dict[str, object] = dict(vocab_size=VOCAB, max_model_len=4096, block_size=16, num_gpu_blocks=512,
                                   speedup_ratio=1000.0, eos_token_ids=[EOS])
    base.update(kw)
    return MockerConfig(**base)  # type: ignore[arg-type]


async def started(**kw: object) -> MockerEngine:
    engine = MockerEngine(config(**kw))
    await engine.start()
    return engine


@pytest.fixture
async def engine() -> AsyncIterator[MockerEngine]:
    e = await started()
    yield e
    await e.shutdown()


async def collect(engine: MockerEngine, rid: str = "r", prompt: list[int] = PROMPT, *,
                  sampling: SamplingOptions | None = None, output: OutputOptions | None = None,
                  **stop: object) -> tuple[list[int], list[GenerateOutput]]:
    req = GenerateRequest(rid, list(prompt), sampling=sampling or SamplingOptions(),
                          stop=StopConditions(**stop), output=output or OutputOptions())  # type: ignore[arg-type]
    outs = [out async for out in engine.generate(req)]
    return [t for o in outs for t in o.token_ids], outs


async def wait_until_idle(engine: MockerEngine, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.num_unfinished_requests():
        assert time.monotonic() < deadline, f"{engine.num_unfinished_requests()} requests still held"
        await asyncio.sleep(0.005)


async def test_same_prompt_and_seed_give_the_same_tokens_within_the_vocab() -> None:
    a, b, other_seed = await started(), await started(), await started(mocker_seed=1)
    try:
        toks_a, outs = await collect(a, max_tokens=500)
        toks_b, _ = await collect(b, max_tokens=500)
        toks_c, _ = await collect(other_seed, max_tokens=500)
        assert toks_a == toks_b and toks_a != toks_c
        assert len(toks_a) == 500 and all(0 <= t < VOCAB for t in toks_a)
        assert EOS not in toks_a  # EOS is not simulated by default
        assert len(set(toks_a)) > VOCAB // 2  # spread over the vocabulary
        last = outs[-1]
        assert last.finish_reason is FinishReason.LENGTH and last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(PROMPT), 500)
        assert all(o.finish_reason is None and o.usage is None for o in outs[:-1])
        toks_other_prompt, _ = await collect(a, "p2", PROMPT[:-1], max_tokens=50)
        assert toks_other_prompt != toks_a[:50]
    finally:
        for e in (a, b, other_seed):
            await e.shutdown()


async def test_sampling_seed_varies_output_only_when_sampling(engine: MockerEngine) -> None:
    greedy, _ = await collect(engine, "g", max_tokens=30)
    greedy_seeded, _ = await collect(engine, "gs", sampling=SamplingOptions(seed=5), max_tokens=30)
    s1, _ = await collect(engine, "s1", sampling=SamplingOptions(temperature=1.0, seed=1, top_p=0.9), max_tokens=30)
    s1_again, _ = await collect(engine, "s1b", sampling=SamplingOptions(temperature=1.0, seed=1), max_tokens=30)
    s2, _ = await collect(engine, "s2", sampling=SamplingOptions(temperature=1.0, seed=2), max_tokens=30)
    assert greedy == greedy_seeded
    assert s1 == s1_again and s1 != s2


async def test_stop_token_ids_and_min_tokens(engine: MockerEngine) -> None:
    plain, _ = await collect(engine, "a", max_tokens=40)
    stop = plain[10]
    first = plain.index(stop)
    toks, outs = await collect(engine, "b", max_tokens=40, stop_token_ids=[stop])
    assert toks == plain[:first + 1] and outs[-1].finish_reason is FinishReason.STOP
    # before min_tokens a stop id is never produced, so it cannot end the request early
    toks, outs = await collect(engine, "c", max_tokens=40, min_tokens=first + 5, stop_token_ids=[stop])
    assert stop not in toks[:first + 5] and len(toks) >= first + 5


async def test_simulated_eos_and_ignore_eos() -> None:
    engine = await started(eos_rate=0.2)
    try:
        toks, outs = await collect(engine, "a", max_tokens=200)
        assert toks[-1] == EOS and outs[-1].finish_reason is FinishReason.EOS and len(toks) < 200
        toks, outs = await collect(engine, "b", max_tokens=200, ignore_eos=True)
        # ignore_eos: EOS may be generated (as in vLLM) but does not end the request
        assert len(toks) == 200 and EOS in toks and outs[-1].finish_reason is FinishReason.LENGTH
        toks, _ = await collect(engine, "c", max_tokens=200, min_tokens=30)
        assert len(toks) >= 30 and EOS not in toks[:30]
    finally:
        await engine.shutdown()


async def test_no_max_tokens_runs_to_the_context_length() -> None:
    engine = await started(max_model_len=64)
    try:
        toks, outs = await collect(engine, "a")
        assert len(toks) == 64 - len(PROMPT) and outs[-1].finish_reason is FinishReason.LENGTH
    finally:
        await engine.shutdown()


async def test_logprobs_when_asked(engine: MockerEngine) -> None:
    toks, outs = await collect(engine, "a", output=OutputOptions(logprobs=3), max_tokens=10)
    lps = [lp for o in outs for lp in (o.logprobs or [])]
    assert [lp.token_id for lp in lps] == toks
    assert all(lp.logprob <= 0 and len(lp.top) == 3 and lp.top[0][0] == lp.token_id for lp in lps)
    _, outs = await collect(engine, "b", max_tokens=10)
    assert all(o.logprobs is None for o in outs)


async def test_duplicate_request_id_is_refused(engine: MockerEngine) -> None:
    # (every other check of a request is the worker shell's: GenerateRequest.validate_common)
    gen = engine.generate(GenerateRequest("dup", PROMPT, stop=StopConditions(max_tokens=2000)))
    await gen.__anext__()
    with pytest.raises(InvalidRequest, match="already running"):
        await collect(engine, "dup")
    await engine.abort("dup")
    assert [o async for o in gen][-1].finish_reason is FinishReason.CANCELLED
    await wait_until_idle(engine)


async def test_abort_ends_the_stream_and_frees_the_request(engine: MockerEngine) -> None:
    gen = engine.generate(GenerateRequest("x", PROMPT, stop=StopConditions(max_tokens=3000)))
    first = await gen.__anext__()
    assert first.token_ids and engine.num_unfinished_requests() == 1
    await engine.abort("x")
    rest = [o async for o in gen]
    assert rest[-1].finish_reason is FinishReason.CANCELLED
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens < 3000
    assert engine.num_unfinished_requests() == 0 and engine.stats().kv_active_blocks == 0
    await engine.abort("unknown")  # a no-op


async def test_abandoned_stream_is_aborted(engine: MockerEngine) -> None:
    async def read_one() -> None:
        async for _ in engine.generate(GenerateRequest("y", PROMPT, stop=StopConditions(max_tokens=3000))):
            break  # the consumer walks away; the engine must not keep generating for it

    await read_one()
    await wait_until_idle(engine)
    assert engine.stats().kv_active_blocks == 0


async def test_cancelled_consumer_task_aborts_the_request() -> None:
    engine = await started(speedup_ratio=1.0)  # slow enough that the request is mid-flight
    try:
        async def consume() -> None:
            async for _ in engine.generate(GenerateRequest("z", PROMPT, stop=StopConditions(max_tokens=3000))):
                pass

        task = asyncio.create_task(consume())
        deadline = time.monotonic() + 5
        while engine.stats().running_requests == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_idle(engine)
        assert engine.stats().kv_active_blocks == 0
    finally:
        await engine.shutdown()


async def test_lifecycle_info_health_and_shutdown() -> None:
    engine = MockerEngine(config(), role=Role.DECODE)
    with pytest.raises(EngineError, match="start"):
        await collect(engine)
    with pytest.raises(EngineError):
        await engine.check_health()
    info = await engine.start()
    assert (info.vocab_size, info.context_length, info.kv_block_size, info.total_kv_blocks, info.eos_token_ids) == \
        (VOCAB, 4096, 16, 512, [EOS])
    await engine.check_health()
    gen = engine.generate(GenerateRequest("long", PROMPT, stop=StopConditions(max_tokens=3000)))
    await gen.__anext__()
    await engine.shutdown()
    last = [o async for o in gen][-1]
    assert last.finish_reason is FinishReason.ERROR and last.error
    assert engine.num_unfinished_requests() == 0
    with pytest.raises(EngineError):
        await engine.check_health()
    with pytest.raises(TypeError, match="role"):
        MockerEngine(config(), role="both")  # type: ignore[arg-type]


def test_output_tokens_are_the_same_in_every_process() -> None:
    """A prefill mocker's first token and a decode mocker's continuation must agree: the sampler's
    hash may not depend on the process (PYTHONHASHSEED salts str and bytes hashes, not ints')."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("from dynamo.mocker.tokens import TokenSampler; s = TokenSampler(1024, [2]);"
            "print([s.sample(0x1234567890ABCDEF1234, p) for p in range(64)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONHASHSEED": seed,
                                "PYTHONPATH": str(Path(__file__).resolve().parents[2])}).stdout
            for seed in ("1", "2", "random")}
    assert len(outs) == 1 and len(set(json.loads(outs.pop()))) > 40  # one answer, and a varied one
