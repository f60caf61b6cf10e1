"""End-to-end fixtures: real frontend and worker processes sharing a file-discovery directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.worker_process import REPO, WorkerProcess, free_port


class FrontendProcess:
    def __init__(self, discovery_dir: Path, *extra: str, namespace: str = "test") -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="frontend-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port),
             "--namespace", namespace, "--discovery-backend", "file", "--discovery-dir", str(discovery_dir),
             *extra],
            stdout=self._log, stderr=subprocess.STDOUT, process_group=0,
            env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""

    async def wait_models(self, names: set[str], timeout: float = 60) -> None:
        """Until /v1/models lists exactly `names` and /health says the frontend can serve them."""
        import json
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


async def start_mocker(discovery_dir: Path, model: Path, *extra: str, name: str = "mocker") -> WorkerProcess:
    w = WorkerProcess("mocker", ["--model", str(model), *extra], discovery_dir, name=name)
    return await w.ready(60)
