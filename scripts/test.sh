#!/usr/bin/env bash
# Runs the whole test suite (unit, integration with real etcd and gRPC, conformance and e2e on the
# real vLLM CPU engine and the mocker). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
