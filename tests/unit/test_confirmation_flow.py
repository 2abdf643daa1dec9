"""Confirmation through the store: the stored verdict, confirmation runs on the node's queue, the counters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from api.metrics import snapshot_from_store
from autopilot import checks, config, results  # noqa: F401 - checks: registers them, as a worker does
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from tests.unit.test_metrics import scrape
from workers import confirming, reconcile
from workers.dispatch import FakeDispatcher
from workers.store import NodeRecord, ResultsStore

NODE = "gpu-1"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Node:
    """One node's results arriving one by one, each reconciled and followed by the task glue."""

    def __init__(self, **overrides: object) -> None:
        self.store = ResultsStore(fakeredis.FakeRedis())
        self.settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"), **overrides)  # type: ignore[arg-type]
        self.dispatcher = FakeDispatcher()
        self.minutes = 0

    def result(self, check: str, status: str, *, fatal: bool = False, **params: object) -> str:
        self.minutes += 5
        at = T0 + timedelta(minutes=self.minutes)
        found = CheckResult(
            check,
            Status(status),
            f"{check} {status}",
            node=NODE,
            fatal=fatal,
            started_at=results.utc_now_iso(at),
            params=dict(params),
        )
        self.store.save_result(found)
        decision = reconcile.reconcile_node(
            self.store, NODE, self.settings, at + timedelta(seconds=30), checks=shipped_checks()
        )
        confirming.after_task(
            self.store, self.dispatcher, self.settings, NODE, [found], now=at.timestamp(), checks=shipped_checks()
        )
        return decision.verdict.value

    def counts(self) -> dict[str, int]:
        return self.store.confirmation_counts([NODE])[NODE]


@pytest.fixture
def node() -> Node:
    n = Node()
    n.result("remapped", "ok")
    assert n.result("pciebw", "ok") == "PASS"
    return n


def test_a_noisy_failure_sends_a_confirmation_run_and_its_pass_counts_a_prevented_flap(node: Node) -> None:
    assert node.result("pciebw", "fail", hosts="x") == "PASS"
    [sent] = node.dispatcher.sent
    assert sent.node == NODE and sent.checks == ("pciebw",) and sent.params == {"pciebw": {"hosts": "x"}}
    run = node.store.get_run(sent.run_id)
    assert run is not None and run[0].source == "confirm"
    assert node.counts() == {"runs|pciebw": 1}
    assert node.result("pciebw", "ok") == "PASS"  # the confirmation run's pass
    assert len(node.dispatcher.sent) == 1
    assert node.counts() == {"runs|pciebw": 1, "prevented|pciebw": 1}
    assert node.store.confirmation_marks(NODE) == ("PASS", frozenset())


def test_a_new_nodes_first_noisy_failure_gets_a_confirmation_run_whose_pass_ends_the_warn() -> None:
    # bench.quality at noise 2, seed 2: a healthy node's first gpumem sample missed the peer rule and
    # held WARN for a whole interval (no history, so no confirmation run was sent).
    fresh = Node()
    fresh.result("remapped", "ok")
    assert fresh.result("pciebw", "fail", hosts="x") == "WARN"  # no pass to keep judging: it counts
    [sent] = fresh.dispatcher.sent
    assert sent.checks == ("pciebw",) and sent.params == {"pciebw": {"hosts": "x"}}
    assert fresh.result("pciebw", "ok") == "PASS"  # the confirmation run's pass
    assert len(fresh.dispatcher.sent) == 1 and fresh.counts() == {"runs|pciebw": 1}
    assert fresh.store.confirmation_marks(NODE) == ("PASS", frozenset())


def test_a_real_fault_is_confirmed_by_one_confirmation_run_and_recovers_after_k_passes(node: Node) -> None:
    assert node.result("pciebw", "fail") == "PASS"
    assert node.result("pciebw", "fail") == "WARN"  # the confirmation run failed too
    assert len(node.dispatcher.sent) == 1  # confirmed: no more runs
    assert node.result("pciebw", "ok") == "WARN"  # one pass: recovering, and re-run at once
    assert len(node.dispatcher.sent) == 2
    assert node.result("pciebw", "ok") == "PASS"
    assert node.counts() == {"runs|pciebw": 2}


def test_never_noise_acts_at_once_without_a_confirmation_run(node: Node) -> None:
    assert node.result("remapped", "fail", fatal=True) == "EVICT"
    assert node.result("pciebw", "error") == "EVICT"
    assert node.dispatcher.sent == []


def test_confirmation_runs_can_be_turned_off_and_n_of_m_still_holds() -> None:
    n = Node(confirm_runs=False)
    n.result("remapped", "ok")
    n.result("pciebw", "ok")
    assert n.result("pciebw", "fail") == "PASS"
    assert n.dispatcher.sent == []
    assert n.result("pciebw", "fail") == "WARN"


def test_the_counters_reach_prometheus(node: Node) -> None:
    node.result("pciebw", "fail")
    node.result("pciebw", "ok")
    node.store.heartbeat(NodeRecord(NODE, last_seen=T0.timestamp()))
    series = scrape(snapshot_from_store(node.store, node.settings))
    key = (("check", "pciebw"), ("node", NODE))
    assert series["autopilot_confirmation_runs_total"][key] == 1.0
    assert series["autopilot_verdict_flaps_prevented_total"][key] == 1.0


def test_confirm_need_above_window_is_refused_at_start() -> None:
    with pytest.raises(config.errors.BadParameter, match="AUTOPILOT_CONFIRM_NEED"):
        config.Settings.from_env({"AUTOPILOT_CONFIRM_NEED": "4", "AUTOPILOT_CONFIRM_WINDOW": "3"})


def test_a_pending_invasive_dcgm_failure_waits_for_n_of_m_and_is_not_re_run_at_once(node: Node) -> None:
    node.result("dcgm", "ok", r=3)
    assert node.result("dcgm", "fail", r=3) == "PASS"  # a software test failed: can be noise
    assert node.dispatcher.sent == []
    assert node.store.confirmation_marks(NODE)[1] == frozenset({"dcgm"})


def test_a_check_recovering_under_testing_still_needs_k_passes() -> None:
    n = Node()
    n.result("remapped", "ok")
    n.result("pciebw", "ok")
    n.result("pciebw", "fail")
    assert n.result("pciebw", "fail") == "WARN"
    n.store.set_state(NODE, {"verdict": "TESTING"})  # an invasive Job held the node meanwhile
    assert n.result("pciebw", "ok") == "WARN"


def test_an_iperf_failure_waits_for_n_of_m_its_ring_is_never_re_run_on_one_node(node: Node) -> None:
    node.result("iperf", "ok")
    assert node.result("iperf", "fail") == "PASS"
    assert node.dispatcher.sent == []
    assert node.result("iperf", "fail") == "WARN"


def test_a_gpu_is_judged_on_the_confirmed_results_as_its_node_is(node: Node) -> None:
    """One noisy sample on GPU 2 moves neither the node nor GPU 2 (its count labels); a second one moves both."""
    uuid = "GPU-00000000-0000-0000-0000-000000000002"

    def pciebw(status: Status) -> str:
        node.minutes += 5
        at = T0 + timedelta(minutes=node.minutes)
        device = DeviceResult("2", status, 3.1, "GB/s", uuid=uuid, bus_id="0000:02:00.0")
        found = CheckResult(
            "pciebw", status, f"pciebw {status}", node=NODE, started_at=results.utc_now_iso(at), devices=(device,)
        )
        node.store.save_result(found)
        return reconcile.reconcile_node(
            node.store, NODE, node.settings, at + timedelta(seconds=30), checks=shipped_checks()
        ).verdict.value

    assert pciebw(Status.OK) == "PASS"
    assert pciebw(Status.FAIL) == "PASS"
    assert node.store.labels(NODE).get("autopilot.ibm.com/gpus-warn", "0") == "0"
    assert pciebw(Status.FAIL) == "WARN"
    assert node.store.labels(NODE)["autopilot.ibm.com/gpus-warn"] == "1"
