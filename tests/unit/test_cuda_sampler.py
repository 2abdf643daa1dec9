"""The GPU telemetry ``Sampler``: one background thread samples every open sampler, and a program
shorter than the interval is sampled on entry and exit only."""

from __future__ import annotations

import threading

from autopilot import errors, gpus
from autopilot.checks._cuda import Sampler
from autopilot.testing import FakeGpu, FakeTelemetry


class CountingTelemetry(FakeTelemetry):
    """Counts samples per GPU; ``reached`` is set once GPU 0 has had ``want`` samples."""

    def __init__(self, want: int = 3, fail_gpu: int | None = None) -> None:
        super().__init__([FakeGpu(pci_bus_id=f"00000000:{i:02X}:00.0") for i in range(8)])
        self.want = want
        self.fail_gpu = fail_gpu
        self.counts: dict[int, int] = {}
        self.threads: set[str] = set()
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def sample(self, index: int) -> gpus.GpuSample:
        with self._lock:
            self.counts[index] = self.counts.get(index, 0) + 1
            self.threads.add(threading.current_thread().name)
            if index == 0 and self.counts[index] >= self.want:
                self.reached.set()
        if index == self.fail_gpu:
            raise errors.GpuError(f"GPU {index}: Unknown Error")
        return super().sample(index)


def test_a_program_shorter_than_the_interval_is_sampled_on_entry_and_exit_only() -> None:
    telemetry = CountingTelemetry()
    with Sampler(telemetry, 0, interval_s=60) as sampler:
        pass
    assert sampler.summary()["samples"] == 2
    assert telemetry.threads == {threading.current_thread().name}


def test_samples_are_taken_while_the_program_runs() -> None:
    telemetry = CountingTelemetry(want=4)
    with Sampler(telemetry, 0, interval_s=0.01) as sampler:
        assert telemetry.reached.wait(30), "no background samples"
    summary = sampler.summary()
    assert summary["samples"] >= 4
    assert {"temperature_c", "power_w", "sm_clock_mhz"} <= set(summary)


def test_one_thread_samples_every_gpu_at_once() -> None:
    telemetry = CountingTelemetry(want=3)
    samplers = [Sampler(telemetry, i, interval_s=0.01) for i in range(8)]
    for s in samplers:
        s.__enter__()
    try:
        assert telemetry.reached.wait(30)
        background = telemetry.threads - {threading.current_thread().name}
        assert background == {"gpu-sampler"}
        assert sum(1 for t in threading.enumerate() if t.name == "gpu-sampler") == 1
    finally:
        for s in samplers:
            s.__exit__(None, None, None)


def test_a_failed_sample_is_counted_not_raised() -> None:
    telemetry = CountingTelemetry(fail_gpu=3)
    with Sampler(telemetry, 3, interval_s=60) as sampler:
        pass
    assert sampler.summary() == {"samples": 0, "failed_samples": 2}


def test_the_spread_of_samples_is_the_sample_standard_deviation_over_the_mean() -> None:
    # series_of computes it in floats (fsum) for speed; it must stay statistics.stdev / fmean.
    import statistics

    import pytest

    from autopilot.checks._cuda import series_of

    for values in ([10.0, 12.0, 11.0, 30.0], [24.1, 24.3, 23.9, 24.0, 24.2] * 4, [5.5, 5.5, 5.5], [1e-3, 2e-3]):
        expected = statistics.stdev(values) / statistics.fmean(values)
        assert series_of(values).cv == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert series_of([7.0]).cv == 0.0


def test_summary_leaves_out_fields_never_read_and_spans_the_rest() -> None:
    sampler = Sampler(FakeTelemetry([FakeGpu()]), 0)
    sampler.samples = [gpus.GpuSample(30.0, None, 1980.0, None), gpus.GpuSample(41.0, None, 1410.0, 12.0)]
    assert sampler.summary() == {
        "samples": 2,
        "temperature_c": {"min": 30.0, "max": 41.0, "mean": 35.5},
        "sm_clock_mhz": {"min": 1410.0, "max": 1980.0, "mean": 1695.0},
        "utilization_pct": {"min": 12.0, "max": 12.0, "mean": 12.0},
    }
