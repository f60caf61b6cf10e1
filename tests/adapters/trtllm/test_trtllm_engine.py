"""The TensorRT-LLM adapter in-process, against the TensorRT-LLM test double (tests/doubles)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamo.llm.disagg import prefill_request
from dynamo.llm.engine import EngineError
from dynamo.llm.model_card import Role
from dynamo.llm.protocol import FinishReason, GenerateOutput, GenerateRequest, KvEventKind, StopConditions
from dynamo.trtllm.engine import TrtllmEngine

pytestmark = pytest.mark.double


def build(model: Path, role: Role, *flags: str) -> TrtllmEngine:
    parser = TrtllmEngine.make_parser("t")
    TrtllmEngine.add_cli_args(parser)
    ns: argparse.Namespace = parser.parse_args(["--model-path", str(model), "--kv-block-size", "16", *flags])
    return TrtllmEngine.from_cli_args(ns, role)


@pytest.fixture
async def engine(tiny_model_dir: Path, trtllm_double: None) -> AsyncIterator[TrtllmEngine]:
    e = build(tiny_model_dir, Role.AGGREGATED)
    await e.start()
    yield e
    await e.shutdown()


def req(rid: str, prompt: list[int], max_tokens: int, **kw: object) -> GenerateRequest:
    return GenerateRequest(rid, prompt, stop=StopConditions(max_tokens=max_tokens, ignore_eos=True), **kw)  # type: ignore[arg-type]


async def collect(it: AsyncIterator[GenerateOutput]) -> list[GenerateOutput]:
    return [o async for o in it]


async def test_start_reports_the_engine(engine: TrtllmEngine) -> None:
    info = engine.info
    assert info is not None and (info.vocab_size, info.kv_block_size, info.eos_token_ids) == (1024, 16, [1])
    assert info.total_kv_blocks > 0 and info.context_length == 2048
    assert engine.model_source.tokenizer == engine.model_source.model_path


async def test_outputs_are_new_tokens_only_and_end_with_usage(engine: TrtllmEngine) -> None:
    prompt = list(range(5, 45))
    outs = await collect(engine.generate(req("a", prompt, 24)))
    tokens = [t for o in outs for t in o.token_ids]
    assert len(tokens) == 24 and len(outs) > 2, "streamed step by step, each output only its new tokens"
    last = outs[-1]
    assert last.finish_reason is FinishReason.LENGTH and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (40, 24)
    again = await collect(engine.generate(req("b", prompt, 24)))
    assert [t for o in again for t in o.token_ids] == tokens  # greedy
    assert again[-1].usage is not None and again[-1].usage.cached_tokens == 32  # two full blocks reused


async def test_cancelling_the_stream_aborts_the_engine_request(engine: TrtllmEngine) -> None:
    it = engine.generate(req("long", list(range(3, 20)), 900))
    got = 0
    async for out in it:
        got += len(out.token_ids)
        if got >= 3:
            break
    await it.aclose()
    assert engine.num_unfinished_requests() == 0
    stats = engine.stats()
    assert stats.running_requests == 0


async def test_kv_events_flow_for_a_prompt(engine: TrtllmEngine) -> None:
    events = engine.kv_events()
    assert events is not None
    await collect(engine.generate(req("kv", list(range(100, 150)), 2)))
    stored = []
    async with asyncio.timeout(10):
        async for event in events:
            if event.kind is KvEventKind.STORED:
                stored.extend(event.block_hashes)
            if len(stored) >= 3:
                break
    assert len(stored) >= 3 and all(0 <= h < 2**64 for h in stored)


async def test_prefill_then_decode_equals_aggregated(tiny_model_dir: Path, trtllm_double: None,
                                                     engine: TrtllmEngine) -> None:
    prefill = build(tiny_model_dir, Role.PREFILL)
    decode = build(tiny_model_dir, Role.DECODE)
    await prefill.start()
    await decode.start()
    try:
        prompt = list(range(200, 260))
        expected = [t for o in await collect(engine.generate(req("agg", prompt, 12))) for t in o.token_ids]
        first = await collect(prefill.generate(prefill_request(req("p", prompt, 12))))
        handoff = first[-1].disaggregated_params
        assert handoff is not None and handoff.engine == "trtllm" and handoff.opaque
        assert first[-1].finish_reason is not None and [t for o in first for t in o.token_ids] == expected[:1]
        outs = await collect(decode.generate(req("d", prompt, 12, disaggregated_params=handoff)))
        assert [t for o in outs for t in o.token_ids] == expected  # the whole completion, first token included
        # The engine's opaque state travels byte for byte: one flipped byte fails the KV transfer.
        tampered = dataclasses.replace(handoff, opaque=handoff.opaque[:-1] + bytes([handoff.opaque[-1] ^ 1]))
        with pytest.raises(EngineError, match="kv cache transfer"):
            await collect(decode.generate(req("bad", prompt, 12, disaggregated_params=tampered)))
        # A decode cancelled before its first token waits for its KV transfer, then aborts.
        it = decode.generate(req("d2", prompt, 500, disaggregated_params=handoff))
        await it.aclose()
        async with asyncio.timeout(10):
            while decode.num_unfinished_requests():
                await asyncio.sleep(0.01)
    finally:
        await prefill.shutdown()
        await decode.shutdown()


async def test_structured_output_needs_a_guided_backend_and_then_holds(tiny_model_dir: Path,
                                                                      trtllm_double: None) -> None:
    import json

    import jsonschema
    from tokenizers import Tokenizer

    from dynamo.llm.protocol import InvalidRequest, SamplingOptions, StructuredKind, StructuredOutput

    schema = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
    constrained = dataclasses.replace(req("s", list(range(5, 25)), 64),
                                      structured_output=StructuredOutput(StructuredKind.JSON_SCHEMA, json.dumps(schema)),
                                      sampling=SamplingOptions(logit_bias={7: 5.0}))  # accepted as embedding_bias
    plain = build(tiny_model_dir, Role.AGGREGATED)
    await plain.start()
    try:
        with pytest.raises(InvalidRequest, match="no guided decoding backend; start it with --guided-decoding-backend"):
            await collect(plain.generate(constrained))
    finally:
        await plain.shutdown()
    guided = build(tiny_model_dir, Role.AGGREGATED, "--guided-decoding-backend", "xgrammar")
    await guided.start()
    try:
        outs = await collect(guided.generate(dataclasses.replace(constrained, stop=StopConditions(max_tokens=64))))
        ids = [t for o in outs for t in o.token_ids]
        text = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).decode(ids, skip_special_tokens=True)
        jsonschema.validate(json.loads(text), schema)
        assert outs[-1].finish_reason is FinishReason.EOS
    finally:
        await guided.shutdown()
