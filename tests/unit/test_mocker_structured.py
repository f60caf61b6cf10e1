"""Structured output in the mocker: the emitted tokens decode to a value that satisfies the constraint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from tokenizers import Tokenizer

from dynamo.llm.protocol import (
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    SamplingOptions,
    StopConditions,
    StructuredKind,
    StructuredOutput,
)
from dynamo.mocker.args import MockerConfig, read_model_facts
from dynamo.mocker.engine import MockerEngine
from dynamo.mocker.structured import constrained_text, minimal_instance

PROMPT = [30, 31, 32, 33, 34]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "color", "n", "tags", "inner"],
          "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]},
                         "n": {"type": "integer", "minimum": 3, "maximum": 9}, "note": {"type": "string"},
                         "tags": {"type": "array", "items": {"type": "string", "minLength": 2}, "minItems": 1},
                         "inner": {"$ref": "#/$defs/inner"}},
          "$defs": {"inner": {"type": "object", "required": ["x"], "properties": {"x": {"const": 7}}}}}


@pytest.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[MockerEngine]:
    facts = read_model_facts(tiny_model_dir)
    e = MockerEngine(MockerConfig(model_path=str(tiny_model_dir), vocab_size=facts.vocab_size,
                                  eos_token_ids=facts.eos_token_ids, block_size=16, num_gpu_blocks=256,
                                  speedup_ratio=1000.0))
    await e.start()
    yield e
    await e.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


async def run(engine: MockerEngine, kind: StructuredKind, value: str = "", *, rid: str = "r",
              sampling: SamplingOptions | None = None, max_tokens: int = 200) -> tuple[list[int], GenerateOutput]:
    request = GenerateRequest(rid, PROMPT, sampling=sampling or SamplingOptions(),
                              stop=StopConditions(max_tokens=max_tokens, ignore_eos=True),
                              structured_output=StructuredOutput(kind, value))
    outs = [o async for o in engine.generate(request)]
    return [t for o in outs for t in o.token_ids], outs[-1]


async def test_json_schema_output_validates_and_ends_with_eos(engine: MockerEngine, tokenizer: Tokenizer) -> None:
    ids, last = await run(engine, StructuredKind.JSON_SCHEMA, json.dumps(SCHEMA))
    eos = engine.info.eos_token_ids[0]
    assert ids[-1] == eos and last.finish_reason is FinishReason.EOS  # ignore_eos does not stretch it
    value = json.loads(tokenizer.decode(ids, skip_special_tokens=True))
    jsonschema.validate(value, SCHEMA)
    assert value == {"ok": False, "color": "red", "n": 3, "tags": ["aa"], "inner": {"x": 7}}
    assert last.usage is not None and last.usage.completion_tokens == len(ids)


async def test_json_object_and_choice(engine: MockerEngine, tokenizer: Tokenizer) -> None:
    ids, _ = await run(engine, StructuredKind.JSON_OBJECT)
    assert json.loads(tokenizer.decode(ids, skip_special_tokens=True)) == {}
    choices = ["alpha", "beta gamma", "δ-ελτα", "{not json}"]
    picked = set()
    for seed in range(12):
        ids, last = await run(engine, StructuredKind.CHOICE, json.dumps(choices), rid=f"c{seed}",
                              sampling=SamplingOptions(temperature=1.0, seed=seed))
        text = tokenizer.decode(ids, skip_special_tokens=True)
        assert text in choices and last.finish_reason is FinishReason.EOS
        picked.add(text)
    assert len(picked) > 1, "the request's seed picks the choice"
    again, _ = await run(engine, StructuredKind.CHOICE, json.dumps(choices), rid="again")
    first, _ = await run(engine, StructuredKind.CHOICE, json.dumps(choices), rid="first")
    assert again == first  # unseeded: the prompt decides, as a greedy model would


async def test_max_tokens_truncates_and_one_token_prefill_agrees(engine: MockerEngine) -> None:
    full, _ = await run(engine, StructuredKind.JSON_SCHEMA, json.dumps(SCHEMA))
    cut, last = await run(engine, StructuredKind.JSON_SCHEMA, json.dumps(SCHEMA), max_tokens=3)
    assert cut == full[:3] and last.finish_reason is FinishReason.LENGTH
    first, _ = await run(engine, StructuredKind.JSON_SCHEMA, json.dumps(SCHEMA), max_tokens=1)
    assert first == full[:1]  # what a prefill worker hands over is the decode's first token


@pytest.mark.parametrize("kind, value", [(StructuredKind.REGEX, "[ab]+"), (StructuredKind.GRAMMAR, 'root ::= "a"')])
async def test_regex_and_grammar_are_refused(engine: MockerEngine, kind: StructuredKind, value: str) -> None:
    with pytest.raises(InvalidRequest, match=f"the mocker cannot honour a {kind.value} constraint"):
        await run(engine, kind, value)
    assert engine.num_unfinished_requests() == 0


async def test_without_a_tokenizer_every_constraint_is_refused() -> None:
    engine = MockerEngine(MockerConfig(vocab_size=100, eos_token_ids=[1], speedup_ratio=1000.0))
    await engine.start()
    try:
        for kind, value in ((StructuredKind.CHOICE, '["a"]'), (StructuredKind.JSON_OBJECT, "")):
            with pytest.raises(InvalidRequest, match=f"cannot honour structured_output \\({kind.value}\\): the "
                                                     "mocker was started without --model"):
                await run(engine, kind, value)
    finally:
        await engine.shutdown()


async def test_logit_bias_is_accepted_and_changes_nothing(engine: MockerEngine) -> None:
    async def plain(sampling: SamplingOptions) -> list[int]:
        request = GenerateRequest("lb", PROMPT, sampling=sampling, stop=StopConditions(max_tokens=12))
        return [t async for o in engine.generate(request) for t in o.token_ids]

    assert await plain(SamplingOptions(logit_bias={5: 100.0})) == await plain(SamplingOptions())


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string", "minLength": 2},
                                            "minItems": 2}, "c": {"type": ["null", "number"], "exclusiveMinimum": 0.5}},
     "required": ["a", "c"]},
    {"allOf": [{"type": "object", "properties": {"p": {"type": "string"}}, "required": ["p"]},
               {"required": ["q"], "properties": {"q": {"type": "number", "maximum": -2, "multipleOf": 0.5}}}]},
    {"type": "integer", "exclusiveMinimum": 0, "multipleOf": 5},
    {"type": "number", "minimum": -1.5, "maximum": -1.2},
    {"anyOf": [{"type": "string"}, {"type": "null"}]},
    {"type": "object", "minProperties": 1, "properties": {"opt": {"type": "boolean"}}},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"const": "x"}], "minItems": 2},
    {},
    True,
], ids=lambda s: json.dumps(s)[:40])
def test_minimal_instances_validate(schema: Any) -> None:
    jsonschema.validate(minimal_instance(schema, schema), schema)


@pytest.mark.parametrize("schema, message", [
    ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
    ({"not": {"type": "null"}}, "'not'"),
    ({"type": "integer", "minimum": 1, "maximum": 1.5, "multipleOf": 2}, "bounds"),
    ({"$ref": "https://example.com/s.json"}, "only local json_schema refs"),
    ({"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#"}}}, "recurses without end"),
    (False, "no value satisfies it"),
])
def test_schemas_it_cannot_satisfy_are_refused(schema: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        minimal_instance(schema, schema)


@pytest.mark.parametrize("schema", [{"type": "string", "minLength": "x"}, {"type": "object", "properties": [1],
                                                                          "minProperties": 1},
                                    {"enum": 3}, {"anyOf": {"a": 1}}])
def test_malformed_schemas_are_invalid_requests(schema: Any) -> None:
    with pytest.raises(InvalidRequest, match="json_schema"):
        constrained_text(StructuredOutput(StructuredKind.JSON_SCHEMA, json.dumps(schema)), 0)
