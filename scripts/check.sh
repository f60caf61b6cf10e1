#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff (pyflakes, import order) on everything, mypy on dynamo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
