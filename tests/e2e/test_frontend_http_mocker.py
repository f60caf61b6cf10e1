"""`python -m dynamo.frontend` + a mocker worker, driven by the official openai client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.worker_process import REPO, WorkerProcess, free_port


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout_s} s")


@pytest.fixture()
def frontend(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="frontend-", suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port",
             str(port), "--namespace", "test", "--discovery-backend", "file", "--discovery-dir",
             str(tmp_path)], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: proc.poll() is None and httpx.get(url + "/live").status_code == 200, 60,
              f"frontend did not come up:\n{log.read_text()}")
        yield url, proc, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
async def test_frontend_serves_a_mocker_worker(frontend, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    url, proc, discovery_dir = frontend
    assert httpx.get(url + "/health").status_code == 503  # no worker yet
    worker = WorkerProcess("mocker", ["--model", str(tiny_model_dir), "--served-model-name",
                                      "tiny", "--speedup-ratio", "100"], discovery_dir,
                           namespace="test")
    try:
        await worker.wait_registered(60)
        _wait(lambda: httpx.get(url + "/health").status_code == 200, 30, "model not served")
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        r = client.chat.completions.create(model="tiny", max_tokens=16,
                                           messages=[{"role": "user", "content": "hello"}])
        assert r.usage.completion_tokens <= 16 and r.choices[0].finish_reason in ("stop", "length")
        chunks = list(client.completions.create(model="tiny", prompt="def f():", max_tokens=32,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        assert chunks[-1].usage.completion_tokens == 32
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x", max_tokens=2)
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(30)
    # the worker is gone: the model disappears from the frontend
    _wait(lambda: httpx.get(url + "/v1/models").json()["data"] == [], 30, "model still listed")
    assert httpx.get(url + "/health").status_code == 503
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
