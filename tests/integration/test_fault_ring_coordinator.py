"""The worker running the iperf ring's coordinator SIGKILLed mid-ring: real redis-server, real workers.

Simulated nodes (``--simulate``) are the ring's members: their workers run the ring's server and
client tasks over the simulated network (no network namespaces). A worker of its own consumes the
control queue, so it is the one that takes the coordinator task. ``sim-1``'s ``iperf3`` hangs
(``--fault sim-1:iperf:hang``), which holds the coordinator in the ring's client step; there it
is SIGKILLed with its whole process group, so nothing of its own (no ``finally``) runs.

Then: the ring's lease is left to the dead coordinator and lapses within ``ring.CLAIM_TTL_S``; the
run answers then, well before its deadline (the ring's whole bound): every node answered ``ping``,
its ``iperf`` is an ``error`` naming the lost coordinator, never a pass; and a later ring,
coordinated by another worker, measures every pair.
Prints one ``FAULT`` line with its figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import flask.testing
import pytest
import redis

from tests.integration.conftest import Procs, kill_group, runtime_env, stop_process, wait_for_nodes, wait_until
from workers import ring
from workers.store import ResultsStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ApiFactory = Callable[..., flask.testing.FlaskClient]
MEMBERS = ["sim-0", "sim-1"]
CONTROL_NODE = "sim-9"  # the coordinator's worker hosts a node of its own, outside the ring
BODY: dict[str, Any] = {
    "checks": ["ping", "iperf"],
    "hosts": MEMBERS,
    "deadline": 5,
    "params": {"iperf": {"duration_s": 1}},
}


def members(redis_url: str, procs: Procs, name: str, *faults: str) -> None:
    args = ["worker", "--simulate", str(len(MEMBERS)), "--no-control", "--loglevel", "INFO"]
    for fault in faults:
        args += ["--fault", fault]
    procs.start(name, args, runtime_env(redis_url))


def coordinator(redis_url: str, procs: Procs, name: str) -> Any:
    args = ["worker", "--simulate", "1", "--simulate-offset", CONTROL_NODE.removeprefix("sim-"), "--loglevel", "INFO"]
    return procs.start(name, args, runtime_env(redis_url))


def received(log: str, task: str) -> int:
    return sum(1 for line in log.splitlines() if f"Task {task}[" in line and line.rstrip().endswith("received"))


def post_run(api: flask.testing.FlaskClient) -> str:
    created = api.post("/api/v1/runs", json=BODY)
    assert created.status_code == 202, created.get_data(as_text=True)
    return str(created.get_json()["id"])


def test_a_sigkilled_coordinator_leaves_an_answered_run_a_lapsing_lease_and_a_ring_that_runs_again(
    redis_url: str, procs: Procs, api_factory: ApiFactory
) -> None:
    store = ResultsStore(redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2))
    members(redis_url, procs, "members", "sim-1:iperf:hang")
    control = coordinator(redis_url, procs, "control")
    wait_for_nodes(redis_url, [*MEMBERS, CONTROL_NODE])
    api = api_factory(redis_url)

    run_id = post_run(api)
    stored = store.get_run(run_id)
    assert stored is not None
    deadline = stored[0].deadline

    # Mid-ring: the coordinator holds the lease, both members' servers answered, and sim-1's
    # clients hang in the ring's step.
    wait_until(
        lambda: store.lease_holder(ring.CLAIM) == run_id
        and {f"servers|{n}" for n in MEMBERS} <= set(store.answers(run_id)),
        60,
        "the coordinator to start the ring's servers",
    )
    assert f"Task {ring.RING_TASK}[" in control.output()  # the control worker is the coordinator
    kill_group(control.proc)  # SIGKILL, the whole group: no finally of the coordinator runs
    control.proc.wait(10)
    killed_at = time.time()
    assert store.lease_holder(ring.CLAIM) == run_id  # nothing released it

    # The run answers once the dead coordinator's lease lapses (within its TTL), before its deadline
    # (the ring's whole bound): the gather sees the lease gone with results missing.
    answer = api.get(f"/api/v1/runs/{run_id}?wait={max(1.0, deadline - time.time() + 10):.0f}")
    answered_at = time.time()
    assert answer.status_code == 200
    report = answer.get_json()
    assert report["complete"] is True
    assert store.lease_holder(ring.CLAIM) is None  # lapsed: nothing renewed it
    assert answered_at <= killed_at + ring.CLAIM_TTL_S + 5, answered_at - killed_at
    assert answered_at < deadline, (answered_at, deadline)
    for node in MEMBERS:
        by_check = {r["check"]: r for r in report["nodes"][node]["results"]}
        assert by_check["ping"]["status"] == "ok"
        assert by_check["iperf"]["status"] == "error", by_check["iperf"]  # never a pass without a ring
        assert "coordinator lost" in by_check["iperf"]["summary"]
        assert report["nodes"][node]["status"] == "error"

    # A later ring: healthy members, another coordinator; every pair measured.
    stop_process(procs.started[0].proc)
    restarted_at = time.time()
    members(redis_url, procs, "members-2")
    again = coordinator(redis_url, procs, "control-2")
    everyone = [*MEMBERS, CONTROL_NODE]
    wait_until(lambda: all(store.last_seen(everyone).get(n, 0) > restarted_at for n in everyone), 60, "new workers")
    later_id = post_run(api)
    later = api.get(f"/api/v1/runs/{later_id}?wait=120").get_json()
    assert later["complete"] is True
    for node in MEMBERS:
        iperf_result = next(r for r in later["nodes"][node]["results"] if r["check"] == "iperf")
        assert iperf_result["status"] == "ok", iperf_result
    # Released by the coordinator that finished: it saves the results, then releases (the answer can
    # come in between). Bounded well below the lease's own lapse (at least 2/3 of CLAIM_TTL_S after
    # its last renewal), so a lease left to lapse still fails here.
    wait_until(lambda: store.lease_holder(ring.CLAIM) is None, ring.CLAIM_TTL_S / 3, "the ring's lease released")
    # The killed ring was not handed to the new coordinator (acked early, and expired by now).
    assert received(again.output(), ring.RING_TASK) == 1, again.output()[-2000:]
    print(
        f"\nFAULT ring-coordinator-sigkill: answered_after_kill_s={answered_at - killed_at:.1f}, "
        f"answered_before_deadline_s={deadline - answered_at:.1f}, later_ring=ok",
        flush=True,
    )
    store.r.close()
