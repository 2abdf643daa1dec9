"""A GPU in use by others while pciebw/gpumem measure it: NVML's signals (``GpuTelemetry.activity``
and the sampled kernel time), what each check then judges and skips, and what stays out of the
neighbours' comparison and the fleet baselines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from autopilot import baseline, errors, gpus, metrics, registry
from autopilot.checks import _cuda, gpumem, pciebw
from autopilot.results import Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry, snapshot
from tests.unit.cuda_helpers import BIN, ctx_for, settings
from tests.unit.test_gpumem import BUS as GPUMEM_BUS
from tests.unit.test_gpumem import line as gpumem_line
from tests.unit.test_pciebw import BUS, ap_line

MIB = 1 << 20
GIB = 1 << 30
IDLE = gpus.GpuActivity(0, 0, 0.0)
TRAINING = gpus.GpuActivity(0, 61 * GIB, 97.0)  # as our pod sees a job of another pod: no process
REPLAYS = (
    {"pcie_replay": 0, "ecc_corrected": 0, "ecc_uncorrected": 0},
    {"pcie_replay": 7, "ecc_corrected": 0, "ecc_uncorrected": 0},
)


# ---------------------------------------------------------------- NVML: the real seam over a scripted pynvml


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """pynvml answering for one GPU from ``script`` (an entry that is an int: raise that NVML error)."""
    script: dict[str, Any] = {
        # An idle H100 as nvidia-smi -q shows it: Total 81559, Reserved 551, Used 0, Free 81007 MiB.
        "memory_v2": SimpleNamespace(total=81559 * MIB, reserved=551 * MIB, free=81007 * MIB, used=0),
        "memory_v1": SimpleNamespace(total=81559 * MIB, free=81007 * MIB, used=552 * MIB),
        "processes": [],
        "utilization": SimpleNamespace(gpu=0, memory=0),
    }

    def answer(key: str) -> Any:
        value = script[key]
        if isinstance(value, int):
            raise pynvml.NVMLError(value)
        return value

    def memory(handle: int, version: int | None = None) -> Any:
        return answer("memory_v2" if version else "memory_v1")

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: index)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", memory)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda h: answer("processes"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: answer("utilization"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTemperature", lambda h, sensor: 35)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda h: 70_000)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetClockInfo", lambda h, clock: 1980)
    yield script


def test_an_idle_gpu_reads_nothing_allocated_beyond_the_drivers_reserve(nvml: dict[str, Any]) -> None:
    activity = gpus.NvmlTelemetry().activity(0)
    assert activity == gpus.GpuActivity(0, 1 * MIB, 0.0, ())  # 1 MiB: nvidia-smi rounds each figure to MiB
    assert _cuda.in_use_of(activity).busy is False


def test_a_training_job_shows_in_memory_kernel_time_and_processes(nvml: dict[str, Any]) -> None:
    nvml["memory_v2"] = SimpleNamespace(total=81559 * MIB, reserved=551 * MIB, free=(81008 - 62464) * MIB, used=0)
    nvml["utilization"] = SimpleNamespace(gpu=97, memory=40)
    nvml["processes"] = [SimpleNamespace(pid=4242, usedGpuMemory=None)] * 2
    activity = gpus.NvmlTelemetry().activity(0)
    assert (activity.processes, activity.memory_used_bytes, activity.utilization_pct) == (2, 62464 * MIB, 97.0)
    found = _cuda.in_use_of(activity)
    assert found.busy
    assert (
        found.describe() == "in use by others (2 other processes, 61 GiB used, kernels 97% of the time before the run)"
    )


def test_memory_falls_back_to_v1_where_the_library_has_no_v2(nvml: dict[str, Any]) -> None:
    nvml["memory_v2"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    nvml["memory_v1"] = SimpleNamespace(total=81559 * MIB, free=20000 * MIB, used=61559 * MIB)
    assert gpus.NvmlTelemetry().activity(0).memory_used_bytes == 61559 * MIB
    nvml["memory_v1"] = SimpleNamespace(total=81559 * MIB, free=81007 * MIB, used=552 * MIB)
    # v1 counts the driver's reserve (about 0.5 GiB): still under the 1 GiB of a GPU in use.
    assert _cuda.in_use_of(gpus.NvmlTelemetry().activity(0)).busy is False


@pytest.mark.parametrize(
    ("signal", "code", "says"),
    [
        ("utilization", pynvml.NVML_ERROR_NOT_SUPPORTED, "utilization: Not Supported"),
        ("processes", pynvml.NVML_ERROR_NO_PERMISSION, "processes: no permission to use the GPUs"),
        ("memory_v2", pynvml.NVML_ERROR_UNKNOWN, "memory: unknown NVML error"),
    ],
)
def test_a_signal_nvml_cannot_give_is_unknown_never_busy(
    nvml: dict[str, Any], signal: str, code: int, says: str
) -> None:
    nvml[signal] = code
    activity = gpus.NvmlTelemetry().activity(0)
    assert len(activity.unknown) == 1 and activity.unknown[0].startswith(says)
    found = _cuda.in_use_of(activity)
    assert found.busy is False
    assert found.unknown_note().startswith(" (whether others used the GPU is partly unknown: " + says)


def test_every_signal_unknown_is_still_not_busy(nvml: dict[str, Any]) -> None:
    for signal in ("utilization", "processes", "memory_v2"):
        nvml[signal] = pynvml.NVML_ERROR_NOT_SUPPORTED
    activity = gpus.NvmlTelemetry().activity(0)
    assert (activity.processes, activity.memory_used_bytes, activity.utilization_pct) == (None, None, None)
    assert len(activity.unknown) == 3 and _cuda.in_use_of(activity).busy is False


def test_a_gpu_lost_while_asked_raises_gpu_lost(nvml: dict[str, Any]) -> None:
    nvml["utilization"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(errors.GpuLost):
        gpus.NvmlTelemetry().activity(0)


def test_the_sample_carries_kernel_time_or_none(nvml: dict[str, Any]) -> None:
    nvml["utilization"] = SimpleNamespace(gpu=55, memory=10)
    assert gpus.NvmlTelemetry().sample(0).utilization_pct == 55.0
    nvml["utilization"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert gpus.NvmlTelemetry().sample(0).utilization_pct is None


# ---------------------------------------------------------------- the rule (pure)


@pytest.mark.parametrize(
    ("activity", "during", "busy"),
    [
        (IDLE, None, False),
        (gpus.GpuActivity(1, 0, 0.0), None, True),  # another process, whatever it holds
        (gpus.GpuActivity(0, GIB, 0.0), None, False),  # a context or two is not a job
        (gpus.GpuActivity(0, GIB + MIB, 0.0), None, True),
        (gpus.GpuActivity(0, 0, 4.0), None, False),  # a stray monitoring kernel
        (gpus.GpuActivity(0, 0, 5.0), None, True),
        (IDLE, 4.0, False),
        (IDLE, 60.0, False),  # kernels during our copies alone: evidence, not proof (see below)
        (gpus.GpuActivity(0, GIB + MIB, 0.0), 60.0, True),
        (gpus.GpuActivity(None, None, None, ("memory: x",)), None, False),
    ],
)
def test_each_signal_alone_makes_a_gpu_busy(activity: gpus.GpuActivity, during: float | None, busy: bool) -> None:
    assert _cuda.in_use_of(activity, during).busy is busy


def test_a_gpu_nvml_cannot_answer_for_is_unknown_not_busy() -> None:
    class Broken(FakeTelemetry):
        def activity(self, index: int) -> gpus.GpuActivity:
            raise errors.GpuError("GPU 0 activity: Unknown Error", 999)

    activity = _cuda.read_activity(Broken([FakeGpu()]), 0)
    assert activity.unknown == ("NVML: GPU 0 activity: Unknown Error",)
    assert _cuda.in_use_of(activity).busy is False


# ---------------------------------------------------------------- pciebw


def pciebw_run(lines: list[str], gpus_: list[FakeGpu]) -> Any:
    runner = FakeRunner()
    for i, text in enumerate(lines):
        runner.add(pciebw.ap_bandwidth_argv(f"{BIN}/ap-bandwidth", BUS[i]), text)
    return pciebw.run(ctx_for(runner, FakeTelemetry(gpus_)), registry.REGISTRY.get("pciebw").validate({}))


def busy_gpu(index: int, activity: gpus.GpuActivity = TRAINING, **kw: Any) -> FakeGpu:
    return FakeGpu(pci_bus_id=BUS[index], activity=activity, **kw)


def idle_gpu(index: int, **kw: Any) -> FakeGpu:
    return FakeGpu(pci_bus_id=BUS[index], **kw)


def test_a_low_h2d_on_a_gpu_in_use_is_skipped_with_its_evidence() -> None:
    result = pciebw_run([ap_line(0, 50.0), ap_line(1, 21.3)], [idle_gpu(0), busy_gpu(1)])
    assert result.status is Status.OK  # before: fail, "H2D median 21.3 GB/s < threshold 38 GB/s"
    gpu = result.devices[1]
    assert (gpu.status, gpu.value) == (Status.SKIPPED, 21.3)
    assert (
        gpu.detail == "in use by others (61 GiB used, kernels 97% of the time before the run): H2D 21.3 GB/s not judged"
    )
    entry = result.data["gpus"]["1"]
    assert entry["h2d_pinned_gbps"] == 21.3 and entry["h2d"]["samples"] == [21.3] * 10
    assert entry["in_use"] == {
        "busy": True,
        "processes": 0,
        "memory_used_gib": 61.0,
        "utilization_pct": 97.0,
        "reasons": ["61 GiB used", "kernels 97% of the time before the run"],
    }
    assert result.data["gpus"]["0"]["in_use"] == {
        "busy": False,
        "processes": 0,
        "memory_used_gib": 0.0,
        "utilization_pct": 0.0,
    }
    assert result.summary.startswith("1 of 2 GPU(s) judged: H2D pinned median 50.0 GB/s")
    assert result.summary.endswith("; GPU 1 skipped: " + gpu.detail)


def test_kernels_while_the_copies_run_are_evidence_but_never_the_only_one() -> None:
    # Were a driver to count copy-engine time as kernel time, this signal alone would skip every
    # GPU's figure in the fleet, and a skipped GPU is no finding: so it only adds to another.
    sample = gpus.GpuSample(60.0, 500.0, 1980.0, 88.0)
    alone = pciebw_run([ap_line(0, 20.0)], [idle_gpu(0, sample=sample)])
    assert alone.devices[0].status is Status.FAIL  # before: skipped, "kernels 88% ... during the run"
    assert alone.data["gpus"]["0"]["in_use"]["utilization_during_pct"] == 88.0
    assert alone.data["gpus"]["0"]["in_use"]["busy"] is False
    with_memory = gpus.GpuActivity(0, 20 * GIB, 0.0)
    busy = pciebw_run([ap_line(0, 20.0)], [idle_gpu(0, sample=sample, activity=with_memory)])
    assert busy.devices[0].status is Status.SKIPPED
    assert "20 GiB used, kernels 88% of the time during the run" in busy.devices[0].detail


def test_kernel_time_just_after_our_own_program_on_that_gpu_is_ours_not_evidence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gpumem then pciebw in one run: NVML's last sample period still holds gpumem's kernels.
    hot = gpus.GpuActivity(0, 0, 97.0)
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0], activity=hot), FakeGpu(pci_bus_id=BUS[1], activity=hot)])
    other_node = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0], activity=hot)])
    _cuda.own_program_ended(telemetry, BUS[0])
    read = _cuda.read_activity(telemetry, 0, BUS[0])
    assert read.utilization_pct is None and read.unknown[-1].startswith("utilization: our own program ran")
    assert _cuda.in_use_of(read).busy is False  # before: busy, "kernels 97% of the time before the run"
    assert _cuda.read_activity(other_node, 0, BUS[0]).utilization_pct == 97.0  # another node's GPU
    assert _cuda.read_activity(telemetry, 1, BUS[1]).utilization_pct == 97.0  # another GPU
    monkeypatch.setattr(_cuda, "OWN_RUN_SETTLE_S", 0.0)
    assert _cuda.read_activity(telemetry, 0, BUS[0]).utilization_pct == 97.0  # settled


def test_a_measurement_notes_its_end_so_the_next_reads_no_kernel_time_of_ours() -> None:
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0], activity=gpus.GpuActivity(0, 0, 97.0))])
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(f"{BIN}/ap-bandwidth", BUS[0]), ap_line(0, 50.0))
    check_params = registry.REGISTRY.get("pciebw").validate({})
    first = pciebw.run(ctx_for(runner, telemetry), check_params)
    assert first.devices[0].status is Status.SKIPPED  # the hot GPU, nothing of ours before it
    second = pciebw.run(ctx_for(runner, telemetry), check_params)
    assert second.devices[0].status is Status.OK
    assert "our own program ran on this GPU" in second.devices[0].detail


def test_what_load_does_not_change_is_still_judged_on_a_busy_gpu() -> None:
    replays = pciebw_run([ap_line(0, 21.0, counters=REPLAYS)], [busy_gpu(0)])
    assert replays.status is Status.FAIL
    assert replays.devices[0].detail.startswith("7 PCIe replays during the run (0 -> 7); in use by others")
    narrow = pciebw_run([ap_line(0, 21.0, link=(5, 5, 8, 16))], [busy_gpu(0)])
    assert narrow.status is Status.WARN
    assert narrow.devices[0].detail.startswith("PCIe link width x8 of x16; in use by others")
    lost = pciebw_run(
        [ap_line(0, 0.0, error="uncorrectable ECC", kind="hardware", name="cudaErrorECCUncorrectable")], [busy_gpu(0)]
    )
    assert (lost.status, lost.fatal) == (Status.FAIL, True)


def test_a_busy_gpu_is_no_neighbour_of_the_others() -> None:
    # Idle GPUs at 40 and 46 are within 90% of their median (43); the busy one's 50 must not raise it to 46.
    result = pciebw_run([ap_line(0, 40.0), ap_line(1, 46.0), ap_line(2, 50.0)], [idle_gpu(0), idle_gpu(1), busy_gpu(2)])
    assert [d.status for d in result.devices] == [Status.OK, Status.OK, Status.SKIPPED]


def test_an_unknown_signal_is_judged_as_before_with_a_note() -> None:
    unknown = gpus.GpuActivity(0, 0, None, ("utilization: Not Supported (NVML code 3)",))
    low = pciebw_run([ap_line(0, 21.0)], [idle_gpu(0, activity=unknown)])
    assert low.status is Status.FAIL
    assert low.devices[0].detail.endswith(
        " (whether others used the GPU is partly unknown: utilization: Not Supported (NVML code 3))"
    )
    good = pciebw_run([ap_line(0, 50.0)], [idle_gpu(0, activity=unknown)])
    assert good.status is Status.OK and "partly unknown" in good.devices[0].detail


def test_a_saved_output_is_judged_as_before() -> None:
    result = pciebw.evaluate_text(ap_line(0, 21.3), {}, settings())
    assert result.status is Status.FAIL and "in_use" not in result.data["gpus"]["0"]


# ---------------------------------------------------------------- gpumem


def gpumem_run(lines: list[str], gpus_: list[FakeGpu]) -> Any:
    runner = FakeRunner()
    check_params = registry.REGISTRY.get("gpumem").validate({})
    for i, text in enumerate(lines):
        runner.add(gpumem.argv_for(f"{BIN}/ap-gpumem", GPUMEM_BUS[i], check_params), text)
    return gpumem.run(ctx_for(runner, FakeTelemetry(gpus_)), check_params)


def gpumem_gpu(index: int, activity: gpus.GpuActivity = IDLE, **kw: Any) -> FakeGpu:
    return FakeGpu(pci_bus_id=GPUMEM_BUS[index], activity=activity, **kw)


def test_gpumem_skips_the_figures_of_a_busy_gpu() -> None:
    slow = gpumem_line(1, daxpy=1466.0, dgemm=21.0, h2d=24.0)
    result = gpumem_run([gpumem_line(0), slow], [gpumem_gpu(0), gpumem_gpu(1, TRAINING)])
    # Before: GPU 1 fail (DAXPY and DGEMM below the H100 table, and far below GPU 0).
    assert [d.status for d in result.devices] == [Status.OK, Status.SKIPPED]
    assert result.devices[1].detail == (
        "in use by others (61 GiB used, kernels 97% of the time before the run): "
        "H2D 24.0 GB/s, DAXPY 1466 GB/s, DGEMM 21.0 TFLOPS not judged"
    )
    assert result.data["gpus"]["1"]["in_use"]["busy"] is True
    # The summary counts what was judged, not every GPU as if each passed.
    assert result.summary.startswith("1 of 2 GPU(s) judged: H2D, DAXPY and DGEMM medians at or above thresholds")
    both = gpumem_run([gpumem_line(0), gpumem_line(1)], [gpumem_gpu(0), gpumem_gpu(1)])
    assert both.summary == "2 GPU(s): H2D, DAXPY and DGEMM medians at or above thresholds"


def test_gpumem_keeps_a_busy_gpu_out_of_the_neighbours_comparison() -> None:
    # Idle GPUs at 2400 and 2700 GB/s are within 90% of their median (2550); the busy one's 3000
    # must not lift it to 2700, under which 2400 would warn.
    lines = [gpumem_line(0, daxpy=2400.0), gpumem_line(1, daxpy=3000.0), gpumem_line(2, daxpy=2700.0)]
    result = gpumem_run(lines, [gpumem_gpu(0), gpumem_gpu(1, TRAINING), gpumem_gpu(2)])
    assert [d.status for d in result.devices] == [Status.OK, Status.SKIPPED, Status.OK]


def test_gpumem_counts_its_own_kernels_as_no_evidence() -> None:
    ours = gpumem_gpu(0, sample=gpus.GpuSample(70.0, 690.0, 1980.0, 100.0))  # our DGEMM, sampled
    result = gpumem_run([gpumem_line(0, dgemm=20.0)], [ours])
    assert result.status is Status.FAIL and "DGEMM median 20.0 TFLOPS < 40" in result.devices[0].detail


def test_gpumem_wrong_values_and_counters_are_judged_on_a_busy_gpu() -> None:
    wrong = gpumem_run([gpumem_line(0, mismatches=12)], [gpumem_gpu(0, TRAINING)])
    assert (wrong.status, wrong.fatal) == (Status.FAIL, True)
    assert wrong.devices[0].detail.startswith("DAXPY wrote 12 wrong value(s); in use by others")
    counters = {"counters": {"before": REPLAYS[0], "after": REPLAYS[1]}}
    grown = gpumem_run([gpumem_line(0, extra=counters)], [gpumem_gpu(0, TRAINING)])
    assert grown.status is Status.FAIL and grown.devices[0].detail.startswith("7 PCIe replays")


# ---------------------------------------------------------------- fleet baselines


def test_a_busy_gpus_figure_is_not_fed_to_the_fleet_baselines() -> None:
    result = pciebw_run(
        [ap_line(0, 50.0), ap_line(1, 21.0), ap_line(2, 21.0, counters=REPLAYS)],
        [idle_gpu(0), busy_gpu(1), busy_gpu(2)],
    )
    assert [d.status for d in result.devices] == [Status.OK, Status.SKIPPED, Status.FAIL]
    found = baseline.samples(result, "NVIDIA H100 80GB HBM3", "550.90.07")
    assert [(s.device, s.value) for s in found] == [("0", 50.0)]
    window = baseline.Window(10)
    policy = baseline.Policy(window=10, min_samples=3)
    baseline.assess(result, model="", driver="550.90.07", source=window, policy=policy)
    assert [b.count for b in window.all(1)] == [1]


def test_the_recorded_json_of_a_busy_gpu_round_trips_the_fake() -> None:
    # FakeTelemetry.from_json reads what snapshot() writes, activity included (recorded snapshots).
    raw = json.loads(json.dumps(snapshot(FakeTelemetry([busy_gpu(0)]))))
    assert FakeTelemetry.from_json(raw).activity(0) == TRAINING


# ---------------------------------------------------------------- no memory left to measure with


def test_no_memory_left_on_a_busy_gpu_is_skipped_not_an_error() -> None:
    oom = ap_line(0, 0.0, error="out of memory", kind="setup", name="cudaErrorMemoryAllocation")
    busy = pciebw_run([oom], [busy_gpu(0)])
    assert busy.devices[0].status is Status.SKIPPED  # before: error, and the node WARN
    assert busy.devices[0].detail.startswith("in use by others (61 GiB used, kernels 97% of the time before the run): ")
    assert "not measured, no device memory left (CUDA error: out of memory)" in busy.devices[0].detail
    assert pciebw_run([oom], [idle_gpu(0)]).status is Status.ERROR  # nobody else: our own set-up failed
    no_image = ap_line(0, 0.0, error="no kernel image", kind="setup", name="cudaErrorNoKernelImageForDevice")
    assert pciebw_run([no_image], [busy_gpu(0)]).status is Status.ERROR


def test_gpumem_with_no_memory_left_on_a_busy_gpu_is_skipped() -> None:
    oom = gpumem_line(0, error="out of memory", kind="setup", error_name="cudaErrorMemoryAllocation")
    assert gpumem_run([oom], [gpumem_gpu(0, TRAINING)]).devices[0].status is Status.SKIPPED
    assert gpumem_run([oom], [gpumem_gpu(0)]).status is Status.ERROR


def test_bandwidthtest_just_after_gpumem_on_a_one_gpu_node_reads_no_kernel_time_of_ours() -> None:
    # gpumem notes its end under the GPU's bus id; pciebw through bandwidthTest read it under the
    # index, so gpumem's own DGEMM tail made the idle GPU "in use by others" and skipped its figure.
    hot = gpus.GpuActivity(0, 0, 97.0)
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0], activity=hot)])
    runner = FakeRunner(installed=["bandwidthTest"])
    text = "bandwidthTest-H2D-Pinned, Bandwidth = 50.0 GB/s, Time = 0.00130 s, Size = 32000000 bytes, NumDevsUsed = 1\n"
    runner.add(pciebw.bandwidthtest_argv("/opt/bw/bandwidthTest", 0), " Device 0: NVIDIA H100\n" + text)
    _cuda.own_program_ended(telemetry, BUS[0])  # what gpumem._measure does as its program ends
    ctx = ctx_for(runner, telemetry, bandwidthtest_path="/opt/bw/bandwidthTest")
    result = pciebw.run(ctx, registry.REGISTRY.get("pciebw").validate({}))
    assert result.devices[0].status is Status.OK  # before: skipped, "kernels 97% of the time before the run"
    assert "our own program ran on this GPU" in result.devices[0].detail


def test_the_upstream_gauge_exports_no_contended_figure_of_a_busy_gpu() -> None:
    # A busy GPU warned for its narrow link keeps its contended H2D as the device value; the
    # upstream gauge (autopilot_health_checks{health="pciebw"}) would show it as the GPU's bandwidth.
    narrow = pciebw_run([ap_line(0, 21.0, link=(5, 5, 8, 16)), ap_line(1, 50.0)], [busy_gpu(0), idle_gpu(1)])
    assert narrow.devices[0].status is Status.WARN and narrow.devices[0].value == 21.0
    assert metrics.upstream_samples(narrow) == {"1": 50.0}  # before: {"0": 21.0, "1": 50.0}


def test_a_gpu_a_job_holds_in_exclusive_process_mode_is_skipped_not_an_error() -> None:
    # Compute mode EXCLUSIVE_PROCESS: while a job's process holds the GPU, our context is refused
    # (cudaErrorDevicesUnavailable, "all CUDA-capable devices are busy or unavailable").
    held = dict(error="all CUDA-capable devices are busy or unavailable", kind="setup")
    busy = pciebw_run([ap_line(0, 0.0, **held, name="cudaErrorDevicesUnavailable")], [busy_gpu(0)])
    assert busy.devices[0].status is Status.SKIPPED  # before: error, and the node WARN
    assert "not measured, the GPU refused another process" in busy.devices[0].detail
    idle = pciebw_run([ap_line(0, 0.0, **held, name="cudaErrorDevicesUnavailable")], [idle_gpu(0)])
    assert idle.status is Status.ERROR  # nobody else on it (compute mode Prohibited, ...): stays an error
    line = gpumem_line(0, error=held["error"], kind="setup", error_name="cudaErrorDevicesUnavailable")
    assert gpumem_run([line], [gpumem_gpu(0, TRAINING)]).devices[0].status is Status.SKIPPED
    assert gpumem_run([line], [gpumem_gpu(0)]).status is Status.ERROR


def test_the_gpus_a_check_skipped_as_in_use_by_others_are_counted_in_a_metric() -> None:
    # A GPU some job (or a leak that looks like one) holds at every run is never judged while the
    # result reads ok and the verdict PASS: an operator sees it only here, to alert on it.
    result = pciebw_run([ap_line(0, 50.0), ap_line(1, 21.3)], [idle_gpu(0), busy_gpu(1)])
    assert result.status is Status.OK
    info = metrics.NodeInfo("node-a", last_seen=1.0)
    families = metrics.build(metrics.Snapshot(nodes=[info], latest={"node-a": {"pciebw": result}}), {})
    series = {m.name: m for m in families}
    counted = series["autopilot_check_gpus_in_use_by_others"]  # before: no such series
    assert [(s.labels, s.value) for s in counted.samples] == [({"node": "node-a", "check": "pciebw"}, 1.0)]


def test_gpumem_whose_cublas_finds_no_memory_left_on_a_busy_gpu_is_skipped() -> None:
    # Our arrays fit in what the job left, cuBLAS's own allocations did not: the same crowding as
    # cudaErrorMemoryAllocation, named by cuBLAS's status.
    error = "cublasCreate(&h): resource allocation failed"
    oom = gpumem_line(0, error=error, kind="setup", error_name="CUBLAS_STATUS_ALLOC_FAILED")
    assert gpumem_run([oom], [gpumem_gpu(0, TRAINING)]).devices[0].status is Status.SKIPPED  # before: error
    assert gpumem_run([oom], [gpumem_gpu(0)]).status is Status.ERROR


def test_is_mapping_answers_as_isinstance_mapping() -> None:
    from collections import OrderedDict
    from collections.abc import Mapping
    from types import MappingProxyType

    values: list[Any] = [{}, {"a": 1}, OrderedDict(a=1), MappingProxyType({"a": 1}), 1, 1.5, True, "s", [1], None, (1,)]
    for value in values:
        assert _cuda._is_mapping(value) is isinstance(value, Mapping), value
