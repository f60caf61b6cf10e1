"""The wider OpenAI surface (#19) over real HTTP against a scripted backend (a double of the
workers): n > 1, best_of, echo, suffix, logit_bias, seeds, continuous usage, structured outputs
and tool_choice carried as constraints, tool history rendered through the template, and
/tokenize + /detokenize."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from dynamo.frontend.app import create_app
from dynamo.frontend.backend import WorkerFailed
from dynamo.frontend.testing import Script, ScriptedBackend, ThreadedServer, serve_in_thread
from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import GenerateRequest, StructuredKind

CONTEXT = 512
ANSWER = "The answer is 42."


def _card(model_dir: Path, **extra: Any) -> ModelCard:
    return ModelCard("tiny", str(model_dir), str(model_dir), context_length=CONTEXT, kv_block_size=32,
                     total_kv_blocks=64, vocab_size=1024, **extra)


@pytest.fixture()
def backend(tiny_model_dir: Path, hf) -> ScriptedBackend:  # type: ignore[no-untyped-def]
    return ScriptedBackend([_card(tiny_model_dir)],
                           Script(token_ids=hf.encode(ANSWER, add_special_tokens=False), cached_tokens=2))


def _post(server: ThreadedServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=10)


def _error(server: ThreadedServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


# --- n, seeds, best_of ----------------------------------------------------------------------

def test_n_choices_non_streaming_carry_index_and_seeds(client: openai.OpenAI, backend: ScriptedBackend) -> None:
    r = client.chat.completions.create(model="tiny", messages=CHAT["messages"], n=3, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == ANSWER for c in r.choices)
    sent = backend.requests[-3:]
    assert sorted(q.sampling.seed for q in sent) == [7, 8, 9]  # vLLM's rule: seed + index
    assert len({q.request_id for q in sent}) == 3 and all(q.request_id.startswith(r.id) for q in sent)
    per_choice = len(backend.script.token_ids)  # type: ignore[union-attr]
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(sent[0].token_ids)  # the prompt counts once
    assert r.usage.completion_tokens == 3 * per_choice


def test_n_choices_stream_interleave_and_each_finishes(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="tiny", prompt="hello", n=2, stream=True,
                                       stream_options={"include_usage": True})
    texts: dict[int, str] = {0: "", 1: ""}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {0: ANSWER, 1: ANSWER}
    assert finishes == {0: "stop", 1: "stop"}
    assert usage is not None and usage.completion_tokens == 2 * (usage.completion_tokens // 2) > 0


def test_chat_stream_n2_sends_a_role_per_choice(server: ThreadedServer) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=10,
                      json={**CHAT, "n": 2, "stream": True}) as r:
        events = [orjson.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    roles = [c["index"] for e in events for c in e["choices"] if c["delta"].get("role") == "assistant"]
    assert sorted(roles) == [0, 1]


def test_best_of_returns_the_most_likely_candidates(tiny_model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    ids = hf.encode("one two three four five six", add_special_tokens=False)
    lengths = {"0": len(ids), "1": 2, "2": 4}  # every token costs -0.5: the shortest is most likely

    def script(request: GenerateRequest) -> Script:
        return Script(token_ids=ids[:lengths[request.request_id.rsplit("-", 1)[1]]])
    backend = ScriptedBackend([_card(tiny_model_dir)], script)
    with serve_in_thread(create_app(backend)) as srv:
        body = _post(srv, "/v1/completions", {"model": "tiny", "prompt": "x", "best_of": 3, "n": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["text"] for c in body["choices"]] == [hf.decode(ids[:2]), hf.decode(ids[:4])]
    assert all(c["logprobs"] is None for c in body["choices"])  # asked of the worker, not by the client
    assert {q.output.logprobs for q in backend.requests} == {0}


def _wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def test_client_gone_cancels_every_choice(backend: ScriptedBackend, server: ThreadedServer) -> None:
    backend.script = Script(token_ids=list(range(40, 60)), hang_after_outputs=2)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        with c.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "x", "n": 3, "stream": True}) as r:
            assert next(r.iter_bytes()).startswith(b"data: ")
    _wait_for(lambda: sorted(backend.closed) == sorted(q.request_id for q in backend.requests[-3:]))


def test_one_choice_failing_fails_the_request_and_cancels_the_others(tiny_model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    ids = hf.encode(ANSWER, add_special_tokens=False)

    def script(request: GenerateRequest) -> Script:
        if request.request_id.endswith("-1"):
            return Script(token_ids=ids, fail_after_outputs=1, failure=WorkerFailed("worker died"))
        return Script(token_ids=ids, hang_after_outputs=2)
    backend = ScriptedBackend([_card(tiny_model_dir)], script)
    with serve_in_thread(create_app(backend)) as srv:
        r = _post(srv, "/v1/completions", {"model": "tiny", "prompt": "x", "n": 3})
        assert r.status_code == 502 and "worker died" in r.json()["error"]["message"]
        _wait_for(lambda: len(backend.closed) == 3)  # the failed one and the two hanging ones
        with httpx.stream("POST", srv.url + "/v1/completions", timeout=10,
                          json={"model": "tiny", "prompt": "x", "n": 3, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert s.status_code == 200 and "worker died" in lines[-1]  # the error event ends the stream


@pytest.mark.parametrize("body, param", [
    ({"best_of": 1, "n": 2}, "best_of"),
    ({"best_of": 3, "stream": True}, "best_of"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"suffix": "tail"}, "suffix"),
    ({"echo": True, "logprobs": 1}, "echo"),
])
def test_completion_choice_rules(server: ThreadedServer, body: dict[str, Any], param: str) -> None:
    assert _error(server, "/v1/completions", {"model": "tiny", "prompt": "x", **body})["param"] == param


# --- echo, logit_bias, continuous usage -------------------------------------------------------

def test_echo_prepends_the_prompt(client: openai.OpenAI, hf) -> None:  # type: ignore[no-untyped-def]
    r = client.completions.create(model="tiny", prompt="Say it:", echo=True)
    assert r.choices[0].text == "Say it:" + ANSWER
    ids = hf.encode("Say it:", add_special_tokens=False)
    r = client.completions.create(model="tiny", prompt=ids, echo=True)
    assert r.choices[0].text == hf.decode(ids) + ANSWER
    text = "".join(c.choices[0].text for c in
                   client.completions.create(model="tiny", prompt="Say it:", echo=True, stream=True))
    assert text == "Say it:" + ANSWER


def test_logit_bias_reaches_the_worker(client: openai.OpenAI, backend: ScriptedBackend,
                                       server: ThreadedServer) -> None:
    client.chat.completions.create(model="tiny", messages=CHAT["messages"], logit_bias={"5": 10, "7": -100})
    assert backend.requests[-1].sampling.logit_bias == {5: 10.0, 7: -100.0}
    assert _error(server, "/v1/chat/completions", {**CHAT, "logit_bias": {"x": 1}})["param"] == "logit_bias"
    assert _error(server, "/v1/chat/completions", {**CHAT, "logit_bias": {"5": 101}})["param"] == "logit_bias"
    error = _error(server, "/v1/chat/completions", {**CHAT, "logit_bias": {"5000": 1}})
    assert "outside the vocabulary" in error["message"]


def test_continuous_usage_on_every_chunk(server: ThreadedServer) -> None:
    with httpx.stream("POST", server.url + "/v1/completions", timeout=10, json={
            "model": "tiny", "prompt": "x", "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}) as r:
        events = [orjson.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    counts = [e["usage"]["completion_tokens"] for e in events if e["choices"]]
    assert counts == sorted(counts) and counts[-1] > counts[0] >= 1
    assert all(e["usage"] is not None for e in events)


# --- structured outputs and tool_choice as constraints ----------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("extra, kind, value", [
    ({"response_format": {"type": "json_object"}}, StructuredKind.JSON_OBJECT, ""),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}},
     StructuredKind.JSON_SCHEMA, SCHEMA),
    ({"guided_json": json.dumps(SCHEMA)}, StructuredKind.JSON_SCHEMA, SCHEMA),
    ({"guided_choice": ["yes", "no"]}, StructuredKind.CHOICE, ["yes", "no"]),
    ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredKind.REGEX, "[0-9]+"),
    ({"structured_outputs": {"grammar": "root ::= \"a\""}}, StructuredKind.GRAMMAR, "root ::= \"a\""),
])
def test_structured_output_reaches_the_worker(server: ThreadedServer, backend: ScriptedBackend,
                                              extra: dict[str, Any], kind: StructuredKind, value: Any) -> None:
    r = _post(server, "/v1/chat/completions", {**CHAT, **extra})
    assert r.status_code == 200, r.text
    constraint = backend.requests[-1].structured_output
    assert constraint is not None and constraint.kind is kind
    assert (json.loads(constraint.value) if isinstance(value, (dict, list)) else constraint.value) == value


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "a+", "response_format": {"type": "json_object"}}, "guided_regex"),
])
def test_bad_structured_output_is_a_400(server: ThreadedServer, extra: dict[str, Any], param: str) -> None:
    assert _error(server, "/v1/chat/completions", {**CHAT, **extra})["param"] == param


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def test_named_tool_choice_constrains_to_its_arguments(tiny_model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    args = '{"city": "Paris"}'
    backend = ScriptedBackend([_card(tiny_model_dir)], Script(token_ids=hf.encode(args, add_special_tokens=False)))
    with serve_in_thread(create_app(backend)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=10)
        r = client.chat.completions.create(model="tiny", messages=CHAT["messages"], tools=[WEATHER, CLOCK],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        constraint = backend.requests[-1].structured_output
        assert constraint is not None and json.loads(constraint.value) == WEATHER["function"]["parameters"]
        call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        assert r.choices[0].message.content is None and r.choices[0].finish_reason == "stop"
        streamed = "".join(d.function.arguments or "" for c in client.chat.completions.create(
            model="tiny", messages=CHAT["messages"], tools=[WEATHER], stream=True,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
            for ch in c.choices for d in (ch.delta.tool_calls or []))
        assert json.loads(streamed) == {"city": "Paris"}


def test_required_tool_choice_returns_every_call(tiny_model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    calls = '[{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_time", "parameters": {}}]'
    backend = ScriptedBackend([_card(tiny_model_dir)], Script(token_ids=hf.encode(calls, add_special_tokens=False)))
    with serve_in_thread(create_app(backend)) as srv:
        body = _post(srv, "/v1/chat/completions", {**CHAT, "tools": [WEATHER, CLOCK], "tool_choice": "required",
                                                   "parallel_tool_calls": False}).json()
    schema = json.loads(backend.requests[-1].structured_output.value)  # type: ignore[union-attr]
    assert schema["type"] == "array" and schema["maxItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    choice = body["choices"][0]
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice["message"]["tool_calls"]]
    assert got == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": "auto"}, "tool_choice"),  # no tools
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [WEATHER]}, "tool_choice"),  # auto needs a parser; none is configured here
])
def test_bad_tools_are_400s(server: ThreadedServer, extra: dict[str, Any], param: str) -> None:
    assert _error(server, "/v1/chat/completions", {**CHAT, **extra})["param"] == param


def test_tool_history_renders_through_the_template(server: ThreadedServer, backend: ScriptedBackend,
                                                   hf) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = _post(server, "/v1/chat/completions", {"model": "tiny", "messages": messages, "tools": [WEATHER],
                                                "tool_choice": "none"})
    assert r.status_code == 200, r.text
    expected = hf.apply_chat_template(
        [messages[0], {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
        tools=[WEATHER], add_generation_prompt=True, tokenize=False)
    assert backend.requests[-1].token_ids == hf.encode(expected, add_special_tokens=False)
    missing_id = [messages[0], {"role": "tool", "content": "sunny"}]
    assert _error(server, "/v1/chat/completions", {"model": "tiny", "messages": missing_id})["param"] == \
        "messages[1].tool_call_id"


# --- /tokenize and /detokenize -----------------------------------------------------------------

def test_tokenize_matches_what_a_request_sends(server: ThreadedServer, backend: ScriptedBackend, hf) -> None:  # type: ignore[no-untyped-def]
    body = _post(server, "/tokenize", {"model": "tiny", "prompt": "hello world"}).json()
    assert body["tokens"] == hf.encode("hello world") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == CONTEXT and body["token_strs"] is None
    _post(server, "/v1/chat/completions", CHAT)
    chat = _post(server, "/tokenize", {"model": "tiny", "messages": CHAT["messages"],
                                       "return_token_strs": True}).json()
    assert chat["tokens"] == backend.requests[-1].token_ids
    assert len(chat["token_strs"]) == chat["count"]
    back = _post(server, "/detokenize", {"model": "tiny", "tokens": body["tokens"]}).json()
    assert back["prompt"] == hf.decode(body["tokens"])


@pytest.mark.parametrize("path, body, status", [
    ("/tokenize", {"model": "tiny"}, 400),
    ("/tokenize", {"model": "tiny", "prompt": "a", "messages": []}, 400),
    ("/tokenize", {"model": "nope", "prompt": "a"}, 404),
    ("/detokenize", {"model": "tiny", "tokens": [1, "x"]}, 400),
    ("/detokenize", {"model": "tiny", "tokens": [10**6]}, 400),
])
def test_tokenize_errors(server: ThreadedServer, path: str, body: dict[str, Any], status: int) -> None:
    r = _post(server, path, body)
    assert r.status_code == status and r.json()["error"]["message"]


# --- parsers on the request path: tool_choice auto and reasoning --------------------------------

HERMES_OUTPUT = ('<think>the user wants weather</think>Let me check.<tool_call>\n'
                 '{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>')


@pytest.fixture()
def parsing_server(tiny_model_dir: Path, hf) -> Iterator[tuple[ThreadedServer, ScriptedBackend]]:  # type: ignore[no-untyped-def]
    card = _card(tiny_model_dir, tool_call_parser="hermes", reasoning_parser="deepseek_r1")
    backend = ScriptedBackend([card], Script(token_ids=hf.encode(HERMES_OUTPUT, add_special_tokens=False),
                                             tokens_per_output=2))
    with serve_in_thread(create_app(backend)) as srv:
        yield srv, backend


def test_auto_tool_calls_and_reasoning_from_the_model_card(parsing_server: tuple[ThreadedServer, ScriptedBackend]) -> None:
    srv, _ = parsing_server
    body = _post(srv, "/v1/chat/completions", {**CHAT, "tools": [WEATHER]}).json()
    message, finish = body["choices"][0]["message"], body["choices"][0]["finish_reason"]
    assert message["reasoning_content"] == "the user wants weather" == message["reasoning"]
    assert message["content"] == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == \
        [("get_weather", {"city": "Lyon"})]
    assert message["tool_calls"][0]["id"].startswith("call_") and finish == "tool_calls"

    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=10)
    reasoning, content, args, name, finishes = "", "", "", None, []
    for chunk in client.chat.completions.create(model="tiny", messages=CHAT["messages"], tools=[WEATHER],
                                                stream=True):
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        for call in delta.tool_calls or []:
            name = name or call.function.name  # type: ignore[union-attr]
            args += call.function.arguments or ""  # type: ignore[union-attr]
        finishes.append(chunk.choices[0].finish_reason)
    assert (reasoning, content, name, json.loads(args)) == ("the user wants weather", "Let me check.", "get_weather",
                                                           {"city": "Lyon"})
    assert [f for f in finishes if f] == ["tool_calls"]


def test_tool_choice_none_leaves_the_text_alone(parsing_server: tuple[ThreadedServer, ScriptedBackend]) -> None:
    srv, backend = parsing_server
    body = _post(srv, "/v1/chat/completions", {**CHAT, "tools": [WEATHER], "tool_choice": "none"}).json()
    message = body["choices"][0]["message"]
    assert "<tool_call>" in message["content"] and "tool_calls" not in message
    assert message["reasoning_content"] == "the user wants weather"  # reasoning is split whatever the tools
    assert body["choices"][0]["finish_reason"] == "stop"
    assert backend.requests[-1].structured_output is None


def test_frontend_flag_overrides_the_card(tiny_model_dir: Path, hf) -> None:  # type: ignore[no-untyped-def]
    backend = ScriptedBackend([_card(tiny_model_dir, tool_call_parser="nonesuch")],
                              Script(token_ids=hf.encode(HERMES_OUTPUT, add_special_tokens=False)))
    with serve_in_thread(create_app(backend)) as srv:
        bad = _post(srv, "/v1/chat/completions", {**CHAT, "tools": [WEATHER]})
        assert bad.status_code == 500 and "nonesuch" in bad.json()["error"]["message"]
    with serve_in_thread(create_app(backend, tool_call_parser="hermes", reasoning_parser="qwen3")) as srv:
        message = _post(srv, "/v1/chat/completions", {**CHAT, "tools": [WEATHER]}).json()["choices"][0]["message"]
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"
        assert message["reasoning_content"] == "the user wants weather"
