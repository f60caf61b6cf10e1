"""Real `python -m dynamo.<backend>` worker and `python -m dynamo.frontend` processes, and talking to them.

Every process starts in a process group of its own (killed as one) but in the caller's session:
with Linux autogroup, a worker session holding vLLM's spin-waiting engine core would starve the
caller's client for hundreds of ms (late cancels, bursty streams). See dynamo/serve/__main__.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import openai

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.proto import worker_pb2_grpc as pb_grpc
from dynamo.llm.protocol import GenerateOutput, GenerateRequest
from dynamo.runtime.discovery.file import FileDiscovery
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.identity import INSTANCES_ROOT
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


class WorkerProcess:
    """One worker subprocess registered in a file-discovery directory."""

    def __init__(self, backend: str, args: Sequence[str], discovery_dir: Path, *, namespace: str = "test",
                 env: dict[str, str] | None = None, name: str | None = None) -> None:
        self.backend = backend
        self.name = name or backend
        self.discovery_dir = discovery_dir
        self.namespace = namespace
        self.system_port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")[1])
        cmd = [sys.executable, "-m", f"dynamo.{backend}", *args, "--namespace", namespace,
               "--discovery-backend", "file", "--discovery-dir", str(discovery_dir), "--discovery-ttl", "3",
               "--grpc-host", "127.0.0.1", "--advertise-host", "127.0.0.1",
               "--system-port", str(self.system_port)]
        full_env = {**os.environ, **CHILD_ENV, **(env or {})}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     process_group=0)
        self.record: InstanceRecord | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_registered(self, timeout: float) -> InstanceRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-5000:]}")
            for rec in await self.registered():
                if rec.pid == self.pid:
                    self.record = rec
                    return rec
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} did not register within {timeout} s:\n{self.log()[-5000:]}")

    async def ready(self, timeout: float) -> WorkerProcess:
        """Wait until registered; on failure stop the process (and its engine) before raising."""
        try:
            await self.wait_registered(timeout)
        except BaseException:
            await self.close()
            raise
        return self

    async def registered(self) -> list[InstanceRecord]:
        """Every live record in this worker's namespace."""
        async with FileDiscovery(self.discovery_dir, ttl=3) as discovery:
            raw = await discovery.get_prefix(f"{INSTANCES_ROOT}{self.namespace}/")
        out = []
        for value in raw.values():
            try:
                out.append(InstanceRecord.from_json(value))
            except ValueError:
                pass
        return out

    @property
    def card(self) -> dict:
        assert self.record is not None
        return self.record.metadata["model_card"]

    def stub(self) -> pb_grpc.WorkerStub:
        assert self.record is not None
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.record.target)
        return pb_grpc.WorkerStub(self._channel)

    async def generate(self, request: GenerateRequest, timeout: float = 120) -> list[GenerateOutput]:
        return [o async for o in self.stream(request, timeout)]

    async def stream(self, request: GenerateRequest, timeout: float = 120) -> AsyncIterator[GenerateOutput]:
        call = self.stub().Generate(codec.request_to_pb(request), timeout=timeout)
        try:
            async for msg in call:
                yield codec.output_from_pb(msg)
        finally:
            call.cancel()

    async def stats(self) -> pb.WorkerStats:
        call = self.stub().SubscribeStats(pb.SubscribeRequest(interval_ms=100), timeout=10)
        try:
            async for msg in call:
                return msg
        finally:
            call.cancel()
        raise RuntimeError("no stats")

    async def wait_unfinished(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            last = (await self.stats()).unfinished_requests
            if last == n:
                return last
            await asyncio.sleep(0.05)
        return last

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.system_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        _, text = self.http_get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    async def wait_inflight(self, at_least: int, timeout: float = 30, *,
                            load: asyncio.Future[object] | None = None) -> None:
        """Until the worker has `at_least` requests in flight; fails after `timeout` s, or when
        `load` (the task that sends them) ends first."""
        deadline = time.monotonic() + timeout
        while self.metric("dynamo_worker_inflight_requests") < at_least:
            assert time.monotonic() < deadline, f"{self.name}: fewer than {at_least} requests in flight after {timeout} s"
            assert load is None or not load.done(), f"{self.name}: the load ended before {at_least} were in flight"
            await asyncio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Reap engine subprocesses left in the session (vLLM's engine core) if the worker died hard.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


class FrontendProcess:
    """`python -m dynamo.frontend` on a free port, watching a file-discovery directory."""

    def __init__(self, discovery_dir: Path, *extra: str, namespace: str = "test",
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="frontend-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port),
             "--namespace", namespace, "--discovery-backend", "file", "--discovery-dir", str(discovery_dir),
             *extra],
            stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
            env={**os.environ, **CHILD_ENV, **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 120) -> openai.AsyncOpenAI:
        """The official openai client on this frontend (no retries: tests see every error)."""
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=timeout)

    def get(self, path: str) -> tuple[int, str]:
        """(status, body); status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, OSError):  # refused, reset, or no answer within the timeout
            return 0, ""

    async def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"frontend exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if (await asyncio.to_thread(self.get, "/live"))[0] == 200:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"frontend not live within {timeout} s:\n{self.log()[-3000:]}")

    async def wait_models(self, names: set[str], timeout: float = 60) -> None:
        """Until /v1/models lists exactly `names` and /health says the frontend can serve them."""
        deadline = time.monotonic() + timeout
        got: set[str] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"frontend exited: {self.log()[-3000:]}")
            status, body = await asyncio.to_thread(self.get, "/v1/models")
            if status == 200:
                got = {m["id"] for m in json.loads(body)["data"]}
                if got == names and (not names or (await asyncio.to_thread(self.get, "/health"))[0] == 200):
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"/v1/models listed {got}, expected {names}:\n{self.log()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


async def start_mocker(discovery_dir: Path, model: Path, *extra: str, name: str = "mocker",
                       namespace: str = "test") -> WorkerProcess:
    w = WorkerProcess("mocker", ["--model", str(model), *extra], discovery_dir, name=name, namespace=namespace)
    return await w.ready(60)


def records_json(discovery_dir: Path) -> list[dict]:
    out = []
    for p in discovery_dir.rglob("*"):
        if p.is_file():
            try:
                out.append(json.loads(p.read_text()))
            except (ValueError, OSError):
                pass
    return out
