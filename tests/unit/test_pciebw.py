"""pciebw: ap-bandwidth and bandwidthTest parsing, the GB/s floor, PCIe link judgement, argv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autopilot import errors, gpus, registry
from autopilot.checks import _cuda, pciebw
from autopilot.results import Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from tests.unit.cuda_helpers import BIN, ctx_for, settings

DATA = Path(__file__).resolve().parents[1] / "data" / "pciebw"
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
TOOL = f"{BIN}/ap-bandwidth"


def sample(name: str) -> str:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"sample {name} not available")
    return path.read_text().split("\n", 1)[1]  # line 1 is the provenance header


def params(**raw: Any) -> dict[str, Any]:
    return registry.REGISTRY.get("pciebw").validate(raw)


BUS = ("00000000:19:00.0", "00000000:3B:00.0", "00000000:5D:00.0")


def ap_line(
    index: int,
    h2d: float | list[float],
    *,
    bus: str | None = None,
    error: str | None = None,
    kind: str = "cuda",
    name: str = "cudaErrorMemoryAllocation",
    link: tuple[int, int, int, int] | None = (5, 5, 16, 16),
    cpu_local: bool | None = True,
    counters: tuple[dict[str, int], dict[str, int]] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A hand-written ap-bandwidth version-2 line for one GPU; ``link``: (gen, max gen, width, max width)."""
    device: dict[str, Any] = {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": bus or BUS[index],
        "numa": {"gpu_node": index % 2, "host_node": index % 2, "cpu_local": cpu_local, "notes": []},
    }
    if error:
        device.update(error=error, error_kind=kind, error_name=name)
    else:
        samples = h2d if isinstance(h2d, list) else [h2d] * 10
        device["h2d"] = {"samples": samples}
        device["d2h"] = {"samples": samples}
        device["h2d_pinned_gbps"] = samples[0]
        device["d2d_gbps"] = 2800.0
    if link is not None:
        gen, max_gen, width, max_width = link
        device["telemetry"] = {
            "h2d": {
                "samples": 20,
                "pcie_gen": {"min": 1, "max": gen},
                "pcie_max_gen": {"min": max_gen, "max": max_gen},
                "pcie_width": {"min": width, "max": width},
                "pcie_max_width": {"min": max_width, "max": max_width},
                "clock_event_reasons_mask": 0,
            }
        }
    quiet = {"pcie_replay": 0, "ecc_corrected": 0, "ecc_uncorrected": 0}
    before, after = counters or (quiet, quiet)
    device["counters"] = {"before": before, "after": after}
    device.update(extra or {})
    doc: dict[str, Any] = {"tool": "ap-bandwidth", "version": 2, "size_bytes": 268435456, "devices": [device]}
    doc["errors"] = [f"device {index}: {error}"] if error else []
    if error:
        doc["error"] = "1 device(s) failed"
    return json.dumps(doc) + "\n"


def gpu(index: int = 0) -> FakeGpu:
    return FakeGpu(pci_bus_id=BUS[index])


def argv(index: int) -> list[str]:
    return pciebw.ap_bandwidth_argv(TOOL, BUS[index])


def run_lines(*lines: str, returncodes: tuple[int, ...] = (), **kw: Any) -> Any:
    runner = FakeRunner()
    for i, line in enumerate(lines):
        runner.add(argv(i), line, returncode=returncodes[i] if i < len(returncodes) else 0)
    return pciebw.run(ctx_for(runner, FakeTelemetry([gpu(i) for i in range(len(lines))])), params(**kw))


# ---------------------------------------------------------------- run: argv, samples, median


def test_runs_ap_bandwidth_once_per_gpu_named_by_its_nvml_bus_id() -> None:
    runner = FakeRunner()
    for i in range(2):
        runner.add(argv(i), ap_line(i, 50.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(0), gpu(1)])), params())
    assert runner.calls == [
        (TOOL, "--pci-bus-id", BUS[0], "--size-mib", "256", "--samples", "20", "--warmup-ms", "250"),
        (TOOL, "--pci-bus-id", BUS[1], "--size-mib", "256", "--samples", "20", "--warmup-ms", "250"),
    ]
    assert result.status is Status.OK
    assert [(d.id, d.value, d.unit) for d in result.devices] == [("0", 50.0, "GB/s"), ("1", 50.0, "GB/s")]
    entry = result.data["gpus"]["0"]
    assert entry["d2d_gbps"] == 2800.0
    assert entry["h2d"]["samples"] == [50.0] * 10
    assert (entry["numa"]["gpu_node"], entry["numa"]["host_node"]) == (0, 0)
    assert entry["threshold_gbps"] == 38.0 and entry["threshold_source"] == "PCIe Gen5 x16 table"
    assert set(entry["sampler"]) >= {"samples", "temperature_c", "power_w", "sm_clock_mhz"}


def test_stored_data_keeps_every_judged_sample_and_only_the_statistics_of_the_rest() -> None:
    # Results live in Redis history: the raw telemetry is summarised in under_load.
    entry = pciebw.evaluate_text(ap_line(0, 50.0), {}, settings()).data["gpus"]["0"]
    assert entry["h2d"]["samples"] == [50.0] * 10
    assert "samples" not in entry["d2h"] and "telemetry" not in entry
    assert entry["under_load"]["pcie_gen"] == {"min": 1.0, "max": 5.0}


def test_the_median_is_judged_not_the_best_sample() -> None:
    # Best of these is 60 (old rule: ok); the median is 30, below the Gen5 x16 floor of 38.
    samples = [60.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    result = pciebw.evaluate_text(ap_line(0, samples), {}, settings())
    assert result.status is Status.FAIL
    assert result.devices[0].value == 30.0
    assert result.devices[0].detail.startswith("H2D median 30 GB/s < threshold 38 GB/s")
    assert result.data["gpus"]["0"]["h2d"] == {
        "samples": samples,
        "median": 30.0,
        "min": 30.0,
        "max": 60.0,
        "cv": pytest.approx(0.2764, abs=0.0001),  # sample sd 9.045 / mean 32.73
    }


def test_a_few_low_samples_do_not_fail_but_their_spread_warns() -> None:
    samples = [50.0] * 8 + [35.0, 36.0]
    result = pciebw.evaluate_text(ap_line(0, samples), {}, settings())
    assert result.status is Status.WARN
    assert result.devices[0].value == 50.0
    assert "H2D varies 13.0% (> 5%) over 10 samples (35.0-50.0)" in result.devices[0].detail


def test_the_cv_limit_is_a_setting() -> None:
    samples = [50.0] * 8 + [35.0, 36.0]
    result = pciebw.evaluate_text(ap_line(0, samples), {}, settings(gpu_cv_threshold_pct=15.0))
    assert result.status is Status.OK


def test_recorded_fixture_gpu1_below_floor_fails_not_fatal() -> None:
    runner = FakeRunner.from_dir(DATA / "two-gpus-gpu1-slow")
    telemetry = FakeTelemetry([gpu(0), gpu(1)])
    result = pciebw.run(ctx_for(runner, telemetry), params())
    assert result.status is Status.FAIL
    assert result.fatal is False
    assert [d.status for d in result.devices] == [Status.OK, Status.FAIL]
    assert result.summary.startswith(
        "GPU 1: H2D median 13.5 GB/s < threshold 38 GB/s (link at Gen3 of Gen5 under load)"
    )


# ---------------------------------------------------------------- thresholds by link


@pytest.mark.parametrize(
    ("link", "value", "expected"),
    [
        ((5, 5, 16, 16), 38.0, Status.OK),
        ((5, 5, 16, 16), 37.9, Status.FAIL),
        ((4, 4, 16, 16), 18.0, Status.OK),
        ((4, 4, 16, 16), 17.9, Status.FAIL),
        ((3, 3, 16, 16), 9.0, Status.OK),
        ((3, 3, 16, 16), 8.9, Status.FAIL),
        ((4, 4, 8, 8), 9.0, Status.OK),  # an x8 slot by design: half the x16 floor
        ((4, 4, 8, 8), 8.9, Status.FAIL),
    ],
)
def test_floor_by_pcie_generation_and_width(link: tuple[int, int, int, int], value: float, expected: Status) -> None:
    assert run_lines(ap_line(0, value, link=link)).status is expected


def test_gen5_trained_down_to_gen3_under_load_fails_at_13_gbps() -> None:
    result = run_lines(ap_line(0, 13.0, link=(3, 5, 16, 16)))
    assert result.status is Status.FAIL
    detail = result.devices[0].detail
    assert "H2D median 13 GB/s < threshold 38 GB/s (link at Gen3 of Gen5 under load)" in detail


def test_down_trained_under_load_warns_even_above_the_floor() -> None:
    result = run_lines(ap_line(0, 40.0, link=(4, 5, 16, 16)))
    assert result.status is Status.WARN
    assert result.devices[0].detail.startswith("PCIe link at Gen4 of Gen5 under load")


def test_parameter_threshold_overrides_the_table() -> None:
    assert run_lines(ap_line(0, 13.0, link=(5, 5, 16, 16)), threshold_gbps=12.0).status is Status.OK
    assert run_lines(ap_line(0, 13.0, link=(5, 5, 16, 16)), threshold_gbps=13.5).status is Status.FAIL


def test_unknown_link_falls_back_to_the_setting() -> None:
    class NoLink(FakeTelemetry):
        def pcie_link(self, index: int) -> gpus.PcieLink:
            raise errors.GpuError("Not Supported", 3)

    runner = FakeRunner()
    runner.add(argv(0), ap_line(0, 20.0, link=None))
    result = pciebw.run(ctx_for(runner, NoLink([gpu(0)]), pciebw_threshold_gbps=24.0), params())
    assert result.status is Status.FAIL
    assert "threshold 24 GB/s" in result.devices[0].detail
    assert "Not Supported" in result.data["gpus"]["0"]["pcie_link"]["error"]


def test_without_program_telemetry_the_nvml_link_is_read_after_the_run() -> None:
    runner = FakeRunner()
    runner.add(argv(0), ap_line(0, 20.0, link=None))
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0], link=gpus.PcieLink(1, 4, 16, 16))])
    result = pciebw.run(ctx_for(runner, telemetry), params())
    assert result.status is Status.OK  # Gen4 x16 floor 18; Gen1 read at idle is no fault
    assert result.data["gpus"]["0"]["pcie_link"]["gen_below_max"] is True


def test_narrow_link_warns_even_above_the_floor() -> None:
    result = run_lines(ap_line(0, 26.0, link=(4, 4, 8, 16)))
    assert result.status is Status.WARN
    assert result.devices[0].detail.startswith("PCIe link width x8 of x16")


def test_narrow_link_with_low_bandwidth_fails_and_names_the_cause() -> None:
    result = run_lines(ap_line(0, 1.5, link=(4, 4, 1, 16)))
    assert result.status is Status.FAIL
    assert "link trained to x1 of x16" in result.devices[0].detail


def test_a_gpu_far_below_its_identical_neighbours_warns() -> None:
    result = run_lines(ap_line(0, 50.0), ap_line(1, 50.0), ap_line(2, 43.0))
    assert [d.status for d in result.devices] == [Status.OK, Status.OK, Status.WARN]
    assert "86% of the median 50.0 of the 3 NVIDIA H100 80GB HBM3 GPUs" in result.devices[2].detail


def test_pcie_floor_table_scales_by_width_and_caps_at_the_last_generation() -> None:
    assert pciebw.pcie_floor(gpus.PcieLink(1, 5, 16, 16)) == 38.0
    assert pciebw.pcie_floor(gpus.PcieLink(4, 4, 4, 4)) == 4.5
    assert pciebw.pcie_floor(gpus.PcieLink(6, 6, 16, 16)) == 38.0


# ---------------------------------------------------------------- NUMA


def test_no_local_cpu_in_the_cpuset_reports_but_does_not_judge_h2d() -> None:
    result = run_lines(ap_line(0, 3.8, cpu_local=False))
    assert result.status is Status.SKIPPED
    assert result.summary.startswith("GPU 0: H2D 3.8 GB/s not judged")
    assert (
        "not judged: no CPU of this pod's cpuset is local to the GPU (GPU on NUMA node 0)" in result.devices[0].detail
    )
    assert result.data["gpus"]["0"]["numa"]["cpu_local"] is False


def test_off_node_gpus_are_left_out_of_the_peer_median() -> None:
    result = run_lines(ap_line(0, 50.0), ap_line(1, 12.0, cpu_local=False), ap_line(2, 47.0))
    assert [d.status for d in result.devices] == [Status.OK, Status.SKIPPED, Status.OK]


# ---------------------------------------------------------------- counters, hardware errors, MIG


def test_pcie_replays_during_the_run_fail_not_fatal() -> None:
    grew = ({"pcie_replay": 3, "ecc_uncorrected": 0}, {"pcie_replay": 40, "ecc_uncorrected": 0})
    result = run_lines(ap_line(0, 50.0, counters=grew))
    assert result.status is Status.FAIL and result.fatal is False
    assert "37 PCIe replays during the run (3 -> 40)" in result.devices[0].detail


def test_uncorrectable_ecc_during_the_run_is_fatal() -> None:
    grew = ({"ecc_uncorrected": 0}, {"ecc_uncorrected": 1})
    result = run_lines(ap_line(0, 50.0, counters=grew))
    assert result.status is Status.FAIL and result.fatal is True


def test_corrected_ecc_during_the_run_warns() -> None:
    grew = ({"ecc_corrected": 5}, {"ecc_corrected": 6})
    result = run_lines(ap_line(0, 50.0, counters=grew))
    assert result.status is Status.WARN
    assert "1 corrected ECC errors during the run" in result.devices[0].detail


def test_unchanged_or_unreadable_counters_are_no_finding() -> None:
    same = ({"pcie_replay": 7, "ecc_uncorrected": None}, {"pcie_replay": 7, "ecc_uncorrected": None})
    assert run_lines(ap_line(0, 50.0, counters=same)).status is Status.OK  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "name", "fatal"),
    [
        ("hardware", "cudaErrorLaunchFailure", False),
        ("hardware", "cudaErrorECCUncorrectable", True),
        ("lost", "cudaErrorInvalidDevice", True),
        ("cuda", "cudaErrorIllegalAddress", False),  # known by name even if the program did not say
    ],
)
def test_hardware_errors_are_fail_not_error(kind: str, name: str, fatal: bool) -> None:
    line = ap_line(0, 0, error=f"copy: {name}", kind=kind, name=name)
    result = run_lines(line, returncodes=(1,))
    assert result.status is Status.FAIL
    assert result.fatal is fatal
    assert name in result.devices[0].detail


def test_setup_errors_are_error_for_that_gpu_only() -> None:
    line = ap_line(0, 0, error="cudaMallocHost: out of memory", kind="setup")
    result = run_lines(line, ap_line(1, 50.0), returncodes=(1, 0))
    assert result.status is Status.ERROR
    assert [d.status for d in result.devices] == [Status.ERROR, Status.OK]
    assert "out of memory" in result.devices[0].detail


def test_a_gpu_in_mig_mode_is_skipped_with_the_reason() -> None:
    doc = {
        "tool": "ap-bandwidth",
        "version": 2,
        "devices": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "pci_bus_id": BUS[0],
                "mig": True,
                "skipped": "MIG mode is enabled: whole-GPU figures do not apply to an instance",
            }
        ],
        "errors": [],
    }
    result = run_lines(json.dumps(doc), ap_line(1, 50.0))
    assert [d.status for d in result.devices] == [Status.SKIPPED, Status.OK]
    assert result.status is Status.OK
    assert result.devices[0].detail.startswith("MIG mode is enabled")


# ---------------------------------------------------------------- errors


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
    result = run_lines(stdout, returncodes=(139,))
    assert result.status is Status.ERROR
    assert result.devices[0].status is Status.ERROR
    assert "exited 139" in result.devices[0].detail


def test_exit_3_no_cuda_device_is_an_error() -> None:
    doc = {"tool": "ap-bandwidth", "version": 2, "devices": [], "error": "no CUDA device visible"}
    result = run_lines(json.dumps(doc), returncodes=(3,))
    assert result.status is Status.ERROR
    assert "CUDA sees no device" in result.devices[0].detail


def test_timeout_of_one_gpu_errors_that_gpu_and_goes_on() -> None:
    runner = FakeRunner()
    runner.add(argv(0), raises="timeout")
    runner.add(argv(1), ap_line(1, 50.0))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(0), gpu(1)])), params())
    assert [d.status for d in result.devices] == [Status.ERROR, Status.OK]
    assert "timed out" in result.devices[0].detail


def test_an_entry_for_another_gpu_than_nvmls_is_an_error() -> None:
    result = run_lines(ap_line(0, 50.0, bus="0000:3B:00.0"))
    assert result.devices[0].status is Status.ERROR
    assert "measured 0000:3B:00.0, not NVML GPU 0 at 00000000:19:00.0" in result.devices[0].detail


# ---------------------------------------------------------------- bandwidthTest


def test_bandwidthtest_text_of_several_devices_at_once_is_no_gpus_reading() -> None:
    # cuda-samples bandwidthTest --device=all: "Cumulative Bandwidth to be computed from all the
    # devices" and one summed figure under "Host to Device Bandwidth, 2 Device(s)" (text mode).
    text = "\n".join(
        [
            "[CUDA Bandwidth Test] - Starting...",
            "",
            "!!!!!Cumulative Bandwidth to be computed from all the devices !!!!!!",
            "",
            "Running on...",
            "",
            " Device 0: NVIDIA A100-SXM4-80GB",
            " Device 1: NVIDIA A100-SXM4-80GB",
            " Quick Mode",
            "",
            " Host to Device Bandwidth, 2 Device(s)",
            " PINNED Memory Transfers",
            "   Transfer Size (Bytes)\tBandwidth(GB/s)",
            "   32000000\t\t\t48.5",
            "",
            "Result = PASS",
        ]
    )
    with pytest.raises(errors.ParseError, match="2 devices at once"):
        pciebw.parse_bandwidthtest(text)
    one = text.replace("2 Device(s)", "1 Device(s)").replace(" Device 1: NVIDIA A100-SXM4-80GB\n", "")
    assert pciebw.parse_bandwidthtest(one).h2d_gbps == 48.5


def test_bandwidthtest_argv_forces_pci_bus_order() -> None:
    runner = FakeRunner(installed=["bandwidthTest"])
    text = "bandwidthTest-H2D-Pinned, Bandwidth = 24.6 GB/s, Time = 0.00130 s, Size = 32000000 bytes, NumDevsUsed = 1\n"
    runner.add(
        pciebw.bandwidthtest_argv("/opt/bw/bandwidthTest", 0), " Device 0: NVIDIA A100\n" + text + "Result = PASS\n"
    )
    a100 = FakeGpu(name="NVIDIA A100-SXM4-40GB", link=gpus.PcieLink(4, 4, 16, 16))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([a100]), bandwidthtest_path="/opt/bw/bandwidthTest"), params())
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
    assert result.status is Status.OK  # Gen4 x16 floor (18) from the NVML link
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
    # 10234.5 of its MB (1,024,000 bytes) per second: 10.48 GB/s, not 10.23 (it read 2.4% low before).
    assert pciebw.parse_bandwidthtest(text).h2d_gbps == pytest.approx(10.4801, abs=1e-4)


def test_bandwidthtest_old_mb_per_second_csv_is_converted_as_the_table_is() -> None:
    text = (
        "bandwidthTest-H2D-Pinned, Bandwidth = 10234.5 MB/s, Time = 0.00328 s, Size = 33554432 bytes, "
        "NumDevsUsed = 1\nResult = PASS\n"
    )
    assert pciebw.parse_bandwidthtest(text).h2d_gbps == pytest.approx(10.4801, abs=1e-4)


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


def test_evaluate_text_ap_bandwidth_version_1_line_is_one_sample() -> None:
    doc = {"tool": "ap-bandwidth", "version": 1, "devices": [{"index": 0, "h2d_pinned_gbps": 3.0}], "errors": []}
    text = json.dumps(doc)
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


# ``nvidia-smi --query-gpu=index,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,
# pcie.link.width.max --format=csv``, written by hand after nvidia-smi 535-595's CSV (header as queried; an
# 8-GPU L40S node idle at Gen1 of Gen4 is what such a query prints). Before: "not ap-bandwidth, bandwidthTest
# or nvidia-smi -q output" (error) for every such file, a narrow link and a GPU needing a reset included.
LINK_CSV_HEAD = "index, pcie.link.gen.current, pcie.link.gen.max, pcie.link.width.current, pcie.link.width.max\n"


def test_evaluate_text_link_csv_is_judged_like_the_q_report() -> None:
    text = LINK_CSV_HEAD + "0, 1, 4, 16, 16\n1, 4, 4, 8, 16\n2, [Unknown Error], 4, 16, 16\n"
    result = pciebw.evaluate_text(text, {}, settings())
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.WARN), ("2", Status.ERROR)]
    assert "idle power saving" in result.devices[0].detail
    assert result.devices[1].detail == "PCIe link width x8 of x16 (Gen4 x8 (max 16))"
    assert result.status is Status.ERROR and result.data["source"] == "nvidia-smi --query-gpu"


@pytest.mark.parametrize(
    ("text", "status", "said"),
    [
        (LINK_CSV_HEAD + "0, 5, 5, 16, 16\n1" + ", [GPU requires reset]" * 4 + "\n", Status.FAIL, "requires a reset"),
        (LINK_CSV_HEAD + "0, 5, 5, 16, 16\nUnable to determine the device handle for GPU1: 0000:3B:00.0: GPU is lost\n",
         Status.FAIL, "GPU is lost"),
        (LINK_CSV_HEAD.replace(", pcie.link.width.max", "") + "0, 5, 5, 16\n1, 5, 5, 16\n", Status.ERROR,
         "the query has no pcie.link.width.max"),
        ('Field "pcie.link.gen.gpucurrent" is not a valid field to query.\n', Status.ERROR,
         'does not know the field "pcie.link.gen.gpucurrent"'),
    ],
)  # fmt: skip
def test_evaluate_text_link_csv_lost_gpus_fail_and_what_it_cannot_say_is_an_error(
    text: str, status: Status, said: str
) -> None:
    result = pciebw.evaluate_text(text, {}, settings())
    assert result.status is status and result.fatal is (status is Status.FAIL)
    assert said in result.summary


def test_evaluate_text_unknown_output_is_an_error() -> None:
    assert pciebw.evaluate_text("hello\n", {}, settings()).status is Status.ERROR


def test_registered_with_evaluate_text_and_gpu_use() -> None:
    spec = registry.REGISTRY.get("pciebw")
    assert spec.uses_gpu and spec.evaluate_text is pciebw.evaluate_text
    with pytest.raises(errors.BadParameter):
        spec.validate({"threshold_gbps": "-1"})


@pytest.mark.parametrize("bad", [True, float("nan"), float("inf"), -1.0, "53.1", None])
def test_a_sample_that_is_no_finite_non_negative_number_is_a_parse_error(bad: object) -> None:
    device = {"index": 2, "h2d": {"samples": [53.1, 53.0, bad, 52.9]}}
    with pytest.raises(errors.ParseError, match="device 2: h2d is not a non-negative number"):
        _cuda.series(device, "h2d")


def test_integer_samples_are_read_as_floats() -> None:
    read = _cuda.series({"index": 0, "h2d": {"samples": [53, 54.0, 0]}}, "h2d")
    assert read.samples == (53.0, 54.0, 0.0) and all(type(v) is float for v in read.samples)
    assert read.median == 53.0


def test_a_line_only_the_standard_json_reads_still_names_the_bad_sample() -> None:
    # NaN is no JSON: the fast decoder refuses the line, the standard one reads it, and the sample
    # is then refused by name, as before the fast decoder was used.
    line = ap_line(0, 53.0).replace('"samples": [53.0', '"samples": [NaN', 1)
    assert "NaN" in line
    result = run_lines(line)
    assert result.status is Status.ERROR
    assert "h2d is not a non-negative number: nan" in result.devices[0].detail


def test_link_data_and_under_load_keep_their_keys_and_order() -> None:
    # Stored results are compared byte for byte: the hand-built dicts keep asdict's and the old order.
    from autopilot.checks import _cuda, pciebw

    link = gpus.PcieLink(4, 5, 8, 16)
    assert list(pciebw.link_data(link, None).items()) == [
        ("current_gen", 4),
        ("max_gen", 5),
        ("current_width", 8),
        ("max_width", 16),
        ("width_degraded", True),
        ("gen_below_max", True),
    ]
    device = {
        "telemetry": {
            "h2d": {
                "power_w": {"min": 100, "max": 300.5},
                "pcie_gen": {"min": 5, "max": 5},
                "pcie_width": {"min": True, "max": 16},
                "sm_clock_mhz": "x",
                "clock_event_reasons_mask": 4,
            }
        }
    }
    assert list(_cuda.under_load(device, "h2d")) == ["pcie_gen", "power_w", "clock_event_reasons"]
    assert _cuda.under_load(device, "h2d")["power_w"] == {"min": 100.0, "max": 300.5}
    assert _cuda.under_load(device, "d2h") == {} and _cuda.under_load({"telemetry": []}, "h2d") == {}
    assert _cuda.link_under_load(device, "h2d") is None


# ---------------------------------------------------------------- a GPU out of service, met by the check itself


@pytest.mark.parametrize(
    ("code", "words"),
    [(15, "fell off the bus"), (16, "requires a reset"), (8, "insufficient external power")],
)
def test_a_gpu_nvml_says_is_out_of_service_is_a_fatal_fail_device_without_a_census(code: int, words: str) -> None:
    # Before: GPU 1's NVML answer (GPU_IS_LOST / RESET_REQUIRED / INSUFFICIENT_POWER) read as "NVML has no PCI bus
    # id" and the check an error; only the engine's census (absent from a context built without a GPU probe) made
    # it fatal. The other GPUs are still measured and judged.
    runner = FakeRunner()
    runner.add(argv(0), ap_line(0, 50.0))
    runner.add(argv(2), ap_line(2, 50.0))
    lost = FakeGpu(pci_bus_id=BUS[1], raises=errors.GpuLost(1, f"GPU 1 identity: {words}", code))
    result = pciebw.run(ctx_for(runner, FakeTelemetry([gpu(0), lost, gpu(2)])), params())
    assert result.status is Status.FAIL and result.fatal
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("2", Status.OK), ("1", Status.FAIL)]
    assert words in result.devices[2].detail.lower()
    assert "GPU 1 out of service" in result.summary
    assert all(call[2] != BUS[1] for call in runner.calls)  # nothing was run on it


class _LinkLost(FakeTelemetry):
    """GPU 0 answers until its program has failed, then NVML says it needs a reset (an uncontained error)."""

    def pcie_link(self, index: int) -> gpus.PcieLink:
        raise errors.GpuLost(index, f"GPU {index} PCIe link: GPU requires a reset", 16)


def test_a_gpu_that_goes_out_of_service_while_measured_is_a_fatal_fail_device() -> None:
    # Before: the link read after the failed copy gave "NVML: ..." as a link error and the GPU read as an error.
    runner = FakeRunner()
    runner.add(argv(0), ap_line(0, 0.0, error="unspecified launch failure", name="cudaErrorLaunchFailure", link=None))
    result = pciebw.run(ctx_for(runner, _LinkLost([gpu(0)])), params())
    assert result.status is Status.FAIL and result.fatal
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.FAIL)]
    assert "requires a reset" in result.devices[0].detail
