"""remapped: GPU memory row remapping state of every GPU (Ampere and later).

When HBM/GDDR cells fail, the GPU remaps the affected row to a spare one. A remap found at
run time is *pending* until the GPU is reset; a remap that could not be done (no spare row
left in that bank) sets *Remapping Failure Occurred*. NVML gives the four figures directly;
without NVML we read the same block from ``nvidia-smi -q -d ROW_REMAPPER``::

    GPU 00000000:07:00.0
        Remapped Rows
            Correctable Error                 : 0
            Uncorrectable Error               : 4
            Pending                           : Yes
            Remapping Failure Occurred        : No
            Bank Remap Availability Histogram
                Max                           : 192 bank(s)
                High                          : 0 bank(s)

(``autopilot evaluate`` also reads the block from a full ``-q``, ``-q -x`` XML, a one-GPU ``-q -i N``
or a pasted copy without indentation, see ``nvsmi``; a report without the block is an ``error``)
or from ``nvidia-smi --query-remapped-rows=gpu_uuid,remapped_rows.correctable,...  --format=csv``::

    gpu_uuid, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending, remapped_rows.failure
    GPU-455e672a-..., 0, 1, No, No

(a query of some of the four fields, as health scripts ask, ``gpu_bus_id, remapped_rows.failure`` with
the flag as ``1``/``0``, is judged on those it holds: a failure or pending remap as below, no fault shown
without both flags ``error``; ``[N/A]`` throughout, a GPU without row remapping, ``skipped``)

Verdict per GPU (upstream looked at ``Pending`` only and ignored a failed remap):

- ``Remapping Failure Occurred`` -> ``fail``, fatal: the memory has an error that could not be
  repaired; the node must not take work and the GPU needs replacing (NVIDIA: RMA).
- ``Pending`` -> ``warn``: a remap waits for a GPU reset; until then the bad row is still in use
  (and may keep raising Xid 63/64). Usable, but drain and reset soon.
- otherwise ``ok``, also with uncorrectable remaps counted: those rows were already swapped for
  spares at an earlier reset, which is row remapping working as designed (no page retirement,
  no capacity lost). The counts stay visible in the device detail and ``data`` so a GPU that
  keeps accumulating remaps can be spotted; correctable remaps are preventive and reported only.
- a GPU without a row remapper (pre-Ampere, V100 and T4 among them: NVML NotSupported, nvidia-smi
  ``N/A`` or no block) is judged on its dynamic page retirement instead, where it has one (NVML
  ``nvmlDeviceGetRetiredPages``/``...PendingStatus``, or a saved ``-q`` report's ``Retired Pages``): at
  ``RETIRED_PAGES_LIMIT`` (63, DCGM's limit) retired pages, single- and double-bit together -> ``fail``
  (not fatal: the GPU still runs, but past the driver's limit new bad cells are no longer mapped out:
  replace it, as DCGM's diagnostic fails it); a retirement pending -> ``warn`` (NVIDIA, Dynamic Page
  Retirement: the page is mapped out only at the GPU's next reattach, a reset or reboot, and until then
  applications may hit it again); else ``ok``; the counts in ``data["gpus"][i]["retired_pages"]``. A
  pending flag not read -> ``error``. Without page retirement either (ECC off) -> that device
  ``skipped``; no GPUs at all -> the check is ``skipped``.
- a GPU out of service (NVML_ERROR_GPU_IS_LOST, RESET_REQUIRED or INSUFFICIENT_POWER, ``gpus.OUT_OF_SERVICE``;
  or nvidia-smi's ``Unable to determine the device handle for ...: GPU is lost`` / ``GPU requires reset`` /
  ``Insufficient External Power``, or a CSV row of those in brackets) -> ``fail`` at its index, and the check
  fatal; a GPU nvidia-smi could not open for another reason (``Unknown Error``, ``Insufficient
  Permissions``) -> ``error``.

Device ``value`` keeps upstream's ``remapped`` gauge meaning: ``1`` when a remap is pending or
has failed (the GPU needs attention; for a GPU that retires pages: a retirement pending or at the
limit), else ``0``. ``data["gpus"][<index>]`` carries the counts, and the page retirement counts of
GPUs that retire pages (``retired_pages``; from a full ``-q`` report for every GPU that has the block).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from autopilot import errors, gpus, nvsmi, registry
from autopilot.checks import _nvml_fallback
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status, from_devices

NAME = "remapped"
NVIDIA_SMI = _nvml_fallback.NVIDIA_SMI
NVSMI_TIMEOUT_S = _nvml_fallback.NVSMI_TIMEOUT_S
ROW_REMAPPER_ARGV = (NVIDIA_SMI, "-q", "-d", "ROW_REMAPPER")
# NVML_ERROR_NOT_SUPPORTED: the GPU has no row remapper (Volta, Turing).
NVML_NOT_SUPPORTED = 3
_UNSUPPORTED = "row remapping not supported on this GPU"
# Retired pages (SBE + DBE) at which a GPU is failed: DCGM's DCGM_LIMIT_MAX_RETIRED_PAGES
# (dcgm/common/DcgmGpuHardwareLimits.h, "updated to match the field diag"; 60 in older DCGM), the
# figure its health watch and diagnostic fail a GPU at (DCGM_FR_RETIRED_PAGES_LIMIT). NVIDIA's driver
# retires at most 64 pages per GPU: past the limit a weak cell is no longer mapped out.
RETIRED_PAGES_LIMIT = 63
_RETIRED = "page retirement"
_NO_RETIRED = f"{_RETIRED}: no retired pages"

# One GPU's reading: the figures, or a result already decided (skipped/error) when there are none.
Reading = gpus.RemappedRows | DeviceResult


# ---------------------------------------------------------------- evaluate (pure)


def judge(gpu: str, rows: gpus.RemappedRows) -> DeviceResult:
    """The verdict for one GPU's remapped-rows figures (see the module docstring)."""
    counts = f"{rows.uncorrectable} uncorrectable, {rows.correctable} correctable remapped rows"
    needs_attention = int(rows.pending or rows.failure_occurred)
    if rows.failure_occurred:
        pending = "; a remap is also pending" if rows.pending else ""
        detail = f"row remapping failed: an uncorrectable memory error could not be repaired ({counts}{pending})"
        return DeviceResult(gpu, Status.FAIL, needs_attention, detail=detail)
    if rows.pending:
        return DeviceResult(gpu, Status.WARN, needs_attention, detail=f"row remap pending: reset the GPU ({counts})")
    if rows.uncorrectable or rows.correctable:
        return DeviceResult(gpu, Status.OK, needs_attention, detail=f"{counts}, all applied")
    return DeviceResult(gpu, Status.OK, needs_attention, detail="no remapped rows")


def judge_retired(gpu: str, retired: Mapping[str, Any]) -> DeviceResult:
    """The verdict for a GPU without row remapping from its page retirement (the module docstring):
    at ``RETIRED_PAGES_LIMIT`` retired pages ``fail``; a retirement pending ``warn``; else ``ok``."""
    sbe, dbe, pending = retired.get("single_bit_ecc"), retired.get("double_bit_ecc"), retired.get("pending")
    total = (sbe or 0) + (dbe or 0)
    shown = ["?" if n is None else str(n) for n in (dbe, sbe)]
    counts = f"{total} retired pages ({shown[0]} double-bit, {shown[1]} single-bit)"
    if total >= RETIRED_PAGES_LIMIT:
        limit = f"at the limit of {RETIRED_PAGES_LIMIT}: new bad cells are no longer retired, replace the GPU"
        detail = f"{_RETIRED}: {counts}, {limit}"
        return DeviceResult(gpu, Status.FAIL, 1, detail=detail)
    if pending:
        detail = f"{_RETIRED}: a retirement is pending: reset the GPU (or reboot) to retire the page ({counts})"
        return DeviceResult(gpu, Status.WARN, 1, detail=detail)
    if pending is None:
        return DeviceResult(gpu, Status.ERROR, detail=f"cannot judge {_RETIRED}: no pending flag read ({counts})")
    if not total:
        return DeviceResult(gpu, Status.OK, 0, detail=_NO_RETIRED)
    return DeviceResult(gpu, Status.OK, 0, detail=f"{_RETIRED}: none pending, {counts}")


def _retirement_judged(
    readings: Mapping[int, Reading], data: Mapping[int, Mapping[str, Any]] | None
) -> dict[int, Reading]:
    """``readings`` with each GPU without row remapping whose facts hold its page retirement (a saved
    ``-q`` report's ``Retired Pages``) judged on that, not ``skipped``."""
    out = dict(readings)
    for index, reading in readings.items():
        retired = (data or {}).get(index, {}).get("retired_pages")
        if isinstance(reading, DeviceResult) and reading.detail == _UNSUPPORTED and isinstance(retired, Mapping):
            out[index] = judge_retired(reading.id, retired)
    return out


def evaluate(
    readings: Mapping[int, Reading],
    *,
    data: Mapping[int, Mapping[str, Any]] | None = None,
    source: str = "nvml",
) -> CheckResult:
    """Fold the readings of every GPU (index -> figures or decided result) into the check result.

    ``data`` adds per-GPU facts (bus id, histogram, which source answered) to ``data["gpus"]``.
    """
    if not readings:
        return _nvml_fallback.no_gpus(NAME, source)
    devices, per_gpu = _nvml_fallback.fold(_retirement_judged(readings, data), data, gpus.RemappedRows, _judge_gpu)
    # From the facts, which every judged GPU's figures reach (a CSV query of some of the figures included).
    fatal = any(facts.get("failure_occurred") is True for facts in per_gpu.values())
    return from_devices(
        NAME, devices, ok_summary=_ok_summary(devices), fatal=fatal, data={"source": source, "gpus": per_gpu}
    )


def _judge_gpu(index: int, reading: gpus.RemappedRows, facts: dict[str, Any]) -> DeviceResult:
    facts.update(
        correctable=reading.correctable,
        uncorrectable=reading.uncorrectable,
        pending=reading.pending,
        failure_occurred=reading.failure_occurred,
    )
    return judge(str(index), reading)


def _ok_summary(devices: list[DeviceResult]) -> str:
    judged = [d for d in devices if d.status is not Status.SKIPPED]
    if not judged:
        return f"row remapping not supported on any of {len(devices)} GPUs"
    retiring = sum(1 for d in judged if d.detail.startswith(_RETIRED))
    if retiring == len(judged):
        summary = f"no pending page retirement on {len(judged)} GPUs (no row remapping)"
    else:
        summary = f"no pending or failed row remaps on {len(judged) - retiring} GPUs"
        if retiring:
            summary += f", no pending page retirement on {retiring}"
    counted = [f"GPU {d.id}: {d.detail}" for d in judged if d.detail not in ("no remapped rows", _NO_RETIRED)]
    skipped = len(devices) - len(judged)
    if skipped:
        summary += f" ({skipped} without row remapping)"
    if counted:
        summary += "; " + "; ".join(counted)
    return summary


def parse_text(text: str) -> tuple[dict[int, Reading], dict[int, dict[str, Any]], str]:
    """Readings from saved nvidia-smi output: ``-q`` (full or ``-d ROW_REMAPPER``) or the CSV query.

    Returns (readings, per-GPU facts, a name for the format). Raises ``nvsmi.ParseError`` when
    the text is neither, or is truncated/corrupted as a whole; a GPU whose own block is
    unreadable becomes an ``error`` device.
    """
    if nvsmi.looks_like_q(text):
        return _parse_q(text)
    first = nvsmi.first_line(text)
    if "remapped_rows." in first:
        return _parse_csv(text)
    nvsmi.raise_for_invalid_field(text)
    raise nvsmi.ParseError(f"not nvidia-smi remapped-rows output: {first.strip()[:80]!r}")


def _parse_q(text: str, *, whole: bool = False) -> tuple[dict[int, Reading], dict[int, dict[str, Any]], str]:
    """Readings from a ``-q`` report (text or XML); ``whole``: it must answer for every GPU (our own query)."""
    report = nvsmi.parse_q(text, whole=whole)
    # A pre-Ampere GPU's ``-q -d PAGE_RETIREMENT`` answers for it as ``-d ROW_REMAPPER`` does for later ones.
    blocks = ("Remapped Rows", "Retired Pages")
    if not report.full and all(g.error is None and not any(g.find(b) for b in blocks) for g in report.gpus):
        raise nvsmi.ParseError(
            "no 'Remapped Rows' or 'Retired Pages' block in this report (not nvidia-smi -q -d ROW_REMAPPER "
            "or -d PAGE_RETIREMENT)"
        )
    readings: dict[int, Reading] = {}
    facts: dict[int, dict[str, Any]] = {}
    for section in report.gpus:
        gpu = report.device_id(section)
        facts[section.index] = _nvml_fallback.section_facts(report, section)
        if section.lost:
            error = section.error or ""
            readings[section.index] = _nvml_fallback.unopened(section.index, error, True, facts[section.index])
            continue
        try:
            rows = nvsmi.remapped_rows_from_q(section)
        except nvsmi.ParseError as exc:
            readings[section.index] = DeviceResult(gpu, Status.ERROR, detail=f"unreadable: {exc}")
            continue
        if rows is None:
            readings[section.index] = DeviceResult(gpu, Status.SKIPPED, detail=_UNSUPPORTED)
            continue
        readings[section.index] = rows
        histogram = nvsmi.remap_histogram_from_q(section)
        if histogram:
            facts[section.index]["bank_remap_availability"] = histogram
    source = "nvidia-smi -q" if report.full else "nvidia-smi -q -d ROW_REMAPPER"
    if not report.full and not any(g.find("Remapped Rows") for g in report.gpus):
        source = "nvidia-smi -q -d PAGE_RETIREMENT"
    return readings, facts, _nvml_fallback.source_of(report, source)


def _parse_csv(text: str) -> tuple[dict[int, Reading], dict[int, dict[str, Any]], str]:
    readings: dict[int, Reading] = {}
    facts: dict[int, dict[str, Any]] = {}
    # The remapped-rows query has no index field; rows come in nvidia-smi index order, around the
    # GPUs nvidia-smi could not open (``nvsmi.parse_csv_gpus`` places them).
    gpu_rows = nvsmi.parse_csv_gpus(text)
    if not gpu_rows:
        # A header alone is no answer: nvidia-smi says "No devices were found" where there is no GPU, and
        # answers a GPU without row remapping with a row of [N/A].
        raise nvsmi.ParseError("no GPU row in the CSV answer")
    for index, row in gpu_rows:
        if isinstance(row, nvsmi.LostGpu):
            facts[index] = {"gpu_bus_id": row.bus_id}
            readings[index] = _nvml_fallback.unopened(index, row.error, row.is_lost, facts[index])
            continue
        facts[index] = {k: row[k] for k in ("gpu_bus_id", "gpu_uuid", "gpu_name") if k in row}
        gone = nvsmi.lost_in_row(row)
        if gone:
            readings[index] = _nvml_fallback.unopened(index, gone, True, facts[index])
            continue
        try:
            if not all(field in row for field in nvsmi.REMAPPED_CSV_FIELDS.values()):
                readings[index] = _judge_fields(index, nvsmi.remapped_fields_from_csv_row(row), facts[index])
                continue
            rows = nvsmi.remapped_rows_from_csv_row(row)
        except nvsmi.ParseError as exc:
            readings[index] = DeviceResult(str(index), Status.ERROR, detail=f"unreadable: {exc}")
            continue
        readings[index] = rows if rows is not None else DeviceResult(str(index), Status.SKIPPED, detail=_UNSUPPORTED)
    return readings, facts, "nvidia-smi --query-remapped-rows"


def _judge_fields(index: int, values: Mapping[str, int | bool | None], facts: dict[str, Any]) -> DeviceResult:
    """One GPU of a CSV query that asked for some of the four figures: a failed or pending remap it shows is
    judged as in a full answer (a failed remap fatal: ``evaluate`` reads ``facts``); with no fault shown, a
    query without ``remapped_rows.failure`` or ``remapped_rows.pending`` cannot say the GPU is fine (``error``)."""
    gpu = str(index)
    facts.update(values)
    if all(value is None for value in values.values()):
        return DeviceResult(gpu, Status.SKIPPED, detail=_UNSUPPORTED)
    lacks = [field for name, field in nvsmi.REMAPPED_CSV_FIELDS.items() if name not in values]
    note = f" (the query has no {', '.join(lacks)})"
    if values.get("failure_occurred"):
        detail = "row remapping failed: an uncorrectable memory error could not be repaired"
        return DeviceResult(gpu, Status.FAIL, 1, detail=detail + note)
    if values.get("pending"):
        return DeviceResult(gpu, Status.WARN, 1, detail="row remap pending: reset the GPU" + note)
    fields = nvsmi.REMAPPED_CSV_FIELDS
    unknown = [fields[name] for name in ("pending", "failure_occurred") if values.get(name) is None]
    if unknown:
        return DeviceResult(gpu, Status.ERROR, detail=f"cannot judge row remapping: no {' or '.join(unknown)} read")
    return DeviceResult(gpu, Status.OK, 0, detail="no pending or failed row remap" + note)


def evaluate_text(text: str, params: Mapping[str, Any], settings: Any) -> CheckResult:
    """``autopilot evaluate remapped FILE``: the verdict for saved nvidia-smi output."""
    return _nvml_fallback.judge_saved(NAME, text, parse_text, evaluate)


# ---------------------------------------------------------------- collect (I/O)


class _NvidiaSmi(_nvml_fallback.SmiQuery[Reading]):
    """``nvidia-smi -q -d ROW_REMAPPER``, run at most once per check run, for GPUs NVML could not read."""

    def run(self) -> tuple[dict[int, Reading], dict[int, dict[str, Any]]] | str:
        try:
            out = self.ctx.commands.run(list(ROW_REMAPPER_ARGV), timeout=NVSMI_TIMEOUT_S)
        except errors.ToolError as exc:
            return str(exc)
        text = out.stdout
        said_all = text + out.stderr
        if nvsmi.no_devices(said_all):
            return {}, {}
        self.no_driver = nvsmi.NO_DRIVER in said_all
        # A GPU nvidia-smi could not open, named on stderr, stands for its section (placed by the index the line
        # names, or by its bus id on older drivers); the report of the others is still an answer, whatever the
        # exit code.
        lost = [line for line in out.stderr.splitlines() if nvsmi.lost_gpu(line) is not None]
        if out.returncode != 0 and not lost:
            said = (text.strip() or out.stderr.strip() or "no output").splitlines()[0]
            return f"nvidia-smi exited {out.returncode}: {said[:200]}"
        try:
            readings, facts, _ = _parse_q("\n".join([*lost, text]), whole=True)
        except nvsmi.ParseError as exc:
            return f"unreadable nvidia-smi output: {exc}"
        return readings, facts


def collect(ctx: CheckContext) -> tuple[dict[int, Reading], dict[int, dict[str, Any]], str]:
    """Read every GPU through NVML; ask nvidia-smi for what NVML could not answer.

    Raises ``GpuUnavailable`` (the engine reports ``skipped``) when there is neither NVML nor
    nvidia-smi; returns an empty mapping when nvidia-smi finds no GPU.
    """

    def unsupported(index: int, exc: errors.GpuError, facts: dict[str, Any]) -> DeviceResult | None:
        if exc.code != NVML_NOT_SUPPORTED:
            return None
        # No row remapper (Volta, Turing): those GPUs retire pages instead, judged on that.
        try:
            retired = ctx.gpus.retired_pages(index)
        except errors.GpuLost:
            raise
        except errors.GpuError as page_exc:
            if page_exc.code == NVML_NOT_SUPPORTED:  # no page retirement either (ECC off, a board without it)
                return DeviceResult(str(index), Status.SKIPPED, detail=_UNSUPPORTED)
            return DeviceResult(str(index), Status.ERROR, detail=f"cannot read {_RETIRED}: {page_exc}")
        facts["retired_pages"] = dataclasses.asdict(retired)
        return judge_retired(str(index), facts["retired_pages"])

    read: Callable[[int], Reading] = ctx.gpus.remapped_rows
    return _nvml_fallback.collect(ctx, _NvidiaSmi(ctx), read, on_nvml_error=unsupported)


@registry.check(
    NAME,
    description="GPU memory row remapping: pending remaps warn, a failed remap fails fatally",
    timeout_s=60.0,
    uses_gpu=True,
    evaluate_text=evaluate_text,
    health="remapped",
    tag="REMAPPED ROWS",
    periodic=True,
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    return _nvml_fallback.judge_collected(NAME, "row remapping", ctx, collect, evaluate)
