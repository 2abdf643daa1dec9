"""Every NVML return code a GPU query can answer, judged alike whichever path reads it.

The pynvml here is the installed nvidia-ml-py with its query functions replaced (no GPU on this
machine): a query raises ``pynvml.NVMLError(code)``, which pynvml turns into the code's own class
(``NVMLError_ResetRequired``...), as the real binding does for the driver's answer.

- the GPU's own fault, out of service (``gpus.OUT_OF_SERVICE``): GPU_IS_LOST, RESET_REQUIRED,
  INSUFFICIENT_POWER: a ``fail`` device and a fatal check, as nvidia-smi's words for the same codes are
  (``GPU is lost``, ``GPU requires reset``, ``Insufficient External Power``);
- the tool's or the host's: ``error``, never a pass and never fatal;
- NOT_SUPPORTED: the field is skipped (``remapped``: that GPU ``skipped``), the check still judges the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pynvml
import pytest

from autopilot import errors, execution, gpuident, gpus, nodeinfo
from autopilot.checks import gpupower, remapped
from autopilot.context import CheckContext
from autopilot.results import Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry

OUT_OF_SERVICE = [
    pynvml.NVML_ERROR_GPU_IS_LOST,
    pynvml.NVML_ERROR_RESET_REQUIRED,
    pynvml.NVML_ERROR_INSUFFICIENT_POWER,
]
TOOL_OR_HOST = [
    pynvml.NVML_ERROR_UNKNOWN,
    pynvml.NVML_ERROR_TIMEOUT,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    pynvml.NVML_ERROR_NO_PERMISSION,
    pynvml.NVML_ERROR_IRQ_ISSUE,
    pynvml.NVML_ERROR_OPERATING_SYSTEM,
    pynvml.NVML_ERROR_UNINITIALIZED,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    pynvml.NVML_ERROR_MEMORY,
    pynvml.NVML_ERROR_NOT_FOUND,
]
# What the detail of an out-of-service GPU says, by code.
WORDS = {
    pynvml.NVML_ERROR_GPU_IS_LOST: "fell off the bus",
    pynvml.NVML_ERROR_RESET_REQUIRED: "requires a reset",
    pynvml.NVML_ERROR_INSUFFICIENT_POWER: "insufficient external power",
}


class Driver:
    """What the stand-in driver answers: ``bad[index] = code`` for every query of that GPU."""

    def __init__(self) -> None:
        self.bad: dict[int, int] = {}
        # index -> (single-bit pages, double-bit pages, pending) of a GPU that retires pages (no row remapper)
        self.retiring: dict[int, tuple[int, int, int]] = {}

    def remapped_rows(self, index: int) -> Any:
        if index in self.retiring:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # V100, T4: no row remapper
        return self.answer(index, (0, 0, 0, 0))

    def retired_pages(self, index: int, cause: int) -> list[int]:
        if index not in self.retiring:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # row remapping GPUs retire no pages
        count = self.retiring[index][cause]
        return [0x1000 * (n + 1) for n in range(count)]

    def pending(self, index: int) -> int:
        if index not in self.retiring:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.retiring[index][2]

    def answer(self, index: int, value: Any) -> Any:
        if index in self.bad:
            raise pynvml.NVMLError(self.bad[index])
        return value


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    d = Driver()
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 2)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetRemappedRows", d.remapped_rows)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetRetiredPages", d.retired_pages)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetRetiredPagesPendingStatus", d.pending)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", lambda h: d.answer(h, 0))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: d.answer(h, "NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: d.answer(h, f"GPU-{h:08d}-0000-0000-0000-000000000000"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetSerial", lambda h: d.answer(h, "1650000000000"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda h: d.answer(h, []))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTemperature", lambda h, sensor: d.answer(h, 40))

    class Pci:
        def __init__(self, h: int) -> None:
            self.busId = f"00000000:{0x1A + h:02X}:00.0"

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPciInfo", lambda h: d.answer(h, Pci(h)))
    yield d


CHECKS: dict[str, Callable[..., Any]] = {"remapped": remapped.run, "gpupower": gpupower.run}


def _run(check: str, make_ctx: Callable[..., CheckContext]) -> Any:
    # No nvidia-smi on this node: NVML's answer alone decides.
    return CHECKS[check](make_ctx(commands=FakeRunner(), gpus=gpus.NvmlTelemetry()), {})


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("code", OUT_OF_SERVICE)
def test_a_gpu_nvml_says_is_out_of_service_fails_fatally_without_nvidia_smi(
    driver: Driver, make_ctx: Callable[..., CheckContext], check: str, code: int
) -> None:
    driver.bad[1] = code
    result = _run(check, make_ctx)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert result.status is Status.FAIL and result.fatal
    assert WORDS[code] in result.devices[1].detail.lower()


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("code", TOOL_OR_HOST)
def test_a_query_nvml_refuses_for_the_tool_or_the_host_is_an_error_never_a_pass_or_fatal(
    driver: Driver, make_ctx: Callable[..., CheckContext], check: str, code: int
) -> None:
    driver.bad[1] = code
    result = _run(check, make_ctx)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.ERROR)]
    assert result.status is Status.ERROR and not result.fatal


def test_not_supported_skips_the_field_not_the_check(driver: Driver, make_ctx: Callable[..., CheckContext]) -> None:
    driver.bad[1] = pynvml.NVML_ERROR_NOT_SUPPORTED
    result = _run("remapped", make_ctx)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.SKIPPED)]
    assert result.status is Status.OK


@pytest.mark.parametrize("code", OUT_OF_SERVICE)
def test_the_census_counts_a_gpu_out_of_service_as_lost(driver: Driver, code: int) -> None:
    # gpuident.look feeds gpucensus.judge, which makes every GPU check of the sequence fatal.
    driver.bad[1] = code
    seen = gpuident.look(gpus.NvmlTelemetry())
    assert sorted(seen.identities) == [0] and sorted(seen.lost) == [1]


@pytest.mark.parametrize("code", OUT_OF_SERVICE)
def test_every_seam_call_raises_gpu_lost_with_the_code(driver: Driver, code: int) -> None:
    # Signals read one by one (activity, sample, the serial) must not turn an out-of-service GPU
    # into "unknown" or a missing sensor.
    driver.bad[1] = code
    telemetry = gpus.NvmlTelemetry()
    for call in (telemetry.activity, telemetry.sample, telemetry.identity, telemetry.remapped_rows):
        with pytest.raises(errors.GpuLost) as lost:
            call(1)
        assert lost.value.index == 1 and lost.value.code == code
    assert telemetry.activity(0).processes == 0


def test_the_serial_alone_out_of_service_is_not_read_as_a_board_without_one(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def serial(h: int) -> str:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_RESET_REQUIRED if h == 1 else pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetSerial", serial)
    telemetry = gpus.NvmlTelemetry()
    assert telemetry.identity(0).serial == ""  # a consumer board without a serial: still identified
    with pytest.raises(errors.GpuLost):
        telemetry.identity(1)


# ---------------------------------------------------------------- pre-Ampere GPUs: page retirement


@pytest.mark.parametrize(
    ("sbe", "dbe", "pending", "status"),
    [
        (0, 0, 0, Status.OK),
        (4, 1, 0, Status.OK),  # retired and mapped out: page retirement working as designed
        (2, 1, 1, Status.WARN),  # pending until the GPU is reset or the node rebooted
        (40, 23, 0, Status.FAIL),  # 63: at the limit, new bad cells are no longer retired
        (62, 1, 1, Status.FAIL),
    ],
)
def test_a_gpu_without_row_remapping_is_judged_on_its_retired_pages(
    driver: Driver, make_ctx: Callable[..., CheckContext], sbe: int, dbe: int, pending: int, status: Status
) -> None:
    # Before, a V100/T4 was 'skipped' whatever its page retirement said.
    driver.retiring[1] = (sbe, dbe, pending)
    result = _run("remapped", make_ctx)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", status)]
    assert result.status is status and not result.fatal
    retired = {"single_bit_ecc": sbe, "double_bit_ecc": dbe, "pending": bool(pending)}
    assert result.data["gpus"]["1"]["retired_pages"] == retired


def test_a_gpu_with_neither_row_remapping_nor_page_retirement_is_skipped(
    driver: Driver, make_ctx: Callable[..., CheckContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver.retiring[1] = (0, 0, 0)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetRetiredPages", lambda h, c: driver.answer(h, []) if h == 0 else _no(h))
    result = _run("remapped", make_ctx)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.SKIPPED)]


def _no(h: int) -> list[int]:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # ECC off: no page retirement either


@pytest.mark.parametrize("code", OUT_OF_SERVICE)
def test_the_engine_with_its_census_fails_every_gpu_check_fatally(
    driver: Driver, make_ctx: Callable[..., CheckContext], tmp_path: Any, code: int
) -> None:
    (tmp_path / "dev").mkdir()
    probe = nodeinfo.GpuProbe(setting=2, sys_root=str(tmp_path / "none"), dev_root=str(tmp_path / "dev"))
    driver.bad[1] = code
    ctx = make_ctx(commands=FakeRunner(), gpus=gpus.NvmlTelemetry(), gpu_probe=probe)
    for result in execution.run_checks(["remapped", "gpupower"], ctx):
        assert result.status is Status.FAIL and result.fatal, result.check
        assert "GPU 1 out of service" in result.summary
        [device] = [d for d in result.devices if d.id == "1"]
        assert device.status is Status.FAIL and WORDS[code] in device.detail.lower()


def test_the_heartbeat_keeps_the_gpu_count_and_model_when_gpu_0_is_out_of_service() -> None:
    # Before, GPU 0 answering GpuLost to its identity made the node's facts read 0 GPUs of no model.
    telemetry = FakeTelemetry(
        [FakeGpu(raises=errors.GpuLost(0, "GPU 0 identity: GPU requires a reset", 16)), FakeGpu()]
    )
    facts = nodeinfo.collect(FakeRunner([]), telemetry, annotations_path="")
    assert (facts.gpu_count, facts.gpu_model) == (2, "NVIDIA H100 80GB HBM3")
