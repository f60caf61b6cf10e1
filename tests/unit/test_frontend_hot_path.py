"""The frontend's per-request hot path: generate POSTs skip Starlette's routing, prompts are
tokenized in batches off the event loop, serving processes collect garbage less often."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dynamo.frontend.app import create_app
from dynamo.frontend.testing import Script, ScriptedBackend, ThreadedServer, serve_in_thread
from dynamo.frontend.tokenizer import BatchEncoder, ModelTokenizer
from dynamo.llm.model_card import ModelCard

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> ModelTokenizer:
    from transformers import AutoTokenizer
    return ModelTokenizer(hf=AutoTokenizer.from_pretrained(str(tiny_model_dir)), chat_template=None)


class _CountingStack:
    """Stands in for Starlette's middleware stack and counts the requests that went through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.inner(scope, receive, send)


@pytest.fixture()
def served(tiny_model_dir: Path) -> Iterator[tuple[ThreadedServer, Any, _CountingStack]]:
    card = ModelCard("tiny", str(tiny_model_dir), str(tiny_model_dir), context_length=512,
                     kv_block_size=32, total_kv_blocks=64, vocab_size=1024)
    app = create_app(ScriptedBackend([card], Script(token_ids=[300, 301, 302, 303], tokens_per_output=1)))
    stack = _CountingStack(app.build_middleware_stack())
    app.middleware_stack = stack
    with serve_in_thread(app) as server:
        yield server, app, stack


def test_generate_posts_go_straight_to_their_handlers(served: tuple[ThreadedServer, Any, _CountingStack]) -> None:
    server, _app, stack = served
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert s.status_code == 200 and events[-1] == "data: [DONE]" and len(events) >= 3
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        assert stack.paths == []  # none of them went through Starlette's stack
        assert http.get("/v1/models").status_code == 200
        assert http.post("/tokenize", json={"model": "tiny", "prompt": "hi"}).status_code == 200
        assert http.get("/v1/chat/completions").status_code == 405  # other methods: Starlette's answer
    assert stack.paths == ["/v1/models", "/tokenize", "/v1/chat/completions"]


def test_an_error_escaping_a_generate_handler_is_a_json_500(served: tuple[ThreadedServer, Any, _CountingStack]) -> None:
    server, app, _stack = served

    async def broken(_request: Any) -> Any:
        raise RuntimeError("handler bug")
    app.generate_routes = {**app.generate_routes, "/v1/chat/completions": broken}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "internal_error" and "handler bug" in r.json()["error"]["message"]
        assert http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1}).status_code == 200


def test_prompts_are_tokenized_in_batches_off_the_loop(tok: ModelTokenizer) -> None:
    texts = [f"request {i}: " + " ".join(f"w{(i * 31 + j) % 997}" for j in range(i % 40)) for i in range(64)]
    calls: list[tuple[int, str]] = []

    class Recording:
        """The real tokenizer, recording each batch call and the thread that made it."""

        def encode_batch_fast(self, batch: list[str], add_special_tokens: bool) -> Any:
            calls.append((len(batch), threading.current_thread().name))
            return tok.fast.encode_batch_fast(batch, add_special_tokens=add_special_tokens)

    async def main() -> list[list[int]]:
        encoder = BatchEncoder(Recording())
        return await asyncio.gather(*(encoder.encode(t, i % 2 == 0) for i, t in enumerate(texts)))

    got = asyncio.run(main())
    assert got == [tok.encode(t, add_special_tokens=i % 2 == 0) for i, t in enumerate(texts)]
    assert sum(n for n, _ in calls) == len(texts)
    assert len(calls) < len(texts)  # those that waited together went in one call (a call per special-tokens flag)
    assert all(name != threading.main_thread().name for _, name in calls)


def test_a_cancelled_prompt_does_not_disturb_the_others_and_errors_stay_with_their_prompt(tok: ModelTokenizer) -> None:
    class Picky:
        def encode_batch_fast(self, batch: list[str], add_special_tokens: bool) -> Any:
            if any("boom" in t for t in batch):
                raise ValueError("cannot tokenize this batch")
            return tok.fast.encode_batch_fast(batch, add_special_tokens=add_special_tokens)

        def encode(self, text: str, add_special_tokens: bool) -> Any:
            if "boom" in text:
                raise ValueError("cannot tokenize 'boom'")
            return tok.fast.encode(text, add_special_tokens=add_special_tokens)

    async def main() -> tuple[Any, ...]:
        encoder = BatchEncoder(Picky())
        first = encoder.encode("warm up", False)  # in flight: the next three wait and go together
        gone = encoder.encode("nobody waits for this", False)
        bad = encoder.encode("boom", False)
        good = encoder.encode("hello there", False)
        gone.cancel()
        results = await asyncio.gather(first, bad, good, return_exceptions=True)
        later = await asyncio.wait_for(encoder.encode("still serving", True), 10)
        return (*results, later)

    first, bad, good, later = asyncio.run(main())
    assert first == tok.encode("warm up", add_special_tokens=False)
    assert isinstance(bad, ValueError) and "boom" in str(bad)
    assert good == tok.encode("hello there", add_special_tokens=False)
    assert later == tok.encode("still serving", add_special_tokens=True)


def _thresholds_in_a_serving_process(value: str | None) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "DYN_GC_THRESHOLD"}
    if value is not None:
        env["DYN_GC_THRESHOLD"] = value
    code = ("import gc, json; default = gc.get_threshold(); from dynamo.runtime.gc_heap import freeze_startup_heap;"
            "freeze_startup_heap(); print(json.dumps([default, gc.get_threshold()]))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 else out.stderr


def test_serving_processes_raise_the_collectors_thresholds() -> None:
    default, serving = _thresholds_in_a_serving_process(None)
    assert serving == [50_000, 20, 10] and default != serving
    assert _thresholds_in_a_serving_process("20000,5,5")[1] == [20_000, 5, 5]
    default, kept = _thresholds_in_a_serving_process("default")
    assert kept == default
    assert "DYN_GC_THRESHOLD" in _thresholds_in_a_serving_process("lots")  # a bad value is refused by name
