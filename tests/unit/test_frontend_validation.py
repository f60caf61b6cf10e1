"""Malformed requests get 4xx with OpenAI's error JSON, and the server keeps serving."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo.frontend.app import create_app
from dynamo.frontend.testing import Script, ScriptedBackend, ThreadedServer, serve_in_thread
from dynamo.llm.model_card import ModelCard

CONTEXT = 256
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> ScriptedBackend:
    card = ModelCard("tiny", str(model_dir), str(model_dir), context_length=CONTEXT,
                     kv_block_size=32, total_kv_blocks=64, vocab_size=1024)
    down = ModelCard("down", str(model_dir), str(model_dir), context_length=CONTEXT,
                     kv_block_size=32, total_kv_blocks=64, vocab_size=1024)
    b = ScriptedBackend([card, down], Script(token_ids=[40, 41, 42, 43], tokens_per_output=2))
    b.no_workers.add("down")
    return b


@pytest.fixture(scope="module")
def server(backend: ScriptedBackend) -> Iterator[ThreadedServer]:
    with serve_in_thread(create_app(backend, max_body_bytes=64 * 1024)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": MSG, **fields}


def _cmpl(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": "hi", **fields}


def _assert_error(r: httpx.Response, status: int, param: str | None, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert words.lower() in err["message"].lower(), err["message"]
    assert err["param"] == param
    if status == 400:
        assert err["type"] == "invalid_request_error"


def _still_serving(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=_chat(max_tokens=4))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"


CHAT_CASES = [
    # (body, param, words in the message)
    ([], None, "JSON object"),
    ("hello", None, "JSON object"),
    ({"messages": MSG}, "model", "required"),
    (_chat(model=5), "model", "string"),
    (_chat(model=""), "model", "non-empty"),
    ({"model": "tiny"}, "messages", "required"),
    (_chat(messages=[]), "messages", "non-empty"),
    (_chat(messages="hi"), "messages", "array"),
    (_chat(messages=[1]), "messages[0]", "object"),
    (_chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "one of"),
    (_chat(messages=[{"content": "x"}]), "messages[0].role", "one of"),
    (_chat(messages=[{"role": "user", "content": 5}]), "messages[0].content", "string"),
    (_chat(messages=[{"role": "user"}]), "messages[0].content", "required"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0]", "text only"),
    (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
     "messages[0].content[0].text", "string"),
    (_chat(max_tokens="10"), "max_tokens", "integer"),
    (_chat(max_tokens=0), "max_tokens", ">= 1"),
    (_chat(max_tokens=-5), "max_tokens", ">= 1"),
    (_chat(max_tokens=1.5), "max_tokens", "integer"),
    (_chat(max_tokens=True), "max_tokens", "integer"),
    (_chat(max_tokens=10**9), "max_tokens", "context"),
    (_chat(max_completion_tokens=CONTEXT), "max_completion_tokens", "context"),
    (_chat(temperature=-1), "temperature", ">= 0"),
    (_chat(temperature="hot"), "temperature", "number"),
    (_chat(temperature=3), "temperature", "<= 2"),
    (_chat(top_p=0), "top_p", "> 0"),
    (_chat(top_p=1.5), "top_p", "<= 1"),
    (_chat(n=200), "n", "<= 128"),
    (_chat(messages=[{"role": {}, "content": "x"}]), "messages[0].role", "must be one of"),  # was a 500 (schemathesis)
    (_chat(n="2"), "n", "integer"),
    (_chat(stop=5), "stop", "string"),
    (_chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (_chat(stop=[""]), "stop", "empty"),
    (_chat(stop=["a", 1]), "stop", "string"),
    (_chat(seed="x"), "seed", "integer"),
    (_chat(seed=2**64), "seed", "<="),
    (_chat(presence_penalty=3), "presence_penalty", "<= 2"),
    (_chat(frequency_penalty=-3), "frequency_penalty", ">= -2"),
    (_chat(logprobs="yes"), "logprobs", "boolean"),
    (_chat(logprobs=True, top_logprobs=50), "top_logprobs", "<= 20"),
    (_chat(top_logprobs=2), "top_logprobs", "requires"),
    (_chat(stream="yes"), "stream", "boolean"),
    (_chat(stream_options={"include_usage": True}), "stream_options", "stream"),
    (_chat(stream=True, stream_options=5), "stream_options", "object"),
    (_chat(stream=True, stream_options={"include_usage": "y"}), "include_usage", "boolean"),
    (_chat(ignore_eos=1), "ignore_eos", "boolean"),
    (_chat(min_tokens=-1), "min_tokens", ">= 0"),
    (_chat(min_tokens=10, max_tokens=5), "min_tokens", "exceed"),
    (_chat(top_k=-2), "top_k", ">= -1"),
    # past the protocol's field widths: the client's error, naming the field (never a 500)
    (_chat(top_k=2**31), "top_k", f"<= {2**31 - 1}"),
    (_chat(top_k=3e9), "top_k", f"<= {2**31 - 1}"),
    (_chat(stop_token_ids=[2**32]), "stop_token_ids", "0..4294967295"),
    (_chat(stop_token_ids=[1] * 257), "stop_token_ids", "at most 256"),
    (_chat(max_tokens=2**32), "max_tokens", "<= 4294967295"),
    (_chat(max_completion_tokens=2**40), "max_completion_tokens", "<="),
    (_chat(min_tokens=2**32), "min_tokens", "<="),
    (_chat(repetition_penalty=0), "repetition_penalty", "> 0"),
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tool_choice", "needs a tool-call parser"),
    (_chat(tools=[{"type": "function"}]), "tools[0].function", "object"),
    (_chat(logit_bias={"5": "1"}), "logit_bias", "number in [-100, 100]"),
    (_chat(response_format={"type": "yaml"}), "response_format.type", "one of"),
    (_chat(messages=[{"role": "user", "content": "word " * 2000}]), "messages", "context is"),
]

COMPLETION_CASES = [
    ({"model": "tiny"}, "prompt", "required"),
    (_cmpl(prompt=["a", "b"]), "prompt", "only one prompt per request is supported"),
    (_cmpl(prompt=[[1, 2], [3]]), "prompt", "only one prompt per request is supported"),
    (_cmpl(prompt=[]), "prompt", "non-empty"),
    (_cmpl(prompt=""), "prompt", "empty"),
    (_cmpl(prompt=[1, "a"]), "prompt", "token ids"),
    (_cmpl(prompt=5), "prompt", "string"),
    (_cmpl(prompt=[5000]), "prompt", "outside the vocabulary"),
    (_cmpl(prompt=[-1]), "prompt", "non-negative"),
    (_cmpl(prompt=[7] * CONTEXT), "prompt", f"prompt has {CONTEXT} tokens"),
    (_cmpl(max_tokens=CONTEXT), "max_tokens", "context"),
    (_cmpl(logprobs=100), "logprobs", "<= 20"),
    (_cmpl(logprobs=True), "logprobs", "integer"),
    (_cmpl(echo=True, logprobs=1), "echo", "logprobs"),
    (_cmpl(best_of=3, n=4), "best_of", ">= 'n'"),
    (_cmpl(top_k=2147483648, stream=True), "top_k", "<="),
    (_cmpl(stop_token_ids=[2**32], stream=True), "stop_token_ids", "token ids"),
    (_cmpl(prompt=[2**40]), "prompt", "outside the vocabulary"),
]


@pytest.mark.parametrize("body,param,words", CHAT_CASES)
def test_bad_chat_request(client: httpx.Client, body: Any, param: str | None, words: str) -> None:
    _assert_error(client.post("/v1/chat/completions", json=body), 400, param, words)
    _still_serving(client)


@pytest.mark.parametrize("body,param,words", COMPLETION_CASES)
def test_bad_completion_request(client: httpx.Client, body: Any, param: str | None,
                                words: str) -> None:
    _assert_error(client.post("/v1/completions", json=body), 400, param, words)
    _still_serving(client)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b'{"model": "tiny", "temperature": NaN}',
                                 b'{"model": "tiny", "temperature": 1e400}', b"\xff\xfe",
                                 b'{"model": "tiny"'])
def test_invalid_json(client: httpx.Client, raw: bytes) -> None:
    r = client.post("/v1/chat/completions", content=raw,
                    headers={"content-type": "application/json"})
    _assert_error(r, 400, None, "not valid JSON")
    _still_serving(client)


def test_unknown_model_is_404_and_lists_served_models(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=_chat(model="gpt-17"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["type"] == "model_not_found"
    assert "gpt-17" in err["message"] and "tiny" in err["message"]
    _still_serving(client)


def test_model_without_workers_is_503(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json=_cmpl(model="down"))
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "service_unavailable"
    _still_serving(client)


def test_body_too_large_is_413(client: httpx.Client, server: ThreadedServer) -> None:
    big = _chat(messages=[{"role": "user", "content": "x" * (80 * 1024)}])
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'
    r = client.post("/v1/chat/completions", content=chunks())
    assert r.status_code == 413
    _still_serving(client)


def test_unknown_route_and_wrong_method(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={})
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]
    _still_serving(client)


def test_api_key_required_when_configured(backend: ScriptedBackend) -> None:
    with serve_in_thread(create_app(backend, api_key="sekrit")) as srv, \
            httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.post("/v1/chat/completions", json=_chat(max_tokens=2))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = c.post("/v1/chat/completions", json=_chat(max_tokens=2),
                   headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "incorrect" in r.json()["error"]["message"]
        assert c.get("/v1/models").status_code == 401
        # probes stay open for the orchestrator
        assert c.get("/health").status_code == 200 and c.get("/live").status_code == 200
        ok = {"Authorization": "Bearer sekrit"}
        r = c.post("/v1/chat/completions", json=_chat(max_tokens=2), headers=ok)
        assert r.status_code == 200
        assert c.get("/v1/models", headers=ok).json()["data"][0]["id"] == "tiny"


def test_errors_are_counted_in_metrics(client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json=_chat(n=3))
    text = client.get("/metrics").text
    line = next(l for l in text.splitlines() if l.startswith("dynamo_frontend_requests_total{")
                and 'status="400"' in l and 'endpoint="chat_completions"' in l)
    assert float(line.rsplit(" ", 1)[1]) >= 1


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": "a " * 30_000}])),
    ("/v1/completions", _cmpl(prompt="a " * 30_000)),
])
def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(client: httpx.Client, path: str, body: Any) -> None:
    """Refused by its length in characters (no token is longer than the vocabulary's longest), the
    message says so: megabytes of text never reach the tokenizer and stall the event loop."""
    _assert_error(client.post(path, json=body), 400, "messages" if "chat" in path else "prompt", "characters")
    _still_serving(client)


def test_a_prompt_under_the_character_bound_is_tokenized_and_checked_exactly(client: httpx.Client) -> None:
    # 1,000 characters could fit 256 tokens by length alone; tokenized, it does not
    _assert_error(client.post("/v1/completions", json=_cmpl(prompt="a " * 500)), 400, "prompt", "prompt has")


def _requests_by_status(client: httpx.Client) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("dynamo_frontend_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.parametrize("raw", [
    # announces 1,000 bytes of body, sends 10, hangs up
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    b'{"model": ',
    # a chunked body cut off mid-chunk
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n40\r\n{\"model\": \"tiny\"",
], ids=["mid-body", "mid-chunk"])
def test_a_client_gone_mid_body_is_not_a_server_error(client: httpx.Client, server: ThreadedServer, raw: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Counted apart (499), logged at info: anyone could otherwise inflate the 5xx metric and flood
    the logs with tracebacks."""
    before = _requests_by_status(client)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(raw)
    deadline = time.monotonic() + 10
    while _requests_by_status(client).get("499", 0) == before.get("499", 0):
        assert time.monotonic() < deadline, f"no 499 counted: {_requests_by_status(client)}"
        time.sleep(0.05)
    after = _requests_by_status(client)
    assert after.get("500", 0) == before.get("500", 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("dynamo")]
    _still_serving(client)


def test_models_are_listed_once_they_can_be_served(model_dir: Path) -> None:
    """A model is listed only with its tokenizer loaded (the first request does not wait for it);
    one whose tokenizer cannot load is left out, and /health says why."""
    good = ModelCard("tiny", str(model_dir), str(model_dir), context_length=CONTEXT, kv_block_size=32,
                     total_kv_blocks=64, vocab_size=1024)
    broken = ModelCard("broken", "/no/such/model", "/no/such/model", context_length=CONTEXT, kv_block_size=32,
                       total_kv_blocks=64, vocab_size=1024)
    app = create_app(ScriptedBackend([good, broken], Script(token_ids=[40, 41])))
    with serve_in_thread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        deadline = time.monotonic() + 30
        while not (listed := [m["id"] for m in c.get("/v1/models").json()["data"]]):
            assert time.monotonic() < deadline, "the model was never listed"
        assert listed == ["tiny"]
        assert app.state.frontend.tokenizers.is_loaded(good)
        health = c.get("/health").json()
        assert health["ready"] == ["tiny"] and set(health["models"]) == {"tiny", "broken"}
