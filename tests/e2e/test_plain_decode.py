"""The deploy docs' disaggregated pattern as written: a decode worker started WITHOUT a mode
(`python -m dynamo.<backend> --model M`) next to `--is-prefill-worker` workers.

Where the engine can continue a prefill worker's handoff in its aggregated role, the plain worker
serves as the decode side once a prefill worker is live: requests are prefilled remotely (the
prefill worker's and the plain worker's metrics both show it) and greedy output equals what the
same worker produced alone. Where it cannot (TensorRT-LLM without a cache transceiver, SGLang
without --disaggregation-mode), the idle prefill worker is never silent: the frontend says so in
its log, on /health and in a metric, and keeps serving aggregated.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.support.backends import BACKENDS, BackendSpec
from tests.support.processes import FrontendProcess, WorkerProcess

pytestmark = [pytest.mark.timeout(900), pytest.mark.disagg]

SERVED = "tiny"
PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n\nclass Config:", "# A tiny test model\n" * 20]


def _worker(spec: BackendSpec, tmp: Path, model: Path, role: str, *mode: str) -> WorkerProcess:
    # the plain worker takes the aggregated flags, pinned where a decode worker would be
    env = spec.env.get("decode" if role == "plain" else role, {})
    args = [*spec.args(model), *spec.role_args.get("prefill" if mode else "agg", []), "--served-model-name",
            SERVED, *mode]
    return WorkerProcess(spec.name, args, tmp, namespace="plain", env=env, name=f"{spec.id}-plain-{role}")


async def _complete(fe: FrontendProcess, prompt: str) -> str:
    r = await fe.client().completions.create(model=SERVED, prompt=prompt, max_tokens=16, temperature=0,
                                             extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 16
    return r.choices[0].text


@pytest.mark.parametrize("spec", [s.param() for s in BACKENDS])
async def test_plain_worker_beside_prefill_workers(spec: BackendSpec, tmp_path: Path, tiny_model_dir: Path) -> None:
    if reason := spec.available():
        pytest.skip(reason)
    plain = await _worker(spec, tmp_path, tiny_model_dir, "plain").ready(spec.startup_timeout)
    fe = FrontendProcess(tmp_path, namespace="plain")
    prefill: WorkerProcess | None = None
    try:
        await fe.wait_models({SERVED}, timeout=120)
        alone = [await _complete(fe, p) for p in PROMPTS]
        assert plain.metric("dynamo_worker_prefills_total", location="remote") == 0
        prefill = await _worker(spec, tmp_path, tiny_model_dir, "prefill", "--is-prefill-worker").ready(
            spec.startup_timeout)
        if spec.plain_decode:
            # Once the frontend sees the prefill worker, the plain worker continues its prefills.
            deadline = time.monotonic() + 60
            while prefill.metric("dynamo_worker_requests_total") == 0:
                assert time.monotonic() < deadline, f"no request was prefilled remotely:\n{fe.log()[-3000:]}"
                assert await _complete(fe, PROMPTS[0]) == alone[0]
            remote_before = plain.metric("dynamo_worker_prefills_total", location="remote")
            served_before = prefill.metric("dynamo_worker_requests_total")
            assert [await _complete(fe, p) for p in PROMPTS] == alone
            assert plain.metric("dynamo_worker_prefills_total", location="remote") - remote_before == len(PROMPTS)
            assert prefill.metric("dynamo_worker_requests_total") - served_before == len(PROMPTS)
            status, body = fe.get("/health")
            assert status == 200 and "idle_prefill_workers" not in json.loads(body)
        else:
            deadline = time.monotonic() + 30
            while "prefill worker(s) are idle" not in fe.log():
                assert time.monotonic() < deadline, f"the frontend never said the prefill worker is idle:\n{fe.log()}"
                await asyncio.sleep(0.2)
            status, body = fe.get("/health")
            health = json.loads(body)
            assert status == 200 and health["idle_prefill_workers"][SERVED]["workers"] == 1
            assert "--disaggregation-mode decode" in health["idle_prefill_workers"][SERVED]["reason"]
            _, metrics = fe.get("/metrics")
            assert f'dynamo_frontend_idle_prefill_workers{{model="{SERVED}"}} 1.0' in metrics
            assert [await _complete(fe, p) for p in PROMPTS] == alone  # still served, aggregated
            assert prefill.metric("dynamo_worker_requests_total") == 0
    finally:
        fe.close()
        if prefill is not None:
            await prefill.close()
        await plain.close()
