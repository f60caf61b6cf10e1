#!/usr/bin/env bash
# The conformance suite and the end-to-end tests on the real SGLang on a GPU (a machine with a CUDA
# build of SGLang: e.g. its lmsysorg/sglang image), prefill/decode included: SGLang's bootstrap-room
# handoff over NIXL through our orchestration, greedy output equal to aggregated.
# Writes $OUT/sglang.log and $OUT/sglang.junit.xml; exit code = pytest's.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dynamo-gpu}
mkdir -p "$OUT"
python - <<'PY'
import sglang, torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"SGLang {sglang.__version__} on {torch.cuda.get_device_name(0)}")
PY
unset SGLANG_USE_CPU_ENGINE
export DYN_TEST_BACKENDS=sglang-gpu HF_HUB_OFFLINE=1
timeout 1500 python -m pytest -p no:cacheprovider -ra -v -m sglang tests/adapters/sglang tests/conformance \
  tests/e2e/test_serving.py --junitxml "$OUT/sglang.junit.xml" "$@" 2>&1 | tee "$OUT/sglang.log"
exit "${PIPESTATUS[0]}"
