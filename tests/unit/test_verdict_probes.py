"""Adversarial probes of the verdict: is the label true when the fleet, the clock or the data lie?

One scenario per test, each asserting what an operator should see (label, reasons) where no other
test pins it; docs/RESULTS.md says why each outcome is the right one.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from autopilot import baseline, config, gpuverdict
from autopilot.baseline import Cohort, Policy, Window
from autopilot.checks import pciebw
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.results import utc_now_iso as iso
from workers import fleet, reconcile
from workers.store import NodeRecord, ResultsStore

H100 = "NVIDIA H100 80GB HBM3"
POLICY = Policy(window=1000, min_samples=50, deviations=4.0, min_drop_pct=10.0)
PCIE = Cohort(H100, "550", "pciebw", "h2d_gbps")
NODE = "gpu-1"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def pcie_node(rng: random.Random, median: float) -> CheckResult:
    """One node's pciebw result (8 GPUs, 1% spread), as the real evaluation makes it of the tool's figures."""
    figures = [rng.gauss(median, median * 0.01) for _ in range(8)]
    readings = [
        pciebw.GpuReading(i, h2d_gbps=v, figures={"name": H100, "h2d_pinned_gbps": v}) for i, v in enumerate(figures)
    ]
    return pciebw.evaluate(readings, pciebw.Rules(threshold_gbps=4.0), tool="ap-bandwidth")


def fleet_round(window: Window, rng: random.Random, median: float, nodes: int = 100) -> list[CheckResult]:
    return [
        baseline.assess(pcie_node(rng, median), model="", driver="550.54.15", source=window, policy=POLICY)
        for _ in range(nodes)
    ]


# ---------------------------------------------------------------- the fleet lies


def test_a_driver_update_that_halves_every_gpu_keeps_the_whole_fleet_warn() -> None:
    # Same driver major, so the same cohort: the fixed 4 GB/s floor passes 25 GB/s, and only the
    # baseline can see it. Learned, the halved figures became the median within one round and every
    # node passed from then on.
    window, rng = Window(POLICY.window), random.Random(1)
    for _ in range(2):
        assert all(r.status is Status.OK for r in fleet_round(window, rng, 50.0))
    for _ in range(4):
        after = fleet_round(window, rng, 25.0)
        assert all(r.status is Status.WARN for r in after)
    (base,) = window.all(POLICY.min_samples)
    assert base.median == pytest.approx(50.0, rel=0.02)
    assert "h2d_gbps" in after[-1].summary and "50% of the median" in after[-1].summary


def test_tight_settings_do_not_make_the_baseline_creep_up() -> None:
    # Kept out of the window at the judgement's own bar (1 MAD, 0%), a healthy fleet's lower tail never
    # joined: the median crept up each turn of the window (50.6 after 40 rounds here) until all warned.
    tight = Policy(window=1000, min_samples=50, deviations=1.0, min_drop_pct=0.0)
    window, rng = Window(tight.window), random.Random(1)
    for _ in range(40):
        for _ in range(100):
            baseline.assess(pcie_node(rng, 50.0), model="", driver="550.54.15", source=window, policy=tight)
    (base,) = window.all(tight.min_samples)
    assert base.median == pytest.approx(50.0, abs=0.1)


@pytest.mark.parametrize("first", [50.0, 40.0])
def test_a_fleet_of_two_nodes_never_warns_the_healthy_one(first: float) -> None:
    # 16 figures a round, half of them at 80%. Whichever node reports first, the healthy one is never
    # slow: either no robust majority forms (nobody judged; the fixed floors still are) or the healthy
    # figures are the majority and the slower node warns.
    window, rng = Window(POLICY.window), random.Random(2)
    second = 90.0 - first
    for _ in range(20):
        for median in (first, second):
            judged = baseline.assess(pcie_node(rng, median), model="", driver="550.54.15", source=window, policy=POLICY)
            if median == 50.0:
                assert judged.status is Status.OK


def test_a_fleet_of_two_nodes_one_reporting_absurd_figures_never_warns_the_other() -> None:
    # Joined, 1e12 GB/s figures could be the window's majority when the baseline forms; the honest
    # node's figures would then be slow, never join, and the honest node warn for good.
    window, rng = Window(POLICY.window), random.Random(5)
    for _ in range(20):
        baseline.assess(pcie_node(rng, 1e12), model="", driver="550.54.15", source=window, policy=POLICY)
        honest = baseline.assess(pcie_node(rng, 50.0), model="", driver="550.54.15", source=window, policy=POLICY)
        assert honest.status is Status.OK


def test_a_window_poisoned_with_non_figures_is_judged_on_its_figures_alone() -> None:
    # Another writer (or an older release) left nan, inf and negative figures in the Redis window:
    # a nan sorted into the middle made the median nan (no device ever slow), an inf half made the
    # spread infinite. The figures that can be measurements still judge.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="test", redis_url="")
    source = fleet.FleetBaselines(store.r, settings)
    rng = random.Random(3)
    honest = [repr(rng.gauss(50.0, 0.3)) for _ in range(60)]
    store.r.lpush(f"ap:baseline:{PCIE.key}", *honest, *(["nan"] * 30), *(["inf"] * 30), "-inf", "-5.0", "0", "1e12")
    base = source.baselines([PCIE], min_samples=50)[PCIE]
    assert base.count == 60
    assert base.median == pytest.approx(50.0, rel=0.01)
    assert baseline.is_slow(40.0, base, POLICY)


@pytest.mark.parametrize("figure", [float("nan"), float("inf"), -3.0, 0.0, 1e12])
def test_a_figure_no_measurement_gives_never_joins_the_window(figure: float) -> None:
    window = Window(POLICY.window)
    window.add([baseline.Sample("0", PCIE, 50.0)] * 60)
    window.add([baseline.Sample("1", PCIE, figure)] * 100)
    (base,) = window.all(POLICY.min_samples)
    assert base.median == 50.0 and base.count == 60


def test_one_node_reporting_absurd_figures_does_not_move_a_larger_fleets_baseline() -> None:
    window, rng = Window(POLICY.window), random.Random(4)
    fleet_round(window, rng, 50.0, nodes=20)
    liar = pcie_node(rng, 1e12)
    for _ in range(5):
        baseline.assess(liar, model="", driver="550.54.15", source=window, policy=POLICY)
        fleet_round(window, rng, 50.0, nodes=5)
    (base,) = window.all(POLICY.min_samples)
    assert base.median == pytest.approx(50.0, rel=0.02)
    slow = baseline.assess(pcie_node(rng, 40.0), model="", driver="550.54.15", source=window, policy=POLICY)
    assert slow.status is Status.WARN


# ---------------------------------------------------------------- confirmation, GPU by GPU


def gpu_uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


class GpuNode:
    """One node's pciebw results arriving one by one (8 GPUs with their identities), each reconciled."""

    def __init__(self) -> None:
        self.store = ResultsStore(fakeredis.FakeRedis())
        self.settings = config.Settings(node_name="beat", periodic_checks=("pciebw",))
        self.minutes = 0
        self.boards = {i: i for i in range(8)}  # index -> the board there (its UUID)

    def pciebw(self, *failing: int, fatal: bool = False, busy: tuple[int, ...] = (), mig: bool = False) -> str:
        """A result with ``failing`` GPUs below the floor and ``busy`` ones skipped as in use by others
        (``mig``: every GPU skipped, the result too)."""
        self.minutes += 5
        at = T0 + timedelta(minutes=self.minutes)

        def status(i: int) -> Status:
            return Status.SKIPPED if mig or i in busy else Status.FAIL if i in failing else Status.OK

        devices = tuple(
            DeviceResult(
                str(i),
                status(i),
                2.0 if i in failing else 50.0,
                "GB/s",
                "in use by others" if i in busy else "MIG mode" if mig else "below the floor" if i in failing else "",
                uuid=gpu_uuid(self.boards[i]),
                bus_id=f"0000:{i + 16:02x}:00.0",
            )
            for i in range(8)
        )
        worst = Status.SKIPPED if mig else Status.FAIL if failing else Status.OK
        data = {"gpus": {str(i): {"in_use": {"busy": True}} for i in busy}}
        found = CheckResult(
            "pciebw",
            worst,
            f"GPUs {failing} fail",
            node=NODE,
            fatal=fatal,
            devices=devices,
            data=data,
            started_at=iso(at),
        )
        self.store.save_result(found)
        decision = reconcile.reconcile_node(
            self.store, NODE, self.settings, at + timedelta(seconds=30), checks=shipped_checks()
        )
        return decision.verdict.value

    def gpus(self) -> dict[int, str]:
        states = gpuverdict.loads(self.store.state(NODE).gpus)
        return {int(s.index): s.verdict.value for s in states.values()}

    def bad_gpus(self) -> dict[int, str]:
        return {i: v for i, v in self.gpus().items() if v != "PASS"}


def test_a_gpu_that_heals_while_another_stays_confirmed_needs_its_own_passes_to_pass() -> None:
    # GPU 1's failure was confirmed with GPU 0's; one pass of GPU 1, in a result that still fails on
    # GPU 0, made GPU 1 PASS at once (its device taint gone), and its next failure WARN again: the
    # check's hysteresis (K=2 passes) held the node but not the GPU.
    node = GpuNode()
    assert node.pciebw() == "PASS"
    assert node.pciebw(0, 1) == "PASS"  # pending
    assert node.pciebw(0, 1) == "WARN"  # confirmed
    assert node.bad_gpus() == {0: "WARN", 1: "WARN"}
    assert node.pciebw(0) == "WARN"
    assert node.bad_gpus() == {0: "WARN", 1: "WARN"}  # GPU 1 recovering: one pass of two
    assert node.pciebw(0) == "WARN"
    assert node.bad_gpus() == {0: "WARN"}  # two passes: GPU 1 recovered


def test_a_new_failure_on_one_gpu_while_another_recovers_is_pending_for_that_gpu() -> None:
    # The check's series is confirmed as a whole: GPU 2's single noise sample, landing while GPU 0
    # was recovering, counted at once and made GPU 2 WARN (a device taint for noise).
    node = GpuNode()
    node.pciebw()
    node.pciebw(0)
    assert node.pciebw(0) == "WARN"
    assert node.pciebw(2) == "WARN"  # the check still has a counted failure: the node holds
    assert node.bad_gpus() == {0: "WARN"}  # GPU 0 recovering, GPU 2 pending
    assert node.pciebw() == "WARN"
    assert node.pciebw() == "PASS"
    assert node.bad_gpus() == {}


def test_a_fault_that_flaps_every_run_is_confirmed_and_held_never_evicted() -> None:
    # fail, ok, fail, ok: confirmed on the second failure (2 of the last 3) and then held, since no
    # two passes ever follow each other. A non-fatal bandwidth fault is WARN, never EVICT.
    node = GpuNode()
    node.pciebw()
    seen = [node.pciebw(3) if i % 2 == 0 else node.pciebw() for i in range(10)]
    assert seen[:2] == ["PASS", "PASS"]
    assert set(seen[2:]) == {"WARN"}
    assert node.bad_gpus() == {3: "WARN"}


@pytest.mark.parametrize("seed", range(6))
def test_the_node_is_never_better_than_its_worst_gpu_whatever_the_gpus_do(seed: int) -> None:
    # GPUs confirmed one by one and the node by the check as a whole must still agree: a GPU held WARN
    # (confirmed, or recovering on its own passes) always has the node WARN with it.
    rng = random.Random(seed)
    node = GpuNode()
    node.pciebw()
    for _ in range(40):
        failing = [i for i in range(3) if rng.random() < 0.3]
        said = node.pciebw(*failing)
        if node.bad_gpus():
            assert said == "WARN", node.bad_gpus()


# ---------------------------------------------------------------- TESTING that never ends


def healthy_node(store: ResultsStore, at: datetime) -> None:
    for check in ("pciebw", "remapped"):
        store.save_result(CheckResult(check, Status.OK, "ok", node=NODE, started_at=iso(at)))


def test_testing_holds_while_a_level3_run_may_still_be_running() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    now = T0 + timedelta(hours=6)
    healthy_node(store, now - timedelta(minutes=30))
    store.set_state(NODE, {"testing_since": iso(now - timedelta(minutes=50)), "testing_job": "ap-dcgm"})
    decision = reconcile.reconcile_node(store, NODE, settings, now, checks=shipped_checks())
    assert decision.verdict.value == "TESTING"


def test_testing_past_the_longest_level3_run_is_a_warn_that_says_the_run_never_reported() -> None:
    # The worker ends TESTING when the Job's outcome is stored; a write that failed then (Redis away at
    # that moment) left testing_since for good while the worker lived on: TESTING for ever, the node's
    # results unjudged. Past the longest a level-3 run may hold the node, the run is an error.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    now = T0 + timedelta(hours=6)
    healthy_node(store, now - timedelta(minutes=30))
    since = now - timedelta(hours=5)
    store.set_state(NODE, {"testing_since": iso(since), "testing_job": "ap-dcgm"})
    decision = reconcile.reconcile_node(store, NODE, settings, now, checks=shipped_checks())
    assert decision.verdict.value == "WARN"
    (reason,) = decision.reasons
    assert reason.startswith(f"dcgm: error: the level-3 run that holds the node TESTING since {iso(since)} never ")


# ---------------------------------------------------------------- the clock lies


def heartbeat(store: ResultsStore, at: datetime) -> None:
    store.heartbeat(NodeRecord(NODE, gpu_count=8, last_seen=at.timestamp()))


def tick(store: ResultsStore, settings: config.Settings, at: datetime) -> str:
    return reconcile.reconcile_all(store, settings, now=at, checks=shipped_checks())[NODE]


def test_a_worker_whose_clock_runs_hours_ahead_and_that_stops_is_lost_once_its_heartbeat_stands_still() -> None:
    # Its last heartbeat and results are stamped two hours ahead of beat's clock (less than the three
    # hours a result stays fresh): by their stamps it was heard from "just now" for two more hours, and
    # its results fresh, so the dead node read PASS.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    ahead = timedelta(hours=2)
    healthy_node(store, T0 + ahead - timedelta(minutes=10))
    heartbeat(store, T0 + ahead)
    assert tick(store, settings, T0) == "PASS"  # first sight of a stamp from the future: it may be alive
    assert tick(store, settings, T0 + timedelta(seconds=30)) == "PASS"
    assert tick(store, settings, T0 + timedelta(minutes=1)) == "UNKNOWN"  # the same stamp, 60 s on
    state = store.state(NODE)
    assert state.reason_list[0] == f"no heartbeat since {iso(T0)}"
    assert f"its clock runs ahead: its last heartbeat is stamped {iso(T0 + ahead)}" in state.reason_list


def test_a_live_worker_whose_clock_runs_ahead_is_judged_on_its_results_at_every_tick() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    ahead = timedelta(hours=2)
    healthy_node(store, T0 + ahead - timedelta(minutes=10))
    for minute in range(6):
        heartbeat(store, T0 + ahead + timedelta(minutes=minute))  # it heartbeats between ticks
        assert tick(store, settings, T0 + timedelta(minutes=minute)) == "PASS"
    # its own reconcile, on its own clock, finds nothing ahead: the mark is gone
    reconcile.reconcile_node(store, NODE, settings, T0 + ahead + timedelta(minutes=6), checks=shipped_checks())
    assert store.state(NODE).heard_ahead is None


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59Z", "2026-11-30T12:00:00Z"])
def test_a_result_stamped_further_ahead_than_results_stay_fresh_is_no_fresh_result(stamp: str) -> None:
    # Fresh meant "not older than three intervals": a pass stamped in 9999 (a clock gone wrong, another
    # writer) counted as its check's fresh result for ever, and the node passed on it with the check
    # never run again. Ahead by more than a result stays fresh, it can be placed nowhere.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    healthy_node(store, T0)
    store.save_result(CheckResult("pciebw", Status.OK, "ok", node=NODE, started_at=stamp))
    decision = reconcile.reconcile_node(store, NODE, settings, T0 + timedelta(minutes=1), checks=shipped_checks())
    assert decision.verdict.value == "UNKNOWN"
    assert decision.reasons == (f"pciebw: no fresh result (the latest is stamped {stamp}, ahead of this clock)",)


def test_a_result_stamped_less_ahead_than_results_stay_fresh_counts() -> None:
    # A worker's clock a little ahead (here an hour, within the three hours a result stays fresh) is
    # judged alike by its own reconcile and beat's: no flapping between them.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    healthy_node(store, T0 + timedelta(hours=1))
    decision = reconcile.reconcile_node(store, NODE, settings, T0, checks=shipped_checks())
    assert decision.verdict.value == "PASS"


def test_a_level3_pass_stamped_ahead_of_the_clock_clears_no_eviction() -> None:
    # "Started after the eviction" is true of any stamp far enough ahead: a level-3 pass stamped in
    # 9999 lifted every eviction of its node, the node's and its GPUs', at every reconcile to come.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    gpu = DeviceResult("3", Status.FAIL, detail="row remap failure", uuid=gpu_uuid(3), bus_id="0000:13:00.0")
    store.save_result(
        CheckResult("remapped", Status.FAIL, "remap failure", node=NODE, fatal=True, devices=(gpu,), started_at=iso(T0))
    )
    assert reconcile.reconcile_node(store, NODE, settings, T0, checks=shipped_checks()).verdict.value == "EVICT"
    healthy_node(store, T0 + timedelta(minutes=5))
    store.save_result(CheckResult("dcgm", Status.OK, "", node=NODE, params={"r": 3}, started_at="9999-01-01T00:00:00Z"))
    held = reconcile.reconcile_node(store, NODE, settings, T0 + timedelta(minutes=10), checks=shipped_checks())
    assert held.verdict.value == "EVICT"
    states = gpuverdict.loads(store.state(NODE).gpus)
    assert states[gpu_uuid(3)].verdict.value == "EVICT"


def test_a_replaced_gpus_first_failure_waits_for_confirmation_like_its_node() -> None:
    # A new UUID has no sample of its own: judged alone its first failure counted at once, a GPU WARN
    # on a PASS node (the node's pending failure kept judging the check's last pass).
    node = GpuNode()
    node.pciebw()
    node.pciebw()
    node.boards[5] = 105  # GPU 5's board replaced: a new UUID at the same index and address
    assert node.pciebw(5) == "PASS"
    assert node.bad_gpus() == {}


# ---------------------------------------------------------------- identity lies


def test_indexes_renumbered_after_a_gpu_falls_off_the_bus_judge_each_board_under_its_own_uuid() -> None:
    # GPU 3 falls off: NVML now numbers the 7 left 0..6, so the boards at 4..7 answer as 3..6. The lost
    # board is EVICT under its UUID (matched by its address), the board now at index 3 is not blamed, and a
    # device a result names by index only lands on the board at that index now.
    def board(index: int, uuid_of: int, status: Status = Status.OK) -> DeviceResult:
        return DeviceResult(str(index), status, uuid=gpu_uuid(uuid_of), bus_id=f"0000:{uuid_of + 16:02x}:00.0")

    checks = shipped_checks()
    before = CheckResult(
        "remapped", Status.OK, node=NODE, devices=tuple(board(i, i) for i in range(8)), started_at=iso(T0)
    )
    previous = gpuverdict.decide([before], {}, now=T0, max_age_s=3 * 3600, checks=checks)
    later = T0 + timedelta(hours=1)
    left = [board(index, uuid_of) for index, uuid_of in enumerate((0, 1, 2, 4, 5, 6, 7))]
    fell = DeviceResult("0000:13:00.0", Status.FAIL, detail="fell off the bus", bus_id="0000:13:00.0")
    census = CheckResult(
        "remapped", Status.FAIL, "7 of 8", node=NODE, fatal=True, devices=(*left, fell), started_at=iso(later)
    )
    by_index = CheckResult(
        "gpupower",
        Status.WARN,
        node=NODE,
        devices=(DeviceResult("3", Status.WARN, detail="SW thermal"),),
        started_at=iso(later),
    )
    after = gpuverdict.decide([census, by_index], previous, now=later, max_age_s=3 * 3600, checks=checks)
    assert after[gpu_uuid(3)].verdict.value == "EVICT"
    assert after[gpu_uuid(4)].verdict.value == "WARN" and after[gpu_uuid(4)].index == "3"
    assert gpuverdict.counts(after) == {"EVICT": 1, "WARN": 1, "PASS": 6, "UNKNOWN": 0}


# ---------------------------------------------------------------- an operator's clear meets a confirmation run


@pytest.mark.parametrize(("confirmed", "expected"), [(True, "WARN"), (False, "PASS")])
def test_a_clear_while_a_confirmation_run_is_in_flight_keeps_the_clear_and_judges_the_run(
    confirmed: bool, expected: str
) -> None:
    # Evicted by a remap failure (GPU 3); repaired, its remapped re-run passes; a pciebw failure of GPU 0
    # waits for its confirmation run when the operator clears. The run's result lands after the clear: it
    # confirms (WARN) or ends (PASS) the pciebw failure, and neither evicts again nor loses the clear.
    node = GpuNode()
    node.settings = config.Settings(node_name="beat", periodic_checks=("pciebw", "remapped"))
    node.pciebw()
    gpu3 = DeviceResult("3", Status.FAIL, detail="row remap failure", uuid=gpu_uuid(3), bus_id="0000:13:00.0")
    node.store.save_result(
        CheckResult(
            "remapped", Status.FAIL, "remap failure", node=NODE, fatal=True, devices=(gpu3,), started_at=iso(T0)
        )
    )
    assert node.pciebw() == "EVICT"
    node.store.save_result(
        CheckResult(
            "remapped",
            Status.OK,
            "ok",
            node=NODE,
            devices=(dataclasses.replace(gpu3, status=Status.OK),),
            started_at=iso(T0 + timedelta(minutes=12)),
        )
    )
    assert node.pciebw(0) == "EVICT"  # pending; its confirmation run is sent
    cleared = reconcile.clear_evict(
        node.store, NODE, node.settings, by="api:10.0.0.7", checks=shipped_checks(), now=T0 + timedelta(minutes=17)
    )
    assert cleared.verdict.value == "PASS"  # the pending failure keeps judging the last pass
    after = node.pciebw(0) if confirmed else node.pciebw()
    assert after == expected
    state = node.store.state(NODE)
    assert state.cleared_by == "api:10.0.0.7" and state.evicted_at is None
    assert any("cleared by api:10.0.0.7" in r for r in state.reason_list)
    assert node.bad_gpus() == ({0: "WARN"} if confirmed else {})


def test_a_gpu_held_by_confirmation_records_no_new_incident() -> None:
    # pciebw on demand (not periodic): its bad GPU devices are "event" incidents, counted towards a repeat
    # offender. GPU 1 fails twice (confirmed: one incident), then passes while GPU 0 still fails: GPU 1 is
    # held WARN until its own second pass, but its held failure is no new finding in that result.
    node = GpuNode()
    node.settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    node.pciebw()
    node.pciebw(0, 1)
    node.pciebw(0, 1)
    node.pciebw(0)
    node.pciebw(0)
    found = node.store.gpu_history().incidents_many(
        [gpu_uuid(0), gpu_uuid(1)], now=T0 + timedelta(hours=1), retention_s=86400.0
    )
    events = {u: [i.at for i in found[u] if i.kind == "event"] for u in (gpu_uuid(0), gpu_uuid(1))}
    assert len(events[gpu_uuid(1)]) == 1
    assert len(events[gpu_uuid(0)]) == 3


def test_a_result_stamped_far_ahead_does_not_silence_the_gpu_history() -> None:
    # The GPUs' history takes as new the results started after the newest one judged: a result stamped in
    # 9999 made that 9999, and no incident of the node was ever recorded again.
    node = GpuNode()
    node.settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    node.pciebw()
    node.store.save_result(CheckResult("gpupower", Status.OK, "ok", node=NODE, started_at="9999-01-01T00:00:00Z"))
    node.pciebw(2)
    node.pciebw(2)  # confirmed: an incident
    found = node.store.gpu_history().incidents_many([gpu_uuid(2)], now=T0 + timedelta(hours=1), retention_s=86400.0)
    assert [i.kind for i in found[gpu_uuid(2)] if i.kind == "event"] == ["event"]
    assert node.store.state(NODE).gpus_at == iso(T0 + timedelta(minutes=15))


def test_a_ping_stamped_far_ahead_takes_no_part_in_the_fleets_localisation() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("ping",))
    for name, stamp in (("gpu-1", iso(T0)), ("gpu-2", "9999-01-01T00:00:00Z"), ("gpu-3", iso(T0 - timedelta(days=1)))):
        store.heartbeat(NodeRecord(name, gpu_count=8, last_seen=T0.timestamp()))
        store.save_result(CheckResult("ping", Status.OK, "ok", node=name, started_at=stamp))
    assert set(reconcile.fleet_pings(store, settings, T0)) == {"gpu-1"}


# ---------------------------------------------------------------- partial answers


def test_seven_of_eight_gpus_measured_is_a_warn_on_the_eighth_never_a_pass() -> None:
    # The tool answered for 7 GPUs; the 8th gave nothing usable. That GPU is WARN (its check could not
    # complete on it), the others PASS, the node WARN: never PASS with a GPU unmeasured by an error.
    readings = [pciebw.GpuReading(i, h2d_gbps=50.0, figures={"name": H100, "h2d_pinned_gbps": 50.0}) for i in range(7)]
    readings.append(pciebw.GpuReading(7, error="ap-bandwidth printed no figure for GPU 7"))
    result = pciebw.evaluate(readings, pciebw.Rules(threshold_gbps=4.0), tool="ap-bandwidth")
    devices = tuple(
        dataclasses.replace(d, uuid=gpu_uuid(int(d.id)), bus_id=f"0000:{int(d.id) + 16:02x}:00.0")
        for d in result.devices
    )
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw",))
    store.save_result(dataclasses.replace(result, node=NODE, devices=devices, started_at=iso(T0)))
    decision = reconcile.reconcile_node(store, NODE, settings, T0, checks=shipped_checks())
    assert decision.verdict.value == "WARN"
    states = gpuverdict.loads(store.state(NODE).gpus)
    assert {s.index: s.verdict.value for s in states.values() if s.verdict.value != "PASS"} == {"7": "WARN"}
    assert gpuverdict.counts(states)["PASS"] == 7


def test_a_check_that_errors_every_hour_for_a_week_never_passes_and_says_so_per_gpu() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("pciebw",))
    said: set[str] = set()
    for hour in range(7 * 24 + 2):
        at = T0 + timedelta(hours=hour)
        devices = tuple(
            DeviceResult(str(i), Status.ERROR, detail="no figure", uuid=gpu_uuid(i), bus_id=f"0000:{i + 16:02x}:00.0")
            for i in range(8)
        )
        store.save_result(
            CheckResult("pciebw", Status.ERROR, "tool crashed", node=NODE, devices=devices, started_at=iso(at))
        )
        said.add(
            reconcile.reconcile_node(
                store, NODE, settings, at + timedelta(minutes=1), checks=shipped_checks()
            ).verdict.value
        )
    assert said == {"WARN"}
    states = gpuverdict.loads(store.state(NODE).gpus)
    assert all(s.verdict.value == "WARN" for s in states.values())
    assert all("pciebw not measured for 7 d (error)" in s.reasons for s in states.values())


def test_a_gpu_confirmed_slow_and_busy_at_every_run_since_stays_warn_until_measured() -> None:
    # GPU 0 is confirmed slow; a job then holds it at every run, so pciebw skips it and passes the other
    # seven. Those results were the check's passes: two of them made the node and GPU 0 PASS, never having
    # measured GPU 0 again. Its failure now counts until GPU 0 itself passes twice.
    node = GpuNode()
    node.pciebw()
    node.pciebw(0)
    assert node.pciebw(0) == "WARN"
    for _ in range(6):
        assert node.pciebw(busy=(0,)) == "WARN"
        assert node.bad_gpus() == {0: "WARN"}
    reasons = node.store.state(NODE).reason_list
    assert reasons[0].startswith("pciebw: fail: GPUs (0,) fail (measured 2026-11-29T12:15:00Z; not measured since)")
    assert node.pciebw() == "WARN"  # measured: one pass of two
    assert node.pciebw() == "PASS"
    assert node.bad_gpus() == {}


def test_a_confirmed_failure_is_held_while_mig_mode_skips_every_gpu() -> None:
    node = GpuNode()
    node.pciebw()
    node.pciebw(0)
    assert node.pciebw(0) == "WARN"
    assert node.pciebw(mig=True) == "WARN"
    assert node.gpus() == {0: "WARN", **dict.fromkeys(range(1, 8), "UNKNOWN")}  # the others: nothing looked at


def test_a_node_that_never_failed_passes_while_its_gpus_are_busy_or_in_mig_mode() -> None:
    # No failure to hold: a skip is no finding (RESULTS.md, "A GPU in use by others").
    node = GpuNode()
    assert node.pciebw(busy=(0, 1)) == "PASS"
    assert node.pciebw(mig=True) == "PASS"


def eight(node: str, at: datetime, *, xid_on: int | None = None) -> list[CheckResult]:
    """A node's passing remapped result (8 GPUs with their identities), and an evicting Xid event on one GPU."""
    devices = tuple(
        DeviceResult(str(i), Status.OK, uuid=gpu_uuid(i), bus_id=f"0000:{i + 16:02x}:00.0") for i in range(8)
    )
    found = [CheckResult("remapped", Status.OK, "ok", node=node, devices=devices, started_at=iso(at))]
    if xid_on is not None:
        xid = dataclasses.replace(devices[xid_on], status=Status.FAIL, detail="Xid 79: fell off the bus")
        found.append(
            CheckResult("events", Status.FAIL, "Xid 79", node=node, fatal=True, devices=(xid,), started_at=iso(at))
        )
    return found


def test_a_gpu_evicted_on_a_node_that_comes_back_under_another_name_is_still_evicted() -> None:
    # gpu-7's GPU 3 is evicted for an Xid 79 that no periodic check sees again. Re-imaged, the node comes
    # back as gpu-7b: same boards, same UUIDs, no state. The history kept the eviction under the UUID, but the
    # sticky EVICT was gpu-7's: gpu-7b passed at once on the GPU nobody cleared.
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    for result in eight("gpu-7", T0, xid_on=3):
        store.save_result(result)
    assert reconcile.reconcile_node(store, "gpu-7", settings, T0, checks=shipped_checks()).verdict.value == "EVICT"
    later = T0 + timedelta(days=1)
    for result in eight("gpu-7b", later):
        store.save_result(result)
    decision = reconcile.reconcile_node(store, "gpu-7b", settings, later, checks=shipped_checks())
    assert decision.verdict.value == "EVICT"
    assert decision.reasons == (f"gpuhistory: GPU 3: evicted on gpu-7 since {iso(T0)} and never cleared",)
    states = gpuverdict.loads(store.state("gpu-7b").gpus)
    assert {s.index: s.verdict.value for s in states.values() if s.verdict.value != "PASS"} == {"3": "EVICT"}
    # sticky from now on, as any eviction, with no history read (the GPUs are known here now)
    again = reconcile.reconcile_node(store, "gpu-7b", settings, later + timedelta(minutes=5), checks=shipped_checks())
    assert again.verdict.value == "EVICT" and "gpuhistory on GPU 3" in again.reasons[0]
    # an operator's clear lifts it, and it is not carried again
    cleared = reconcile.clear_evict(
        store, "gpu-7b", settings, by="api:10.0.0.7", checks=shipped_checks(), now=later + timedelta(minutes=10)
    )
    assert cleared.verdict.value == "PASS"
    assert gpuverdict.counts(gpuverdict.loads(store.state("gpu-7b").gpus))["EVICT"] == 0


def test_a_new_node_whose_gpus_were_never_evicted_passes() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    for result in eight("gpu-9", T0):
        store.save_result(result)
    assert reconcile.reconcile_node(store, "gpu-9", settings, T0, checks=shipped_checks()).verdict.value == "PASS"


def test_an_operators_clear_lifts_the_gpu_evictions_of_a_node_whose_clock_runs_ahead() -> None:
    # The worker's reconcile, on its own clock two hours ahead, stamped GPU 3's eviction two hours ahead of
    # the API's clock. A GPU's eviction was lifted by a clear later than it: the operator's clear, on the
    # API's clock, lifted the node's eviction but not GPU 3's (its device taint, its label count stayed).
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    ahead = T0 + timedelta(hours=2)
    gpu3 = DeviceResult("3", Status.FAIL, detail="row remap failure", uuid=gpu_uuid(3), bus_id="0000:13:00.0")
    store.save_result(
        CheckResult(
            "remapped", Status.FAIL, "remap failure", node=NODE, fatal=True, devices=(gpu3,), started_at=iso(ahead)
        )
    )
    assert reconcile.reconcile_node(store, NODE, settings, ahead, checks=shipped_checks()).verdict.value == "EVICT"
    repaired = dataclasses.replace(gpu3, status=Status.OK, detail="")
    later = ahead + timedelta(minutes=10)
    store.save_result(CheckResult("remapped", Status.OK, "ok", node=NODE, devices=(repaired,), started_at=iso(later)))
    reconcile.reconcile_node(store, NODE, settings, later, checks=shipped_checks())
    cleared = reconcile.clear_evict(
        store, NODE, settings, by="api:10.0.0.7", checks=shipped_checks(), now=T0 + timedelta(minutes=15)
    )
    assert cleared.verdict.value == "PASS"
    assert gpuverdict.counts(gpuverdict.loads(store.state(NODE).gpus))["EVICT"] == 0


def test_a_heartbeat_stamped_past_any_date_is_lost_and_said_as_written() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    healthy_node(store, T0)
    store.heartbeat(NodeRecord(NODE, gpu_count=8, last_seen=1e18))
    assert tick(store, settings, T0) == "PASS"
    assert tick(store, settings, T0 + timedelta(minutes=1)) == "UNKNOWN"
    assert "its clock runs ahead: its last heartbeat is stamped 1e+18 (epoch seconds)" in store.state(NODE).reason_list
