#!/usr/bin/env bash
# The one prepared run for a machine with NVIDIA GPUs (fits a 10-minute limit):
#   1. checks that a GPU and its driver are visible (fails clearly otherwise);
#   2. builds cuda_src (scripts/build-cuda.sh), or uses binaries already in cuda_src/bin;
#   3. runs the five GPU checks for real, recording every tool call as fixtures
#      (scripts/record_fixtures.py) and an NVML snapshot, and prints the measured PCIe and
#      memory figures beside a plain pinned cudaMemcpy loop and a device-to-device copy;
#   4. runs the same checks once more through the user's path, `autopilot run --json`.
# Every step has a timeout. Output goes to $OUT (default build/gpu-check): results.jsonl,
# summary.txt, a log per step and recorded/ (the fixtures; without $OUT they go to
# tests/data/recorded instead, ready to commit).
#
# Usage: OUT=/some/dir scripts/gpu-check.sh        exit 0 when every step ran, 1 otherwise
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [[ -n "${OUT:-}" ]]; then record="$OUT/recorded"; else OUT=$root/build/gpu-check; record=$root/tests/data/recorded; fi
mkdir -p "$OUT"
PY=${PYTHON:-$root/.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
checks=(pciebw remapped gpumem dcgm gpupower)
failed=0

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step "1. GPU visible"
if ! timeout 60 nvidia-smi -L >"$OUT/nvidia-smi-L.txt" 2>&1; then
    cat "$OUT/nvidia-smi-L.txt"
    echo "gpu-check: FAILED: no NVIDIA GPU visible (nvidia-smi -L failed or is missing); nothing to measure" >&2
    exit 1
fi
cat "$OUT/nvidia-smi-L.txt"
timeout 60 nvidia-smi -q >"$OUT/nvidia-smi-q.txt" 2>&1 || true
if ! timeout 60 "$PY" -c 'import pynvml; pynvml.nvmlInit(); print("NVML devices:", pynvml.nvmlDeviceGetCount())'; then
    echo "gpu-check: FAILED: NVML (nvidia-ml-py) cannot see the GPUs from $PY" >&2
    exit 1
fi

step "2. build cuda_src"
if timeout 300 bash scripts/build-cuda.sh >"$OUT/build.log" 2>&1; then
    tail -n 3 "$OUT/build.log"
else
    echo "gpu-check: build-cuda.sh failed (log: $OUT/build.log); trying ap-bandwidth alone"
    tail -n 20 "$OUT/build.log"
    timeout 120 make -C cuda_src bin/ap-bandwidth >>"$OUT/build.log" 2>&1 || true
fi
for b in ap-bandwidth ap-gpumem; do
    if [[ -x cuda_src/bin/$b ]]; then
        echo "cuda_src/bin/$b: $(timeout 30 cuda_src/bin/$b --help 2>&1 | head -n 1)"
        ldd "cuda_src/bin/$b" | grep -E "not found|cublas" || true
    else
        echo "gpu-check: cuda_src/bin/$b missing: its check will report an error"; failed=1
    fi
done

step "3. GPU checks for real, recorded under $record"
rm -rf "$record"
if timeout 420 "$PY" scripts/record_fixtures.py --out "$record" --cuda-bin cuda_src/bin "${checks[@]}" \
        >"$OUT/results.jsonl" 2>"$OUT/record.log"; then
    grep -v '^{' "$OUT/results.jsonl" | tee "$OUT/summary.txt"
else
    rc=$?
    echo "gpu-check: record_fixtures.py failed (exit $rc)"; failed=1
    tail -n 30 "$OUT/record.log"; grep -v '^{' "$OUT/results.jsonl" || true
fi

step "4. autopilot run --json (the user's path)"
if [[ -x .venv/bin/autopilot ]] || "$PY" -c 'import autopilot.cli' 2>/dev/null; then
    AUTOPILOT_CUDA_BIN_DIR="$root/cuda_src/bin" timeout 300 "$PY" -m autopilot.cli run --json "${checks[@]}" \
        >"$OUT/autopilot-run.json" 2>"$OUT/autopilot-run.log"
    rc=$?
    echo "autopilot run exit code: $rc (0 ok, 1 warn/fail found, 3 error; 124 timeout)"
    "$PY" - "$OUT/autopilot-run.json" <<'PYEOF' || true
import json, sys
text = open(sys.argv[1]).read().strip()
try:
    doc = json.loads(text)
except ValueError:
    doc = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
for r in (doc if isinstance(doc, list) else doc.get("results", [doc])):
    print(f"  {r.get('check')}: {r.get('status')}: {r.get('summary')}")
PYEOF
    [[ $rc -le 3 ]] || failed=1
else
    echo "autopilot CLI not importable: skipped"
fi

step "done: outputs in $OUT"
ls -R "$record" 2>/dev/null | head -n 40
exit $failed
