"""Adversarial probes of the verdict: is the label true when the fleet, the clock or the data lie?

One scenario per test, each asserting what an operator should see (label, reasons) where no other
test pins it; docs/RESULTS.md says why each outcome is the right one.
"""

from __future__ import annotations

import random

import fakeredis
import pytest

from autopilot import baseline, config
from autopilot.baseline import Cohort, Policy, Window
from autopilot.checks import pciebw
from autopilot.results import CheckResult, Status
from workers import fleet
from workers.store import ResultsStore

H100 = "NVIDIA H100 80GB HBM3"
POLICY = Policy(window=1000, min_samples=50, deviations=4.0, min_drop_pct=10.0)
PCIE = Cohort(H100, "550", "pciebw", "h2d_gbps")


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
