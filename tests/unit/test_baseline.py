"""Fleet-relative baselines (autopilot.baseline): the robust maths, cohorts, and the judgement of a result."""

from __future__ import annotations

import random

import pytest

from autopilot import baseline, config, errors, gpus
from autopilot.baseline import Cohort, Policy, Window
from autopilot.checks import gpumem, pciebw
from autopilot.results import CheckResult, Status

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
POLICY = Policy(window=1000, min_samples=50, deviations=4.0, min_drop_pct=10.0)


def pcie_result(values: list[float], name: str = H100) -> CheckResult:
    """What the real pciebw evaluation makes of ``ap-bandwidth`` figures (one per GPU)."""
    readings = [
        pciebw.GpuReading(i, h2d_gbps=v, figures={"name": name, "h2d_pinned_gbps": v}) for i, v in enumerate(values)
    ]
    return pciebw.evaluate(readings, pciebw.Rules(threshold_gbps=4.0), tool="ap-bandwidth")


def fleet(
    window: Window, n: int, median: float, *, name: str = H100, driver: str = "535.129.03", seed: int = 1
) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        window.add(baseline.samples(pcie_result([rng.gauss(median, median * 0.01)], name), "", driver))


def test_median_and_mad_ignore_thirty_percent_outliers() -> None:
    rng = random.Random(7)
    good = [rng.gauss(50.0, 0.5) for _ in range(70)]
    cohort = Cohort(H100, "535", "pciebw", "h2d_gbps")
    base = baseline.summarize(cohort, good + [5.0] * 30, min_samples=50)
    assert base is not None and base.count == 100
    assert base.median == pytest.approx(50.0, rel=0.02)
    assert base.mad < 2.0  # a plain standard deviation of this sample is about 20
    assert baseline.is_slow(42.5, base, POLICY)  # 85% of the median
    assert not baseline.is_slow(49.0, base, POLICY)


def test_no_baseline_below_the_minimum_sample_size() -> None:
    cohort = Cohort(H100, "535", "pciebw", "h2d_gbps")
    assert baseline.summarize(cohort, [50.0] * 49, min_samples=50) is None
    window = Window(1000)
    fleet(window, 49, 50.0)
    result = pcie_result([40.0])
    judged = baseline.assess(result, model="", driver="535.129.03", source=window, policy=POLICY)
    assert judged.status is Status.OK
    assert "fleet_baseline" not in judged.data


def test_cohorts_are_kept_apart_by_model_and_driver() -> None:
    window = Window(1000)
    fleet(window, 100, 50.0, name=H100, driver="535.129.03")
    fleet(window, 100, 25.0, name=A100, driver="535.129.03", seed=2)
    fleet(window, 100, 40.0, name=H100, driver="550.90.07", seed=3)

    def at(result: CheckResult, driver: str) -> CheckResult:
        return baseline.assess(result, model="", driver=driver, source=window, policy=POLICY)

    # An A100 at 25 GB/s is normal for A100s, though half the H100s' median.
    assert at(pcie_result([25.0], A100), "535.104.05").status is Status.OK
    # 40 GB/s is normal under driver 550 and slow under 535.
    assert at(pcie_result([40.0]), "550.54.15").status is Status.OK
    slow = at(pcie_result([40.0]), "535.129.03")
    assert slow.status is Status.WARN
    assert list(slow.data["fleet_baseline"]) == [f"{H100}|535|pciebw|h2d_gbps"]


def test_a_slow_device_warns_with_the_median_it_was_judged_against() -> None:
    window = Window(1000)
    fleet(window, 200, 50.0)
    result = pcie_result([50.1, 40.5, 2.0])  # GPU 2 is below the 4 GB/s floor: fail stays fail
    judged = baseline.assess(result, model="", driver="535.129.03", source=window, policy=POLICY)
    by_id = {d.id: d for d in judged.devices}
    assert by_id["0"].status is Status.OK
    assert by_id["1"].status is Status.WARN
    assert by_id["1"].detail.startswith("slow against its fleet: h2d_gbps 40.5 is 81% of the median of 200 ")
    assert by_id["2"].status is Status.FAIL
    assert judged.status is Status.FAIL
    recorded = judged.data["fleet_baseline"][f"{H100}|535|pciebw|h2d_gbps"]
    assert recorded["count"] == 200 and recorded["median"] == pytest.approx(50.0, rel=0.01)


def test_a_tight_cohort_does_not_warn_a_small_drop() -> None:
    window = Window(1000)
    for _ in range(100):
        window.add(baseline.samples(pcie_result([50.0]), "", "535"))
    # The MAD is 0, so any drop is "many deviations"; 3% is still no fault.
    assert (
        baseline.assess(pcie_result([48.5]), model="", driver="535", source=window, policy=POLICY).status is Status.OK
    )


def test_gpumem_daxpy_and_dgemm_are_separate_cohorts() -> None:
    def gm(daxpy: float, dgemm: float) -> CheckResult:
        device = {"name": H100, "h2d_pinned_gbps": 53.0, "daxpy_gbps": daxpy, "dgemm_tflops": dgemm}
        return gpumem.evaluate([gpumem.GpuReading(0, device)], {}, {}, 4.0)

    window = Window(1000)
    for _ in range(60):
        window.add(baseline.samples(gm(2900.0, 52.0), "", "535"))
    judged = baseline.assess(gm(2900.0, 41.0), model="", driver="535", source=window, policy=POLICY)
    assert judged.status is Status.WARN  # 41 TFLOPS passes the fixed floor of 40
    assert "dgemm_tflops 41 is 79% of the median of 60" in judged.summary
    assert "daxpy" not in judged.summary


def test_window_keeps_the_last_figures_and_a_bounded_number_of_cohorts() -> None:
    window = Window(10, max_cohorts=2)
    fleet(window, 30, 50.0)
    fleet(window, 5, 25.0, name=A100)
    fleet(window, 5, 30.0, name="NVIDIA L40S")
    kept = {b.cohort.model: b.count for b in window.all(min_samples=1)}
    assert kept == {A100: 5, "NVIDIA L40S": 5}


def test_off_when_the_window_is_zero() -> None:
    window = Window(1000)
    fleet(window, 100, 50.0)
    off = Policy(window=0)
    assert baseline.assess(pcie_result([30.0]), model="", driver="535", source=window, policy=off).status is Status.OK


def test_settings_are_validated() -> None:
    settings = config.Settings.from_env({"AUTOPILOT_BASELINE_WINDOW": "500", "AUTOPILOT_BASELINE_DEVIATIONS": "3.5"})
    assert baseline.policy_of(settings) == Policy(500, 50, 3.5, 10.0)
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_BASELINE_MIN_DROP_PCT"):
        config.Settings.from_env({"AUTOPILOT_BASELINE_MIN_DROP_PCT": "100"})
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_BASELINE_MIN_SAMPLES"):
        config.Settings.from_env({"AUTOPILOT_BASELINE_MIN_SAMPLES": "1"})


def test_a_device_already_warned_by_its_check_keeps_its_own_finding() -> None:
    window = Window(1000)
    fleet(window, 200, 50.0)
    narrow = pciebw.GpuReading(
        0, h2d_gbps=26.0, figures={"name": H100, "h2d_pinned_gbps": 26.0}, link=gpus.PcieLink(5, 5, 8, 16)
    )
    result = pciebw.evaluate([narrow], pciebw.Rules(threshold_gbps=4.0), tool="ap-bandwidth")
    assert result.status is Status.WARN
    judged = baseline.assess(result, model="", driver="535", source=window, policy=POLICY)
    assert judged.devices == result.devices
    assert judged.summary == result.summary
    assert f"{H100}|535|pciebw|h2d_gbps" in judged.data["fleet_baseline"]
