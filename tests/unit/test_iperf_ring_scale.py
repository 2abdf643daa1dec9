"""The iperf ring at 6,000 members: its bound, its deadlines, its lease and its run's record, on a fake clock.

No iperf runs: the fake broker below answers each task message at once, as a worker would, and costs the
coordinator's clock what publishing one takes, so the coordinator's serial sends are what a real ring of
that size spends (6,000 of them per step)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Mapping
from typing import Any

import fakeredis
import pytest

from autopilot import config, network
from autopilot.checks import iperf
from autopilot.results import Status
from tests.unit.test_iperf_ring import Clock
from workers import ring
from workers.store import NodeRecord, ResultsStore, Run

MEMBERS = 6000
SEND_COST_S = 0.01  # one task message published (a Celery publish over the network, with some load)
DURATION_S = 5


def member(i: int) -> str:
    return f"node-{i:04d}"


def address(i: int) -> str:
    return f"10.0.{i // 250}.{i % 250 + 1}"


class Enough(Exception):
    """Raised by the broker at the second step: one step of a ring this size is what the test needs."""


class Broker:
    """Sends one task message per call, each ``SEND_COST_S`` of the coordinator's clock; a message whose expiry has
    passed by then is dropped unconsumed (Celery's ``expires``); the others are answered at once."""

    supports_tasks = True

    def __init__(self, store: ResultsStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.dropped: list[tuple[str, str]] = []
        self.clients: list[str] = []  # sources sent the first step's clients

    def send_task(self, task: str, node: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        self.clock.now += SEND_COST_S
        if self.clock() >= expires:
            self.dropped.append((task, node))
            return
        run_id = kwargs["run_id"]
        if task == ring.SERVERS_TASK:
            ring.post(self.store, run_id, f"servers|{node}", {"ok": True, "started": 1, "error": ""})
        elif task == ring.CLIENTS_TASK:
            if kwargs["phase"] > 0:
                raise Enough
            self.clients.append(node)
            measure = iperf.Measure(Status.OK, 9.4, "9.4 Gb/s")
            pairs = [
                iperf.pair(j["source"], j["target"], j["interface"], j["address"], measure) for j in kwargs["jobs"]
            ]
            ring.post(self.store, run_id, f"clients|0|{node}", {"pairs": pairs})
        elif task == ring.STOP_TASK:
            ring.post(self.store, run_id, f"stopped|{node}", {"stopped": 1})

    def send_control(self, task: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        raise AssertionError("the coordinator sends nothing to the control queue")


@pytest.fixture(scope="module")
def fleet() -> tuple[ResultsStore, config.Settings, list[str]]:
    settings = config.Settings(node_name="api")
    store = ResultsStore(fakeredis.FakeRedis())
    members = [member(i) for i in range(MEMBERS)]
    store.heartbeat_many(NodeRecord(member(i), {"data0": [address(i)]}, last_seen=0.0) for i in range(MEMBERS))
    return store, settings, members


def test_the_bound_of_a_ring_of_6000_is_counted_not_listed(
    fleet: tuple[ResultsStore, config.Settings, list[str]],
) -> None:
    # Before, the bound listed every step of the ring to count them: 36 million pairs (gigabytes, a minute) in
    # the API process for each run with iperf, and in the worker that took the coordinator's task.
    store, settings, members = fleet
    the_plan = ring.plan(store, settings, members, {"duration_s": DURATION_S})
    tracemalloc.start()
    try:
        bound = the_plan.estimate_s()
        first = next(iter(the_plan.phases()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    assert first[1][:2] == [(member(0), member(1)), (member(1), member(2))] and len(first[1]) == MEMBERS
    step = iperf.client_timeout_s(DURATION_S) + ring.QUEUE_SLACK_S + MEMBERS * ring.SEND_S
    assert bound == pytest.approx(
        ring.SERVERS_WAIT_S + (MEMBERS - 1) * step + ring.STOP_WAIT_S + 2 * MEMBERS * ring.SEND_S
    )
    # The steps are upstream's, made one at a time.
    assert [s for _, s in ring.Plan(("a", "b", "c"), the_plan.lanes[:0], (5201,), 5).phases()] == []
    assert network.ring_step(["a", "b", "c"], 2) == network.ring_steps(["a", "b", "c"])[1]


def test_a_ring_of_6000_waits_from_its_last_send_and_keeps_its_lease_and_its_run(
    fleet: tuple[ResultsStore, config.Settings, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sending 6,000 messages one by one takes a minute here. Before: the servers' wait (15 s) and each step's
    # (its clients' timeout and 10 s) counted from before the first send, so the later members' messages expired
    # unread and their servers and clients were reported silent; and the lease (30 s) was renewed only while the
    # coordinator polled for answers, so it lapsed during the sends and the run's gather took the live
    # coordinator for dead. The run's record, written last when the run was made, outlives a day-long ring too.
    store, settings, members = fleet
    clock = Clock()
    run = Run.new(("iperf",), tuple(members), {"iperf": {}}, 3600.0, now=clock())
    store.create_run(run)
    store.r.expire(f"ap:run:{run.id}", 60)  # a day has nearly passed since the run's last write
    renewed: list[float] = []
    real_lease, real_release = store.lease, store.release

    def lease(name: str, owner: str, ttl_s: float) -> bool:
        renewed.append(clock())
        return real_lease(name, owner, ttl_s)

    def release(name: str, owner: str) -> None:
        renewed.append(clock())
        real_release(name, owner)

    monkeypatch.setattr(store, "lease", lease)
    monkeypatch.setattr(store, "release", release)
    broker = Broker(store, clock)
    coordinator = ring.Coordinator(store, broker, settings, clock=clock, sleep=clock.sleep)
    steps: list[list[dict[str, Any]]] = []
    real_step = coordinator._step
    monkeypatch.setattr(coordinator, "_step", lambda *args: steps.append(real_step(*args)) or steps[-1])
    with pytest.raises(Enough):
        coordinator.run(run.id, members, {"duration_s": DURATION_S})
    assert broker.dropped == []
    assert sorted(broker.clients) == members  # every member's servers answered in time, and each sent its clients
    assert len(steps[0]) == MEMBERS and {p["status"] for p in steps[0]} == {"ok"}
    assert len(ring.replies(store, run.id, "stopped")) == MEMBERS
    # The step's answers, read, are not kept: the ring's hash holds the servers' and the stops' alone.
    # Before, 36 million answers piled up there over a ring of this size, every poll reading them all.
    assert store.r.hlen(f"ap:ring:{run.id}") == 2 * MEMBERS
    gaps = [b - a for a, b in zip(renewed, renewed[1:], strict=False)]
    assert clock() - renewed[0] > 3 * ring.CLAIM_TTL_S and max(gaps) < ring.CLAIM_TTL_S, max(gaps)
    assert store.r.ttl(f"ap:run:{run.id}") > 3600
