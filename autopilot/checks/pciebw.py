"""pciebw: pinned host-to-device PCIe bandwidth of every GPU, judged on the median of its samples.

GB/s means gigabytes per second (1e9 bytes/s) in every name, parameter and message of this check;
upstream mixed Gb/s and GB/s. Each GPU is measured in its own run, named by its NVML PCI bus id
(never by CUDA's index), so one broken GPU errors alone. The rules (docs/RESULTS.md, figures and
their sources in docs/THRESHOLDS.md):

- the median of at least 10 samples is judged; every sample, the minimum, maximum and coefficient
  of variation are kept, and a variation above ``settings.gpu_cv_threshold_pct`` (5%) warns;
- the floor is 0.7 of what a healthy link of the GPU's maximum PCIe generation typically measures,
  scaled by its maximum width (Gen3 x16 9, Gen4 18, Gen5 38 GB/s); the ``threshold_gbps``
  parameter replaces it for every GPU, ``settings.pciebw_threshold_gbps`` is used when NVML cannot
  tell the link. Strictly below fails (not fatal); equal passes;
- a link narrower than its maximum, or below its maximum generation *while the copies ran*,
  warns (an idle link at Gen1 is normal power saving); a GPU under 90% of the median of the
  identical GPUs of the node warns;
- PCIe replays or uncorrectable ECC errors that grew during the run fail (ECC fatal), corrected
  ECC errors warn; a hardware CUDA error fails (a lost GPU and uncorrectable ECC fatal), a set-up
  error (memory, driver, permissions) is an ``error``;
- a GPU whose pod has no CPU local to it is reported and not judged (``skipped``): every copy
  would cross the socket link; a GPU in MIG mode is skipped with the reason;
- a GPU in use by another process while it was measured (memory allocated or kernels running
  before the copies, kernels while they ran, another compute process: ``_cuda.in_use_of``) has
  its figure reported, not judged: ``skipped`` with the evidence (``data.gpus.<i>.in_use``), left
  out of the neighbours' comparison and of the fleet baselines. What load does not change is
  still judged on it: counters that grew, hardware errors, a link narrower or slower than its
  maximum. Our program finding no device memory left on such a GPU is skipped too.

The tool is ``ap-bandwidth`` from ``cuda_src/`` (in ``settings.cuda_bin_dir``), run once per GPU;
its output (cuda_src/README.md) carries every sample, the NUMA nodes of the GPU and of the pinned
buffer, NVML telemetry sampled while the copies ran, and the counters before and after::

    $ ap-bandwidth --pci-bus-id 00000000:19:00.0 --size-mib 256 --samples 20 --warmup-ms 250
    {"tool":"ap-bandwidth","version":2,...,"devices":[{"index":0,"name":"NVIDIA H100 80GB HBM3",
     "pci_bus_id":"0000:19:00.0","numa":{"gpu_node":0,"host_node":0,"cpu_local":true,"notes":[]},
     "h2d":{"samples":[53.1,...],"median":53.1,"min":52.9,"max":53.2,"cv":0.001},"d2h":{...},
     "d2d":{...},"telemetry":{"h2d":{"pcie_gen":{"min":5,"max":5},...}},
     "counters":{"before":{"pcie_replay":0,...},"after":{...}}}],"errors":[]}

or, when ``settings.bandwidthtest_path`` is set, NVIDIA's CUDA-samples ``bandwidthTest``, run
once per GPU with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (through ``env``, no shell) so that CUDA's
device N is NVML's GPU N (CUDA numbers fastest-first by default; ``ap-bandwidth`` sets the order
itself)::

    $ env CUDA_DEVICE_ORDER=PCI_BUS_ID bandwidthTest --htod --memory=pinned --device=0 --csv
    [CUDA Bandwidth Test] - Starting...
    Running on...

     Device 0: NVIDIA A100-SXM4-40GB
     Quick Mode

    bandwidthTest-H2D-Pinned, Bandwidth = 24.6 GB/s, Time = 0.00130 s, Size = 32000000 bytes, NumDevsUsed = 1
    Result = PASS

Its human-readable table (without ``--csv``) is read too. Old releases (CUDA 10 and before) printed
MB/s, which was not 10^6 bytes: the CUDA 5-10 era source computes 1,024 x bytes / ms / 2^20 (as the
copies of it we could read do; we found no unmodified one), so one of their MB is 1,024,000 bytes (the
CUDA 4 era's computes 2^20 bytes); ``OLD_MB_IN_GB`` converts it. Either way 1e-3 read them low.
CUDA 11 and later print GB/s of 10^9 bytes, as our thresholds are.

PCIe link: the program's NVML samples during the copies (highest generation and narrowest width
reached); without them, NVML read after the run, where a generation below the maximum is never a
fault (GPUs drop to Gen1 at idle and train back up under load). A width below the maximum does
not recover at idle: it is a seating, riser or slot fault, and a GPU placed in a narrower slot by
design therefore warns.

``evaluate_text`` reads a saved ``ap-bandwidth`` line, a ``bandwidthTest`` output (text or CSV,
of one device: a run over several devices at once sums them and is an ``error``),
or an ``nvidia-smi -q`` report or ``--query-gpu=...pcie.link.*`` CSV answer (``links_from_csv``), for which it
reports the link state of each GPU (ok unless the width is degraded; no bandwidth is judged; a GPU the report
says is lost, or requires a reset, is a fatal ``fail``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from autopilot import errors, gpucensus, gpus, nvsmi, registry
from autopilot.checks._cuda import (
    Finding,
    InUse,
    ParseError,
    Sampler,
    Series,
    counter_findings,
    crowded_out,
    cv_note,
    gpus_judged,
    hardware_finding,
    in_use_of,
    link_under_load,
    measure_each,
    numa,
    number_field,
    own_program_ended,
    parse_tool_json,
    pcie_floor,
    peer_outliers,
    read_activity,
    sampled_peak,
    selected_entry,
    series,
    series_of,
    skipped_summary,
    stderr_note,
    stored_entry,
    tail,
    under_load,
)
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status, from_devices

NAME = "pciebw"
UNIT = "GB/s"
DEFAULT_SIZE_MIB = 256
DEFAULT_SAMPLES = 20
DEFAULT_WARMUP_MS = 250
RUN_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class GpuReading:
    """What was measured on one GPU (``error`` instead of ``h2d_gbps`` when nothing usable came back).

    ``h2d`` holds every sample (``h2d_gbps`` is their median); ``device`` is the program's whole
    entry for the GPU (NUMA nodes, counters, telemetry), ``finding`` a hardware fault it reported,
    ``skipped`` why the GPU was not measured (MIG mode), ``in_use`` whether others used it
    meanwhile (None: not asked, as for a saved output).
    """

    index: int
    h2d_gbps: float | None = None
    error: str | None = None
    link: gpus.PcieLink | None = None
    link_error: str | None = None
    figures: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    telemetry: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    h2d: Series | None = None
    finding: Finding | None = None
    skipped: str | None = None
    link_loaded: bool = False  # ``link`` was read during the copies (else after: idle Gen1 is normal)
    in_use: InUse | None = None


@dataclasses.dataclass(frozen=True)
class Rules:
    """How readings are judged: a fixed floor (``threshold_gbps``) or the PCIe table by link."""

    threshold_gbps: float | None = None  # the check's parameter: one floor for every GPU
    fallback_gbps: float = 4.0  # AUTOPILOT_PCIEBW_THRESHOLD_GBPS: the floor when the link is unknown
    cv_limit_pct: float = 5.0  # AUTOPILOT_GPU_CV_THRESHOLD_PCT
    peer_ratio: float = 0.9


# ---------------------------------------------------------------- thresholds


def floor_for(reading: GpuReading, rules: Rules) -> tuple[float, str]:
    """The floor for one GPU and where it came from."""
    if rules.threshold_gbps is not None:
        return rules.threshold_gbps, "threshold_gbps parameter"
    if reading.link is not None and reading.link.max_gen > 0:
        return pcie_floor(reading.link), f"PCIe Gen{reading.link.max_gen} x{reading.link.max_width} table"
    return rules.fallback_gbps, "AUTOPILOT_PCIEBW_THRESHOLD_GBPS (link unknown)"


# ---------------------------------------------------------------- argv


def ap_bandwidth_argv(
    path: str,
    pci_bus_id: str,
    size_mib: int = DEFAULT_SIZE_MIB,
    samples: int = DEFAULT_SAMPLES,
    warmup_ms: int = DEFAULT_WARMUP_MS,
) -> list[str]:
    """The GPU is named by its NVML bus id: CUDA's numbering is never assumed to match NVML's."""
    return [
        path,
        "--pci-bus-id",
        pci_bus_id,
        "--size-mib",
        str(size_mib),
        "--samples",
        str(samples),
        "--warmup-ms",
        str(warmup_ms),
    ]


def bandwidthtest_argv(path: str, index: int) -> list[str]:
    return ["env", "CUDA_DEVICE_ORDER=PCI_BUS_ID", path, "--htod", "--memory=pinned", f"--device={index}", "--csv"]


# ---------------------------------------------------------------- parsing (pure)


# ---------------------------------------------------------------- parsing (pure)


def reading_from_ap_bandwidth(
    returncode: int, stdout: str, stderr: str, index: int, nvml_bus_id: str = ""
) -> GpuReading:
    """One ``ap-bandwidth --pci-bus-id B`` run as GPU ``index``'s reading (exit codes: cuda_src/README.md)."""
    try:
        device, run_error = selected_entry("ap-bandwidth", returncode, stdout, stderr, index, nvml_bus_id)
    except ParseError as exc:
        return GpuReading(index, error=str(exc))
    reading = reading_from_device(device, index)
    if reading.error is None and reading.skipped is None and run_error:
        return dataclasses.replace(reading, h2d_gbps=None, error=run_error)
    return reading


def reading_from_device(device: Mapping[str, Any], index: int) -> GpuReading:
    """One entry of an ``ap-bandwidth`` "devices" list (version 2 with samples, or version 1)."""
    figures = _figures(device)
    link = link_under_load(device, "h2d")
    if device.get("skipped"):
        return GpuReading(index, skipped=str(device["skipped"]), figures=figures)
    if device.get("error"):
        finding = hardware_finding(device)
        return GpuReading(index, error=f"CUDA error: {device['error']}", figures=figures, finding=finding, link=link)
    try:
        h2d = series(device, "h2d") if "h2d" in device else series_of([number_field(device, "h2d_pinned_gbps")])
    except ParseError as exc:
        return GpuReading(index, error=str(exc), figures=figures)
    return GpuReading(index, h2d_gbps=h2d.median, figures=figures, h2d=h2d, link=link, link_loaded=link is not None)


def _figures(device: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in device.items() if k not in ("index", "error")}


_CSV_H2D = re.compile(
    r"bandwidthTest-H2D-Pinned,\s*Bandwidth\s*=\s*(?P<value>[0-9.]+)\s*(?P<unit>[GM])B/s"
    r"(?:.*?Size\s*=\s*(?P<size>\d+)\s*bytes)?(?:.*?NumDevsUsed\s*=\s*(?P<devs>\d+))?",
    re.IGNORECASE,
)
_DEVICE_LINE = re.compile(r"^\s*Device\s+(?P<index>\d+):\s*(?P<name>.+?)\s*$")
# GB (10^9 bytes) per "MB" of bandwidthTest's MB/s releases: 1,024 x bytes / ms / 2^20 is bytes/s over
# 1,024,000. Dividing by 1,000 read every old figure 2.4% low, enough to fail a link near its floor.
OLD_MB_IN_GB = 1.024e-3
_TABLE_HEADER = re.compile(r"Transfer Size \(Bytes\)\s+Bandwidth\s*\((?P<unit>[GM])B/s\)", re.IGNORECASE)
_DEVICES_AT_ONCE = re.compile(r"Host to Device Bandwidth,\s*(?P<devs>\d+)\s*Device\(s\)", re.IGNORECASE)
_TABLE_ROW = re.compile(r"^\s*(?P<size>\d+)\s+(?P<value>[0-9.]+)\s*$")


@dataclasses.dataclass(frozen=True)
class BandwidthTestReading:
    h2d_gbps: float
    size_bytes: int | None
    device_index: int | None
    device_name: str | None
    form: str  # "csv" or "text"


def parse_bandwidthtest(text: str) -> BandwidthTestReading:
    """Pinned host-to-device GB/s from ``bandwidthTest`` output (``--csv`` lines or the text table).

    With several sizes (shmoo mode) the largest transfer is used: small ones measure latency.
    Raises ``ParseError`` for output without an H2D pinned figure, with ``Result = FAIL``, or
    with a CUDA error report.
    """
    if re.search(r"Result\s*=\s*FAIL", text):
        raise ParseError(f"bandwidthTest reported Result = FAIL: {tail(text)!r}")
    cuda_error = re.search(r"(CUDA error at .*|cudaError\w+.*|code=\d+\(cuda\w+\).*)", text)
    if cuda_error:
        raise ParseError(f"bandwidthTest: {cuda_error.group(1).strip()[:200]}")
    together = _DEVICES_AT_ONCE.search(text)
    if together and int(together.group("devs")) != 1:
        # --device=all (or a range) sums every device's bandwidth into one figure ("Cumulative
        # Bandwidth to be computed from all the devices"): no one GPU's link.
        raise ParseError(f"bandwidthTest measured {together.group('devs')} devices at once; run it per GPU")
    device = next((m for m in map(_DEVICE_LINE.match, text.splitlines()) if m), None)
    index = int(device.group("index")) if device else None
    name = device.group("name") if device else None
    rows: list[tuple[int, float]] = []
    for match in _CSV_H2D.finditer(text):
        if match.group("devs") and int(match.group("devs")) != 1:
            raise ParseError(f"bandwidthTest measured {match.group('devs')} devices at once; run it per GPU")
        value = float(match.group("value")) * (OLD_MB_IN_GB if match.group("unit").upper() == "M" else 1.0)
        rows.append((int(match.group("size") or 0), value))
    if rows:
        size, value = max(rows, key=lambda r: r[0])
        return BandwidthTestReading(value, size or None, index, name, "csv")
    return _parse_bandwidthtest_table(text, index, name)


def _parse_bandwidthtest_table(text: str, index: int | None, name: str | None) -> BandwidthTestReading:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "host to device bandwidth" not in line.lower():
            continue
        # The block: "PINNED Memory Transfers", the header with the unit, then size/value rows.
        pinned = False
        unit: str | None = None
        rows: list[tuple[int, float]] = []
        for follow in lines[i + 1 :]:
            if not follow.strip():
                if rows:
                    break
                continue
            if "pageable memory transfers" in follow.lower():
                break
            if "pinned memory transfers" in follow.lower():
                pinned = True
                continue
            header = _TABLE_HEADER.search(follow)
            if header:
                unit = header.group("unit").upper()
                continue
            row = _TABLE_ROW.match(follow)
            if row and unit is not None:
                rows.append((int(row.group("size")), float(row.group("value"))))
            elif rows:
                break
        if pinned and rows and unit is not None:
            size, value = max(rows, key=lambda r: r[0])
            return BandwidthTestReading(value * (OLD_MB_IN_GB if unit == "M" else 1.0), size, index, name, "text")
    raise ParseError(f"no pinned host-to-device bandwidth in bandwidthTest output: {tail(text)!r}")


def reading_from_bandwidthtest(returncode: int, stdout: str, stderr: str, index: int) -> GpuReading:
    try:
        parsed = parse_bandwidthtest(stdout)
    except ParseError as exc:
        return GpuReading(index, error=f"bandwidthTest exited {returncode}: {exc}{stderr_note(stderr)}")
    if returncode != 0:
        return GpuReading(index, error=f"bandwidthTest exited {returncode}{stderr_note(stderr)}")
    figures: dict[str, Any] = {"h2d_pinned_gbps": parsed.h2d_gbps, "size_bytes": parsed.size_bytes}
    if parsed.device_name:
        figures["name"] = parsed.device_name
    return GpuReading(index, h2d_gbps=parsed.h2d_gbps, figures=figures, h2d=series_of([parsed.h2d_gbps]))


# ---------------------------------------------------------------- judgement (pure)


def link_note(link: gpus.PcieLink) -> str:
    """``Gen4 x16``, or ``Gen1 (max 4) x8 (max 16)`` when below the maximum."""
    gen = f"Gen{link.current_gen}" + (f" (max {link.max_gen})" if link.current_gen < link.max_gen else "")
    width = f"x{link.current_width}" + (f" (max {link.max_width})" if link.current_width < link.max_width else "")
    return f"{gen} {width}"


def width_degraded(link: gpus.PcieLink) -> bool:
    return 0 < link.current_width < link.max_width


def link_data(link: gpus.PcieLink | None, link_error: str | None) -> dict[str, Any]:
    if link is None:
        return {"error": link_error or "not read"}
    # Field by field, not ``dataclasses.asdict``, which deep-copies every int (a tenth of pciebw's CPU).
    return {
        "current_gen": link.current_gen,
        "max_gen": link.max_gen,
        "current_width": link.current_width,
        "max_width": link.max_width,
        "width_degraded": width_degraded(link),
        # Informational only: generation drops at idle by design.
        "gen_below_max": link.current_gen < link.max_gen,
    }


def judge_gpu(reading: GpuReading, rules: Rules, peer_note: str | None = None) -> tuple[DeviceResult, bool]:
    """One GPU's finding, and whether it is fatal.

    skipped (MIG; in use by others or no CPU local to the GPU, so H2D is not judged) / fail
    (hardware error, counters grew, median below the floor) / warn (narrow or down-trained link,
    unstable samples, far below identical GPUs) / error (no figure) / ok.
    """
    gpu_id = str(reading.index)
    if reading.skipped is not None:
        return DeviceResult(gpu_id, Status.SKIPPED, None, UNIT, reading.skipped), False
    counters = counter_findings(reading.figures)
    fatal = any(f for _s, _d, f in counters)
    if reading.finding is not None:
        detail = "; ".join([reading.finding.detail, *(d for _s, d, _f in counters)])
        return DeviceResult(gpu_id, Status.FAIL, None, UNIT, detail), reading.finding.fatal or fatal
    if reading.h2d_gbps is None:
        crowded = crowded_out(reading.in_use, reading.figures, reading.error or "")
        if crowded is not None:
            return DeviceResult(gpu_id, Status.SKIPPED, None, UNIT, crowded), False
        return DeviceResult(gpu_id, Status.ERROR, None, UNIT, reading.error or "no measurement"), False
    value = round(reading.h2d_gbps, 2)
    floor, _source = floor_for(reading, rules)
    link = f"; PCIe {link_note(reading.link)}" if reading.link is not None else ""
    fails = [d for s, d, _f in counters if s == "fail"]
    warns = [d for s, d, _f in counters if s == "warn"]
    if reading.in_use is not None and reading.in_use.busy:
        return _judge_busy(gpu_id, reading, reading.in_use, value, (fails, warns), fatal)
    place = numa(reading.figures)
    if place.get("cpu_local") is False:
        # Every copy crosses the socket link: the figure says nothing about this GPU's PCIe.
        detail = (
            f"H2D {value:g} GB/s not judged: no CPU of this pod's cpuset is local to the GPU "
            f"(GPU on NUMA node {place.get('gpu_node')})"
        )
        if fails or warns:
            return DeviceResult(
                gpu_id, Status.FAIL if fails else Status.WARN, value, UNIT, "; ".join([*fails, *warns, detail])
            ), fatal
        return DeviceResult(gpu_id, Status.SKIPPED, value, UNIT, detail), False
    if reading.h2d_gbps < floor:
        cause = ""
        if reading.link is not None and width_degraded(reading.link):
            cause = f" (link trained to x{reading.link.current_width} of x{reading.link.max_width})"
        elif reading.link is not None and reading.link_loaded and 0 < reading.link.current_gen < reading.link.max_gen:
            cause = f" (link at Gen{reading.link.current_gen} of Gen{reading.link.max_gen} under load)"
        fails.append(f"H2D median {value:g} GB/s < threshold {floor:g} GB/s{cause}")
    if reading.link is not None and width_degraded(reading.link):
        warns.append(f"PCIe link width x{reading.link.current_width} of x{reading.link.max_width}")
    if reading.link is not None and reading.link_loaded and 0 < reading.link.current_gen < reading.link.max_gen:
        warns.append(f"PCIe link at Gen{reading.link.current_gen} of Gen{reading.link.max_gen} under load")
    if reading.h2d is not None:
        note = cv_note("H2D", reading.h2d, rules.cv_limit_pct)
        if note:
            warns.append(note)
    if peer_note:
        warns.append(f"H2D {peer_note}")
    unknown = reading.in_use.unknown_note() if reading.in_use is not None else ""
    if fails:
        return DeviceResult(gpu_id, Status.FAIL, value, UNIT, "; ".join([*fails, *warns]) + link + unknown), fatal
    if warns:
        return DeviceResult(
            gpu_id,
            Status.WARN,
            value,
            UNIT,
            "; ".join(warns) + f" (H2D {value:g} GB/s, threshold {floor:g} GB/s){unknown}",
        ), False
    return DeviceResult(gpu_id, Status.OK, value, UNIT, f"H2D {value:g} GB/s{link}{unknown}"), False


def _judge_busy(
    gpu_id: str,
    reading: GpuReading,
    in_use: InUse,
    value: float,
    counted: tuple[list[str], list[str]],
    fatal: bool,
) -> tuple[DeviceResult, bool]:
    """A GPU others used while we measured: the figure is theirs as much as the link's, so only
    what load does not change is judged (``counted``: the counters' fails and warns; the link's
    width and generation)."""
    fails, warns = counted
    link = reading.link
    if link is not None and width_degraded(link):
        warns.append(f"PCIe link width x{link.current_width} of x{link.max_width}")
    if link is not None and reading.link_loaded and 0 < link.current_gen < link.max_gen:
        # The copies ran, so the link was under load whoever else used it.
        warns.append(f"PCIe link at Gen{link.current_gen} of Gen{link.max_gen} under load")
    detail = f"{in_use.describe()}: H2D {value:g} GB/s not judged"
    if fails or warns:
        return DeviceResult(
            gpu_id, Status.FAIL if fails else Status.WARN, value, UNIT, "; ".join([*fails, *warns, detail])
        ), fatal
    return DeviceResult(gpu_id, Status.SKIPPED, value, UNIT, detail), False


def _busy(reading: GpuReading) -> bool:
    return reading.in_use is not None and reading.in_use.busy


def evaluate(readings: Sequence[GpuReading], rules: Rules, *, tool: str) -> CheckResult:
    """Fold per-GPU readings into the check result (pure)."""
    judged = {
        r.index: (str(r.figures.get("name") or ""), r.h2d_gbps)
        for r in readings
        if r.h2d_gbps is not None
        and numa(r.figures).get("cpu_local") is not False
        and not _busy(r)  # a contended figure is no neighbour
    }
    peers = peer_outliers({i: (n, v) for i, (n, v) in judged.items() if v is not None}, rules.peer_ratio)
    verdicts = [judge_gpu(r, rules, peers.get(r.index)) for r in readings]
    devices = [d for d, _f in verdicts]
    fatal = any(f for _d, f in verdicts)
    per_gpu: dict[str, Any] = {}
    for r in readings:
        entry: dict[str, Any] = {**stored_entry(r.figures, ("h2d",)), "h2d_pinned_gbps": r.h2d_gbps}
        if r.h2d is not None:
            entry["h2d"] = r.h2d.to_dict()
        if r.error:
            entry["error"] = r.error
        if r.skipped:
            entry["skipped"] = r.skipped
        if r.h2d_gbps is not None:
            entry["threshold_gbps"], entry["threshold_source"] = floor_for(r, rules)
        if r.link is not None or r.link_error is not None:
            entry["pcie_link"] = link_data(r.link, r.link_error)
        loaded = under_load(r.figures, "h2d")
        if loaded:
            entry["under_load"] = loaded
        if r.telemetry:
            entry["sampler"] = dict(r.telemetry)
        if r.in_use is not None:
            entry["in_use"] = r.in_use.to_dict()
        per_gpu[str(r.index)] = entry
    # A busy GPU's figure is named after the summary as skipped; in the span it would read as a pass.
    measured = [r.h2d_gbps for r in readings if r.h2d_gbps is not None]
    values = [r.h2d_gbps for r in readings if r.h2d_gbps is not None and not _busy(r)] or measured
    span = "n/a"
    if values:
        low, high = min(values), max(values)
        span = f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"
    floors = sorted({floor_for(r, rules)[0] for r in readings if r.h2d_gbps is not None})
    shown = "/".join(f"{f:g}" for f in floors) or "n/a"
    ok_summary = f"{gpus_judged(devices)}: H2D pinned median {span} GB/s, threshold {shown} GB/s"
    data = {
        "threshold_gbps": rules.threshold_gbps,
        "fallback_threshold_gbps": rules.fallback_gbps,
        "cv_limit_pct": rules.cv_limit_pct,
        "unit": "GB/s (1e9 bytes/s)",
        "tool": tool,
        "gpus": per_gpu,
    }
    return skipped_summary(from_devices(NAME, devices, ok_summary=ok_summary, data=data, fatal=fatal))


def evaluate_links(
    links: Sequence[tuple[int | str, gpus.PcieLink | None, str | None]],
    lost: Mapping[str, str] | None = None,
    source: str = "nvidia-smi -q",
) -> CheckResult:
    """Link state only (from a saved ``nvidia-smi -q`` or ``--query-gpu=pcie.link.*``): ok unless a link's width
    is below its maximum.

    A GPU is named by its index, or by its bus id in a one-GPU capture (``nvsmi.QReport.device_id``).
    ``lost``: id -> nvidia-smi's line, for GPUs it says are lost (``GPU is lost``, NVML_ERROR_GPU_IS_LOST): a
    ``fail`` device each and the check fatal, as NVML's lost GPU.
    """
    devices: list[DeviceResult] = []
    per_gpu: dict[str, Any] = {}
    gone = lost or {}
    for index, link, error in links:
        per_gpu[str(index)] = {"pcie_link": link_data(link, error)}
        if str(index) in gone:
            devices.append(gpucensus.lost_device(index, gone[str(index)]))
        elif link is None:
            devices.append(DeviceResult(str(index), Status.ERROR, None, "lanes", error or "no link info"))
        elif width_degraded(link):
            devices.append(
                DeviceResult(
                    str(index),
                    Status.WARN,
                    link.current_width,
                    "lanes",
                    f"PCIe link width x{link.current_width} of x{link.max_width} ({link_note(link)})",
                )
            )
        else:
            idle = " (generation below max: idle power saving, not a fault)" if link.current_gen < link.max_gen else ""
            devices.append(
                DeviceResult(str(index), Status.OK, link.current_width, "lanes", f"PCIe {link_note(link)}{idle}")
            )
    return from_devices(
        NAME,
        devices,
        ok_summary=f"{len(devices)} GPU(s): PCIe links at full width (no bandwidth measured)",
        data={"source": source, "gpus": per_gpu},
        fatal=bool(gone),
    )


# ``--query-gpu`` fields of a link census, by ``gpus.PcieLink`` name. nvidia-smi 535+ also answers
# ``pcie.link.gen.gpucurrent`` (the same reading as ``pcie.link.gen.current``) and ``pcie.link.gen.gpumax`` /
# ``pcie.link.gen.hostmax`` (the GPU's and the host's maximum; ``pcie.link.gen.max`` is the lower of the two).
CSV_LINK_FIELDS: Mapping[str, tuple[str, ...]] = {
    "current_gen": ("pcie.link.gen.current", "pcie.link.gen.gpucurrent"),
    "max_gen": ("pcie.link.gen.max",),
    "current_width": ("pcie.link.width.current",),
    "max_width": ("pcie.link.width.max",),
}


def links_from_csv(text: str) -> tuple[list[tuple[int | str, gpus.PcieLink | None, str | None]], dict[str, str]]:
    """The link of each GPU of a saved ``nvidia-smi --query-gpu=...pcie.link.gen.current,pcie.link.gen.max,
    pcie.link.width.current,pcie.link.width.max --format=csv`` (with its header), and the GPUs it says are lost
    or require a reset (``evaluate_links``). A GPU nvidia-smi could not open, a bracketed error in place of a
    value (``[Unknown Error]``, ``[Insufficient Permissions]``), N/A or a field the query lacks: no link read for
    that GPU (``error``). ``nvsmi.ParseError`` for an answer that is not such a CSV."""
    links: list[tuple[int | str, gpus.PcieLink | None, str | None]] = []
    lost: dict[str, str] = {}
    rows = nvsmi.parse_csv_gpus(text)
    if not rows:
        raise nvsmi.ParseError("no GPU row in the CSV answer")
    for index, row in rows:
        if isinstance(row, nvsmi.LostGpu):
            if row.is_lost:
                lost[str(index)] = row.error
            links.append((index, None, row.error))
            continue
        gone = nvsmi.lost_in_row(row)
        if gone:
            lost[str(index)] = gone
            links.append((index, None, gone))
            continue
        values: dict[str, int] = {}
        problems: list[str] = []
        for name, fields in CSV_LINK_FIELDS.items():
            field = next((f for f in fields if f in row), None)
            if field is None:
                problems.append(f"the query has no {fields[0]}")
                continue
            try:
                value = nvsmi.integer(row[field], field)
            except nvsmi.ParseError as exc:
                problems.append(str(exc))
                continue
            if value is None:
                problems.append(f"{field}: N/A")
                continue
            values[name] = value
        if problems:
            links.append((index, None, "; ".join(problems)))
            continue
        links.append((index, gpus.PcieLink(**values), None))
    return links, lost


def rules_for(params: Mapping[str, Any], settings: Any) -> Rules:
    raw = params.get("threshold_gbps")
    return Rules(
        threshold_gbps=float(raw) if raw is not None else None,
        fallback_gbps=float(settings.pciebw_threshold_gbps),
        cv_limit_pct=float(settings.gpu_cv_threshold_pct),
    )


def evaluate_text(text: str, params: Mapping[str, Any], settings: Any) -> CheckResult:
    """Judge a saved ``ap-bandwidth`` line, ``bandwidthTest`` output or ``nvidia-smi -q`` report."""
    rules = rules_for(params, settings)
    if '"ap-bandwidth"' in text:
        try:
            doc = parse_tool_json(text, "ap-bandwidth")
        except ParseError as exc:
            return CheckResult(NAME, Status.ERROR, str(exc))
        readings = []
        for device in doc.get("devices", []):
            index = device.get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                return CheckResult(NAME, Status.ERROR, f"ap-bandwidth device without an index: {device!r}"[:200])
            readings.append(reading_from_device(device, index))
        if not readings:
            return CheckResult(NAME, Status.ERROR, f"ap-bandwidth measured no GPU: {doc.get('error') or 'no devices'}")
        return evaluate(readings, rules, tool="ap-bandwidth")
    if nvsmi.looks_like_q(text):
        try:
            report = nvsmi.parse_q(text)
        except nvsmi.ParseError as exc:
            return CheckResult(NAME, Status.ERROR, f"unreadable nvidia-smi -q report: {exc}")
        links: list[tuple[int | str, gpus.PcieLink | None, str | None]] = []
        lost: dict[str, str] = {}
        for section in report.gpus:
            gpu = report.device_id(section)
            if section.lost:
                lost[gpu] = section.error or ""
            try:
                raw = nvsmi.pcie_link_from_q(section)
            except nvsmi.ParseError as exc:
                links.append((gpu, None, str(exc)))
                continue
            values = [raw["current_gen"], raw["max_gen"], raw["current_width"], raw["max_width"]]
            if any(v is None for v in values):
                links.append((gpu, None, f"PCIe link values N/A: {raw}"))
                continue
            links.append((gpu, gpus.PcieLink(*(int(v or 0) for v in values)), None))
        return evaluate_links(links, lost)
    if "pcie.link." in nvsmi.first_line(text):
        try:
            nvsmi.raise_for_invalid_field(text)
            csv_links, csv_lost = links_from_csv(text)
        except nvsmi.ParseError as exc:
            return CheckResult(NAME, Status.ERROR, f"unreadable nvidia-smi --query-gpu answer: {exc}")
        return evaluate_links(csv_links, csv_lost, source="nvidia-smi --query-gpu")
    if "bandwidthTest" in text or "Bandwidth Test" in text:
        try:
            parsed = parse_bandwidthtest(text)
        except ParseError as exc:
            return CheckResult(NAME, Status.ERROR, str(exc))
        index = parsed.device_index if parsed.device_index is not None else 0
        reading = GpuReading(
            index,
            h2d_gbps=parsed.h2d_gbps,
            figures={"name": parsed.device_name, "form": parsed.form},
            h2d=series_of([parsed.h2d_gbps]),
        )
        return evaluate([reading], rules, tool="bandwidthTest")
    return CheckResult(NAME, Status.ERROR, "not ap-bandwidth, bandwidthTest or nvidia-smi -q output")


# ---------------------------------------------------------------- collect


def read_link(ctx: CheckContext, index: int) -> tuple[gpus.PcieLink | None, str | None]:
    try:
        return ctx.gpus.pcie_link(index), None
    except (errors.GpuUnavailable, errors.GpuLost):  # out of service: a fatal fail of the GPU (``measure_each``)
        raise
    except errors.GpuError as exc:
        return None, f"NVML: {exc}"


def _bus_or_blank(ctx: CheckContext, index: int) -> str:
    try:
        return ctx.gpus.identity(index).pci_bus_id
    except (errors.GpuUnavailable, errors.GpuLost):
        raise
    except errors.GpuError:
        return ""


def _measure(ctx: CheckContext, tool: str, path: str, index: int, params: Mapping[str, Any]) -> GpuReading:
    if tool == "bandwidthTest":
        # Keyed by bus id like gpumem's runs (``own_program_ended``), so that its kernel time just
        # before is known as ours; the index only where NVML has no bus id.
        argv, gpu = bandwidthtest_argv(path, index), _bus_or_blank(ctx, index)
    else:
        try:
            bus = ctx.gpus.identity(index).pci_bus_id
        except (errors.GpuUnavailable, errors.GpuLost):
            raise
        except errors.GpuError as exc:
            return GpuReading(index, error=f"NVML has no PCI bus id for GPU {index}: {exc}")
        argv = ap_bandwidth_argv(
            path,
            bus,
            int(params.get("size_mib", DEFAULT_SIZE_MIB)),
            int(params.get("samples", DEFAULT_SAMPLES)),
            int(params.get("warmup_ms", DEFAULT_WARMUP_MS)),
        )
        gpu = bus
    before = read_activity(ctx.gpus, index, gpu)  # before our buffers exist: what is allocated is others'
    with Sampler(ctx.gpus, index) as sampler:
        try:
            result = ctx.commands.run(argv, timeout=RUN_TIMEOUT_S)
        except errors.ToolTimeout as exc:
            return GpuReading(index, error=str(exc), telemetry=sampler.summary())
        finally:
            own_program_ended(ctx.gpus, gpu or str(index))
    summary = sampler.summary()
    # Copies are no kernel time: kernels while ours ran are someone else's (autopilot.gpus).
    in_use = in_use_of(before, sampled_peak(summary, "utilization_pct"))
    if tool == "bandwidthTest":
        reading = reading_from_bandwidthtest(result.returncode, result.stdout, result.stderr, index)
    else:
        reading = reading_from_ap_bandwidth(result.returncode, result.stdout, result.stderr, index, bus)
    if reading.link is not None:
        return dataclasses.replace(reading, telemetry=summary, in_use=in_use)
    # The program could not read NVML under load: the link as NVML reads it now.
    link, link_error = read_link(ctx, index)
    return dataclasses.replace(reading, link=link, link_error=link_error, telemetry=summary, in_use=in_use)


@registry.check(
    NAME,
    description="Pinned host-to-device PCIe bandwidth of each GPU in GB/s (gigabytes per second), with PCIe link state",
    params=(
        registry.Param(
            "threshold_gbps",
            float,
            None,
            "minimum median pinned H2D bandwidth in GB/s (1e9 bytes/s) for every GPU; default: per PCIe "
            "generation and width (docs/THRESHOLDS.md), AUTOPILOT_PCIEBW_THRESHOLD_GBPS when the link is unknown",
            minimum=0,
        ),
        registry.Param(
            "size_mib", int, DEFAULT_SIZE_MIB, "bytes per ap-bandwidth copy, in MiB", minimum=1, maximum=4096
        ),
        registry.Param(
            "samples",
            int,
            DEFAULT_SAMPLES,
            "timed ap-bandwidth samples per direction (median judged)",
            minimum=10,
            maximum=1000,
        ),
        registry.Param(
            "warmup_ms",
            int,
            DEFAULT_WARMUP_MS,
            "ap-bandwidth warm-up before the samples, in ms",
            minimum=200,
            maximum=60_000,
        ),
    ),
    timeout_s=600.0,
    uses_gpu=True,
    evaluate_text=evaluate_text,
    health="pciebw",
    tag="PCIEBW",
    periodic=True,
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    count = ctx.gpus.count()
    if count == 0:
        return CheckResult(NAME, Status.SKIPPED, "no GPU on this node")
    rules = rules_for(params, ctx.settings)
    if ctx.settings.bandwidthtest_path:
        tool, path = "bandwidthTest", ctx.settings.bandwidthtest_path
    else:
        tool, path = "ap-bandwidth", os.path.join(ctx.settings.cuda_bin_dir, "ap-bandwidth")
    if ctx.commands.which(path) is None:
        where = "AUTOPILOT_BANDWIDTHTEST_PATH" if tool == "bandwidthTest" else "AUTOPILOT_CUDA_BIN_DIR"
        return CheckResult(NAME, Status.ERROR, f"{tool} not found at {path} (set {where}, or build cuda_src)")
    return measure_each(
        count, lambda i: _measure(ctx, tool, path, i, params), lambda readings: evaluate(readings, rules, tool=tool)
    )
