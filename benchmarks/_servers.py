"""Servers other than ours that benchmarks compare our serving path with: an engine's own OpenAI
server, and NVIDIA Dynamo's frontend + mocker (PyPI ai-dynamo, in a venv of its own)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from benchmarks._common import track
from benchmarks._vllm_common import kill_group
from tests.support.ports import free_port


class BaselineServer:
    """`command(port)` on a free port, in its own process group (engine processes included), ready
    once GET `ready_path` answers 200."""

    def __init__(self, name: str, command: Callable[[int], list[str]], env: Mapping[str, str],
                 ready_path: str, cwd: str | None = None) -> None:
        self.name = name
        self.ready_path = ready_path
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{name.split()[0].lower()}-server-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(command(self.port), stdout=self._log, stderr=subprocess.STDOUT,
                                     process_group=0, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, cwd=cwd)
        track(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self._tail()}")
            if await asyncio.to_thread(self._status, self.ready_path) == 200:
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"{self.name} was not ready within {timeout} s:\n{self._tail()}")

    def close(self) -> None:
        kill_group(self.proc)
        self.proc.wait(10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


class AiDynamoGraph:
    """NVIDIA Dynamo's own frontend over `workers` of its mocker, from `python` (a venv with PyPI's
    ai-dynamo; its `dynamo` package shadows ours, so it runs outside this repository), on file
    discovery, the TCP request plane and the ZMQ event plane: no etcd or NATS to start."""

    def __init__(self, python: str, model: Path, served: str, workers: int, speedup: float) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-ai-dynamo-")
        env = {"DYN_FILE_KV": os.path.join(self.dir, "kv"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": "",
               "DYN_LOG": "warn"}
        planes = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]
        self.served = served
        self.mockers = [BaselineServer(f"ai-dynamo mocker {i}", lambda _port: [
            python, "-m", "dynamo.mocker", "--model-path", str(model), "--model-name", served,
            "--speedup-ratio", str(speedup), *planes], env, ready_path="", cwd=self.dir) for i in range(workers)]
        self.frontend = BaselineServer("ai-dynamo frontend", lambda port: [
            python, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port), *planes],
            env, ready_path="/v1/models", cwd=self.dir)

    @property
    def pids(self) -> list[int]:
        return [self.frontend.proc.pid] + [m.proc.pid for m in self.mockers]

    async def wait_ready(self, timeout: float) -> None:
        """Until its frontend lists the model (its mockers registered)."""
        await self.frontend.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.mockers:
                if m.proc.poll() is not None:
                    raise RuntimeError(f"{m.name} exited with {m.proc.returncode}:\n{m._tail()}")
            try:
                with urllib.request.urlopen(self.frontend.url + "/v1/models", timeout=5) as r:
                    if self.served in r.read().decode():
                        return
            except (urllib.error.URLError, OSError):
                pass
            await asyncio.sleep(0.5)
        raise TimeoutError(f"ai-dynamo's frontend did not list {self.served} within {timeout} s:\n"
                           f"{self.frontend._tail()}\n{self.mockers[0]._tail()}")

    def close(self) -> None:
        for server in (self.frontend, *self.mockers):
            server.close()
