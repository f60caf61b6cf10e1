"""What the frontend does with several workers (routing, migration, overload, disconnects, workers
coming and going), on mocker workers as real processes, through the official openai client."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def cluster(tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[tuple[FrontendProcess, list[WorkerProcess]]]:
    workers = [await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "20", name=f"mocker{i}")
               for i in range(2)]
    fe = FrontendProcess(tmp_path)
    try:
        await fe.wait_models({tiny_model_dir.name})
        yield fe, workers
    finally:
        fe.close()
        for w in workers:
            await w.close()


async def test_models_follow_workers(cluster, tmp_path: Path, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fe, _ = cluster
    extra = await start_mocker(tmp_path, tiny_model_dir, "--served-model-name", "other", name="other")
    try:
        await fe.wait_models({tiny_model_dir.name, "other"}, timeout=15)
        out = await fe.client().completions.create(model="other", prompt="a", max_tokens=3)
        assert out.model == "other" and out.usage.completion_tokens == 3  # type: ignore[union-attr]
        extra.signal(signal.SIGTERM)
        await fe.wait_models({tiny_model_dir.name}, timeout=15)
        with pytest.raises(openai.NotFoundError):
            await fe.client().completions.create(model="other", prompt="a", max_tokens=3)
    finally:
        await extra.close()


async def test_round_robin_spreads_evenly(cluster, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fe, workers = cluster
    before = [w.metric("dynamo_worker_requests_total", status="success") for w in workers]
    c = fe.client()
    for i in range(10):
        await c.completions.create(model=tiny_model_dir.name, prompt=f"request {i}", max_tokens=2)
    after = [w.metric("dynamo_worker_requests_total", status="success") for w in workers]
    assert [a - b for a, b in zip(after, before)] == [5, 5]


async def test_bad_requests_get_openai_errors(cluster, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    fe, _ = cluster
    model = tiny_model_dir.name
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fe.port}", timeout=30) as h:
        cases = [
            ("/v1/chat/completions", b"{not json", 400),
            ("/v1/chat/completions", {"model": model}, 400),
            ("/v1/chat/completions", {"model": model, "messages": "hi"}, 400),
            ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}],
                                      "max_tokens": 10**9}, 400),
            ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
            ("/v1/completions", {"model": model, "prompt": "x", "temperature": -1}, 400),
            ("/v1/completions", {"model": model, "prompt": [5, 99999]}, 400),
            ("/v1/completions", {"model": model, "prompt": "x", "n": 500}, 400),
        ]
        for path, body, status in cases:
            r = await (h.post(path, content=body) if isinstance(body, bytes) else h.post(path, json=body))
            assert r.status_code == status, (path, body, r.text)
            err = r.json()["error"]
            assert err["message"] and err["type"]
        ok = await h.post("/v1/completions", json={"model": model, "prompt": "still alive", "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


TRANSPORTS = pytest.mark.parametrize("transport", ["stream", "unary"])


@TRANSPORTS
async def test_least_loaded_prefers_idle_worker(tmp_path: Path, tiny_model_dir: Path, transport: str) -> None:
    workers = [await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "1", name=f"slow{i}") for i in range(2)]
    fe = FrontendProcess(tmp_path, "--router-mode", "least-loaded", "--request-transport", transport)
    try:
        await fe.wait_models({tiny_model_dir.name})
        c = fe.client()
        long = asyncio.create_task(c.completions.create(model=tiny_model_dir.name, prompt="long one",
                                                        max_tokens=1500, extra_body={"ignore_eos": True}))
        deadline = time.monotonic() + 10
        busy = None
        while busy is None and time.monotonic() < deadline:
            busy = next((w for w in workers if w.metric("dynamo_worker_inflight_requests") >= 1), None)
            await asyncio.sleep(0.05)
        if long.done():
            long.result()  # surfaces the request's error
        assert busy is not None, "the long request never reached a worker"
        idle = next(w for w in workers if w is not busy)
        before = idle.metric("dynamo_worker_requests_total")
        for i in range(4):
            await c.completions.create(model=tiny_model_dir.name, prompt=f"short {i}", max_tokens=2)
        assert idle.metric("dynamo_worker_requests_total") - before == 4
        assert busy.metric("dynamo_worker_inflight_requests") == 1
        long.cancel()
    finally:
        fe.close()
        for w in workers:
            await w.close()


async def _stream_tokens_with_kill(fe: FrontendProcess, workers: list[WorkerProcess], model: str,
                                   max_tokens: int) -> tuple[int, str | None]:
    """Stream a completion; SIGKILL the worker serving it once a few chunks arrived."""
    c = fe.client()
    stream = await c.completions.create(model=model, prompt="migrate me", max_tokens=max_tokens, stream=True,
                                        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks, killed, usage = 0, False, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        if chunk.choices:
            chunks += 1
        if chunks == 5 and not killed:
            victim = next(w for w in workers if w.metric("dynamo_worker_inflight_requests") >= 1)
            victim.signal(signal.SIGKILL)
            killed = True
    assert killed
    return usage or 0, None


@TRANSPORTS
async def test_migration_continues_stream_on_another_worker(tmp_path: Path, tiny_model_dir: Path,
                                                            transport: str) -> None:
    workers = [await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "2", name=f"m{i}") for i in range(2)]
    fe = FrontendProcess(tmp_path, "--migration-limit", "1", "--request-transport", transport)
    try:
        await fe.wait_models({tiny_model_dir.name})
        completion_tokens, _ = await asyncio.wait_for(
            _stream_tokens_with_kill(fe, workers, tiny_model_dir.name, 200), 120)
        assert completion_tokens == 200
        assert "migrating" in fe.log()
    finally:
        fe.close()
        for w in workers:
            await w.close()


@TRANSPORTS
async def test_without_migration_the_client_gets_a_clean_error(tmp_path: Path, tiny_model_dir: Path,
                                                               transport: str) -> None:
    workers = [await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "2", name=f"n{i}") for i in range(2)]
    fe = FrontendProcess(tmp_path, "--migration-limit", "0", "--request-transport", transport)
    try:
        await fe.wait_models({tiny_model_dir.name})
        t0 = time.monotonic()
        with pytest.raises(openai.APIError):
            await asyncio.wait_for(_stream_tokens_with_kill(fe, workers, tiny_model_dir.name, 400), 30)
        assert time.monotonic() - t0 < 30
        # The frontend still serves, on the surviving worker.
        await fe.wait_models({tiny_model_dir.name})
        ok = await fe.client().completions.create(model=tiny_model_dir.name, prompt="after", max_tokens=3)
        assert ok.usage.completion_tokens == 3  # type: ignore[union-attr]
    finally:
        fe.close()
        for w in workers:
            await w.close()


async def test_overloaded_workers_answer_429(tmp_path: Path, tiny_model_dir: Path) -> None:
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "1", name="busy")
    fe = FrontendProcess(tmp_path, "--max-inflight-per-worker", "1")
    try:
        await fe.wait_models({tiny_model_dir.name})
        c = fe.client()
        long = asyncio.create_task(c.completions.create(model=tiny_model_dir.name, prompt="long", max_tokens=1500,
                                                        extra_body={"ignore_eos": True}))
        await worker.wait_inflight(1, 10, load=long)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError, match="max-inflight-per-worker") as refused:
            await c.completions.create(model=tiny_model_dir.name, prompt="one more", max_tokens=2)
        assert refused.value.response.headers["retry-after"] == "1"
        long.cancel()
        deadline = time.monotonic() + 10
        while worker.metric("dynamo_worker_inflight_requests") > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        ok = await c.completions.create(model=tiny_model_dir.name, prompt="after", max_tokens=2)
        assert ok.usage.completion_tokens == 2  # type: ignore[union-attr]
    finally:
        fe.close()
        await worker.close()


@TRANSPORTS
async def test_client_disconnect_cancels_the_worker_request(tmp_path: Path, tiny_model_dir: Path,
                                                            transport: str) -> None:
    """An HTTP client that hangs up mid-stream: the frontend cancels the request, the cancellation
    travels to the worker (a cancel on the shared stream, or the call's cancel), the engine drops it."""
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "1", name="hangup")
    fe = FrontendProcess(tmp_path, "--request-transport", transport)
    try:
        await fe.wait_models({tiny_model_dir.name})
        before = worker.metric("dynamo_worker_request_cancellations_total")
        body = {"model": tiny_model_dir.name, "prompt": "hang up on me", "max_tokens": 1500, "stream": True,
                "ignore_eos": True}
        async with httpx.AsyncClient(base_url=fe.base_url.removesuffix("/v1"), timeout=30) as h:
            async with h.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                chunks = 0
                async for line in r.aiter_lines():
                    chunks += line.startswith("data: ")
                    if chunks >= 3:
                        break  # leaving the block closes the connection mid-stream
        deadline = time.monotonic() + 10
        while (worker.metric("dynamo_worker_request_cancellations_total") == before
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        assert worker.metric("dynamo_worker_request_cancellations_total") == before + 1
        assert worker.metric("dynamo_worker_inflight_requests") == 0
        assert (await worker.stats()).unfinished_requests == 0, "the engine still runs the abandoned request"
        # the worker (and, for the stream transport, the shared stream) keeps serving
        ok = await fe.client().completions.create(model=tiny_model_dir.name, prompt="next", max_tokens=3)
        assert ok.usage.completion_tokens == 3  # type: ignore[union-attr]
    finally:
        fe.close()
        await worker.close()


async def test_frontend_without_workers_then_with_one_then_drained(tmp_path: Path, tiny_model_dir: Path) -> None:
    fe = FrontendProcess(tmp_path)
    try:
        await fe.wait_live()
        assert fe.get("/health")[0] == 503  # no worker yet
        assert json.loads(fe.get("/v1/models")[1])["data"] == []
        worker = await start_mocker(tmp_path, tiny_model_dir, "--served-model-name", "tiny", "--speedup-ratio", "100")
        try:
            await fe.wait_models({"tiny"})
            r = await fe.client().chat.completions.create(model="tiny", max_tokens=16,
                                                         messages=[{"role": "user", "content": "hello"}])
            assert r.usage is not None and r.usage.completion_tokens <= 16
            assert r.choices[0].finish_reason in ("stop", "length")
            with pytest.raises(openai.NotFoundError):
                await fe.client().completions.create(model="nope", prompt="x", max_tokens=2)
            worker.signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 30) == 0
        finally:
            await worker.close()
        await fe.wait_models(set(), timeout=30)  # the worker is gone: so is its model
        assert fe.get("/health")[0] == 503
        fe.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(fe.proc.wait, 30) == 0
    finally:
        fe.close()


async def test_bootstrap_handoff_survives_nothing_hanging_when_the_prefill_worker_dies(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """Bootstrap mode (SGLang's): the frontend starts prefill and decode together in one room. The
    prefill worker is SIGKILLed mid-handoff: the client gets an error within 10 s, the decode worker
    drops its side, and the frontend keeps serving once a prefill worker is back."""
    slow_prefill = ["--disaggregation-mode", "prefill", "--disaggregation-handoff", "bootstrap",
                    "--speedup-ratio", "0.005"]  # a 400-token prefill takes seconds
    prefill = await start_mocker(tmp_path, tiny_model_dir, *slow_prefill, name="bootstrap-prefill")
    decode = await start_mocker(tmp_path, tiny_model_dir, "--disaggregation-mode", "decode",
                                "--speedup-ratio", "50", name="bootstrap-decode")
    fe = FrontendProcess(tmp_path)
    try:
        assert prefill.card["bootstrap_endpoint"].startswith("127.0.0.1:")
        await fe.wait_models({tiny_model_dir.name})
        client = fe.client(timeout=30)
        ask = client.completions.create(model=tiny_model_dir.name, prompt="word " * 400, max_tokens=8)
        call = asyncio.create_task(ask)
        deadline = time.monotonic() + 20
        while (await decode.stats()).waiting_requests < 1:  # the decode side waits in its room
            assert not call.done() and time.monotonic() < deadline, "the decode side never entered its room"
            await asyncio.sleep(0.02)
        assert prefill.metric("dynamo_worker_inflight_requests") == 1  # both sides run at once
        t0 = time.monotonic()
        prefill.signal(signal.SIGKILL)
        with pytest.raises(openai.APIError):
            await asyncio.wait_for(call, 10)
        assert time.monotonic() - t0 < 10
        assert await decode.wait_unfinished(0, timeout=10) == 0, "the decode side kept the dead handoff"
        assert (await decode.stats()).inflight_requests == 0
        # a new prefill worker: the graph serves again, disaggregated
        await prefill.close()
        prefill = await start_mocker(tmp_path, tiny_model_dir, "--disaggregation-mode", "prefill",
                                     "--disaggregation-handoff", "bootstrap", name="bootstrap-prefill-2")
        remote_before = decode.metric("dynamo_worker_prefills_total", location="remote")
        deadline = time.monotonic() + 30
        while True:  # until the frontend has dropped the dead prefill instance and found the new one
            try:
                ok = await client.completions.create(model=tiny_model_dir.name, prompt="word " * 50, max_tokens=4)
                break
            except openai.APIError:
                assert time.monotonic() < deadline, "the frontend never recovered"
                await asyncio.sleep(0.2)
        assert ok.usage is not None and ok.usage.completion_tokens == 4
        assert ok.usage.prompt_tokens_details is not None and ok.usage.prompt_tokens_details.cached_tokens
        assert decode.metric("dynamo_worker_prefills_total", location="remote") > remote_before
    finally:
        fe.close()
        for w in (prefill, decode):
            await w.close()
