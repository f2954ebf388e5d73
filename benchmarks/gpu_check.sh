#!/usr/bin/env bash
# The GPU check of issue 10 (part 4), prepared for a GPU window of at most 8 minutes:
# throughput per family on the GPU against the CPU, repeats as one ensemble on the GPU,
# workers per GPU, and the projected seed-scale study (see benchmarks/gpu_check.py).
# Without a GPU it runs the CPU parts and says that the GPU parts were skipped.
#
#   bash benchmarks/gpu_check.sh            # full (~5 min on a GPU; hard limit 7.5 min)
#   bash benchmarks/gpu_check.sh --quick    # smaller slices (~2 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
command -v nvidia-smi >/dev/null 2>&1 \
    && nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader \
    || echo "nvidia-smi: not found"
# A hard limit inside the 8-minute window, so that whatever was printed is kept.
exec timeout --signal=TERM --kill-after=10 450 "$PYTHON" benchmarks/gpu_check.py "$@"
