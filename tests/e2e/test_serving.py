"""Frontend + workers of every backend, aggregated and disaggregated, through the official openai client."""

from __future__ import annotations

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
