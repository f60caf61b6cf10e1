"""Malformed discovery records are skipped, counted (dynamo_discovery_malformed_records_total) and
warned about once per key, on the frontend and on a decode worker (both watch the namespace): a
file that is not a record, a record whose value is not an instance record, and an instance record
whose model card does not parse, next to a good worker that goes on serving (etcd:
tests/integration/test_discovery_malformed.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest

from dynamo.runtime.discovery.file import FileDiscovery, key_to_name
from dynamo.runtime.identity import INSTANCES_ROOT
from tests.fault_tolerance.test_dead_instances import drive
from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

pytestmark = pytest.mark.timeout(180)

METRIC = "dynamo_discovery_malformed_records_total"


def frontend_metric(fe: FrontendProcess) -> float:
    _, text = fe.get("/metrics")
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(METRIC))


async def wait_counts(fe: FrontendProcess, worker: WorkerProcess, n: int, timeout: float = 10) -> None:
    """Until both the frontend and the worker have counted `n` malformed records."""
    deadline = time.monotonic() + timeout
    while True:
        got = (await asyncio.to_thread(frontend_metric, fe), await asyncio.to_thread(worker.metric, METRIC))
        if got == (n, n):
            return
        assert time.monotonic() < deadline, f"counted (frontend, worker) {got}, expected {n}:\n{fe.log()[-2000:]}"
        await asyncio.sleep(0.05)


def warnings_about(log: str, name: str) -> int:
    return sum("skipping malformed" in line and name in line for line in log.splitlines())


async def test_malformed_file_records_are_skipped_counted_and_warned_once(tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    model = tiny_model_dir.name
    # A decode worker watches the namespace too (for prefill workers): it skips and counts the same.
    worker = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "50", "--disaggregation-mode", "decode")
    fe = FrontendProcess(tmp_path)
    try:
        await fe.wait_models({model})
        await wait_counts(fe, worker, 0)
        prefix = f"{INSTANCES_ROOT}test/backend/generate/"
        # 1. not a discovery record at all (a truncated file)
        (tmp_path / key_to_name(prefix + "junkfile1")).write_bytes(b'{"format": 1, "key": ')
        await wait_counts(fe, worker, 1)
        async with FileDiscovery(tmp_path, ttl=3) as writer:
            # 2. a good file whose value is not an instance record (missing fields, wrong types)
            await writer.put(prefix + "badrecord", json.dumps({"namespace": "test", "port": "x"}).encode())
            await wait_counts(fe, worker, 2)
            # 3. a good instance record whose model card does not parse
            assert worker.record is not None
            bad = dataclasses.replace(worker.record, instance_id="badcard", port=1, pid=0,
                                      metadata={"model_card": {**worker.card, "context_length": "long"}})
            await writer.put(bad.key, bad.to_json())
            await wait_counts(fe, worker, 3)
            # 4. another junk file: once it is counted, every earlier one has been polled again
            (tmp_path / key_to_name(prefix + "junkfile2")).write_bytes(b"\xff\xfe")
            await wait_counts(fe, worker, 4)
            report = await drive(fe, model, requests=8, concurrency=2)
            assert report.completed == 8, f"{report}\n{fe.log()[-3000:]}"
            await wait_counts(fe, worker, 4)  # polls and requests did not count them again
        for log in (fe.log(), worker.log()):
            for name in ("junkfile1", "badrecord", "badcard", "junkfile2"):
                assert warnings_about(log, name) == 1, f"{name}: {warnings_about(log, name)} warnings\n{log[-3000:]}"
    finally:
        fe.close()
        await worker.close()
