"""pciebw: ap-bandwidth and bandwidthTest parsing, the GB/s floor, PCIe link judgement, argv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autopilot import config, errors, gpus, registry
from autopilot.checks import pciebw
from autopilot.context import CheckContext
from autopilot.results import Status
from autopilot.testing import FakeClock, FakeGpu, FakeRunner, FakeTelemetry

DATA = Path(__file__).resolve().parents[1] / "data" / "pciebw"
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
BIN = "/opt/autopilot/bin"
TOOL = f"{BIN}/ap-bandwidth"


def sample(name: str) -> str:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"sample {name} not available")
    return path.read_text().split("\n", 1)[1]  # line 1 is the provenance header


def settings(**kw: Any) -> config.Settings:
    return config.Settings(node_name="node-a", cuda_bin_dir=BIN, **kw)


def ctx_for(runner: FakeRunner, telemetry: FakeTelemetry, **kw: Any) -> CheckContext:
    return CheckContext(node="node-a", settings=settings(**kw), commands=runner, gpus=telemetry, clock=FakeClock())


def params(**raw: Any) -> dict[str, Any]:
    return registry.REGISTRY.get("pciebw").validate(raw)


def ap_line(index: int, h2d: float, *, bus: str | None = None, error: str | None = None) -> str:
    device: dict[str, Any] = {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": bus or f"0000:{index:02X}:00.0",
    }
    if error:
        device["error"] = error
    else:
        device.update(
            h2d_pinned_gbps=h2d, d2h_pinned_gbps=h2d, h2d_pageable_gbps=20.0, d2h_pageable_gbps=19.0, d2d_gbps=2800.0
        )
    doc: dict[str, Any] = {
        "tool": "ap-bandwidth",
        "version": 1,
        "size_bytes": 268435456,
        "runs": 5,
        "devices": [device],
    }
    doc["errors"] = [f"device {index}: {error}"] if error else []
    if error:
        doc["error"] = "1 device(s) failed"
    return json.dumps(doc) + "\n"


FULL_LINK = gpus.PcieLink(5, 5, 16, 16)


def gpu(link: gpus.PcieLink = FULL_LINK) -> FakeGpu:
    return FakeGpu(link=link)


# ---------------------------------------------------------------- run: argv and thresholds


def test_runs_ap_bandwidth_once_per_gpu_with_exact_argv() -> None:
    runner = FakeRunner()
    for i in range(2):
        runner.add(pciebw.ap_bandwidth_argv(TOOL, i), ap_line(i, 25.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(), gpu()])), params())
    assert runner.calls == [
        (TOOL, "--device", "0", "--size-mib", "256", "--runs", "5"),
        (TOOL, "--device", "1", "--size-mib", "256", "--runs", "5"),
    ]
    assert result.status is Status.OK
    assert [(d.id, d.value, d.unit) for d in result.devices] == [("0", 25.0, "GB/s"), ("1", 25.0, "GB/s")]
    assert result.data["threshold_gbps"] == 4.0
    assert result.data["gpus"]["0"]["d2d_gbps"] == 2800.0
    assert result.data["gpus"]["0"]["pcie_link"]["current_width"] == 16
    assert set(result.data["gpus"]["0"]["telemetry"]) >= {"samples", "temperature_c", "power_w", "sm_clock_mhz"}


def test_recorded_fixture_gpu1_below_floor_fails_not_fatal() -> None:
    runner = FakeRunner.from_dir(DATA / "two-gpus-gpu1-slow")
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id="00000000:19:00.0"), FakeGpu(pci_bus_id="00000000:3B:00.0")])
    result = pciebw.run(ctx_for(runner, telemetry), params())
    assert result.status is Status.FAIL
    assert result.fatal is False
    assert [d.status for d in result.devices] == [Status.OK, Status.FAIL]
    assert result.summary.startswith("GPU 1: H2D 3.5 GB/s < threshold 4 GB/s")


@pytest.mark.parametrize(
    ("value", "threshold", "expected"),
    [(3.99, 4.0, Status.FAIL), (4.0, 4.0, Status.OK), (4.01, 4.0, Status.OK), (0.0, 0.5, Status.FAIL)],
)
def test_strictly_below_threshold_fails_equal_passes(value: float, threshold: float, expected: Status) -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, value))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu()])), params(threshold_gbps=threshold))
    assert result.status is expected
    assert result.devices[0].value == value


def test_threshold_defaults_to_settings() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 20.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu()]), pciebw_threshold_gbps=24.0), params())
    assert result.status is Status.FAIL
    assert "threshold 24 GB/s" in result.devices[0].detail


def test_no_gpu_is_skipped_and_runs_nothing() -> None:
    runner = FakeRunner()
    result = pciebw.run(ctx_for(runner, FakeTelemetry([])), params())
    assert result.status is Status.SKIPPED
    assert runner.calls == []


def test_no_driver_raises_gpu_unavailable_for_the_engine_to_skip() -> None:
    with pytest.raises(errors.GpuUnavailable):
        pciebw.run(ctx_for(FakeRunner(), FakeTelemetry(unavailable="no driver")), params())


def test_missing_binary_is_an_error_naming_the_path() -> None:
    result = pciebw.run(ctx_for(FakeRunner(), FakeTelemetry([gpu()])), params())
    assert result.status is Status.ERROR
    assert TOOL in result.summary


@pytest.mark.parametrize("stdout", ["", "Segmentation fault\n", "{not json\n", '{"tool":"other","devices":[]}\n'])
def test_garbage_output_is_an_error(stdout: str) -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), stdout, returncode=139)
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu()])), params())
    assert result.status is Status.ERROR
    assert result.devices[0].status is Status.ERROR
    assert "exited 139" in result.devices[0].detail


def test_cuda_error_with_json_error_field_is_an_error_for_that_gpu_only() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 0, error="cudaMalloc: out of memory"), returncode=1)
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 1), ap_line(1, 25.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(), gpu()])), params())
    assert result.status is Status.ERROR
    assert [d.status for d in result.devices] == [Status.ERROR, Status.OK]
    assert "out of memory" in result.devices[0].detail


def test_exit_3_no_cuda_device_is_an_error() -> None:
    runner = FakeRunner()
    doc = {"tool": "ap-bandwidth", "version": 1, "devices": [], "error": "no CUDA device visible"}
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), json.dumps(doc), returncode=3)
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu()])), params())
    assert result.status is Status.ERROR
    assert "CUDA sees no device" in result.devices[0].detail


def test_timeout_of_one_gpu_errors_that_gpu_and_goes_on() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), raises="timeout")
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 1), ap_line(1, 25.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(), gpu()])), params())
    assert [d.status for d in result.devices] == [Status.ERROR, Status.OK]
    assert "timed out" in result.devices[0].detail


def test_cuda_and_nvml_disagreeing_on_the_gpu_is_an_error() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 25.0, bus="0000:3B:00.0"))
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id="00000000:19:00.0")])
    result = pciebw.run(ctx_for(runner, telemetry), params())
    assert result.devices[0].status is Status.ERROR
    assert "NVML GPU 0 is 00000000:19:00.0" in result.devices[0].detail


# ---------------------------------------------------------------- PCIe link


def test_idle_downtrained_generation_is_not_a_fault() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 24.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(gpus.PcieLink(1, 4, 16, 16))])), params())
    assert result.status is Status.OK
    assert result.data["gpus"]["0"]["pcie_link"]["gen_below_max"] is True
    assert "Gen1 (max 4) x16" in result.devices[0].detail


def test_narrow_link_warns_even_above_the_floor() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 12.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(gpus.PcieLink(4, 4, 8, 16))])), params())
    assert result.status is Status.WARN
    assert result.devices[0].detail.startswith("PCIe link width x8 of x16")


def test_narrow_link_with_low_bandwidth_fails_and_names_the_cause() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 1.5))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(gpus.PcieLink(1, 4, 1, 16))])), params())
    assert result.status is Status.FAIL
    assert "link trained to x1 of x16" in result.devices[0].detail


def test_nvml_link_error_is_reported_but_not_judged() -> None:
    runner = FakeRunner()
    runner.add(pciebw.ap_bandwidth_argv(TOOL, 0), ap_line(0, 25.0))

    class NoLink(FakeTelemetry):
        def pcie_link(self, index: int) -> gpus.PcieLink:
            raise errors.GpuError("Not Supported", 3)

    result = pciebw.run(ctx_for(runner, NoLink([gpu()])), params())
    assert result.status is Status.OK
    assert "Not Supported" in result.data["gpus"]["0"]["pcie_link"]["error"]


# ---------------------------------------------------------------- bandwidthTest


def test_bandwidthtest_argv_forces_pci_bus_order() -> None:
    runner = FakeRunner(installed=["bandwidthTest"])
    text = "bandwidthTest-H2D-Pinned, Bandwidth = 24.6 GB/s, Time = 0.00130 s, Size = 32000000 bytes, NumDevsUsed = 1\n"
    runner.add(
        pciebw.bandwidthtest_argv("/opt/bw/bandwidthTest", 0), " Device 0: NVIDIA A100\n" + text + "Result = PASS\n"
    )
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu()]), bandwidthtest_path="/opt/bw/bandwidthTest"), params())
    assert runner.calls == [
        (
            "env",
            "CUDA_DEVICE_ORDER=PCI_BUS_ID",
            "/opt/bw/bandwidthTest",
            "--htod",
            "--memory=pinned",
            "--device=0",
            "--csv",
        )
    ]
    assert result.status is Status.OK
    assert result.devices[0].value == 24.6
    assert result.data["tool"] == "bandwidthTest"


def test_bandwidthtest_missing_is_an_error_naming_the_path() -> None:
    result = pciebw.run(
        ctx_for(FakeRunner(), FakeTelemetry([gpu()]), bandwidthtest_path="/opt/bw/bandwidthTest"), params()
    )
    assert result.status is Status.ERROR
    assert "/opt/bw/bandwidthTest" in result.summary


def test_bandwidthtest_text_sample_quick_mode() -> None:
    reading = pciebw.parse_bandwidthtest(sample("bandwidthTest_text_quick_a100-sxm4-40gb.txt"))
    assert (reading.h2d_gbps, reading.size_bytes, reading.device_index, reading.form) == (12.3, 32000000, 0, "text")
    assert reading.device_name == "NVIDIA A100-SXM4-40GB"


def test_bandwidthtest_csv_shmoo_sample_uses_the_largest_transfer() -> None:
    text = sample("bandwidthTest_csv_shmoo_h2d_v100-pcie.txt")
    reading = pciebw.parse_bandwidthtest(text)
    assert reading.form == "csv"
    last = [line for line in text.splitlines() if line.startswith("bandwidthTest-H2D-Pinned")][-1]
    assert f"Bandwidth = {reading.h2d_gbps:g} GB/s" in last
    assert reading.size_bytes is not None and f"Size = {reading.size_bytes} bytes" in last


@pytest.mark.parametrize(("threshold", "expected"), [(12.3, Status.OK), (12.31, Status.FAIL)])
def test_evaluate_text_bandwidthtest_sample_threshold_edges(threshold: float, expected: Status) -> None:
    text = sample("bandwidthTest_text_quick_a100-sxm4-40gb.txt")
    result = pciebw.evaluate_text(text, {"threshold_gbps": threshold}, settings())
    assert result.status is expected


def test_bandwidthtest_old_mb_per_second_table_is_converted() -> None:
    text = (
        " Device 0: Tesla K80\n Quick Mode\n\n Host to Device Bandwidth, 1 Device(s)\n PINNED Memory Transfers\n"
        "   Transfer Size (Bytes)\tBandwidth(MB/s)\n   33554432\t\t\t10234.5\n\n Result = PASS\n"
    )
    assert pciebw.parse_bandwidthtest(text).h2d_gbps == pytest.approx(10.2345)


@pytest.mark.parametrize(
    "text",
    [
        "[CUDA Bandwidth Test] - Starting...\nCUDA error at bandwidthTest.cu:255 code=802(cudaErrorSystemNotReady)\n",
        "[CUDA Bandwidth Test] - Starting...\n Host to Device Bandwidth, 1 Device(s)\nResult = FAIL\n",
        "[CUDA Bandwidth Test] - Starting...\n",
    ],
)
def test_bandwidthtest_failures_are_errors(text: str) -> None:
    result = pciebw.evaluate_text(text, {}, settings())
    assert result.status is Status.ERROR


# ---------------------------------------------------------------- evaluate_text


def test_evaluate_text_ap_bandwidth_line() -> None:
    text = ap_line(0, 3.0)
    result = pciebw.evaluate_text(text, {}, settings())
    assert result.status is Status.FAIL
    assert result.devices[0].value == 3.0


def test_evaluate_text_nvidia_smi_q_idle_downtrained_is_ok() -> None:
    result = pciebw.evaluate_text(
        sample("nvidia-smi-q_rtx4090x8_drv535.154.05_pcie-idle-downtrained-gen1.txt"), {}, settings()
    )
    assert result.status is Status.OK
    assert len(result.devices) == 8
    assert all("idle power saving" in d.detail for d in result.devices)
    assert result.data["gpus"]["0"]["pcie_link"]["current_gen"] == 1


def test_evaluate_text_nvidia_smi_q_narrow_link_warns() -> None:
    text = sample("nvidia-smi-q_rtx4090x8_drv535.154.05_pcie-idle-downtrained-gen1.txt")
    # Narrow the first GPU's link: the "Current : 16x" line right after the first "Max : 16x".
    head, sep, rest = text.partition(
        "                Max                       : 16x\n                Current                   : 16x"
    )
    assert sep
    narrowed = (
        head + "                Max                       : 16x\n                Current                   : 4x" + rest
    )
    result = pciebw.evaluate_text(narrowed, {}, settings())
    assert result.status is Status.WARN
    assert result.summary == "GPU 0: PCIe link width x4 of x16 (Gen1 (max 4) x4 (max 16))"


def test_evaluate_text_unknown_output_is_an_error() -> None:
    assert pciebw.evaluate_text("hello\n", {}, settings()).status is Status.ERROR


def test_registered_with_evaluate_text_and_gpu_use() -> None:
    spec = registry.REGISTRY.get("pciebw")
    assert spec.uses_gpu and spec.evaluate_text is pciebw.evaluate_text
    with pytest.raises(errors.BadParameter):
        spec.validate({"threshold_gbps": "-1"})
