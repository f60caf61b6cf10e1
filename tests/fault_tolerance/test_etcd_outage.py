"""etcd goes away under load: SIGKILLed and restarted on the same data dir (or on an empty one:
every lease and key lost), or down for 30 s.

The frontend and the mocker workers discover each other through etcd. Serving goes on from what the
frontend already knows; when etcd is back the workers are registered (same processes) within 10 s
and stay registered (their keep-alive resumed), and the frontend's watch resumes (a worker started
after the outage is found and served); while etcd is down nothing spins (CPU time of the idle
frontend and workers stays low). Each scenario reports requests sent / completed / failed / lost
(tests/fault_tolerance/test_dead_instances.py).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_tolerance.test_dead_instances import Report, drive
from tests.fault_tolerance.workers import Mocker, cpu_seconds, etcd_args, registered_in, wait_served_by
from tests.support.etcd import WHY_NO_ETCD, EtcdServer, etcd_available
from tests.support.processes import FrontendProcess

pytestmark = [pytest.mark.fault_tolerance, pytest.mark.etcd, pytest.mark.timeout(300),
              pytest.mark.skipif(not etcd_available(), reason=WHY_NO_ETCD)]

TTL_S = 5.0  # short leases (the outages outlast them), yet long enough to ride out a busy machine
REREGISTER_S = 10.0  # the goal: registered again within this long after etcd is back
IDLE_CPU_LIMIT = 0.30  # share of one core an idle process may use while etcd is down


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


async def start_workers(etcd: EtcdServer, model: Path, n: int, speedup: str) -> list[Mocker]:
    workers = [Mocker(model, "--speedup-ratio", speedup, name=f"etcd-mocker{i}", ttl=TTL_S, etcd=etcd)
               for i in range(n)]
    for w in workers:
        await w.ready(60)
    return workers


async def wait_registered(etcd: EtcdServer, workers: list[Mocker], timeout: float) -> float:
    """Seconds until every worker's record (its own pid: the same process) is in etcd."""
    t0 = time.monotonic()
    want = {w.pid for w in workers}
    seen: set[int] = set()
    while time.monotonic() - t0 < timeout:
        seen = {r.pid for r in await registered_in(etcd, "test")}
        if want <= seen:
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    raise AssertionError(f"workers {sorted(want - seen)} not registered {timeout} s after etcd came back "
                         f"(in etcd: {sorted(seen)})\n" + "\n".join(w.log()[-2000:] for w in workers))


async def after_the_outage(etcd: EtcdServer, fe: FrontendProcess, model: Path, workers: list[Mocker],
                           up_at: float) -> Mocker:
    """The same workers still registered well past their TTL (their keep-alive resumed), and a
    worker started now is found by the frontend (its watch resumed) and served. Returns it."""
    late = Mocker(model, "--speedup-ratio", "50", name="etcd-late", ttl=TTL_S, etcd=etcd)
    await late.ready(60)
    await wait_served_by(fe, model.name, late)
    await asyncio.sleep(max(0.0, up_at + 2 * TTL_S - time.monotonic()))  # past the leases' TTL
    await wait_registered(etcd, [*workers, late], 1.0)
    assert all(w.proc.poll() is None for w in workers), "a worker exited"
    return late


@pytest.mark.parametrize("data", ["same data dir", "empty data dir"])
async def test_etcd_killed_and_restarted_under_load(etcd: EtcdServer, tmp_path: Path, tiny_model_dir: Path,
                                                    data: str) -> None:
    workers = await start_workers(etcd, tiny_model_dir, 2, "0.5")
    fe = FrontendProcess(tmp_path, *etcd_args(etcd, TTL_S), "--router-mode", "round-robin")
    late: Mocker | None = None
    try:
        await fe.wait_models({tiny_model_dir.name})
        load: asyncio.Task[Any] = asyncio.create_task(  # Any: wait_inflight takes a Future[object]
            drive(fe, tiny_model_dir.name, requests=300, concurrency=4))
        for w in workers:
            await w.wait_inflight(1, load=load)
        etcd.kill()  # SIGKILL
        if data == "empty data dir":
            shutil.rmtree(etcd.data_dir)  # the workers must take new leases and put their records again
        await asyncio.sleep(2 * TTL_S)  # longer than the leases
        etcd.start()  # same ports
        up_at = time.monotonic()
        took = await wait_registered(etcd, workers, REREGISTER_S)
        assert not load.done(), "the load ended before etcd came back: the scenario did not run under load"
        report: Report = await load
        print(f"\netcd SIGKILLed and restarted ({data}) under load: {report}; workers registered "
              f"{took:.1f} s after etcd's return")
        assert report.lost == 0 and report.failed == 0, f"{report}\n{fe.log()[-3000:]}\n{etcd.log_tail()}"
        late = await after_the_outage(etcd, fe, tiny_model_dir, workers, up_at)
    finally:
        fe.close()
        for w in [*workers, *([late] if late else [])]:
            await w.close()


async def test_etcd_down_30_s(etcd: EtcdServer, tmp_path: Path, tiny_model_dir: Path) -> None:
    workers = await start_workers(etcd, tiny_model_dir, 2, "0.5")
    fe = FrontendProcess(tmp_path, *etcd_args(etcd, TTL_S), "--router-mode", "round-robin")
    late: Mocker | None = None
    try:
        await fe.wait_models({tiny_model_dir.name})
        etcd.kill()
        down_at = time.monotonic()
        during = await drive(fe, tiny_model_dir.name, requests=40, concurrency=4)
        # Idle while etcd stays down: the discovery loops retry with a backoff, never spin.
        pids = {"frontend": fe.proc.pid, **{w.name: w.pid for w in workers}}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        await asyncio.sleep(max(5.0, down_at + 30 - time.monotonic()))
        window = time.monotonic() - t0
        used = {name: (cpu_seconds(pid) - before[name]) / window for name, pid in pids.items()}
        etcd.start()
        up_at = time.monotonic()
        took = await wait_registered(etcd, workers, REREGISTER_S)
        after = await drive(fe, tiny_model_dir.name, requests=40, concurrency=4)
        print(f"\netcd down {up_at - down_at:.0f} s: during the outage {during}; after it {after}; workers "
              f"registered {took:.1f} s after its return; CPU while down and idle (share of a core over "
              f"{window:.0f} s): " + ", ".join(f"{k} {v:.1%}" for k, v in used.items()))
        assert up_at - down_at >= 30
        assert during.lost == 0 and during.failed == 0, f"{during}\n{fe.log()[-3000:]}"
        assert after.lost == 0 and after.failed == 0, f"{after}\n{fe.log()[-3000:]}"
        assert all(share < IDLE_CPU_LIMIT for share in used.values()), used
        assert fe.proc.poll() is None
        late = await after_the_outage(etcd, fe, tiny_model_dir, workers, up_at)
    finally:
        fe.close()
        for w in [*workers, *([late] if late else [])]:
            await w.close()
