#!/usr/bin/env bash
# The one prepared run for a machine with an NVIDIA GPU, under 9 minutes: scripts/gpu_check.py
# (environment, build against python3's cuBLAS, size sweeps, sustained DGEMM with nvidia-smi dmon,
# the checks three times, PyTorch references and the ratios), packed into three files under $OUT
# (default build/gpu-check): gpu-check.tar.gz, summary.txt, summary.json.
#
# Usage: OUT=/some/dir scripts/gpu-check.sh [--dry-run] [--budget-s S]
#   --dry-run   on a machine without a GPU: walk every step, skip each GPU step with its reason
# Runs with the machine's python3 (or $PYTHON); exit 0 when every step ran or was skipped for a
# stated reason, 1 when a step failed, 124 when the whole run passed its 9 minutes.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
exec timeout 540 "$PY" scripts/gpu_check.py ${OUT:+--out "$OUT"} "$@"
