"""`python -m dynamo.trtllm` refuses what it cannot run before starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backends import DOUBLES, REPO

pytestmark = pytest.mark.double


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DOUBLES), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "dynamo.trtllm", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)


def test_a_typo_in_the_engine_file_exits_2_naming_key_and_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tmp_path / "agg.yaml"
    config.write_text("kv_cache_config:\n  free_gpu_memory_fracton: 0.5\n")
    done = run("--model-path", str(tiny_model_dir), "--extra-engine-args", str(config))
    assert done.returncode == 2, done.stderr
    assert "kv_cache_config.free_gpu_memory_fracton" in done.stderr and str(config) in done.stderr
    assert "free_gpu_memory_fraction" in done.stderr  # the suggestion


def test_help_lists_the_deployment_flags() -> None:
    done = run("--help")
    assert done.returncode == 0
    for flag in ("--model-path", "--served-model-name", "--extra-engine-args", "--override-engine-args",
                 "--kv-block-size", "--is-prefill-worker", "--disaggregation-mode"):
        assert flag in done.stdout, flag
