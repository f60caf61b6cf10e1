"""`python -m dynamo.serve examples/mocker.yaml`: starts the graph, serves, stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.processes import REPO


@pytest.mark.timeout(180)
def test_serve_mocker_graph(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "MODEL": str(tiny_model_dir), "HTTP_PORT": str(port), "SPEEDUP": "100",
           "PYTHONPATH": str(REPO), "DYN_NAMESPACE": "serve-test", "SERVED_MODEL_NAME": "served-tiny"}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dynamo.serve", "examples/mocker.yaml",
                                 "--discovery-dir", str(tmp_path / "d")], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, process_group=0)
        try:
            deadline = time.monotonic() + 120
            while "all services ready" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            text = log.read_text()
            assert "all services ready" in text, text
            assert "worker-0" in text and "worker-1" in text and "frontend" in text  # prefixed logs
            # Each service leads its own process group (stopped as one) inside the launcher's
            # session: a session of its own would get its own autogroup share of the CPU, and a
            # spin-waiting engine there starves the rest (see dynamo/serve/__main__.py).
            for pid in (int(m) for m in re.findall(r"started \S+ \(pid (\d+)\)", text)):
                assert os.getpgid(pid) == pid, f"service {pid} is not the leader of its process group"
                assert os.getsid(pid) == os.getsid(proc.pid), f"service {pid} runs in a session of its own"
            r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=30,
                           json={"model": "served-tiny", "prompt": "hi", "max_tokens": 5})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
            stopped = log.read_text()
            assert stopped.index("stopping frontend") < stopped.index("stopping worker-1")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    # No service outlives the launcher.
    pids = [int(m) for m in re.findall(r"started \S+ \(pid (\d+)\)", log.read_text())]
    assert len(pids) == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
