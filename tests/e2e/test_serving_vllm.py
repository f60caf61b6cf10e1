"""Frontend + real vLLM workers (CPU), aggregated and disaggregated, through the openai client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.conformance.backends import VLLM
from tests.e2e.conftest import FrontendProcess
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ENGINE_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--block-size", "32"]
PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\nclass Config:", "# A tiny test model\n" * 20]


async def vllm_worker(tmp: Path, model: Path, namespace: str, role: str) -> WorkerProcess:
    reason = VLLM.available()
    if reason:
        pytest.skip(reason)
    role_args = [] if role == "agg" else ["--disaggregation-mode", role]
    w = WorkerProcess("vllm", ["--model", str(model), "--served-model-name", "tiny", *ENGINE_ARGS, *role_args],
                      tmp, namespace=namespace, env=VLLM.env[role], name=f"vllm-{namespace}-{role}")
    return await w.ready(VLLM.startup_timeout)


@pytest.fixture(scope="module")
async def frontends(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
                    ) -> AsyncIterator[tuple[FrontendProcess, FrontendProcess, list[WorkerProcess]]]:
    tmp = tmp_path_factory.mktemp("vllm-e2e")
    workers: list[WorkerProcess] = []
    fes: list[FrontendProcess] = []
    try:
        workers.append(await vllm_worker(tmp, tiny_model_dir, "agg", "agg"))
        workers.append(await vllm_worker(tmp, tiny_model_dir, "disagg", "prefill"))
        workers.append(await vllm_worker(tmp, tiny_model_dir, "disagg", "decode"))
        fes = [FrontendProcess(tmp, namespace="agg"), FrontendProcess(tmp, namespace="disagg")]
        for fe in fes:
            await fe.wait_models({"tiny"}, timeout=120)
        yield fes[0], fes[1], workers
    finally:
        for fe in fes:
            fe.close()
        for w in workers:
            await w.close()


def client(fe: FrontendProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fe.base_url, api_key="unused", max_retries=0, timeout=120)


async def test_chat_and_completions_on_vllm(frontends) -> None:  # type: ignore[no-untyped-def]
    agg, _, _ = frontends
    c = client(agg)
    chat = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 16 and chat.choices[0].finish_reason == "length"  # type: ignore[union-attr]
    text, usage = "", None
    stream = await c.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 24
    whole = await c.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=24, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert whole.choices[0].text == text, "streamed and non-streamed greedy text differ"
    models = await c.models.list()
    assert [m.id for m in models.data] == ["tiny"]


async def test_disaggregated_equals_aggregated_through_frontend(frontends) -> None:  # type: ignore[no-untyped-def]
    agg, disagg, workers = frontends
    decode = workers[2]
    before = decode.metric("dynamo_worker_prefills_total", location="remote")
    for p in PROMPTS:
        a = await client(agg).completions.create(model="tiny", prompt=p, max_tokens=20, temperature=0,
                                                 extra_body={"ignore_eos": True})
        d = await client(disagg).completions.create(model="tiny", prompt=p, max_tokens=20, temperature=0,
                                                    extra_body={"ignore_eos": True})
        assert d.choices[0].text == a.choices[0].text
        assert d.usage.completion_tokens == a.usage.completion_tokens == 20  # type: ignore[union-attr]
    assert decode.metric("dynamo_worker_prefills_total", location="remote") - before == len(PROMPTS)
