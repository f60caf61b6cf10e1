"""A worker that stops answering without dying (SIGSTOP) under load.

Its discovery record stays (a lease longer than the test), so only the frontend's
--request-progress-timeout can see it: requests on it get no output for that long, the instance goes
out of rotation and the requests move to the other worker (--migration-limit 1) or end with a clear
504 (no migration); none is lost. After SIGCONT its health probe answers again and it serves again,
and the requests the frontend gave up on do not stay in its engine. Each scenario reports requests
sent / completed / failed / lost (tests/fault_tolerance/test_dead_instances.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fault_tolerance.test_dead_instances import drive
from tests.fault_tolerance.workers import Mocker, requests_served, wait_log, wait_served_by
from tests.support.processes import FrontendProcess

pytestmark = [pytest.mark.fault_tolerance, pytest.mark.timeout(300)]

PROGRESS_TIMEOUT_S = 2.0
LEASE_S = 120.0  # the stopped worker stays registered throughout: no help from discovery
# A request on the stopped worker ends within the timeout plus a normal request's time (~0.5 s here).
FAILOVER_BOUND_S = PROGRESS_TIMEOUT_S + 3.0


@pytest.mark.parametrize("migration_limit", [1, 0])
async def test_a_stopped_worker_is_skipped_and_comes_back(tmp_path: Path, tiny_model_dir: Path,
                                                          migration_limit: int) -> None:
    workers = [Mocker(tiny_model_dir, "--speedup-ratio", "0.5", name=f"stopped{i}", ttl=LEASE_S,
                      discovery_dir=tmp_path) for i in range(2)]
    fe = FrontendProcess(tmp_path, "--router-mode", "round-robin", "--migration-limit", str(migration_limit),
                         "--request-progress-timeout", str(PROGRESS_TIMEOUT_S))
    stopped = workers[1]
    try:
        for w in workers:
            await w.ready(60)
        await fe.wait_models({tiny_model_dir.name})
        load: asyncio.Task[Any] = asyncio.create_task(  # Any: wait_inflight takes a Future[object]
            drive(fe, tiny_model_dir.name, requests=60, concurrency=6))
        await stopped.wait_inflight(2, load=load)
        os.killpg(stopped.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            report = await load
            # While it is still stopped: everything goes to the other worker.
            while_stopped = await drive(fe, tiny_model_dir.name, requests=20, concurrency=4)
            assert time.monotonic() - stopped_at < LEASE_S / 2  # its record was there all along
        finally:
            os.killpg(stopped.pid, signal.SIGCONT)
        print(f"\nworker SIGSTOPped under load, --migration-limit {migration_limit}: {report} "
              f"(slowest {report.slowest_s:.1f} s, errors {dict(report.errors)}); while it was stopped: "
              f"{while_stopped} (slowest {while_stopped.slowest_s:.1f} s)")
        log = fe.log()
        assert "sent nothing for 2 s" in log, log[-3000:]
        assert report.lost == 0 and while_stopped.lost == 0, f"{report}\n{log[-3000:]}"
        assert report.slowest_s < FAILOVER_BOUND_S, report.slowest_s  # nobody waited on the stopped worker
        assert while_stopped.completed == 20 and while_stopped.slowest_s < 2.0, while_stopped
        if migration_limit:
            assert report.completed == 60, f"{report}\n{log[-3000:]}"
        else:
            # The requests it held end with a clear 504 (or an error event once tokens were sent).
            assert report.failed >= 2 and set(report.errors) <= {"504", "stream"}, f"{report} {report.errors}"
            assert report.completed == 60 - report.failed
        # SIGCONT: its health probe answers, it is back in rotation and serves again.
        back = await wait_log(fe, "back in rotation", 10)
        before = requests_served(stopped)
        await wait_served_by(fe, tiny_model_dir.name, stopped)
        print(f"back in rotation {back:.1f} s after SIGCONT; served {requests_served(stopped) - before:.0f} more")
        # What the frontend gave up on is cancelled on the worker, not left running in its engine.
        assert await stopped.wait_unfinished(0, 15) == 0
    finally:
        fe.close()
        for w in workers:
            await w.close()
