#!/usr/bin/env bash
# Serves the OpenAI API on :8000 (HTTP_PORT): frontend + vLLM worker(s) as a local graph.
# MODEL: a local HF model directory (default: the tiny test model, built here on first use).
# GRAPH: examples/agg.yaml (default), examples/agg_router.yaml, examples/disagg.yaml, examples/mocker.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
if [ -z "${MODEL:-}" ]; then
  MODEL="${XDG_CACHE_HOME:-$HOME/.cache}/dynamo/tiny-model"
  .venv/bin/python -m dynamo.llm.tiny_model "$MODEL" >/dev/null
  export MODEL SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-tiny}"
fi
export SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-$(basename "$MODEL")}"
exec .venv/bin/python -m dynamo.serve "${GRAPH:-examples/agg.yaml}" "$@"
