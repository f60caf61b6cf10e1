"""The wider OpenAI surface end to end on mocker workers (real processes, the official openai
client): n choices spread over workers, structured outputs and tool_choice honoured by the mocker,
tool history, /tokenize. The same requests against vLLM's own server are in
test_openai_differential.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

pytestmark = pytest.mark.timeout(300)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
          "required": ["city", "days"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
                  ) -> AsyncIterator[tuple[FrontendProcess, list[WorkerProcess], str]]:
    tmp = tmp_path_factory.mktemp("surface")
    workers = [await start_mocker(tmp, tiny_model_dir, "--speedup-ratio", "50",
                                  name=f"surface{i}") for i in range(2)]
    fe = FrontendProcess(tmp, "--tool-call-parser", "hermes")
    try:
        await fe.wait_models({tiny_model_dir.name})
        yield fe, workers, tiny_model_dir.name
    finally:
        fe.close()
        for w in workers:
            await w.close()


async def test_n_choices_spread_over_workers(cluster) -> None:  # type: ignore[no-untyped-def]
    fe, workers, model = cluster
    before = [w.metric("dynamo_worker_requests_total", status="success") for w in workers]
    r = await fe.client().completions.create(model=model, prompt="count", max_tokens=5, n=4)
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and all(c.finish_reason == "length" for c in r.choices)
    assert r.usage is not None and r.usage.completion_tokens == 20
    after = [w.metric("dynamo_worker_requests_total", status="success") for w in workers]
    assert [a - b for a, b in zip(after, before)] == [2, 2]  # round robin: choices are requests

    chunks = [c async for c in await fe.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=3, stream=True)]
    done = {c.index: c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason}
    assert done == {0: "length", 1: "length", 2: "length"}


async def test_json_schema_output_validates(cluster) -> None:  # type: ignore[no-untyped-def]
    fe, _, model = cluster
    for stream in (False, True):
        body = {"model": model, "messages": [{"role": "user", "content": "plan"}], "max_tokens": 200, "stream": stream,
                "response_format": {"type": "json_schema", "json_schema": {"name": "plan", "schema": SCHEMA}}}
        if stream:
            r = await fe.client().chat.completions.create(**body)
            text = "".join([c.choices[0].delta.content or "" async for c in r if c.choices])
        else:
            text = (await fe.client().chat.completions.create(**body)).choices[0].message.content
        jsonschema.validate(json.loads(text or ""), SCHEMA)


async def test_required_tool_call_from_the_mocker(cluster) -> None:  # type: ignore[no-untyped-def]
    fe, _, model = cluster
    r = await fe.client().chat.completions.create(
        model=model, max_tokens=200, tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Bern\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_0", "content": "cold"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])  # type: ignore[union-attr]


async def test_bad_constraint_for_the_mocker_is_a_400_and_it_keeps_serving(cluster) -> None:  # type: ignore[no-untyped-def]
    fe, _, model = cluster
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(fe.url + "/v1/completions", json={"model": model, "prompt": "x",
                                                               "structured_outputs": {"regex": "[0-9]+"}})
        assert r.status_code == 400 and "regex" in r.json()["error"]["message"]
        ok = await client.post(fe.url + "/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 2})
        assert ok.status_code == 200


async def test_tokenize_round_trip(cluster) -> None:  # type: ignore[no-untyped-def]
    fe, _, model = cluster
    async with httpx.AsyncClient(timeout=30) as client:
        tok = (await client.post(fe.url + "/tokenize", json={"model": model, "prompt": "hello world"})).json()
        back = (await client.post(fe.url + "/detokenize", json={"model": model, "tokens": tok["tokens"]})).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and "hello world" in back["prompt"]
