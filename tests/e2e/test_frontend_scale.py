"""The frontend under many streams, with several processes on one port, and past its own limit."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import FrontendProcess, start_mocker

pytestmark = pytest.mark.timeout(300)

DEADLINE_S = 60.0


async def stream_tokens(client: httpx.AsyncClient, model: str, max_tokens: int) -> int:
    """One streaming completion; the completion tokens its final usage chunk reports."""
    body = {"model": model, "prompt": "count", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        usage = 0
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
        return usage


async def test_500_concurrent_streams_all_complete(tmp_path: Path, tiny_model_dir: Path) -> None:
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "200", name="many")
    fe = FrontendProcess(tmp_path)
    try:
        await fe.wait_models({tiny_model_dir.name})
        limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
        async with httpx.AsyncClient(base_url=fe.url, limits=limits, timeout=DEADLINE_S * 2) as client:
            got = await asyncio.wait_for(asyncio.gather(
                *(stream_tokens(client, tiny_model_dir.name, 24) for _ in range(500))), DEADLINE_S * 2)
        assert got == [24] * 500
        metrics = fe.get("/metrics")[1]
        assert f'dynamo_frontend_inflight_requests{{model="{tiny_model_dir.name}"}} 0.0' in metrics
        assert (f'dynamo_frontend_requests_total{{endpoint="completions",model="{tiny_model_dir.name}",'
                f'status="200"}} 500.0') in metrics
        assert (await worker.stats()).unfinished_requests == 0
    finally:
        fe.close()
        await worker.close()


async def test_several_processes_share_the_port_and_drain_together(tmp_path: Path, tiny_model_dir: Path) -> None:
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "20", name="shared")
    fe = FrontendProcess(tmp_path, "--num-workers", "3")
    try:
        await fe.wait_models({tiny_model_dir.name})
        seen: set[int] = set()
        deadline = time.monotonic() + DEADLINE_S
        while len(seen) < 3:  # every process up, each answering on the shared port (new connections)
            assert time.monotonic() < deadline, f"only processes {seen} answered"
            answers = await asyncio.gather(*(asyncio.to_thread(fe.get, "/health") for _ in range(12)))
            seen |= {json.loads(body)["process"] for status, body in answers if status == 200}
        async with httpx.AsyncClient(base_url=fe.url, timeout=DEADLINE_S) as client:
            got = await asyncio.gather(*(stream_tokens(client, tiny_model_dir.name, 16) for _ in range(30)))
        assert got == [16] * 30
        # /metrics adds up every process, whichever answers
        for _ in range(4):
            metrics = fe.get("/metrics")[1]
            assert (f'dynamo_frontend_requests_total{{endpoint="completions",model="{tiny_model_dir.name}",'
                    f'status="200"}} 30.0') in metrics
        # SIGTERM to the parent: a stream in flight finishes, then every process exits, the port is free
        async with httpx.AsyncClient(base_url=fe.url, timeout=DEADLINE_S) as client:
            streaming = asyncio.create_task(stream_tokens(client, tiny_model_dir.name, 400))
            deadline = time.monotonic() + DEADLINE_S
            while '{model="' + tiny_model_dir.name + '"} 1.0' not in fe.get("/metrics")[1]:
                assert time.monotonic() < deadline and not streaming.done(), "the stream never started"
                await asyncio.sleep(0.05)
            fe.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(streaming, DEADLINE_S) == 400
        assert await asyncio.to_thread(fe.proc.wait, DEADLINE_S) == 0
        with socket.socket() as s:  # no process listens on the port any more (closed connections may linger)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", fe.port))
            s.listen()
    finally:
        fe.close()
        await worker.close()


async def test_past_max_inflight_new_requests_get_503_with_retry_after(tmp_path: Path, tiny_model_dir: Path) -> None:
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "1", name="limited")
    fe = FrontendProcess(tmp_path, "--max-inflight", "2")
    try:
        await fe.wait_models({tiny_model_dir.name})
        async with httpx.AsyncClient(base_url=fe.url, timeout=DEADLINE_S) as client:
            long = [asyncio.create_task(stream_tokens(client, tiny_model_dir.name, 300)) for _ in range(2)]
            await worker.wait_inflight(2, DEADLINE_S)
            r = await client.post("/v1/completions", json={"model": tiny_model_dir.name, "prompt": "x", "max_tokens": 2})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert "--max-inflight" in error["message"] and error["type"] == "service_unavailable"
            for task in long:
                task.cancel()
            await asyncio.gather(*long, return_exceptions=True)
            deadline = time.monotonic() + DEADLINE_S
            while True:  # once the two are gone, requests are admitted again
                r = await client.post("/v1/completions", json={"model": tiny_model_dir.name, "prompt": "x",
                                                               "max_tokens": 2})
                if r.status_code == 200:
                    break
                assert r.status_code == 503 and time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert r.json()["usage"]["completion_tokens"] == 2
    finally:
        fe.close()
        await worker.close()
