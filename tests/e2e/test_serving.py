"""Frontend + workers of every backend, aggregated and disaggregated, through the official openai client."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.conftest import SERVED, Serving

pytestmark = pytest.mark.timeout(900)

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\nclass Config:", "# A tiny test model\n" * 20]


async def test_chat_and_completions(serving: Serving) -> None:
    c = serving.agg.client()
    chat = await c.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    assert chat.usage is not None and chat.usage.completion_tokens == 16 and chat.usage.prompt_tokens > 3
    assert chat.choices[0].finish_reason == "length" and chat.choices[0].message.role == "assistant"
    text, usage, finish = "", None, None
    stream = await c.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 24 and finish == "length"
    whole = await c.completions.create(model=SERVED, prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert whole.choices[0].text == text, "streamed and non-streamed greedy text differ"
    chat_stream = await c.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=8, stream=True, extra_body={"ignore_eos": True})
    deltas = [ch.choices[0] async for ch in chat_stream if ch.choices]
    assert deltas[0].delta.role == "assistant" and deltas[-1].finish_reason == "length"
    models = await c.models.list()
    assert [m.id for m in models.data] == [SERVED]


@pytest.mark.disagg
async def test_disaggregated_equals_aggregated_through_frontend(serving: Serving) -> None:
    assert serving.disagg is not None and serving.decode is not None
    before = serving.decode.metric("dynamo_worker_prefills_total", location="remote")
    for p in PROMPTS:
        a = await serving.agg.client().completions.create(model=SERVED, prompt=p, max_tokens=20, temperature=0,
                                                         extra_body={"ignore_eos": True})
        d = await serving.disagg.client().completions.create(model=SERVED, prompt=p, max_tokens=20, temperature=0,
                                                            extra_body={"ignore_eos": True})
        assert d.choices[0].text == a.choices[0].text
        assert d.usage.completion_tokens == a.usage.completion_tokens == 20  # type: ignore[union-attr]
    assert serving.decode.metric("dynamo_worker_prefills_total", location="remote") - before == len(PROMPTS)


def _histogram(metrics: str, name: str) -> dict[str, float]:
    """A histogram's cumulative buckets by their `le`."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


async def test_kv_router_predicts_the_cached_tokens_the_engine_reports(serving: Serving) -> None:
    """The router hashes the prompt with the block size of the worker's model card and maps the
    engine's KV events onto it: for a repeated long prompt its predicted overlap must equal the
    cached tokens the engine itself reports (predicted-TTL 0: from the events alone)."""
    fe = serving.kv
    await fe.wait_models({SERVED}, timeout=120)
    block = serving.workers[0].card["kv_block_size"]
    prompt = [(7 * i) % 900 + 3 for i in range(block * 7 + 5)]  # 7 full blocks and a tail
    first = await fe.client().completions.create(model=SERVED, prompt=prompt, max_tokens=2,
                                                 extra_body={"ignore_eos": True})
    assert first.usage is not None
    worker = serving.workers[0].record.instance_id  # type: ignore[union-attr]
    deadline = asyncio.get_running_loop().time() + 20
    while True:  # until the engine's STORED events for the prompt reached the router
        state = json.loads(fe.get("/v1/router/state")[1])
        if state["workers"].get(worker, {}).get("blocks", 0) >= 7:
            break
        assert asyncio.get_running_loop().time() < deadline, f"the router never learned the prompt: {state}"
        await asyncio.sleep(0.1)
    before = _histogram(fe.get("/metrics")[1], "dynamo_frontend_router_overlap_error_tokens")
    again = await fe.client().completions.create(model=SERVED, prompt=prompt, max_tokens=2,
                                                 extra_body={"ignore_eos": True})
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens == block * 7
    after = _histogram(fe.get("/metrics")[1], "dynamo_frontend_router_overlap_error_tokens")
    exact = (after["0.0"] - after["-1.0"]) - (before["0.0"] - before["-1.0"])
    assert exact == 1, f"the repeat's predicted cached tokens differ from the engine's: {after}"
