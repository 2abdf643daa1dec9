"""Confirmation never holds back what cannot be noise, and ``busy`` never reaches its windows or the baselines.

Each case starts from a node whose checks pass (so a noisy failure would be *pending* and the
verdict would stay ``PASS``), under the default policy (2 of 3, 2 passes to recover), and feeds the
result the real producer makes: the follower's ``events`` result from a kernel line, the GPU
census's correction of a GPU check, a lost node's stale heartbeat.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import fakeredis

from autopilot import config, errors, gpucensus, results
from autopilot.events import follower as follower_mod
from autopilot.nodeinfo import ExpectedGpus
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from tests.unit.test_confirmation_flow import NODE, T0, Node
from tests.unit.test_events_follower import GPUS, XID79, XID119, ListSink
from workers import confirming, fleet, reconcile
from workers.store import NodeRecord, ResultsStore

EXPECTED = ExpectedGpus(8, tuple(f"0000:{0x18 + i:02x}:00.0" for i in range(8)), ("Node allocatable nvidia.com/gpu=8",))


def passing() -> Node:
    n = Node()
    n.result("remapped", "ok")
    assert n.result("pciebw", "ok") == "PASS"
    return n


def feed(n: Node, found: CheckResult) -> str:
    """Save ``found`` as a task would (its start time after the node's earlier results), reconcile, run the glue."""
    n.minutes += 5
    at = T0 + timedelta(minutes=n.minutes)
    found = dataclasses.replace(found, node=NODE, started_at=results.utc_now_iso(at))
    n.store.save_result(found)
    decision = reconcile.reconcile_node(n.store, NODE, n.settings, at + timedelta(seconds=30), checks=shipped_checks())
    confirming.after_task(n.store, n.dispatcher, n.settings, NODE, [found], now=at.timestamp(), checks=shipped_checks())
    return decision.verdict.value


def event_result(line: str) -> CheckResult:
    sink = ListSink()
    follower_mod.Follower(NODE, sink, gpu_index=GPUS, clock=lambda: 1000.0).feed_kmsg(line)
    return sink.results[-1]


def quiet_events() -> Node:
    """A passing node whose follower already wrote ``no GPU events`` (an earlier finding aged out)."""
    n = passing()
    assert feed(n, CheckResult(follower_mod.CHECK, Status.OK, "no GPU events")) == "PASS"
    return n


def test_an_evicting_xid_acts_at_once() -> None:
    n = quiet_events()
    assert feed(n, event_result(XID79)) == "EVICT"
    assert n.dispatcher.sent == []


def test_a_reset_xid_acts_at_once() -> None:
    n = quiet_events()
    found = event_result(XID119)
    assert (found.status, found.fatal) == (Status.FAIL, False)
    assert feed(n, found) == "WARN"
    assert n.dispatcher.sent == []


def test_a_gpu_that_fell_off_the_bus_acts_at_once_even_in_a_noisy_check() -> None:
    n = passing()
    census = gpucensus.Census(EXPECTED, 7, "", EXPECTED.bus_ids[:7])
    found = gpucensus.judge(census, CheckResult("pciebw", Status.OK, "7 GPU(s): fine"))
    assert found.fatal and found.status is Status.FAIL
    assert feed(n, found) == "EVICT"
    assert n.dispatcher.sent == []


def test_a_lost_gpu_acts_at_once_even_in_a_noisy_check() -> None:
    n = passing()
    assert feed(n, gpucensus.lost_result("pciebw", errors.GpuLost(3, "GPU is lost"))) == "EVICT"
    assert n.dispatcher.sent == []


def test_a_broken_driver_on_a_node_expected_to_have_gpus_acts_at_once() -> None:
    n = passing()
    census = gpucensus.Census(EXPECTED, None, "NVML could not start: driver/library version mismatch")
    found = gpucensus.judge(census, CheckResult("pciebw", Status.SKIPPED, "no GPU here"))
    assert found.status is Status.ERROR
    assert feed(n, found) == "WARN"
    assert n.dispatcher.sent == []


def test_a_lost_node_is_unknown_at_once_whatever_its_pending_failures() -> None:
    n = passing()
    assert n.result("pciebw", "fail") == "PASS"  # pending: one noisy sample
    last = T0 + timedelta(minutes=n.minutes)
    n.store.heartbeat(NodeRecord(NODE, last_seen=last.timestamp()))
    later = last + timedelta(seconds=n.settings.live_after_s + 1)
    assert (
        reconcile.reconcile_node(n.store, NODE, n.settings, later, checks=shipped_checks()).verdict.value == "UNKNOWN"
    )


def test_busy_never_enters_the_confirmation_window() -> None:
    n = passing()
    assert n.result("pciebw", "fail") == "PASS"  # pending, one confirmation run sent
    sent = len(n.dispatcher.sent)
    busy = CheckResult("pciebw", Status.BUSY, "GPUs busy", node=NODE)
    n.store.save_many([(busy, True)])
    confirming.after_task(n.store, n.dispatcher, n.settings, NODE, [busy], checks=shipped_checks())
    assert len(n.dispatcher.sent) == sent
    assert all(r.status is not Status.BUSY for r in n.store.history(NODE, limit=50))
    # The next real sample is the second of the window: confirmed as if the busy answer never was.
    assert n.result("pciebw", "fail") == "WARN"


def test_busy_never_enters_the_fleet_baselines() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    baselines = fleet.FleetBaselines(store.r, config.Settings())
    figure = DeviceResult("0", Status.OK, 52.0, "GB/s")
    data = {"gpus": {"0": {"name": "H100", "h2d_pinned_gbps": 52.0}}}
    busy = CheckResult("pciebw", Status.BUSY, "GPUs busy", node=NODE, devices=(figure,), data=data)
    assert baselines.judge(busy, model="H100", driver="550") == busy
    assert baselines.all() == []
    baselines.judge(dataclasses.replace(busy, status=Status.OK), model="H100", driver="550")
    assert [e["count"] for e in baselines.all()] == [1]  # the same figure, not busy, is counted
