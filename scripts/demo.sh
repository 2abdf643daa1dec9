#!/usr/bin/env bash
# The README's main job: a simulated cluster with broken nodes, asked for its health.
#
#   1. `autopilot up --simulate 4 --fault sim-1:remapped:fatal --fault sim-3:ping:down
#      --fault sim-2:iperf:slow` in the background: a private Redis, the API, a worker for this
#      machine, four simulated 8-GPU nodes (sim-1 with a failed row remap, sim-3 whose link is
#      down, sim-2 whose link is slow) and beat;
#   2. waits for the API's /readyz and for the four simulated nodes to register;
#   3. `autopilot status`: the cluster-wide status (every node runs the periodic checks, ping
#      among them: every simulated node fails its pairs with sim-3, and the localisation below
#      the table names sim-3 as the suspect);
#   4. sim-1's verdict and labels from /api/v1/nodes/sim-1;
#   5. `autopilot inject sim-2 xid 79 --gpu 3`: the follower puts sim-2 in EVICT at once, and GPU 3
#      alone (by its UUID) in its per-GPU verdict and count labels;
#   6. the iperf ring over sim-0..sim-2 (/iperf, a pair below 50 Gb/s warns): the slow pairs
#      point at sim-2;
#   7. stops the stack (SIGINT, as Ctrl-C would).
#
# Environment: PYTHON (default .venv/bin/python, else python3), AUTOPILOT_DEMO_PORT (default 3333).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
PORT=${AUTOPILOT_DEMO_PORT:-3333}
URL="http://127.0.0.1:${PORT}"
FAULTS=(sim-1:remapped:fatal sim-3:ping:down sim-2:iperf:slow)
FAULT_ARGS=()
for f in "${FAULTS[@]}"; do FAULT_ARGS+=(--fault "$f"); done
LOG=$(mktemp "${TMPDIR:-/tmp}/autopilot-demo.XXXXXX")
unset AUTOPILOT_REDIS_URL # the demo brings its own Redis

"$PY" -m autopilot.cli up --port "$PORT" --simulate 4 "${FAULT_ARGS[@]}" >"$LOG" 2>&1 &
UP_PID=$!

stop_stack() {
  if kill -0 "$UP_PID" 2>/dev/null; then
    kill -INT "$UP_PID"
    wait "$UP_PID" || true
  fi
  rm -f "$LOG"
}
trap stop_stack EXIT

echo "== autopilot up --simulate 4 ${FAULT_ARGS[*]}   (log: $LOG)"
# Poll the API from Python (no curl needed): ready, and every simulated node registered.
if ! "$PY" - "$URL" "$UP_PID" <<'PYEOF'; then
import json, os, sys, time, urllib.request
url, up_pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        os.kill(up_pid, 0)
    except ProcessLookupError:
        sys.exit("autopilot up exited early")
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2):
            pass
        with urllib.request.urlopen(url + "/api/v1/nodes", timeout=5) as resp:
            names = {n["name"] for n in json.load(resp)["nodes"]}
        if {"sim-0", "sim-1", "sim-2", "sim-3"} <= names:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("the API did not become ready in 90 s")
PYEOF
  echo "demo: the stack did not start; its output:" >&2
  cat "$LOG" >&2
  exit 1
fi
grep '^autopilot up:' "$LOG" || true

echo
echo "== autopilot status --url $URL"
# Exit code 1 means a node is not healthy, which is what this demo shows.
"$PY" -m autopilot.cli status --url "$URL" --no-progress || true

echo
echo "== verdict and labels of sim-1 (GET /api/v1/nodes/sim-1)"
"$PY" - "$URL" <<'PYEOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/api/v1/nodes/sim-1", timeout=10) as resp:
    node = json.load(resp)
print(f"verdict: {node['verdict']}")
for reason in node.get("reasons", []):
    print(f"  reason: {reason}")
print("labels:")
for key, value in sorted(node.get("labels", {}).items()):
    print(f"  {key}={value}")
PYEOF

# ---- passive detection (issue 14): an Xid on a running node, on its labels within a second.
echo
echo "== autopilot inject sim-2 xid 79 --gpu 3   (GPU 3 of sim-2 falls off the bus)"
REDIS_URL=$(sed -n 's/.*AUTOPILOT_REDIS_URL=\([^ ]*\) autopilot flower.*/\1/p' "$LOG" | head -n 1)
AUTOPILOT_REDIS_URL="$REDIS_URL" "$PY" -m autopilot.cli inject sim-2 xid 79 --gpu 3
"$PY" - "$URL" <<'PYEOF'
import json, sys, time, urllib.request
start, node = time.monotonic(), {}
while time.monotonic() - start < 10:
    with urllib.request.urlopen(sys.argv[1] + "/api/v1/nodes/sim-2", timeout=5) as resp:
        node = json.load(resp)
    if node["verdict"] == "EVICT":
        break
    time.sleep(0.05)
print(f"sim-2 verdict {node['verdict']} after {time.monotonic() - start:.2f} s (as seen by polling the API)")
for reason in node.get("reasons", []):
    print(f"  reason: {reason}")
for gpu in node.get("gpus", []):
    if gpu["verdict"] != "PASS":  # the GPU's own verdict, keyed by its UUID (the other seven stay PASS)
        print(f"  GPU {gpu['index']} {gpu['uuid']}: {gpu['verdict']} ({'; '.join(gpu['reasons'])})")
labels = node.get("labels", {})
print(f"  labels: gpus-evict={labels.get('autopilot.ibm.com/gpus-evict')} gpus-healthy={labels.get('autopilot.ibm.com/gpus-healthy')}")
PYEOF
# ---- end of passive detection

echo
echo "== which node the network checks point at: ping (GET /ping), the iperf ring over sim-0..sim-2 (GET /iperf)"
"$PY" - "$URL" <<'PYEOF'
import json, sys, urllib.request
url = sys.argv[1]
for check, query in (("ping", "format=json"), ("iperf", "host=sim-0,sim-1,sim-2&duration_s=1&threshold_gbps=50&format=json")):
    with urllib.request.urlopen(f"{url}/{check}?{query}", timeout=120) as resp:
        report = json.load(resp)
    net = report.get("network", {}).get(check)
    if net is None:
        print(f"{check}: no network report ({report['status']})")
        continue
    print(f"{check}: {net['suspects']['summary']} ({net['bad_pairs']} of {net['pairs']} pairs bad)")
    for node, entry in sorted(report["nodes"].items()):
        for result in entry["results"]:
            print(f"  {node:8} {result['status']:7} {result['summary']}")
PYEOF

echo
echo "== stopping the stack"
