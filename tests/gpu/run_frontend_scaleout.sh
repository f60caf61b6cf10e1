#!/usr/bin/env bash
# The frontend's scale-out (--num-workers N) on a machine with many cores (our CI machines have 2):
# benchmarks/frontend_scaleout.py over 4 mockers with several load-generator processes, N = 1, 2, 4, 8.
# No GPU is used; it runs here because the GPU machines are the ones with 16+ cores. Python packages
# the machine lacks can travel as wheels in .whl/ (see the device notes); they are installed first.
# Writes $OUT/scaleout.log; exit code = the benchmark's.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/dynamo-gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import dynamo.frontend.app, dynamo.mocker.engine, benchmarks._loadgen; import os; print(os.cpu_count(), 'cores')"
timeout "${SCALEOUT_TIMEOUT:-420}" python3 -m benchmarks.frontend_scaleout --procs "${PROCS:-1,2,4,8}" --mockers 4 \
  --loadgens "${LOADGENS:-6}" --levels 256,1024 2>&1 | tee "$OUT/scaleout.log"
exit "${PIPESTATUS[0]}"
