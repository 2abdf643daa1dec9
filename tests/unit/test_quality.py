"""Detection quality on a simulated fleet (bench/quality.py), and the simulator's spread (workers/simnoise.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from autopilot import config
from autopilot.checks import pciebw
from autopilot.registry import shipped as shipped_checks
from autopilot.results import Status
from autopilot.verdict import Verdict
from bench import quality
from workers import simnoise, simulate

TARGET = 0.95
BUS_3 = "00000000:03:00.0"  # GPU 3 of a simulated node (workers/simulate.py)


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # every failing simulated check logs a line
    yield
    logging.disable(logging.NOTSET)


def test_a_small_fleet_meets_the_targets() -> None:
    """The small version of docs/QUALITY.md: 100 nodes, every fault kind, seed 1, ping counted."""
    outcome = quality.run(100, 4, seed=1)
    scope = outcome.in_scope
    assert outcome.overall.false_evict == 0 and outcome.transient.false_evict == 0
    assert scope.recall is not None and scope.recall >= TARGET
    assert scope.precision is not None and scope.precision >= TARGET
    assert quality.targets_met(outcome)
    down = outcome.rows["ping:down"]
    assert down.tp == down.tp + down.fn and outcome.rows["healthy"].false_warn == 0
    assert scope.tp + scope.fn >= 80  # every in-scope case was there, in every round it was active


def test_the_peers_of_a_node_whose_link_is_down_do_not_warn() -> None:
    plan: dict[str, quality.Case | None] = dict.fromkeys(simulate.node_names(40))
    plan["sim-7"] = quality.Case("ping:down", (("ping", "down"),))
    settings = config.Settings(periodic_checks=("ping",))
    outcome = quality.run(40, 3, seed=2, fleet_plan=plan, checks=("ping",), settings=settings)
    after = {node: v[-1] for node, v in outcome.verdicts.items()}
    assert after["sim-7"] is Verdict.WARN
    assert {n for n, v in after.items() if v is not Verdict.PASS} == {"sim-7"}
    # The nodes that ping it still say they were not answered: only the verdict attributes their failure.
    pinging = [n for n, r in outcome.latest.items() if n != "sim-7" and "sim-7" in r["ping"].data["unreachable"]]
    assert pinging and all(outcome.latest[n]["ping"].status is Status.FAIL for n in pinging)


def test_one_bad_sample_is_absorbed_with_confirmation_and_moves_the_verdict_without() -> None:
    plan: dict[str, quality.Case | None] = dict.fromkeys(simulate.node_names(20))
    plan["sim-3"] = quality.Case("pciebw:low (transient)", (("pciebw", "low"),), transient=True)
    on = config.Settings(periodic_checks=("pciebw",))
    off = dataclasses.replace(on, confirm_need=1, confirm_window=1, recover_passes=1)
    kept = quality.run(20, 4, seed=1, fleet_plan=plan, checks=("pciebw",), settings=on)
    moved = quality.run(20, 4, seed=1, fleet_plan=plan, checks=("pciebw",), settings=off)
    assert set(kept.verdicts["sim-3"]) == {Verdict.PASS}
    assert moved.verdicts["sim-3"][quality.TRANSIENT_ROUND] is Verdict.WARN


def test_one_node_at_85_percent_of_its_fleets_pcie_bandwidth_is_the_only_warn() -> None:
    slow = tuple(simnoise.Slowdown("h2d_pinned_gbps", gpu, 0.85) for gpu in range(simulate.GPU_COUNT))
    plan: dict[str, quality.Case | None] = dict.fromkeys(simulate.node_names(100))
    plan["sim-7"] = quality.Case("pciebw at 85%", slow=slow, severity=0.85)
    settings = config.Settings(periodic_checks=("pciebw",))
    outcome = quality.run(100, 3, seed=5, fleet_plan=plan, checks=("pciebw",), settings=settings)
    after = {node: v[-1] for node, v in outcome.verdicts.items()}
    assert after["sim-7"] is Verdict.WARN
    assert {n for n, v in after.items() if v is not Verdict.PASS} == {"sim-7"}
    result = outcome.latest["sim-7"]["pciebw"]
    assert result.summary.count("slow against its fleet") == simulate.GPU_COUNT
    assert "% of the median of " in result.summary
    # No fixed floor saw it: every GPU is far above the 4 GB/s floor.
    assert all(float(d.value or 0) > 40 for d in result.devices)


def test_the_figures_are_reproducible_with_a_seed() -> None:
    first = quality.table(quality.run(60, 3, seed=3, fleet_plan=quality.plan(60, 3, per_case=0)))
    again = quality.table(quality.run(60, 3, seed=3, fleet_plan=quality.plan(60, 3, per_case=0)))
    assert first == again


def test_a_busy_gpu_is_no_fault_its_warn_a_false_warn() -> None:
    busy = next(c for c in quality.cases() if c.label == "pciebw:busy")
    assert busy.harmless and not any(c.transient for c in quality.cases() if c.label.startswith("pciebw:busy"))
    verdicts = {"sim-0": [Verdict.PASS, Verdict.PASS, Verdict.WARN]}
    rows, in_scope, _overall, _transient = quality.score({"sim-0": busy}, verdicts, {"sim-0": [False] * 3})
    tally = rows["pciebw:busy"]
    assert (tally.tp, tally.fn, tally.fp, tally.tn, tally.false_warn, tally.missed) == (0, 0, 1, 2, 1, 0)
    assert in_scope.fp == 1


def test_every_fault_kind_of_the_periodic_checks_is_in_the_mix() -> None:
    labels = {c.label for c in quality.cases()}
    for check in quality.CHECKS:
        for kind in simulate.kinds(check):
            assert f"{check}:{kind}" in labels
    for figure in ("pciebw", "daxpy", "dgemm"):
        for severity in ("95%", "90%", "80%", "50%"):
            assert f"{figure} at {severity}" in labels
    assert any(c.transient for c in quality.cases())


def test_the_simulator_spread_matches_its_stated_source() -> None:
    runner = simnoise.NoisyRunner(None, "sim-0", seed=1)
    for figure, spread in simnoise.SPREADS.items():
        draws = [simnoise.NoisyRunner(None, f"sim-{i}", seed=1).device_factor(0, figure) for i in range(2000)]
        assert statistics.median(draws) == pytest.approx(1.0, abs=0.01)
        assert statistics.stdev(draws) == pytest.approx(spread.device_cv, rel=0.1)
        assert "arXiv:2208.11035" in spread.source
    assert runner.device_factor(3, "dgemm_tflops") == simnoise.NoisyRunner(None, "sim-0", seed=1).device_factor(
        3, "dgemm_tflops"
    )
    assert runner.device_factor(3, "dgemm_tflops") != simnoise.NoisyRunner(None, "sim-0", seed=2).device_factor(
        3, "dgemm_tflops"
    )


def _h2d(stdout: str) -> tuple[float, dict[str, Any]]:
    device = json.loads(stdout)["devices"][0]
    return device["h2d_pinned_gbps"], device["h2d"]


def test_a_slowdown_scales_every_sample_of_one_gpus_figure() -> None:
    settings = config.Settings(bandwidthtest_path="")
    runner, _ = simulate.build_seam(settings, {}, checks=shipped_checks())
    argv = pciebw.ap_bandwidth_argv("ap-bandwidth", BUS_3)
    plain = simnoise.NoisyRunner(runner, "sim-0", 1, spreads={})
    slow = simnoise.NoisyRunner(runner, "sim-0", 1, [simnoise.Slowdown("h2d_pinned_gbps", 3, 0.5)], spreads={})
    flat, series = _h2d(plain.run(argv, timeout=5).stdout)
    assert flat == 53.4 and set(series["samples"]) == {53.4}
    flat, series = _h2d(slow.run(argv, timeout=5).stdout)
    # The checks judge the median of the samples: every sample, and the statistics, say 50%.
    assert flat == 26.7 and set(series["samples"]) == {26.7}
    assert (series["median"], series["min"], series["max"]) == (26.7, 26.7, 26.7)


def test_run_noise_moves_the_samples_the_check_judges_and_keeps_the_statistics_coherent() -> None:
    settings = config.Settings(bandwidthtest_path="")
    runner, _ = simulate.build_seam(settings, {}, checks=shipped_checks())
    argv = pciebw.ap_bandwidth_argv("ap-bandwidth", BUS_3)
    noisy = simnoise.NoisyRunner(runner, "sim-0", 1, noise=8)
    runs = [_h2d(noisy.run(argv, timeout=5).stdout) for _ in range(20)]
    for flat, series in runs:
        samples = series["samples"]
        assert flat == series["median"] == pytest.approx(statistics.median(samples), abs=1e-3)
        assert (series["min"], series["max"]) == (min(samples), max(samples))
        assert series["cv"] == pytest.approx(statistics.stdev(samples) / statistics.fmean(samples), abs=1e-4)
    medians = [flat for flat, _ in runs]
    # Eight times SC22's run-to-run spread (0.5% for pinned H2D): about 4% between runs.
    assert 0.02 < statistics.stdev(medians) / statistics.fmean(medians) < 0.07
    # The check itself reads the scaled samples.
    out = noisy.run(argv, timeout=5).stdout
    checked = pciebw.evaluate_text(out, {}, settings)
    assert checked.devices[0].value == pytest.approx(_h2d(out)[0], abs=0.05)


def test_noise_zero_replays_the_device_spread_only() -> None:
    settings = config.Settings(bandwidthtest_path="")
    runner, _ = simulate.build_seam(settings, {}, checks=shipped_checks())
    argv = pciebw.ap_bandwidth_argv("ap-bandwidth", BUS_3)
    quiet = simnoise.NoisyRunner(runner, "sim-0", 1, noise=0)
    assert len({_h2d(quiet.run(argv, timeout=5).stdout)[0] for _ in range(5)}) == 1
    with pytest.raises(ValueError):
        simnoise.NoisyRunner(runner, "sim-0", 1, noise=-1)


def test_a_real_fault_on_a_noisy_fleet_is_confirmed_by_one_confirmation_run() -> None:
    """The figures of QUALITY.md's noisy fleet, small: every real fault confirmed in its round, by one run."""
    off, on = quality.flap_figures(24, 3, seed=1, noise=2, per_case=1)
    for figures in (off, on):
        assert figures.detected == figures.faults == len(quality.FLAP_CASES)
        assert figures.rounds_to_detect_max == 0
    assert off.confirm_runs_max == 0 and on.confirm_runs_max == 1
    assert "confirmation runs in that round" in quality.flap_table([off, on])
