"""gpumem: ap-gpumem parsing, per-model thresholds and their overrides, argv, failure modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autopilot import config, errors, registry
from autopilot.checks import gpumem
from autopilot.context import CheckContext
from autopilot.results import Status
from autopilot.testing import FakeClock, FakeGpu, FakeRunner, FakeTelemetry

DATA = Path(__file__).resolve().parents[1] / "data" / "gpumem"
BIN = "/opt/autopilot/bin"
TOOL = f"{BIN}/ap-gpumem"
H100 = "NVIDIA H100 80GB HBM3"


def settings(**kw: Any) -> config.Settings:
    return config.Settings(node_name="node-a", cuda_bin_dir=BIN, **kw)


def ctx_for(runner: FakeRunner, telemetry: FakeTelemetry, **kw: Any) -> CheckContext:
    return CheckContext(node="node-a", settings=settings(**kw), commands=runner, gpus=telemetry, clock=FakeClock())


def params(**raw: Any) -> dict[str, Any]:
    return registry.REGISTRY.get("gpumem").validate(raw)


def line(
    index: int = 0,
    *,
    name: str = H100,
    h2d: float = 50.0,
    daxpy: float = 2900.0,
    dgemm: float = 50.0,
    mismatches: int = 0,
    error: str | None = None,
) -> str:
    device: dict[str, Any] = {"index": index, "name": name, "pci_bus_id": f"0000:{index:02X}:00.0"}
    if error:
        device["error"] = error
    else:
        device.update(h2d_pinned_gbps=h2d, daxpy_gbps=daxpy, daxpy_mismatches=mismatches, dgemm_tflops=dgemm)
    doc: dict[str, Any] = {"tool": "ap-gpumem", "version": 1, "elements": 134217728, "devices": [device], "errors": []}
    if error:
        doc["error"] = "1 device(s) failed"
    return json.dumps(doc) + "\n"


def one_gpu(stdout: str, *, returncode: int = 0, name: str = H100, **kw: Any) -> tuple[FakeRunner, CheckContext]:
    runner = FakeRunner()
    runner.add(gpumem.argv_for(TOOL, 0, params()), stdout, returncode=returncode)
    return runner, ctx_for(runner, FakeTelemetry([FakeGpu(name=name)]), **kw)


def test_exact_argv_per_gpu_and_ok_result() -> None:
    runner = FakeRunner()
    for i in range(2):
        runner.add(gpumem.argv_for(TOOL, i, params()), line(i))
    result = gpumem.run(ctx_for(runner, FakeTelemetry([FakeGpu(), FakeGpu()])), params())
    assert runner.calls == [
        (
            TOOL,
            "--device",
            str(i),
            "--elements",
            "134217728",
            "--daxpy-iters",
            "20",
            "--dgemm-n",
            "8192",
            "--dgemm-iters",
            "50",
        )
        for i in range(2)
    ]
    assert result.status is Status.OK
    assert [(d.id, d.value, d.unit) for d in result.devices] == [("0", 2900.0, "GB/s"), ("1", 2900.0, "GB/s")]
    entry = result.data["gpus"]["0"]
    assert entry["thresholds"] == {"h2d_gbps": 4.0, "daxpy_gbps": 2300.0, "dgemm_tflops": 40.0}
    assert entry["threshold_model"] == "H100"
    assert entry["telemetry"]["samples"] >= 2


def test_params_change_the_argv() -> None:
    p = params(elements=1 << 20, daxpy_iterations=3, dgemm_n=1024, dgemm_iterations=2)
    assert gpumem.argv_for(TOOL, 3, p) == [
        TOOL,
        "--device",
        "3",
        "--elements",
        "1048576",
        "--daxpy-iters",
        "3",
        "--dgemm-n",
        "1024",
        "--dgemm-iters",
        "2",
    ]


def test_recorded_fixture_slow_hbm_fails_that_gpu() -> None:
    runner = FakeRunner.from_dir(DATA / "h100x2-gpu1-slow-hbm")
    telemetry = FakeTelemetry([FakeGpu(pci_bus_id="00000000:19:00.0"), FakeGpu(pci_bus_id="00000000:3B:00.0")])
    result = gpumem.run(ctx_for(runner, telemetry), params())
    assert result.status is Status.FAIL and result.fatal is False
    assert [d.status for d in result.devices] == [Status.OK, Status.FAIL]
    assert result.summary == "GPU 1: DAXPY 1612.2 GB/s < 2300"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("daxpy", 2300.0, Status.OK),
        ("daxpy", 2299.99, Status.FAIL),
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


def test_wrong_daxpy_values_fail_whatever_the_model() -> None:
    _, ctx = one_gpu(line(name="NVIDIA L40S", mismatches=3), name="NVIDIA L40S")
    result = gpumem.run(ctx, params())
    assert result.status is Status.FAIL
    assert result.devices[0].detail == "DAXPY wrote 3 wrong value(s)"


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


def test_cublas_error_with_json_error_field_is_an_error() -> None:
    _, ctx = one_gpu(line(error="cublasCreate(&h): the library was not initialized"), returncode=1)
    result = gpumem.run(ctx, params())
    assert result.status is Status.ERROR
    assert "not initialized" in result.devices[0].detail


def test_missing_figure_is_an_error() -> None:
    doc = json.loads(line())
    del doc["devices"][0]["dgemm_tflops"]
    _, ctx = one_gpu(json.dumps(doc))
    result = gpumem.run(ctx, params())
    assert result.status is Status.ERROR
    assert "dgemm_tflops" in result.devices[0].detail


def test_timeout_is_an_error_for_that_gpu() -> None:
    runner = FakeRunner()
    runner.add(gpumem.argv_for(TOOL, 0, params()), raises="timeout")
    result = gpumem.run(ctx_for(runner, FakeTelemetry([FakeGpu()])), params())
    assert result.status is Status.ERROR
    assert "timed out" in result.devices[0].detail


def test_evaluate_text_reads_our_json() -> None:
    result = gpumem.evaluate_text(line(daxpy=1000.0), {}, settings())
    assert result.status is Status.FAIL
    assert result.devices[0].detail == "DAXPY 1000.0 GB/s < 2300"
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
