"""`python -m dynamo.serve deploy/mocker/<pattern>.yaml`: a Kubernetes DynamoGraphDeployment run on
one machine as local processes (replicas, envs, args; images and GPU limits left out), through the
official openai client. The KV router of the Frontend (DYN_ROUTER_MODE=kv in the file) places one
request per decision aggregated, two (prefill and decode) disaggregated."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.ports import free_port
from tests.support.processes import REPO

REQUESTS = 4


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path, extra, decisions_per_request", [
    ("deploy/mocker/agg_router.yaml", [], 1),
    ("deploy/mocker/disagg_router.yaml", [], 2),
    # a GPU graph's shape, its engine swapped for the mocker (deploy/README.md)
    ("deploy/vllm/disagg_router.yaml", ["--set-module", "*Worker=dynamo.mocker"], 2),
])
def test_serve_runs_a_deploy_file(path: str, extra: list[str], decisions_per_request: int, tmp_path: Path,
                                  tiny_model_dir: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "dynamo.serve", path, *extra, "--discovery-dir", str(tmp_path / "d"),
           "--set-arg", f"model={tiny_model_dir}", "--set-arg", f"Frontend:http-port={port}",
           "--set-arg", "*Worker:speedup-ratio=100", "--set-arg", "*Worker:served-model-name=tiny"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
                                stdout=out, stderr=subprocess.STDOUT, process_group=0)
        try:
            deadline = time.monotonic() + 150
            while "all services ready" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            text = log.read_text()
            workers = re.findall(r"started (\w+Worker-\d) \(pid", text)
            assert len(workers) == 4 if "disagg" in path else len(workers) == 2, text
            assert "image dynamo-worker-" in text and "not used" in text  # what a local run leaves out, said
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            for i in range(REQUESTS):
                chat = client.chat.completions.create(model="tiny", max_tokens=8, extra_body={"ignore_eos": True},
                                                      messages=[{"role": "user", "content": f"hello {i}"}])
                assert chat.usage is not None and chat.usage.completion_tokens == 8
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert _metric(metrics, "dynamo_frontend_router_decisions_total") == REQUESTS * decisions_per_request
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
