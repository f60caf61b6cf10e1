"""Processes stopped or restarted under load: a worker drained by SIGTERM loses nothing, and a
frontend SIGKILLed and started again finds the workers that kept running. Each scenario reports
requests sent / completed / failed / lost (tests/fault_tolerance/test_dead_instances.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.fault_tolerance.test_dead_instances import drive
from tests.support.processes import FrontendProcess, start_mocker

pytestmark = [pytest.mark.fault_tolerance, pytest.mark.timeout(300)]


async def test_a_worker_drained_under_load_loses_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    workers = [await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "5", name=f"drained{i}")
               for i in range(2)]
    fe = FrontendProcess(tmp_path, "--router-mode", "round-robin")
    try:
        await fe.wait_models({tiny_model_dir.name})
        load = asyncio.create_task(drive(fe, tiny_model_dir.name, requests=40, concurrency=8))
        await workers[0].wait_inflight(2, load=load)  # it holds requests when stopped
        os.kill(workers[0].pid, signal.SIGTERM)
        report = await load
        print(f"\nworker SIGTERMed under load: {report}")
        assert report.completed == 40, f"{report}\n{fe.log()[-3000:]}"
        assert await asyncio.to_thread(workers[0].proc.wait, 30) == 0  # drained, then exited cleanly
    finally:
        fe.close()
        for w in workers:
            await w.close()


async def test_a_frontend_killed_and_restarted_finds_the_workers(tmp_path: Path, tiny_model_dir: Path) -> None:
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "0.5", name="survivor")
    fe = FrontendProcess(tmp_path)
    try:
        await fe.wait_models({tiny_model_dir.name})
        load = asyncio.create_task(drive(fe, tiny_model_dir.name, requests=20, concurrency=4))
        await worker.wait_inflight(1, load=load)
        fe.proc.kill()  # its clients see errors; the worker must not keep their requests
        before = await load
        assert before.lost == 0, before  # every request ended: an answer or a clear error
        deadline = asyncio.get_running_loop().time() + 30
        while (await worker.stats()).unfinished_requests:
            assert asyncio.get_running_loop().time() < deadline, "the killed frontend's requests stayed in the engine"
            await asyncio.sleep(0.1)
        fe.close()
        fe = FrontendProcess(tmp_path)
        await fe.wait_models({tiny_model_dir.name})
        after = await drive(fe, tiny_model_dir.name, requests=20, concurrency=4)
        print(f"\nfrontend SIGKILLed under load: {before}; after its restart: {after}")
        assert after.completed == 20, after
    finally:
        fe.close()
        await worker.close()
