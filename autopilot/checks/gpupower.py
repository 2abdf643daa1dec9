"""gpupower: is any GPU's clock being cut by a hardware slowdown (power brake, overheating)?

NVML reports why each GPU runs below its maximum clock as a set of "clock event reasons"
(formerly "throttle reasons"). Without NVML we ask nvidia-smi for the same bits::

    $ nvidia-smi --query-gpu=index,pci.bus_id,clocks_event_reasons.gpu_idle,...
          clocks_event_reasons.hw_power_brake_slowdown --format=csv,noheader
    0, 00000000:19:00.0, Not Active, Not Active, Not Active, Active, Not Active, Not Active, Not Active, Active

(drivers before 535 call the fields ``clocks_throttle_reasons.*`` and reject the new names with
``Field "clocks_event_reasons.gpu_idle" is not a valid field to query.``; we then ask again with
the old names). A saved ``nvidia-smi -q`` report (also ``-q -d PERFORMANCE``, ``-q -i N``, ``-q -x``
XML with ``clocks_event_reasons`` or, before 535, ``clocks_throttle_reasons``, or a copy without
indentation; see ``nvsmi``) is read from its block::

    Clocks Event Reasons
        Idle                              : Not Active
        SW Power Cap                      : Not Active
        HW Slowdown                       : Active
            HW Thermal Slowdown           : Not Active
            HW Power Brake Slowdown       : Active
        SW Thermal Slowdown               : Not Active

Verdict per GPU (never fatal: the GPU works, only slower, and the cause is often outside it):

- ``HW Slowdown`` or ``HW Thermal Slowdown`` active -> ``fail``. HW slowdown halves the clocks
  or worse; it is what upstream checked (``clocks_event_reasons.hw_slowdown``) and what its
  ``power-slowdown`` gauge reports. Its sub-reasons (thermal, power brake) go into the detail.
- ``SW Thermal Slowdown`` active, or ``HW Power Brake Slowdown`` active while ``HW Slowdown`` is
  not -> ``warn``. The driver is trading clocks for temperature, or the board's power-brake
  input is asserted without the hardware slowdown engaging (seen on H100 together with SW
  power cap and SW thermal slowdown): worth a look at cooling and power delivery, not a fault.
- anything else (idle, SW power cap, application clocks, sync boost, display clock) -> ``ok``;
  these are normal operation and are listed in the detail and ``data``.
- an unreadable answer (an unknown label, ``[Unknown Error]``, or ``HW Slowdown`` N/A) -> ``error``.

Device ``value`` keeps upstream's ``power-slowdown`` gauge meaning: ``1`` HW slowdown, else ``0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autopilot import errors, gpus, nvsmi, registry
from autopilot.checks import _nvml_fallback
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status, from_devices

NAME = "gpupower"
NVIDIA_SMI = _nvml_fallback.NVIDIA_SMI
NVSMI_TIMEOUT_S = _nvml_fallback.NVSMI_TIMEOUT_S
EVENT_PREFIX, THROTTLE_PREFIX = nvsmi.CSV_REASON_PREFIXES

FAIL_REASONS = frozenset({"hw_slowdown", "hw_thermal_slowdown"})
WARN_REASONS = frozenset({"sw_thermal_slowdown", "hw_power_brake_slowdown"})
# Sub-reasons named in a fail's detail, after "HW slowdown".
HW_CAUSES = ("hw_thermal_slowdown", "hw_power_brake_slowdown")

# One GPU's reading: its reasons, or a result already decided (error) when there are none.
Reading = nvsmi.ClockReasons | DeviceResult


# The reasons nvidia-smi answers as ``--query-gpu`` fields. It has no ``display_clock_setting`` field under
# either spelling (``--help-query-gpu`` of drivers 470-590 lists supported, active, and these), and it rejects a
# whole query for one field it does not know (``Field "..." is not a valid field to query.``): asking for it made
# both spellings fail, so the fallback never answered. The display clock never decides a verdict; without it the
# reason is ``unknown`` (``data``).
CSV_REASONS = tuple(name for name in gpus.REASON_BITS if name != "display_clock_setting")


def query_fields(prefix: str = EVENT_PREFIX) -> tuple[str, ...]:
    """The fields of the nvidia-smi fallback query, with the newer or the older reason names."""
    return ("index", "pci.bus_id", *(prefix + name for name in CSV_REASONS))


def query_argv(prefix: str = EVENT_PREFIX) -> list[str]:
    return [NVIDIA_SMI, "--query-gpu=" + ",".join(query_fields(prefix)), "--format=csv,noheader"]


# ---------------------------------------------------------------- evaluate (pure)


def _titles(names: frozenset[str] | Sequence[str]) -> str:
    order = list(gpus.REASON_BITS)
    return ", ".join(nvsmi.REASON_LABELS[n] for n in sorted(names, key=order.index))


def judge(gpu: str, reasons: nvsmi.ClockReasons) -> DeviceResult:
    """The verdict for one GPU's clock event reasons (see the module docstring)."""
    on = reasons.active
    if on & FAIL_REASONS:
        causes = [n for n in HW_CAUSES if n in on]
        because = f" ({_titles(causes)})" if causes else ""
        return DeviceResult(gpu, Status.FAIL, 1, detail=f"HW slowdown active{because}: clocks cut by hardware")
    if "hw_slowdown" in reasons.unknown:
        return DeviceResult(gpu, Status.ERROR, detail="HW Slowdown state unreadable (N/A)")
    if on & WARN_REASONS:
        parts = []
        if "sw_thermal_slowdown" in on:
            parts.append("SW thermal slowdown active")
        if "hw_power_brake_slowdown" in on:
            parts.append("HW power brake asserted (no HW slowdown)")
        return DeviceResult(gpu, Status.WARN, 0, detail="; ".join(parts))
    if on:
        return DeviceResult(gpu, Status.OK, 0, detail=f"clocks limited by: {_titles(on)}")
    return DeviceResult(gpu, Status.OK, 0, detail="no clock event reason active")


def evaluate(
    readings: Mapping[int, Reading],
    *,
    data: Mapping[int, Mapping[str, Any]] | None = None,
    source: str = "nvml",
) -> CheckResult:
    """Fold the readings of every GPU (index -> reasons or decided result) into the check result."""
    if not readings:
        return _nvml_fallback.no_gpus(NAME, source)
    devices, per_gpu = _nvml_fallback.fold(readings, data, nvsmi.ClockReasons, _judge_gpu)
    ok_summary = f"no HW slowdown on {len(devices)} GPUs"
    return from_devices(NAME, devices, ok_summary=ok_summary, data={"source": source, "gpus": per_gpu})


def _judge_gpu(index: int, reading: nvsmi.ClockReasons, facts: dict[str, Any]) -> DeviceResult:
    facts["active"] = sorted(reading.active)
    if reading.unknown:
        facts["unknown"] = sorted(reading.unknown)
    return judge(str(index), reading)


def parse_text(text: str) -> tuple[dict[int, Reading], dict[int, dict[str, Any]], str]:
    """Readings from saved nvidia-smi output: a ``-q`` report, or a ``--query-gpu`` CSV answer.

    CSV is accepted with a header naming ``clocks_event_reasons.*``/``clocks_throttle_reasons.*``
    fields, or without one when it has the columns of our own fallback query. Raises
    ``nvsmi.ParseError`` when the text is none of these or is corrupted as a whole.
    """
    if nvsmi.looks_like_q(text):
        report = nvsmi.parse_q(text)
        if not report.full and all(
            g.error is None and all(g.find(name) is None for name in nvsmi.REASON_SECTIONS) for g in report.gpus
        ):
            raise nvsmi.ParseError("no 'Clocks Event Reasons' block in this report (not -q or -q -d PERFORMANCE)")
        readings: dict[int, Reading] = {}
        facts: dict[int, dict[str, Any]] = {}
        for section in report.gpus:
            facts[section.index] = _nvml_fallback.section_facts(report, section)
            if section.lost:
                error = section.error or ""
                readings[section.index] = _nvml_fallback.unopened(section.index, error, True, facts[section.index])
                continue
            try:
                readings[section.index] = nvsmi.clock_reasons_from_q(section)
            except nvsmi.ParseError as exc:
                gpu = report.device_id(section)
                readings[section.index] = DeviceResult(gpu, Status.ERROR, detail=f"unreadable: {exc}")
        return readings, facts, _nvml_fallback.source_of(report, "nvidia-smi -q")
    nvsmi.raise_for_invalid_field(text)
    first = nvsmi.first_line(text)
    if any(prefix in first for prefix in nvsmi.CSV_REASON_PREFIXES):
        readings, facts = _from_rows(nvsmi.parse_csv_gpus(text))
        return readings, facts, "nvidia-smi --query-gpu"
    try:
        rows = nvsmi.parse_csv_gpus(text, query_fields())
    except nvsmi.ParseError:
        raise nvsmi.ParseError(f"not nvidia-smi clock event reasons output: {first.strip()[:80]!r}") from None
    readings, facts = _from_rows(rows)
    return readings, facts, "nvidia-smi --query-gpu"


def _from_rows(
    rows: Sequence[tuple[int, Mapping[str, str] | nvsmi.LostGpu]],
) -> tuple[dict[int, Reading], dict[int, dict[str, Any]]]:
    """Readings per GPU index from ``nvsmi.parse_csv_gpus``; a GPU nvidia-smi could not open is an ``error``, or a
    lost GPU's ``fail`` when it says ``GPU is lost`` (``_nvml_fallback.unopened``)."""
    if not rows:
        # nvidia-smi says "No devices were found" when there are none; no row at all is no answer.
        raise nvsmi.ParseError("no GPU row in the CSV answer")
    readings: dict[int, Reading] = {}
    facts: dict[int, dict[str, Any]] = {}
    for index, row in rows:
        if isinstance(row, nvsmi.LostGpu):
            facts[index] = {"bus_id": row.bus_id}
            readings[index] = _nvml_fallback.unopened(index, row.error, row.is_lost, facts[index])
            continue
        facts[index] = {"bus_id": row["pci.bus_id"]} if "pci.bus_id" in row else {}
        gone = nvsmi.lost_in_row(row)
        if gone:
            readings[index] = _nvml_fallback.unopened(index, gone, True, facts[index])
            continue
        try:
            readings[index] = nvsmi.clock_reasons_from_csv_row(row)
        except nvsmi.ParseError as exc:
            readings[index] = DeviceResult(str(index), Status.ERROR, detail=f"unreadable: {exc}")
    return readings, facts


def evaluate_text(text: str, params: Mapping[str, Any], settings: Any) -> CheckResult:
    """``autopilot evaluate gpupower FILE``: the verdict for saved nvidia-smi output."""
    return _nvml_fallback.judge_saved(NAME, text, parse_text, evaluate)


# ---------------------------------------------------------------- collect (I/O)


class _NvidiaSmi(_nvml_fallback.SmiQuery[Reading]):
    """The ``--query-gpu`` fallback, run at most once per check run (twice on drivers before 535)."""

    def run(self) -> tuple[dict[int, Reading], dict[int, dict[str, Any]]] | str:
        for prefix in nvsmi.CSV_REASON_PREFIXES:
            try:
                out = self.ctx.commands.run(query_argv(prefix), timeout=NVSMI_TIMEOUT_S)
            except errors.ToolError as exc:
                return str(exc)
            said = out.stdout + out.stderr
            if nvsmi.no_devices(said):
                return {}, {}
            try:
                nvsmi.raise_for_invalid_field(said)
            except nvsmi.InvalidField as exc:
                if exc.field.startswith(prefix):
                    continue  # a driver that predates (or dropped) these names: try the other spelling
                return str(exc)
            # A GPU nvidia-smi could not open is named on stderr, after the rows of those it could
            # (exit code 0 on some drivers, non-zero on others): the rows are still an answer.
            lost = [line for line in out.stderr.splitlines() if nvsmi.lost_gpu(line) is not None]
            if out.returncode != 0 and not lost:
                self.no_driver = nvsmi.NO_DRIVER in said
                first = (said.strip() or "no output").splitlines()[0]
                return f"nvidia-smi exited {out.returncode}: {first[:200]}"
            try:
                text = "\n".join([*lost, out.stdout])
                return _from_rows(nvsmi.parse_csv_gpus(text, query_fields(prefix)))
            except nvsmi.ParseError as exc:
                return f"unreadable nvidia-smi output: {exc}"
        return "nvidia-smi knows neither clocks_event_reasons.* nor clocks_throttle_reasons.* fields"


def collect(ctx: CheckContext) -> tuple[dict[int, Reading], dict[int, dict[str, Any]], str]:
    """Read every GPU through NVML; ask nvidia-smi for what NVML could not answer.

    Raises ``GpuUnavailable`` (the engine reports ``skipped``) when there is neither NVML nor
    nvidia-smi, and ``ToolError`` when NVML is unusable and nvidia-smi gives no answer either.
    """

    def read(index: int) -> Reading:
        return nvsmi.ClockReasons.from_active(ctx.gpus.clock_event_reasons(index))

    return _nvml_fallback.collect(ctx, _NvidiaSmi(ctx), read)


@registry.check(
    NAME,
    description="Hardware clock slowdown (power brake, HW thermal) per GPU; SW thermal slowdown warns",
    timeout_s=60.0,
    uses_gpu=True,
    evaluate_text=evaluate_text,
    health="power-slowdown",  # upstream exported this check under that name
    tag="GPU POWER",
    periodic=True,
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    return _nvml_fallback.judge_collected(NAME, "clock event reasons", ctx, collect, evaluate)
