"""Workers that die while their discovery records linger (a SIGKILL leaves a record for its TTL):
a refused connection takes the instance out of rotation at once, and the request goes on elsewhere
(another worker, another prefill worker, or a local prefill) instead of failing until the record
expires. Each scenario drives streaming clients through the frontend with the official `openai`
client and reports requests sent / completed / failed / lost (lost: neither a complete answer nor a
clear error within its deadline)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

pytestmark = [pytest.mark.fault_tolerance, pytest.mark.timeout(300)]

DEADLINE_S = 30.0
MAX_TOKENS = 16


@dataclass
class Report:
    sent: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    slowest_s: float = 0.0  # the longest a request took to end, whichever way it ended
    errors: Counter[str] = field(default_factory=Counter)  # failed requests by HTTP status (or "stream")

    def __str__(self) -> str:
        return f"sent {self.sent}, completed {self.completed}, failed {self.failed}, lost {self.lost}"


async def drive(fe: FrontendProcess, model: str, requests: int, concurrency: int) -> Report:
    """`requests` streaming completions, `concurrency` at a time, each with its own deadline."""
    report = Report()
    client = fe.client(timeout=DEADLINE_S)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            report.sent += 1
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(DEADLINE_S):
                    stream = await client.completions.create(model=model, prompt=f"request {i}", max_tokens=MAX_TOKENS,
                                                             stream=True, stream_options={"include_usage": True},
                                                             extra_body={"ignore_eos": True})
                    usage = None
                    async for chunk in stream:
                        usage = chunk.usage or usage
                if usage is not None and usage.completion_tokens == MAX_TOKENS:
                    report.completed += 1
                else:
                    report.lost += 1  # ended without its tokens and without an error
            except TimeoutError:
                report.lost += 1
            except openai.APIError as e:
                report.failed += 1  # a clear error: an HTTP status, or an error event mid-stream
                report.errors[str(getattr(e, "status_code", "stream"))] += 1
            report.slowest_s = max(report.slowest_s, time.monotonic() - t0)

    await asyncio.gather(*(one(i) for i in range(requests)))
    return report


def sigkill(worker: WorkerProcess) -> None:
    os.killpg(worker.pid, signal.SIGKILL)  # the engine's processes too: nothing answers on its port
    worker.proc.wait(10)


async def test_an_idle_worker_killed_is_skipped_at_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    workers = [await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "50", name=f"idle{i}") for i in range(2)]
    fe = FrontendProcess(tmp_path, "--migration-limit", "0", "--router-mode", "round-robin")
    try:
        await fe.wait_models({tiny_model_dir.name})
        sigkill(workers[1])  # its record stays in discovery for its TTL
        report = await drive(fe, tiny_model_dir.name, requests=20, concurrency=4)
        print(f"\nidle worker SIGKILLed, no migration: {report}")
        assert report.completed == 20, f"{report}\n{fe.log()[-3000:]}"
        assert "unreachable" in fe.log()
    finally:
        fe.close()
        for w in workers:
            await w.close()


async def test_a_prefill_worker_killed_the_decode_worker_prefills(tmp_path: Path, tiny_model_dir: Path) -> None:
    prefill = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "50", "--disaggregation-mode", "prefill",
                                 name="prefill")
    decode = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "50", "--disaggregation-mode", "decode",
                                name="decode")
    fe = FrontendProcess(tmp_path)
    try:
        await fe.wait_models({tiny_model_dir.name})
        assert (await drive(fe, tiny_model_dir.name, requests=2, concurrency=1)).completed == 2
        assert decode.metric("dynamo_worker_prefills_total", location="remote") == 2
        sigkill(prefill)
        report = await drive(fe, tiny_model_dir.name, requests=10, concurrency=2)
        print(f"\nprefill worker SIGKILLed: {report}")
        assert report.completed == 10, f"{report}\n{fe.log()[-3000:]}\n{decode.log()[-3000:]}"
        assert decode.metric("dynamo_worker_prefills_total", location="local") == 10
    finally:
        fe.close()
        await decode.close()
        await prefill.close()
