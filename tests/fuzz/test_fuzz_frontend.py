"""Hypothesis against a real frontend process over a mocker worker (the whole path: schemas,
tokenizer, protocol messages, gRPC): request bodies valid and invalid, field by field, and bytes
that are not JSON. Never a 5xx, every error in OpenAI's {"error": {...}} shape, and the process
stays up and keeps serving. Bounded by example count (CI runs it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.processes import FrontendProcess, start_mocker

pytestmark = pytest.mark.timeout(600)

EXAMPLES = 120
BIG = 2**70

scalars = (st.none() | st.booleans() | st.integers(-BIG, BIG) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
ints = st.integers(-5, 300) | st.integers(-BIG, BIG) | st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63])
numbers = st.floats(-10, 10) | st.floats(allow_nan=False, allow_infinity=False) | ints
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                           "content": st.text(max_size=40) | json_values}), max_size=3)
SAMPLING = {
    "max_tokens": ints | json_values, "max_completion_tokens": ints, "min_tokens": ints,
    "temperature": numbers | json_values, "top_p": numbers, "top_k": ints | json_values, "min_p": numbers,
    "seed": ints | json_values, "presence_penalty": numbers, "frequency_penalty": numbers,
    "repetition_penalty": numbers, "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=6) | json_values,
    "stop_token_ids": st.lists(ints, max_size=4) | json_values, "ignore_eos": st.booleans() | json_values,
    "stream": st.booleans() | json_values, "stream_options": st.just({"include_usage": True}) | json_values,
    "n": ints, "logprobs": st.booleans() | ints, "top_logprobs": ints, "logit_bias": json_values,
    "response_format": json_values, "tools": json_values, "user": json_values, "skip_special_tokens": json_values,
    "unknown_field": json_values,
}


def bodies(model: str, chat: bool) -> st.SearchStrategy[dict[str, Any]]:
    required = {"model": st.just(model) | json_values}
    if chat:
        required["messages"] = st.just([{"role": "user", "content": "hello"}]) | messages | json_values
    else:
        required["prompt"] = (st.text(max_size=60) | st.lists(ints, min_size=1, max_size=6)
                              | st.lists(st.text(max_size=5), max_size=2) | json_values)
    return st.fixed_dictionaries({}, optional={**required, **SAMPLING})


@pytest.fixture(scope="module")
async def frontend(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> AsyncIterator[FrontendProcess]:
    tmp = tmp_path_factory.mktemp("fuzz-frontend")
    worker = await start_mocker(tmp, tiny_model_dir, "--speedup-ratio", "1000", "--max-model-len", "512", name="fuzzed")
    fe = FrontendProcess(tmp)
    try:
        await fe.wait_models({tiny_model_dir.name})
        yield fe
    finally:
        fe.close()
        await worker.close()


def _check(r: httpx.Response, what: Any) -> None:
    assert r.status_code < 500, f"{r.status_code} for {what!r}: {r.text[:500]}"
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and "type" in error, r.text
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        for line in r.text.splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event or event["error"].get("type") != "internal_error", (what, line)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_request_bodies(frontend: FrontendProcess, tiny_model_dir: Path, path: str) -> None:
    with httpx.Client(base_url=frontend.url, timeout=60) as client:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies(tiny_model_dir.name, chat="chat" in path))
        def one(body: dict[str, Any]) -> None:
            _check(client.post(path, json=body), body)

        one()
        assert client.get("/live").status_code == 200
        assert frontend.proc.poll() is None
        assert 'status="5' not in client.get("/metrics").text  # not one 5xx counted


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_bytes_that_are_not_a_request(frontend: FrontendProcess, raw: bytes) -> None:
    r = httpx.post(frontend.url + "/v1/chat/completions", content=raw,
                   headers={"content-type": "application/json"}, timeout=30)
    _check(r, raw)
