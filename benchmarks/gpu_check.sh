#!/usr/bin/env bash
# The GPU check (#20): scoring and training images/s on this machine, as JSON.
#   bash benchmarks/gpu_check.sh            on a GPU machine (<= 8 minutes)
#   bash benchmarks/gpu_check.sh --smoke    anywhere, seconds (what make test runs)
# Uses the project's .venv when there is one, else the python on PATH (a device machine
# with torch installed). Writes $OUT/gpu_check.json when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
