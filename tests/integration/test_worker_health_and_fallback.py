"""Worker shell behaviour on mocker workers: the idle health canary, and local-prefill fallback."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest

from dynamo.llm.protocol import GenerateRequest, StopConditions
from tests.support.processes import WorkerProcess

pytestmark = pytest.mark.timeout(180)


async def mocker(tmp: Path, model: Path, *extra: str, name: str) -> WorkerProcess:
    w = WorkerProcess("mocker", ["--model", str(model), "--speedup-ratio", "100", *extra], tmp, name=name)
    return await w.ready(60)


def request(n: int = 40) -> GenerateRequest:
    return GenerateRequest(f"r-{time.monotonic_ns()}", list(range(3, 3 + n)),
                           stop=StopConditions(max_tokens=6, ignore_eos=True))


async def test_idle_worker_runs_health_canary(tmp_path: Path, tiny_model_dir: Path) -> None:
    w = await mocker(tmp_path, tiny_model_dir, "--canary-interval", "1", name="canary")
    try:
        deadline = time.monotonic() + 20
        while w.metric("dynamo_worker_canary_requests_total", result="success") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert w.metric("dynamo_worker_canary_requests_total", result="success") >= 2
        assert w.metric("dynamo_worker_healthy") == 1
        # Canaries are not client requests.
        assert w.metric("dynamo_worker_requests_total") == 0
    finally:
        await w.close()


async def test_decode_falls_back_to_local_prefill_when_enabled(tmp_path: Path, tiny_model_dir: Path) -> None:
    prefill = await mocker(tmp_path, tiny_model_dir, "--is-prefill-worker", name="prefill")
    strict = await mocker(tmp_path, tiny_model_dir, "--disaggregation-mode", "decode", "--prefill-timeout", "2",
                          name="decode-strict")
    lenient = await mocker(tmp_path, tiny_model_dir, "--disaggregation-mode", "decode", "--prefill-timeout", "2",
                           "--prefill-fallback-local", name="decode-lenient")
    try:
        ok = await lenient.generate(request())
        assert sum(len(o.token_ids) for o in ok) == 6
        assert lenient.metric("dynamo_worker_prefills_total", location="remote") == 1
        prefill.signal(signal.SIGSTOP)  # prefill worker hangs: remote prefills time out
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await strict.generate(request(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "longer than 2 s" in (err.value.details() or "")
        assert time.monotonic() - t0 < 10
        out = await lenient.generate(request(), timeout=30)
        assert sum(len(o.token_ids) for o in out) == 6
        assert lenient.metric("dynamo_worker_prefills_total", location="local") == 1
        assert "prefilling locally (--prefill-fallback-local)" in lenient.log()
    finally:
        prefill.signal(signal.SIGCONT)
        for w in (lenient, strict, prefill):
            await w.close()
