"""Prefill + decode through two mocker engines equals the aggregated output; bad handoffs are refused.

Convention (dynamo/llm/disagg.py): the decode stream is the whole completion, first token included.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dynamo.llm.disagg import prefill_request
from dynamo.llm.model_card import Role
from dynamo.llm.protocol import (
    DisaggregatedParams,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    KvEventKind,
    SamplingOptions,
    StopConditions,
)
from dynamo.llm.worker.handlers import PrefillHandler
from dynamo.llm.worker.metrics import WorkerMetrics
from dynamo.mocker.args import MockerConfig
from dynamo.mocker.engine import MockerEngine
from dynamo.mocker.sequence import block_hashes

BS = 16
PROMPT = [(7 * i) % 991 + 1 for i in range(100)]


def config(**kw: object) -> MockerConfig:
    base: dict[str, object] = dict(vocab_size=1000, max_model_len=1024, block_size=BS, num_gpu_blocks=256,
                                   speedup_ratio=1000.0, eos_token_ids=[0])
    base.update(kw)
    return MockerConfig(**base)  # type: ignore[arg-type]


async def collect(engine: MockerEngine, req: GenerateRequest) -> tuple[list[int], GenerateOutput]:
    tokens: list[int] = []
    last = None
    async for out in engine.generate(req):
        tokens += out.token_ids
        last = out
    assert last is not None and last.finish_reason is not None
    return tokens, last


@pytest.fixture
async def engines() -> AsyncIterator[tuple[MockerEngine, MockerEngine, MockerEngine]]:
    agg, prefill, decode = (MockerEngine(config(), role=r) for r in (Role.AGGREGATED, Role.PREFILL, Role.DECODE))
    for e in (agg, prefill, decode):
        await e.start()
    yield agg, prefill, decode
    for e in (agg, prefill, decode):
        await e.shutdown()


def request(rid: str, max_tokens: int, params: DisaggregatedParams | None = None, **stop: Any) -> GenerateRequest:
    return GenerateRequest(rid, list(PROMPT), stop=StopConditions(max_tokens=max_tokens, **stop),
                           sampling=SamplingOptions(temperature=0.7, seed=42), disaggregated_params=params)


async def prefill(engine: MockerEngine, max_tokens: int = 20, **stop: Any) -> tuple[list[int], DisaggregatedParams]:
    """Prefill the way the worker shell does: the client's request reshaped by prefill_request()."""
    tokens, last = await collect(engine, prefill_request(request("p", max_tokens, **stop)))
    assert last.disaggregated_params is not None
    return tokens, last.disaggregated_params


async def test_prefill_then_decode_equals_aggregated(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, prefill_engine, decode = engines
    events = decode.kv_events()
    assert events is not None
    aggregated, agg_last = await collect(agg, request("a", 20))

    first, params = await prefill(prefill_engine)
    assert params.engine == "mocker"
    assert first == params.first_token_ids == aggregated[:1]
    assert params.payload["block_hashes"] == block_hashes(PROMPT, BS)
    assert params.payload["num_tokens"] == len(PROMPT)

    decoded, d_last = await collect(decode, request("d", 20, params))
    assert decoded == aggregated
    assert d_last.finish_reason is agg_last.finish_reason is FinishReason.LENGTH
    assert d_last.usage is not None
    assert (d_last.usage.prompt_tokens, d_last.usage.completion_tokens, d_last.usage.cached_tokens) == (100, 20, 100)
    # the transferred prompt blocks now live in the decode worker's cache
    first_event = await events.__anext__()
    assert first_event.kind is KvEventKind.STORED
    assert first_event.block_hashes == block_hashes(PROMPT, BS)


def prefill_shell(engine: MockerEngine) -> PrefillHandler:
    """The worker shell's prefill role over the engine (where the prefill rules live)."""
    return PrefillHandler(engine, WorkerMetrics(CollectorRegistry(), "m", "prefill").bind(), "instance-p")


async def test_prefill_worker_caps_output_at_one_token(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill_engine, _ = engines
    outs = [o async for o in prefill_shell(prefill_engine).generate(request("p", 50))]  # asked for 50
    assert sum(len(o.token_ids) for o in outs) == 1
    last = outs[-1]
    assert last.disaggregated_params is not None and last.disaggregated_params.prefill_instance_id == "instance-p"
    assert last.usage is not None and last.usage.completion_tokens == 1


async def test_single_token_request_across_the_split(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, prefill_engine, decode = engines
    first, params = await prefill(prefill_engine, max_tokens=1)
    tokens, last = await collect(decode, request("d", 1, params))
    assert tokens == first == (await collect(agg, request("a", 1)))[0]
    assert last.finish_reason is FinishReason.LENGTH


async def test_stop_conditions_hold_across_the_split(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, prefill_engine, decode = engines
    plain, _ = await collect(agg, request("a0", 20))
    stop_ids = [plain[5]]
    expected = plain[:plain.index(plain[5]) + 1]  # the first occurrence stops it
    assert len(expected) >= 2
    aggregated, agg_last = await collect(agg, request("a1", 20, stop_token_ids=stop_ids))
    assert aggregated == expected and agg_last.finish_reason is FinishReason.STOP
    _, params = await prefill(prefill_engine, stop_token_ids=stop_ids)
    decoded, d_last = await collect(decode, request("d", 20, params, stop_token_ids=stop_ids))
    assert decoded == aggregated and d_last.finish_reason is FinishReason.STOP


async def test_min_tokens_dropped_by_the_prefill_does_not_change_the_decode_stream(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, prefill_engine, decode = engines
    plain, _ = await collect(agg, request("a0", 20))
    stop_ids = [plain[0]]  # ends the prefill (which runs without min_tokens) at once
    first, params = await prefill(prefill_engine, min_tokens=3, stop_token_ids=stop_ids)
    assert first == plain[:1]
    aggregated, _ = await collect(agg, request("a1", 20, min_tokens=3, stop_token_ids=stop_ids))
    assert aggregated[0] != plain[0]  # min_tokens bans the stop id at position 0
    decoded, _ = await collect(decode, request("d", 20, params, min_tokens=3, stop_token_ids=stop_ids))
    assert decoded == aggregated


async def test_decode_role_without_params_prefills_locally(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    agg, _, decode = engines
    decoded, last = await collect(decode, request("d", 10))
    assert decoded == (await collect(agg, request("a", 10)))[0]
    assert last.usage is not None and last.usage.cached_tokens == 0


async def test_bad_params_are_refused_with_a_reason(
        engines: tuple[MockerEngine, MockerEngine, MockerEngine]) -> None:
    _, prefill_engine, decode = engines
    _, good = await prefill(prefill_engine)

    def variant(**change: object) -> DisaggregatedParams:
        p = copy.deepcopy(good)
        for key, value in change.items():
            if key in ("engine", "first_token_ids"):
                setattr(p, key, value)
            elif value is None:
                del p.payload[key]
            else:
                p.payload[key] = value
        return p

    cases = {
        "'vllm' prefill worker": variant(engine="vllm"),
        "payload.block_hashes is missing": variant(block_hashes=None),
        "payload.num_tokens is missing": variant(num_tokens="100"),
        "another prompt": variant(prompt_hash=good.payload["prompt_hash"] ^ 1),
        "block_hashes do not match": variant(block_hashes=[1, 2, 3]),
        "--block-size 32": variant(block_size=32),
        "--mocker-seed 9": variant(mocker_seed=9),
        "outside the vocabulary": variant(first_token_ids=[5000]),
    }
    for message, params in cases.items():
        with pytest.raises(InvalidRequest, match=message):
            await collect(decode, request("d", 5, params))
    garbage = DisaggregatedParams(engine="mocker", payload=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="JSON object"):
        await collect(decode, request("d", 5, garbage))
    with pytest.raises(InvalidRequest, match="another prompt"):
        await collect(decode, GenerateRequest("d", PROMPT[:-1], stop=StopConditions(max_tokens=5),
                                              disaggregated_params=good))
    with pytest.raises(InvalidRequest, match="prefill worker"):  # the shell refuses it before the engine
        prefill_shell(prefill_engine).check(request("p2", 1, good))
    assert prefill_engine.num_unfinished_requests() == 0
    assert decode.num_unfinished_requests() == 0
