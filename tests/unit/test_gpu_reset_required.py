"""nvidia-smi's "GPU requires reset" (NVML_ERROR_RESET_REQUIRED) in every form the GPU checks read.

The driver answers it for a GPU that cannot be used again until it is reset (after an uncontained ECC
error, a GPU that stopped responding): no job runs on it. nvidia-smi writes it as it writes "GPU is
lost": on stderr for a GPU it could not open (``Unable to determine the device handle for GPU0000:3B:00.0:
GPU requires reset``), in brackets in a CSV cell (``[GPU requires reset]``), bare as a ``-q`` value. It was
read as "could not read this GPU" (``error``, node WARN, still scheduled); it is a fault of the GPU: a
``fail`` device and a fatal check, as a lost GPU is. Other reasons (``Unknown Error``) stay ``error``.

The fixtures are written by hand after the layout of nvidia-smi 535-580 (``-q -d ROW_REMAPPER``,
``-q -d PERFORMANCE``, ``-q -d PCI`` text; ``--query-*`` CSV with a header).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from autopilot import errors
from autopilot.checks import gpupower, pciebw, remapped
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from tests.unit.cuda_helpers import settings

RESET = "GPU requires reset"
# nvmlErrorString(NVML_ERROR_INSUFFICIENT_POWER): a GPU whose power cables are not attached runs nothing either.
NO_POWER = "Insufficient External Power"
Evaluate = Callable[[str, Any, Any], CheckResult]

_HEAD = (
    "==============NVSMI LOG==============\n\n"
    "Timestamp                                 : Tue Dec  1 02:00:00 2026\n"
    "Driver Version                            : 570.124.06\n"
    "CUDA Version                              : 12.8\n\n"
    "Attached GPUs                             : 2\n"
)


def _remap_block(bus: str, value: str | None = None) -> str:
    pending, failure, count = (value, value, value) if value else ("No", "No", "0")
    return (
        f"GPU {bus}\n    Remapped Rows\n"
        f"        Correctable Error                 : {count}\n"
        f"        Uncorrectable Error               : {count}\n"
        f"        Pending                           : {pending}\n"
        f"        Remapping Failure Occurred        : {failure}\n"
    )


def _perf_block(bus: str, value: str | None = None) -> str:
    state = value or "Not Active"
    lines = ["Idle", "Applications Clocks Setting", "SW Power Cap", "HW Slowdown"]
    body = "".join(f"        {label:<34}: {state}\n" for label in lines)
    body += f"            {'HW Thermal Slowdown':<30}: {state}\n            {'HW Power Brake Slowdown':<30}: {state}\n"
    body += "".join(f"        {label:<34}: {state}\n" for label in ("Sync Boost", "SW Thermal Slowdown"))
    return f"GPU {bus}\n    Performance State                     : P0\n    Clocks Event Reasons\n{body}"


def _pci_block(bus: str, value: str | None = None) -> str:
    gen, width = (value, value) if value else ("5", "16x")
    return (
        f"GPU {bus}\n    PCI\n        GPU Link Info\n            PCIe Generation\n"
        f"                Max                       : {gen}\n                Current                   : {gen}\n"
        f"            Link Width\n                Max                       : {width}\n"
        f"                Current                   : {width}\n"
    )


_BLOCKS: dict[str, tuple[Evaluate, Callable[..., str]]] = {
    "remapped": (remapped.evaluate_text, _remap_block),
    "gpupower": (gpupower.evaluate_text, _perf_block),
    "pciebw": (pciebw.evaluate_text, _pci_block),
}
_CSV = {
    "remapped": (
        remapped.evaluate_text,
        "gpu_bus_id, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending, "
        "remapped_rows.failure\n",
        "{bus}, 0, 0, No, No\n",
        4,
    ),
    "gpupower": (
        gpupower.evaluate_text,
        "index, pci.bus_id, clocks_event_reasons.hw_slowdown, clocks_event_reasons.hw_thermal_slowdown\n",
        "{index}, {bus}, Not Active, Not Active\n",
        2,
    ),
}
BUSES = ("00000000:1A:00.0", "00000000:3B:00.0")


@pytest.mark.parametrize("check", sorted(_BLOCKS))
@pytest.mark.parametrize(
    ("why", "status"), [(RESET, Status.FAIL), (NO_POWER, Status.FAIL), ("Unknown Error", Status.ERROR)]
)
def test_a_gpu_nvidia_smi_could_not_open_because_it_requires_reset_fails_fatally(
    check: str, why: str, status: Status
) -> None:
    evaluate, make = _BLOCKS[check]
    text = f"Unable to determine the device handle for GPU1: 0000:3B:00.0: {why}\n" + _HEAD + make(BUSES[0])
    result = evaluate(text, {}, settings())
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", status)]
    assert result.status is status and result.fatal is (status is Status.FAIL)


@pytest.mark.parametrize("check", sorted(_BLOCKS))
def test_a_q_report_whose_readings_say_gpu_requires_reset_fails_fatally(check: str) -> None:
    evaluate, make = _BLOCKS[check]
    result = evaluate(_HEAD + make(BUSES[0]) + make(BUSES[1], RESET), {}, settings())
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert result.status is Status.FAIL and result.fatal
    assert result.devices[1].detail.startswith("GPU requires a reset before it can be used again: ")


@pytest.mark.parametrize("check", sorted(_CSV))
@pytest.mark.parametrize(
    ("cell", "status"),
    [(f"[{RESET}]", Status.FAIL), (f"[{NO_POWER}]", Status.FAIL), ("[Unknown Error]", Status.ERROR)],
)
def test_a_csv_row_of_gpu_requires_reset_fails_fatally(check: str, cell: str, status: Status) -> None:
    evaluate, head, row, width = _CSV[check]
    bad = ", ".join(["1", BUSES[1]][: 2 if check == "gpupower" else 1] + [cell] * width) + "\n"
    if check == "remapped":
        bad = ", ".join([BUSES[1], *[cell] * width]) + "\n"
    result = evaluate(head + row.format(index=0, bus=BUSES[0]) + bad, {}, settings())
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", status)]
    assert result.status is status and result.fatal is (status is Status.FAIL)


def test_live_a_gpu_nvml_cannot_read_and_nvidia_smi_says_requires_reset_fails_fatally(
    make_ctx: Callable[..., CheckContext],
) -> None:
    # NVML answers NVML_ERROR_RESET_REQUIRED (14) for GPU 1, a generic error to the seam: the check asks
    # nvidia-smi, which names the GPU on stderr as it cannot open it. Before: error (node WARN).
    gpus_ = FakeTelemetry([FakeGpu(), FakeGpu(raises=errors.GpuError("GPU requires a reset", 14))])
    runner = FakeRunner()
    runner.add(
        list(remapped.ROW_REMAPPER_ARGV),
        _HEAD + _remap_block(BUSES[0]),
        stderr=f"Unable to determine the device handle for GPU1: 0000:3B:00.0: {RESET}\n",
        returncode=15,
    )
    result = remapped.run(make_ctx(commands=runner, gpus=gpus_), {})
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert result.status is Status.FAIL and result.fatal
