#!/usr/bin/env bash
# The conformance suite and the end-to-end tests on the real TensorRT-LLM (a GPU machine with
# TensorRT-LLM installed). Writes $OUT/trtllm.log and $OUT/trtllm.junit.xml; exit code = pytest's.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dynamo-gpu}
mkdir -p "$OUT"
python - <<'PY'
import tensorrt_llm, torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"TensorRT-LLM {tensorrt_llm.__version__} on {torch.cuda.get_device_name(0)}")
PY
export DYN_TEST_BACKENDS=trtllm HF_HUB_OFFLINE=1
timeout 1500 python -m pytest -p no:cacheprovider -ra -v tests/conformance tests/e2e/test_serving.py \
  --junitxml "$OUT/trtllm.junit.xml" "$@" 2>&1 | tee "$OUT/trtllm.log"
exit "${PIPESTATUS[0]}"
