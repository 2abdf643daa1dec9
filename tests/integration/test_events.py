"""The follower in real worker processes: ``--fault NODE:xid:CODE`` and ``autopilot inject`` reach the verdict."""

from __future__ import annotations

import subprocess
import sys

import redis

from autopilot.testing import wait_until
from tests.integration.conftest import ROOT, Procs, runtime_env, wait_for_nodes
from workers.store import NodeRecord, ResultsStore


def _inject(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "autopilot.cli", "inject", *args]
    return subprocess.run(argv, cwd=ROOT, env=runtime_env(redis_url), capture_output=True, text=True, timeout=60)


def test_xid_faults_and_injections_reach_the_verdict_of_simulated_nodes(procs: Procs, redis_url: str) -> None:
    nodes = ["sim-0", "sim-1", "sim-2"]
    args = ["worker", "--simulate", "3", "--fault", "sim-1:xid:79:4", "--fault", "sim-2:xid:13", "--no-control"]
    worker = procs.start("simulator", args, runtime_env(redis_url))
    wait_for_nodes(redis_url, nodes)
    store = ResultsStore(redis.Redis.from_url(redis_url))

    wait_until(
        lambda: store.state("sim-1").verdict == "EVICT",
        30,
        "sim-1's Xid 79",
    )
    events = store.latest("sim-1")["events"]
    assert [(d.id, d.status.value) for d in events.devices] == [("4", "fail")] and events.fatal

    done = _inject(redis_url, "sim-0", "xid", "48", "--gpu", "2")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: "events" in store.latest("sim-0"), 30, "sim-0's injected Xid 48")
    assert [(d.id, d.status.value) for d in store.latest("sim-0")["events"].devices] == [("2", "fail")]
    # The follower saves the result, then reconciles the node (two writes): wait for the reconcile
    # that judged it (no verdict, or a verdict without it, before), then say what it is.
    judged = wait_until(
        lambda: store.state("sim-0").verdict in ("WARN", "EVICT") and store.state("sim-0").verdict,
        30,
        "sim-0's verdict after its Xid 48",
    )
    assert judged == "WARN"  # reset: a fail, not fatal

    # sim-2's Xid 13 is an application's: counted, never a result. The follower's thread takes the
    # injected messages one at a time, in no order between nodes: wait until sim-2's was counted.
    def counts() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in store.r.hgetall("ap:events:counts").items()}

    wait_until(lambda: "sim-2|0|kmsg|xid.13|ignore" in counts(), 30, "sim-2's Xid 13 counted")
    assert counts().get("sim-2|0|kmsg|xid.13|ignore") == 1, counts()
    assert "events" not in store.latest("sim-2")

    store.heartbeat(NodeRecord("gpu-real", simulated=False, last_seen=1.0))
    refused = _inject(redis_url, "gpu-real", "xid", "79")
    assert refused.returncode == 2 and "real node" in refused.stderr
    assert worker.proc.poll() is None, worker.output()
