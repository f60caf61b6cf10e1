"""The real app over real HTTP with the official openai client, against a scripted backend."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from dynamo.frontend.app import create_app
from dynamo.frontend.backend import NoWorkers, Overloaded, WorkerFailed
from dynamo.frontend.testing import Script, ScriptedBackend, ThreadedServer
from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import FinishReason, GenerateRequest, InvalidRequest

CONTEXT = 512
ANSWER = "The answer is 42. STOP! Then more text follows here."


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture()
def backend(model_dir: Path, hf) -> ScriptedBackend:  # type: ignore[no-untyped-def]
    card = ModelCard("tiny", str(model_dir), str(model_dir), context_length=CONTEXT,
                     kv_block_size=32, total_kv_blocks=64, vocab_size=1024)
    ids = hf.encode(ANSWER, add_special_tokens=False)
    return ScriptedBackend([card], Script(token_ids=ids, tokens_per_output=1, cached_tokens=3))


def _wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def test_chat_non_streaming(client: openai.OpenAI, backend: ScriptedBackend, hf) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is "},
                                             {"type": "text", "text": "the answer?"}]}]
    r = client.chat.completions.create(model="tiny", messages=messages)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ANSWER
    assert r.choices[0].finish_reason == "stop"
    sent = backend.requests[-1]
    rendered = hf.apply_chat_template(
        [{"role": "system", "content": "be brief"},
         {"role": "user", "content": "what is the answer?"}],
        add_generation_prompt=True, tokenize=False)
    assert sent.token_ids == hf.encode(rendered, add_special_tokens=False)
    assert sent.stop.max_tokens == CONTEXT - len(sent.token_ids)  # default: the rest of the context
    n_answer = len(hf.encode(ANSWER, add_special_tokens=False))
    assert r.usage.prompt_tokens == len(sent.token_ids)
    assert r.usage.completion_tokens == n_answer
    assert r.usage.total_tokens == len(sent.token_ids) + n_answer
    assert r.usage.prompt_tokens_details.cached_tokens == 3


def test_chat_streaming_with_usage(client: openai.OpenAI, backend: ScriptedBackend,
                                   hf) -> None:  # type: ignore[no-untyped-def]
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(hf.encode(ANSWER, add_special_tokens=False))
    assert usage.prompt_tokens_details.cached_tokens == 3
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens == len(backend.requests[-1].token_ids)
    assert backend.finished[-1] == backend.requests[-1].request_id


def test_completions_text_and_token_prompts(client: openai.OpenAI, backend: ScriptedBackend,
                                            hf) -> None:  # type: ignore[no-untyped-def]
    r = client.completions.create(model="tiny", prompt="def f():", max_tokens=5)
    ids = hf.encode(ANSWER, add_special_tokens=False)
    assert r.object == "text_completion"
    assert r.choices[0].text == hf.decode(ids[:5])
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert backend.requests[-1].token_ids == hf.encode("def f():")
    r = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3)
    assert backend.requests[-1].token_ids == [5, 6, 7] and r.usage.prompt_tokens == 3
    r = client.completions.create(model="tiny", prompt=["only one"], max_tokens=2)
    assert backend.requests[-1].token_ids == hf.encode("only one")


def test_completions_streaming_one_chunk_per_output(backend: ScriptedBackend,
                                                    server: ThreadedServer, hf) -> None:  # type: ignore[no-untyped-def]
    ids = hf.encode(ANSWER, add_special_tokens=False)
    backend.script = Script(token_ids=ids, tokens_per_output=8)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [orjson.loads(e[6:]) for e in events[:-1]]
    assert len(payloads) == math.ceil(len(ids) / 8)  # several tokens -> one chunk
    assert "".join(p["choices"][0]["text"] for p in payloads) == ANSWER
    assert all("usage" not in p for p in payloads)  # not asked for


def test_stop_string_truncates_and_cancels_the_worker(client: openai.OpenAI,
                                                      backend: ScriptedBackend,
                                                      hf) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "q"}],
                                       stop=["STOP"])
    assert r.choices[0].message.content == "The answer is 42. "
    assert r.choices[0].finish_reason == "stop"
    assert backend.closed == [backend.requests[-1].request_id]  # stream closed early
    chunks = list(client.completions.create(model="tiny", prompt="q", stop=["42.", "zzz"],
                                            stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == "The answer is "
    assert not any("4" in t for t in texts)  # the start of "42." was held back, never sent
    ids = hf.encode(ANSWER, add_special_tokens=False)
    kept = next(n for n in range(1, len(ids) + 1) if "42." in hf.decode(ids[:n]))
    assert chunks[-1].usage.completion_tokens == kept < len(ids)  # up to the stop string's end


def test_request_fields_reach_the_backend(client: openai.OpenAI, backend: ScriptedBackend) -> None:
    client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "q"}], max_completion_tokens=7,
        temperature=0.7, top_p=0.9, seed=11, presence_penalty=0.5, frequency_penalty=-0.5,
        user="someone", extra_body={"top_k": 5, "repetition_penalty": 1.1, "ignore_eos": True,
                                    "min_tokens": 2})
    req: GenerateRequest = backend.requests[-1]
    s = req.sampling
    assert (s.temperature, s.top_p, s.seed, s.top_k) == (0.7, 0.9, 11, 5)
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.5, -0.5, 1.1)
    assert req.stop.max_tokens == 7 and req.stop.min_tokens == 2 and req.stop.ignore_eos
    assert req.model == "tiny" and req.request_id.startswith("chatcmpl-")


def test_logprobs_in_openai_shape(client: openai.OpenAI, backend: ScriptedBackend, hf) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "q"}],
                                       max_tokens=3, logprobs=True, top_logprobs=2)
    assert backend.requests[-1].output.logprobs == 2
    content = r.choices[0].logprobs.content
    ids = hf.encode(ANSWER, add_special_tokens=False)[:3]
    assert [c.token for c in content] == [hf.decode([i]) for i in ids]
    assert all(c.logprob == -0.5 and len(c.top_logprobs) == 2 for c in content)
    assert content[0].bytes == list(content[0].token.encode())
    r = client.completions.create(model="tiny", prompt="q", max_tokens=3, logprobs=1)
    lp = r.choices[0].logprobs
    assert lp.tokens == [hf.decode([i]) for i in ids]
    assert lp.token_logprobs == [-0.5] * 3 and len(lp.top_logprobs) == 3
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "q"}], max_tokens=3, logprobs=True,
        stream=True))
    streamed = [t.token for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert streamed == [hf.decode([i]) for i in ids]


@pytest.mark.parametrize("failure,status,kind", [
    (Overloaded("all workers are busy"), 429, "rate_limit_exceeded"),
    (NoWorkers("no live worker for 'tiny'"), 503, "service_unavailable"),
    (InvalidRequest("sampling.top_k too large for this engine"), 400, "invalid_request_error"),
    (WorkerFailed("worker w1 died"), 502, "internal_error"),
])
def test_error_before_first_token_is_an_http_status(backend: ScriptedBackend,
                                                    server: ThreadedServer, failure: Exception,
                                                    status: int, kind: str) -> None:
    backend.script = Script(token_ids=[40, 41], fail_after_outputs=0, failure=failure)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for stream in (False, True):
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stream": stream})
            assert r.status_code == status, r.text
            assert r.json()["error"]["type"] == kind
            assert str(failure) in r.json()["error"]["message"]


def test_error_mid_stream_is_an_sse_error_event(backend: ScriptedBackend, server: ThreadedServer,
                                                client: openai.OpenAI) -> None:
    backend.script = Script(token_ids=list(range(40, 60)), fail_after_outputs=3,
                            failure=WorkerFailed("worker w1 died and migration is off"))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post("/v1/chat/completions", json={"model": "tiny", "stream": True,
                                                 "messages": [{"role": "user", "content": "x"}]})
    events = [e for e in r.text.split("\n\n") if e]
    assert r.status_code == 200
    last = orjson.loads(events[-1][6:])
    assert "migration is off" in last["error"]["message"] and "[DONE]" not in r.text
    with pytest.raises(openai.APIError, match="migration is off"):
        for _ in client.chat.completions.create(model="tiny", stream=True,
                                                messages=[{"role": "user", "content": "x"}]):
            pass
    # a stream that ends without a finish reason is an error too, not a silent success
    backend.script = Script(token_ids=[40, 41], finish=FinishReason.ERROR)
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 502


def test_client_disconnect_cancels_the_backend_stream(backend: ScriptedBackend,
                                                      server: ThreadedServer) -> None:
    backend.script = Script(token_ids=list(range(40, 60)), hang_after_outputs=2)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        with c.stream("POST", "/v1/completions",
                      json={"model": "tiny", "prompt": "x", "stream": True}) as r:
            first = next(r.iter_bytes())
            assert first.startswith(b"data: ")
    _wait_for(lambda: backend.requests and backend.closed == [backend.requests[-1].request_id])
    # non-streaming requests are cancelled too
    backend.script = Script(token_ids=[40], hang_after_outputs=0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x"},
                   timeout=0.5)
    _wait_for(lambda: len(backend.closed) == 2)


def test_models_and_health_follow_the_backend(backend: ScriptedBackend,
                                              server: ThreadedServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny"]
        assert c.get("/v1/models/tiny").json()["max_model_len"] == CONTEXT
        _wait_for(lambda: c.get("/health").status_code == 200, 60)  # once the tokenizer is preloaded
        assert c.get("/health").json() == {"status": "healthy", "models": ["tiny"], "ready": ["tiny"]}
        backend.no_workers.add("tiny")  # its last worker went away
        assert c.get("/v1/models").json()["data"] == []
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["models"] == []
        assert c.get("/live").status_code == 200
        backend.no_workers.clear()
        assert c.get("/health").status_code == 200


def test_metrics(client: openai.OpenAI, server: ThreadedServer, backend: ScriptedBackend) -> None:
    for _ in range(2):
        list(client.completions.create(model="tiny", prompt="q", max_tokens=4, stream=True))
    text = httpx.get(server.url + "/metrics").text

    def value(prefix: str) -> float:
        line = next(l for l in text.splitlines() if l.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])
    assert value('dynamo_frontend_requests_total{endpoint="completions",model="tiny",'
                 'status="200"}') == 2
    assert value('dynamo_frontend_output_tokens_total{model="tiny"}') == 8
    assert value('dynamo_frontend_time_to_first_token_seconds_count{model="tiny"}') == 2
    assert value('dynamo_frontend_inter_token_latency_seconds_count{model="tiny"}') == 6
    assert value('dynamo_frontend_inflight_requests{model="tiny"}') == 0
    assert value('dynamo_frontend_request_duration_seconds_count{endpoint="completions",'
                 'model="tiny"}') == 2
    # every app has its own registry: a second app in the same process starts from zero
    second = create_app(backend)
    assert b"dynamo_frontend_requests_total{" not in second.state.frontend.metrics.render()
