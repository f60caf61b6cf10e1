"""dynamo's gRPC I/O defaults: set before grpc loads, never over the user's own setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo.runtime.rpc import grpc_io

REPO = Path(__file__).resolve().parents[2]


def test_sets_the_default_only_when_unset_and_grpc_not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "grpc._cython.cygrpc", raising=False)
    env: dict[str, str] = {}
    assert grpc_io.apply_defaults(env) is True
    assert env == {"GRPC_EXPERIMENTS": grpc_io.DEFAULT_EXPERIMENTS}
    env = {"GRPC_EXPERIMENTS": ""}
    assert grpc_io.apply_defaults(env) is False
    assert env == {"GRPC_EXPERIMENTS": ""}
    monkeypatch.setitem(sys.modules, "grpc._cython.cygrpc", object())  # grpc's core already loaded
    env = {}
    assert grpc_io.apply_defaults(env) is False
    assert env == {}


def _child(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**base, "PYTHONPATH": str(REPO), **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_dynamo_applies_it_before_grpc_loads() -> None:
    code = ("import os, sys; import dynamo.runtime.rpc.client; "
            "print(os.environ.get('GRPC_EXPERIMENTS'), 'grpc._cython.cygrpc' in sys.modules)")
    assert _child(code) == f"{grpc_io.DEFAULT_EXPERIMENTS} True"


def test_a_users_setting_wins_even_empty() -> None:
    code = "import os, dynamo; print(repr(os.environ['GRPC_EXPERIMENTS']))"
    assert _child(code, GRPC_EXPERIMENTS="") == "''"
    assert _child(code, GRPC_EXPERIMENTS="-event_engine_dns") == "'-event_engine_dns'"


def test_too_late_once_grpc_is_loaded() -> None:
    code = ("import os, grpc; from dynamo.runtime.rpc import grpc_io; "
            "print(grpc_io.apply_defaults(), os.environ.get('GRPC_EXPERIMENTS'))")
    # `import grpc` first: dynamo's package import then finds cygrpc loaded and leaves it unset
    assert _child(code) == "False None"
