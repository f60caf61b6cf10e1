"""Mocker workers for the fault-tolerance scenarios, on file discovery with a TTL of the test's
choosing or on etcd (tests.support.processes.WorkerProcess is file discovery with a 3 s TTL), and
what the scenarios read from /proc."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from etcd3aio import prefix_range_end

from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.identity import INSTANCES_ROOT
from tests.support.etcd import EtcdServer
from tests.support.ports import free_port
from tests.support.processes import CHILD_ENV, FrontendProcess, WorkerProcess

_TICK = os.sysconf("SC_CLK_TCK")


def etcd_args(etcd: EtcdServer, ttl: float) -> list[str]:
    return ["--discovery-backend", "etcd", "--etcd-endpoints", etcd.endpoint, "--discovery-ttl", f"{ttl:g}"]


class Mocker(WorkerProcess):
    """`python -m dynamo.mocker` registered in `etcd`, or else in the file directory `discovery_dir`,
    with a lease of `ttl` seconds."""

    def __init__(self, model: Path, *extra: str, name: str, ttl: float, discovery_dir: Path | None = None,
                 etcd: EtcdServer | None = None, namespace: str = "test") -> None:
        # WorkerProcess's constructor starts a worker on a 3 s file lease: set up its state here.
        if (discovery_dir is None) == (etcd is None):
            raise ValueError("give discovery_dir or etcd")
        self.backend, self.name, self.namespace = "mocker", name, namespace
        self.discovery_dir = discovery_dir or Path(tempfile.gettempdir())
        self.etcd = etcd
        self.system_port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        discovery = (etcd_args(etcd, ttl) if etcd is not None else
                     ["--discovery-backend", "file", "--discovery-dir", str(discovery_dir),
                      "--discovery-ttl", f"{ttl:g}"])
        cmd = [sys.executable, "-m", "dynamo.mocker", "--model", str(model), *extra, "--namespace", namespace,
               *discovery, "--grpc-host", "127.0.0.1", "--advertise-host", "127.0.0.1",
               "--system-port", str(self.system_port)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
                                     env={**os.environ, **CHILD_ENV})
        self.record = None
        self._channel = None

    async def registered(self) -> list[InstanceRecord]:
        if self.etcd is None:
            return await super().registered()
        return await registered_in(self.etcd, self.namespace)


async def registered_in(etcd: EtcdServer, namespace: str) -> list[InstanceRecord]:
    """Every instance record in etcd under `namespace` (empty while etcd is unreachable). Read
    through etcd's JSON gateway: no lease is granted and nothing is written, so polling this does
    not add to etcd's write load while it recovers."""
    prefix = f"{INSTANCES_ROOT}{namespace}/".encode()
    body = json.dumps({"key": base64.b64encode(prefix).decode(),
                       "range_end": base64.b64encode(prefix_range_end(prefix)).decode()}).encode()

    def fetch() -> list[InstanceRecord]:
        try:
            with urllib.request.urlopen(f"{etcd.url}/v3/kv/range", body, timeout=1.0) as r:
                kvs = json.loads(r.read()).get("kvs", [])
        except (OSError, ValueError):
            return []
        return [InstanceRecord.from_json(base64.b64decode(kv["value"])) for kv in kvs]

    return await asyncio.to_thread(fetch)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat


def requests_served(worker: WorkerProcess) -> float:
    return worker.metric("dynamo_worker_requests_total")


async def wait_served_by(fe: FrontendProcess, model: str, worker: WorkerProcess, timeout: float = 20) -> None:
    """Until requests through the frontend land on `worker` (round-robin gets there)."""
    from tests.fault_tolerance.test_dead_instances import drive

    deadline = time.monotonic() + timeout
    start = requests_served(worker)
    while requests_served(worker) <= start:
        assert time.monotonic() < deadline, f"{worker.name} got no request within {timeout} s:\n{fe.log()[-3000:]}"
        report = await drive(fe, model, requests=4, concurrency=2)
        assert report.completed == 4, report


async def wait_log(fe: FrontendProcess, text: str, timeout: float) -> float:
    """Seconds until the frontend's log says `text`."""
    t0 = time.monotonic()
    while text not in fe.log():
        assert time.monotonic() - t0 < timeout, f"the frontend did not log {text!r} within {timeout} s:\n" \
                                                f"{fe.log()[-3000:]}"
        await asyncio.sleep(0.1)
    return time.monotonic() - t0
