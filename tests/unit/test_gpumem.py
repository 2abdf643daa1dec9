"""gpumem: ap-gpumem parsing, per-model thresholds and their overrides, argv, failure modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autopilot import errors, registry
from autopilot.checks import gpumem
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from tests.unit.cuda_helpers import BIN, ctx_for, settings

DATA = Path(__file__).resolve().parents[1] / "data" / "gpumem"
TOOL = f"{BIN}/ap-gpumem"
H100 = "NVIDIA H100 80GB HBM3"


def params(**raw: Any) -> dict[str, Any]:
    return registry.REGISTRY.get("gpumem").validate(raw)


BUS = ("00000000:19:00.0", "00000000:3B:00.0", "00000000:5D:00.0")
QUIET = {"pcie_replay": 0, "ecc_corrected": 0, "ecc_uncorrected": 0}


def line(
    index: int = 0,
    *,
    name: str = H100,
    h2d: float | list[float] = 50.0,
    daxpy: float | list[float] = 2900.0,
    dgemm: float | list[float] = 50.0,
    mismatches: int = 0,
    dgemm_mismatches: int = 0,
    error: str | None = None,
    kind: str = "cuda",
    error_name: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """A hand-written ap-gpumem version-2 line for one GPU (every figure a series of samples)."""

    def series(v: float | list[float]) -> dict[str, Any]:
        return {"samples": v if isinstance(v, list) else [v] * 10}

    device: dict[str, Any] = {"index": index, "name": name, "pci_bus_id": BUS[index], "l2_bytes": 52428800}
    if error:
        device.update(error=error, error_kind=kind, error_name=error_name)
    else:
        device.update(
            numa={"gpu_node": 0, "host_node": 0, "cpu_local": True, "notes": []},
            h2d=series(h2d),
            daxpy=series(daxpy),
            daxpy_variant="vector",
            daxpy_mismatches=mismatches,
            dgemm=series(dgemm),
            dgemm_mismatches=dgemm_mismatches,
            h2d_pinned_gbps=0.0,  # the series win over these summary figures
            daxpy_gbps=0.0,
            dgemm_tflops=0.0,
        )
    device["counters"] = {"before": QUIET, "after": QUIET}
    device.update(extra or {})
    doc: dict[str, Any] = {
        "tool": "ap-gpumem",
        "version": 2,
        "cublas_version": 130100,
        "elements": 268435456,
        "devices": [device],
        "errors": [],
    }
    if error:
        doc["error"] = "1 device(s) failed"
    return json.dumps(doc) + "\n"


def one_gpu(stdout: str, *, returncode: int = 0, name: str = H100, **kw: Any) -> tuple[FakeRunner, CheckContext]:
    runner = FakeRunner()
    runner.add(gpumem.argv_for(TOOL, BUS[0], params()), stdout, returncode=returncode)
    return runner, ctx_for(runner, FakeTelemetry([FakeGpu(name=name, pci_bus_id=BUS[0])]), **kw)


def test_exact_argv_per_gpu_by_bus_id_and_ok_result() -> None:
    runner = FakeRunner()
    for i in range(2):
        runner.add(gpumem.argv_for(TOOL, BUS[i], params()), line(i))
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0]), FakeGpu(pci_bus_id=BUS[1])])
    result = gpumem.run(ctx_for(runner, telemetry), params())
    assert runner.calls == [
        (
            TOOL,
            "--pci-bus-id",
            BUS[i],
            "--elements",
            "268435456",
            "--samples",
            "20",
            "--warmup-ms",
            "250",
            "--daxpy-iters",
            "5",
            "--dgemm-n",
            "8192",
            "--dgemm-iters",
            "2",
            "--dgemm-seconds",
            "0",
        )
        for i in range(2)
    ]
    assert result.status is Status.OK
    assert [(d.id, d.value, d.unit) for d in result.devices] == [("0", 2900.0, "GB/s"), ("1", 2900.0, "GB/s")]
    entry = result.data["gpus"]["0"]
    assert entry["thresholds"] == {"h2d_gbps": 4.0, "daxpy_gbps": 2320.0, "dgemm_tflops": 40.0}
    assert entry["threshold_model"] == "H100"
    assert entry["sampler"]["samples"] >= 2
    assert result.data["cublas_version"] == 130100


def test_params_change_the_argv() -> None:
    p = params(elements=1 << 26, daxpy_iterations=3, dgemm_n=1024, dgemm_iterations=4, samples=12, dgemm_seconds=15)
    assert gpumem.argv_for(TOOL, BUS[1], p) == [
        TOOL,
        "--pci-bus-id",
        BUS[1],
        "--elements",
        str(1 << 26),
        "--samples",
        "12",
        "--warmup-ms",
        "250",
        "--daxpy-iters",
        "3",
        "--dgemm-n",
        "1024",
        "--dgemm-iters",
        "4",
        "--dgemm-seconds",
        "15",
    ]


@pytest.mark.parametrize("raw", [{"elements": (1 << 25) - 1}, {"samples": 9}, {"warmup_ms": 199}])
def test_params_refuse_cache_sized_working_sets_few_samples_and_short_warm_ups(raw: dict[str, int]) -> None:
    with pytest.raises(errors.BadParameter):
        params(**raw)


def test_recorded_fixture_slow_hbm_fails_that_gpu() -> None:
    runner = FakeRunner.from_dir(DATA / "h100x2-gpu1-slow-hbm")
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id=BUS[0]), FakeGpu(pci_bus_id=BUS[1])])
    result = gpumem.run(ctx_for(runner, telemetry), params())
    assert result.status is Status.FAIL and result.fatal is False
    assert [d.status for d in result.devices] == [Status.OK, Status.FAIL]
    assert result.summary == "GPU 1: DAXPY median 1612.2 GB/s < 2320"
    assert result.data["gpus"]["1"]["under_load"]["daxpy"]["mem_clock_mhz"] == {"min": 2619.0, "max": 2619.0}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("daxpy", 2320.0, Status.OK),
        ("daxpy", 2319.99, Status.FAIL),
        ("dgemm", 40.0, Status.OK),
        ("dgemm", 39.99, Status.FAIL),
        ("h2d", 4.0, Status.OK),
        ("h2d", 3.99, Status.FAIL),
    ],
)
def test_strictly_below_threshold_fails_equal_passes(field: str, value: float, expected: Status) -> None:
    _, ctx = one_gpu(line(**{field: value}))
    assert gpumem.run(ctx, params()).status is expected


def test_model_table_order() -> None:
    def model(name: str) -> str | None:
        entry = gpumem.model_thresholds(name)
        return entry.model if entry else None

    assert model("NVIDIA A100-SXM4-40GB") == "A100 40GB"
    assert model("NVIDIA A100-SXM4-80GB") == "A100 80GB"
    assert model("NVIDIA A100 80GB PCIe") == "A100 80GB"
    assert model("NVIDIA H100 80GB HBM3") == "H100"
    assert model("NVIDIA H100 PCIe") == "H100 PCIe"
    assert model("NVIDIA H100 NVL") == "H100 NVL"
    assert model("NVIDIA H200") == "H200"
    assert model("NVIDIA H200 NVL") == "H200 NVL"
    assert model("NVIDIA GH200 480GB") == "GH200"
    assert model("NVIDIA B200") == "B200"
    assert model("NVIDIA GB200") == "GB200"
    assert model("NVIDIA L40S") is None
    assert model("NVIDIA B300 SXM6 AC") is None


def test_unknown_model_is_ok_with_a_note_even_with_low_figures() -> None:
    _, ctx = one_gpu(line(name="NVIDIA L40S", daxpy=700.0, dgemm=1.2), name="NVIDIA L40S")
    result = gpumem.run(ctx, params())
    assert result.status is Status.OK
    assert result.summary == "1 GPU(s) ok; no thresholds for model NVIDIA L40S (DAXPY/DGEMM reported only, H2D judged)"
    assert "reported only" in result.devices[0].detail
    assert result.data["gpus"]["0"]["thresholds"]["daxpy_gbps"] is None


def test_unknown_model_still_fails_on_h2d() -> None:
    _, ctx = one_gpu(line(name="NVIDIA L40S", h2d=2.0), name="NVIDIA L40S")
    result = gpumem.run(ctx, params())
    assert result.status is Status.FAIL
    assert "no thresholds for model NVIDIA L40S" in result.summary


def test_settings_override_applies_to_every_model_and_params_win() -> None:
    _, ctx = one_gpu(line(name="NVIDIA L40S", daxpy=700.0), name="NVIDIA L40S", gpumem_thresholds={"daxpy_gbps": 800.0})
    assert gpumem.run(ctx, params()).status is Status.FAIL
    _, ctx = one_gpu(line(name="NVIDIA L40S", daxpy=700.0), name="NVIDIA L40S", gpumem_thresholds={"daxpy_gbps": 800.0})
    assert gpumem.run(ctx, params(daxpy_gbps=600)).status is Status.OK


def test_unknown_settings_key_is_an_error_before_running() -> None:
    runner, ctx = one_gpu(line(), gpumem_thresholds={"daxpy": 1.0})
    result = gpumem.run(ctx, params())
    assert result.status is Status.ERROR
    assert "unknown key(s) daxpy" in result.summary
    assert runner.calls == []


def test_wrong_daxpy_values_fail_fatal_whatever_the_model() -> None:
    _, ctx = one_gpu(line(name="NVIDIA L40S", mismatches=3), name="NVIDIA L40S")
    result = gpumem.run(ctx, params())
    assert result.status is Status.FAIL and result.fatal is True
    assert result.devices[0].detail == "DAXPY wrote 3 wrong value(s)"


def test_one_wrong_dgemm_element_is_fatal_silent_data_corruption() -> None:
    result = gpumem.evaluate_text(line(dgemm_mismatches=1), {}, settings())
    assert result.status is Status.FAIL and result.fatal is True
    assert result.devices[0].detail == "DGEMM wrote 1 wrong value(s)"


def test_missing_dgemm_verification_is_not_invented() -> None:
    doc = json.loads(line())
    del doc["devices"][0]["dgemm_mismatches"]
    assert gpumem.evaluate_text(json.dumps(doc), {}, settings()).status is Status.OK


def test_medians_are_judged_and_spread_warns() -> None:
    samples = [2900.0] * 8 + [2000.0, 2100.0]
    result = gpumem.evaluate_text(line(daxpy=samples), {}, settings())
    assert result.status is Status.WARN
    assert result.devices[0].value == 2900.0
    assert result.devices[0].detail.startswith("DAXPY varies ")
    assert result.data["gpus"]["0"]["daxpy"]["samples"] == samples


def test_a_gpu_far_below_identical_neighbours_warns_on_dgemm() -> None:
    text = "".join(line(i, dgemm=v) for i, v in enumerate([50.0, 51.0, 44.0]))
    doc = [json.loads(t) for t in text.splitlines()]
    merged = {**doc[0], "devices": [d["devices"][0] for d in doc]}
    result = gpumem.evaluate_text(json.dumps(merged), {}, settings())
    assert [d.status for d in result.devices] == [Status.OK, Status.OK, Status.WARN]
    assert result.devices[2].detail.startswith("DGEMM 44.0 is 88% of the median 50.0 of the 3 NVIDIA H100")


@pytest.mark.parametrize(
    ("name", "kind", "fatal"),
    [
        ("cudaErrorLaunchFailure", "hardware", False),
        ("cudaErrorECCUncorrectable", "hardware", True),
        ("", "lost", True),
    ],
)
def test_hardware_errors_are_fail(name: str, kind: str, fatal: bool) -> None:
    _, ctx = one_gpu(line(error=f"daxpy: {name or 'cannot open'}", kind=kind, error_name=name), returncode=1)
    result = gpumem.run(ctx, params())
    assert result.status is Status.FAIL and result.fatal is fatal


def test_counters_that_grew_fail() -> None:
    grew = {"counters": {"before": QUIET, "after": {**QUIET, "ecc_uncorrected": 2}}}
    result = gpumem.evaluate_text(line(extra=grew), {}, settings())
    assert result.status is Status.FAIL and result.fatal is True
    assert "2 uncorrectable ECC errors during the run (0 -> 2)" in result.devices[0].detail


def test_mig_gpu_is_skipped() -> None:
    skipped = {"index": 0, "name": H100, "pci_bus_id": BUS[0], "mig": True, "skipped": "MIG mode is enabled: x"}
    doc = {"tool": "ap-gpumem", "version": 2, "devices": [skipped], "errors": []}
    result = gpumem.evaluate_text(json.dumps(doc), {}, settings())
    assert result.status is Status.SKIPPED
    assert result.devices[0].detail == "MIG mode is enabled: x"
    assert result.summary == "GPU 0: MIG mode is enabled: x"


def test_working_set_under_4x_l2_is_an_error_not_a_figure() -> None:
    doc = json.loads(line(daxpy=9000.0))
    doc["elements"] = 1 << 20  # 16 MiB working set against a 50 MiB L2
    result = gpumem.evaluate_text(json.dumps(doc), {}, settings())
    assert result.status is Status.ERROR
    assert "DAXPY working set 16777216 bytes < 4x L2 (52428800 bytes)" in result.devices[0].detail


def test_a_low_figure_names_the_slowdown_nvml_saw_while_measuring() -> None:
    hot = {"telemetry": {"dgemm": {"clock_event_reasons_mask": 0x4 | 0x1, "sm_clock_mhz": {"min": 1200, "max": 1980}}}}
    result = gpumem.evaluate_text(line(dgemm=30.0, extra=hot), {}, settings())
    assert result.devices[0].detail == "DGEMM median 30.0 TFLOPS < 40 (clock events while measuring: sw_power_cap)"
    assert result.data["gpus"]["0"]["under_load"]["dgemm"]["sm_clock_mhz"] == {"min": 1200.0, "max": 1980.0}


def test_a_cache_sweep_line_is_never_judged() -> None:
    doc = json.loads(line())
    doc["cache_sweep"] = True
    result = gpumem.evaluate_text(json.dumps(doc), {}, settings())
    assert result.status is Status.ERROR
    assert "not judged" in result.summary


def test_program_refusing_the_working_set_is_an_error() -> None:
    text = line(error="--elements 1048576: DAXPY working set 16777216 bytes is below 4x the L2", kind="usage")
    assert gpumem.evaluate_text(text, {}, settings()).status is Status.ERROR


def test_off_node_h2d_is_not_judged_but_the_rest_is() -> None:
    off = {"numa": {"gpu_node": 1, "host_node": 0, "cpu_local": False, "notes": []}}
    result = gpumem.evaluate_text(line(h2d=1.0, extra=off), {}, settings())
    assert result.status is Status.OK
    assert result.devices[0].detail.endswith("(H2D not judged: no CPU of this pod's cpuset is local to the GPU)")
    slow = gpumem.evaluate_text(line(h2d=1.0, dgemm=10.0, extra=off), {}, settings())
    assert slow.status is Status.FAIL and slow.devices[0].detail == "DGEMM median 10.0 TFLOPS < 40"


def test_h2d_floor_follows_the_link_seen_under_load() -> None:
    link = {
        "telemetry": {
            "h2d": {
                "pcie_gen": {"min": 5, "max": 5},
                "pcie_max_gen": {"min": 5, "max": 5},
                "pcie_width": {"min": 16, "max": 16},
                "pcie_max_width": {"min": 16, "max": 16},
            }
        }
    }
    result = gpumem.evaluate_text(line(h2d=30.0, extra=link), {}, settings())
    assert result.status is Status.FAIL
    assert result.data["gpus"]["0"]["thresholds"]["h2d_gbps"] == 38.0


def test_missing_binary_is_an_error_naming_the_path() -> None:
    result = gpumem.run(ctx_for(FakeRunner(), FakeTelemetry([FakeGpu()])), params())
    assert result.status is Status.ERROR
    assert TOOL in result.summary


def test_no_gpu_is_skipped() -> None:
    runner = FakeRunner()
    assert gpumem.run(ctx_for(runner, FakeTelemetry([])), params()).status is Status.SKIPPED
    assert runner.calls == []


@pytest.mark.parametrize("stdout", ["", "terminate called after throwing\n", "{}\n"])
def test_garbage_output_is_an_error(stdout: str) -> None:
    _, ctx = one_gpu(stdout, returncode=134)
    result = gpumem.run(ctx, params())
    assert result.status is Status.ERROR
    assert "exited 134" in result.devices[0].detail


def test_cublas_setup_error_is_an_error() -> None:
    _, ctx = one_gpu(line(error="cublasCreate(&h): the library was not initialized", kind="setup"), returncode=1)
    result = gpumem.run(ctx, params())
    assert result.status is Status.ERROR
    assert "not initialized" in result.devices[0].detail


def test_missing_figure_is_an_error() -> None:
    doc = json.loads(line())
    del doc["devices"][0]["dgemm_tflops"], doc["devices"][0]["dgemm"]
    _, ctx = one_gpu(json.dumps(doc))
    result = gpumem.run(ctx, params())
    assert result.status is Status.ERROR
    assert "dgemm_tflops" in result.devices[0].detail


def test_timeout_is_an_error_for_that_gpu() -> None:
    runner = FakeRunner()
    runner.add(gpumem.argv_for(TOOL, BUS[0], params()), raises="timeout")
    result = gpumem.run(ctx_for(runner, FakeTelemetry([FakeGpu(pci_bus_id=BUS[0])])), params())
    assert result.status is Status.ERROR
    assert "timed out" in result.devices[0].detail


def test_evaluate_text_reads_our_json() -> None:
    result = gpumem.evaluate_text(line(daxpy=1000.0), {}, settings())
    assert result.status is Status.FAIL
    assert result.devices[0].detail == "DAXPY median 1000.0 GB/s < 2320"
    assert gpumem.evaluate_text("not json", {}, settings()).status is Status.ERROR
    assert (
        gpumem.evaluate_text(
            '{"tool":"ap-gpumem","devices":[],"error":"no CUDA device visible"}', {}, settings()
        ).status
        is Status.ERROR
    )


def test_registered() -> None:
    spec = registry.REGISTRY.get("gpumem")
    assert spec.uses_gpu and spec.evaluate_text is gpumem.evaluate_text
    with pytest.raises(errors.BadParameter):
        spec.validate({"dgemm_n": "10"})


@pytest.mark.parametrize(
    ("code", "words"),
    [(15, "fell off the bus"), (16, "requires a reset"), (8, "insufficient external power")],
)
def test_a_gpu_nvml_says_is_out_of_service_is_a_fatal_fail_device_without_a_census(code: int, words: str) -> None:
    # Before: GPU 1's NVML answer read as "NVML has no PCI bus id" and the check an error, fatal only where the
    # engine took a census (a context with a GPU probe). GPU 0 is still measured and judged.
    runner = FakeRunner()
    runner.add(gpumem.argv_for(TOOL, BUS[0], params()), line(0))
    lost = FakeGpu(pci_bus_id=BUS[1], raises=errors.GpuLost(1, f"GPU 1 identity: {words}", code))
    result = gpumem.run(ctx_for(runner, FakeTelemetry([FakeGpu(pci_bus_id=BUS[0]), lost])), params())
    assert result.status is Status.FAIL and result.fatal
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert words in result.devices[1].detail.lower()
    assert result.data["gpus_lost"] == [1] and len(runner.calls) == 1


def test_the_census_does_not_say_again_what_the_checks_own_reading_said() -> None:
    # The engine's census (taken before the check) and the check's own reading both meet GPU 1 out of service:
    # one finding, one fail device for it, as either alone gives.
    from autopilot import gpucensus
    from autopilot.nodeinfo import ExpectedGpus

    own = gpucensus.with_lost(CheckResult("gpumem", Status.OK, "1 GPU(s): fine"), {1: "GPU 1: GPU requires a reset"})
    census = gpucensus.Census(ExpectedGpus(2, (), ("AUTOPILOT_EXPECT_GPUS=2",)), 2, "", (), {1: "GPU requires a reset"})
    found = gpucensus.judge(census, own)
    assert found.status is Status.FAIL and found.fatal
    assert found.summary.count("out of service") == 1
    assert [d.id for d in found.devices] == ["1"] and found.data["gpus_lost"] == [1]
