"""pciebw: pinned host-to-device PCIe bandwidth of every GPU, against a floor in GB/s.

GB/s means gigabytes per second (1e9 bytes/s) in every name, parameter and message of this check;
upstream mixed Gb/s and GB/s. A GPU whose pinned H2D bandwidth is strictly below
``threshold_gbps`` (default ``settings.pciebw_threshold_gbps``, 4 GB/s) fails (not fatal); equal
passes. Each GPU is measured in its own run, so one broken GPU errors alone.

The tool is ``ap-bandwidth`` from ``cuda_src/`` (in ``settings.cuda_bin_dir``), run once per GPU::

    $ ap-bandwidth --device 0 --size-mib 256 --runs 5
    {"tool":"ap-bandwidth","version":1,"cuda_runtime_version":13000,"cuda_driver_version":13000,
     "size_bytes":268435456,"runs":5,"devices":[{"index":0,"name":"NVIDIA H100 80GB HBM3",
     "pci_bus_id":"00000000:19:00.0","h2d_pinned_gbps":53.112,"d2h_pinned_gbps":54.020,
     "h2d_pageable_gbps":21.436,"d2h_pageable_gbps":19.880,"d2d_gbps":2788.301}],"errors":[]}

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

Its human-readable table (without ``--csv``) is read too; old releases printed MB/s, converted.

PCIe link (NVML, read after the transfer, reported in each GPU's data and detail): a current
*generation* below the maximum is never a fault by itself, because NVIDIA GPUs drop to Gen1 when
idle to save power and train back up under load (an idle RTX 4090 reads Gen1 of Gen4). A current
*width* below the maximum does not recover at idle: it is a seating, riser or slot fault. It is a
``warn`` even when the bandwidth is above the (deliberately low) floor, since an x8 link halves
throughput and the 4 GB/s floor would not notice; with bandwidth below the floor the GPU fails
and the detail names the narrow link as the likely cause. A GPU placed in a narrower slot by
design will therefore warn.

``evaluate_text`` reads a saved ``ap-bandwidth`` line, a ``bandwidthTest`` output (text or CSV),
or an ``nvidia-smi -q`` report, for which it reports the link state of each GPU (ok unless the
width is degraded; no bandwidth is judged).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from autopilot import errors, gpus, nvsmi, registry
from autopilot.checks._cuda import (
    ParseError,
    Sampler,
    device_entry,
    identity_mismatch,
    number_field,
    parse_tool_json,
    stderr_note,
    tail,
)
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status, from_devices

NAME = "pciebw"
UNIT = "GB/s"
DEFAULT_SIZE_MIB = 256
DEFAULT_RUNS = 5
RUN_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class GpuReading:
    """What was measured on one GPU (``error`` instead of ``h2d_gbps`` when nothing usable came back)."""

    index: int
    h2d_gbps: float | None = None
    error: str | None = None
    link: gpus.PcieLink | None = None
    link_error: str | None = None
    figures: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    telemetry: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- argv


def ap_bandwidth_argv(path: str, index: int, size_mib: int = DEFAULT_SIZE_MIB, runs: int = DEFAULT_RUNS) -> list[str]:
    return [path, "--device", str(index), "--size-mib", str(size_mib), "--runs", str(runs)]


def bandwidthtest_argv(path: str, index: int) -> list[str]:
    return ["env", "CUDA_DEVICE_ORDER=PCI_BUS_ID", path, "--htod", "--memory=pinned", f"--device={index}", "--csv"]


# ---------------------------------------------------------------- parsing (pure)


def reading_from_ap_bandwidth(returncode: int, stdout: str, stderr: str, index: int) -> GpuReading:
    """Turn one ``ap-bandwidth --device index`` run into a reading (exit codes: see cuda_src/README.md)."""
    try:
        device, run_error = device_entry("ap-bandwidth", returncode, stdout, stderr, index)
    except ParseError as exc:
        return GpuReading(index, error=str(exc))
    reading = reading_from_device(device, index)
    if reading.error is None and run_error:
        return GpuReading(index, error=run_error)
    return reading


def reading_from_device(device: Mapping[str, Any], index: int) -> GpuReading:
    """One entry of an ``ap-bandwidth`` "devices" list."""
    if device.get("error"):
        return GpuReading(index, error=f"CUDA error: {device['error']}", figures=_figures(device))
    try:
        h2d = number_field(device, "h2d_pinned_gbps")
    except ParseError as exc:
        return GpuReading(index, error=str(exc))
    return GpuReading(index, h2d_gbps=h2d, figures=_figures(device))


def _figures(device: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in device.items() if k not in ("index", "error")}


_CSV_H2D = re.compile(
    r"bandwidthTest-H2D-Pinned,\s*Bandwidth\s*=\s*(?P<value>[0-9.]+)\s*(?P<unit>[GM])B/s"
    r"(?:.*?Size\s*=\s*(?P<size>\d+)\s*bytes)?(?:.*?NumDevsUsed\s*=\s*(?P<devs>\d+))?",
    re.IGNORECASE,
)
_DEVICE_LINE = re.compile(r"^\s*Device\s+(?P<index>\d+):\s*(?P<name>.+?)\s*$")
_TABLE_HEADER = re.compile(r"Transfer Size \(Bytes\)\s+Bandwidth\s*\((?P<unit>[GM])B/s\)", re.IGNORECASE)
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
    device = next((m for m in map(_DEVICE_LINE.match, text.splitlines()) if m), None)
    index = int(device.group("index")) if device else None
    name = device.group("name") if device else None
    rows: list[tuple[int, float]] = []
    for match in _CSV_H2D.finditer(text):
        if match.group("devs") and int(match.group("devs")) != 1:
            raise ParseError(f"bandwidthTest measured {match.group('devs')} devices at once; run it per GPU")
        value = float(match.group("value")) / (1000.0 if match.group("unit").upper() == "M" else 1.0)
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
            return BandwidthTestReading(value / (1000.0 if unit == "M" else 1.0), size, index, name, "text")
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
    return GpuReading(index, h2d_gbps=parsed.h2d_gbps, figures=figures)


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
    return {
        **dataclasses.asdict(link),
        "width_degraded": width_degraded(link),
        # Informational only: generation drops at idle by design.
        "gen_below_max": link.current_gen < link.max_gen,
    }


def judge_gpu(reading: GpuReading, threshold_gbps: float) -> DeviceResult:
    """ok / warn (narrow link) / fail (below the floor) / error (no figure) for one GPU."""
    gpu_id = str(reading.index)
    link = f"; PCIe {link_note(reading.link)}" if reading.link is not None else ""
    if reading.h2d_gbps is None:
        return DeviceResult(gpu_id, Status.ERROR, None, UNIT, reading.error or "no measurement")
    value = round(reading.h2d_gbps, 2)
    if reading.h2d_gbps < threshold_gbps:
        cause = ""
        if reading.link is not None and width_degraded(reading.link):
            cause = f" (link trained to x{reading.link.current_width} of x{reading.link.max_width})"
        detail = f"H2D {value:g} GB/s < threshold {threshold_gbps:g} GB/s{cause}{link}"
        return DeviceResult(gpu_id, Status.FAIL, value, UNIT, detail)
    if reading.link is not None and width_degraded(reading.link):
        detail = (
            f"PCIe link width x{reading.link.current_width} of x{reading.link.max_width} "
            f"(H2D {value:g} GB/s, threshold {threshold_gbps:g} GB/s)"
        )
        return DeviceResult(gpu_id, Status.WARN, value, UNIT, detail)
    return DeviceResult(gpu_id, Status.OK, value, UNIT, f"H2D {value:g} GB/s{link}")


def evaluate(readings: Sequence[GpuReading], threshold_gbps: float, *, tool: str) -> CheckResult:
    """Fold per-GPU readings into the check result (pure)."""
    devices = [judge_gpu(r, threshold_gbps) for r in readings]
    per_gpu: dict[str, Any] = {}
    for r in readings:
        entry: dict[str, Any] = {**r.figures, "h2d_pinned_gbps": r.h2d_gbps}
        if r.error:
            entry["error"] = r.error
        if r.link is not None or r.link_error is not None:
            entry["pcie_link"] = link_data(r.link, r.link_error)
        if r.telemetry:
            entry["telemetry"] = dict(r.telemetry)
        per_gpu[str(r.index)] = entry
    values = [r.h2d_gbps for r in readings if r.h2d_gbps is not None]
    span = "n/a"
    if values:
        low, high = min(values), max(values)
        span = f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"
    ok_summary = f"{len(readings)} GPU(s): H2D pinned {span} GB/s, threshold {threshold_gbps:g} GB/s"
    data = {"threshold_gbps": threshold_gbps, "unit": "GB/s (1e9 bytes/s)", "tool": tool, "gpus": per_gpu}
    return from_devices(NAME, devices, ok_summary=ok_summary, data=data)


def evaluate_links(links: Sequence[tuple[int | str, gpus.PcieLink | None, str | None]]) -> CheckResult:
    """Link state only (from a saved ``nvidia-smi -q``): ok unless a link's width is below its maximum.

    A GPU is named by its index, or by its bus id in a one-GPU capture (``nvsmi.QReport.device_id``).
    """
    devices: list[DeviceResult] = []
    per_gpu: dict[str, Any] = {}
    for index, link, error in links:
        per_gpu[str(index)] = {"pcie_link": link_data(link, error)}
        if link is None:
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
        data={"source": "nvidia-smi -q", "gpus": per_gpu},
    )


def _threshold(params: Mapping[str, Any], settings: Any) -> float:
    raw = params.get("threshold_gbps")
    return float(raw) if raw is not None else float(settings.pciebw_threshold_gbps)


def evaluate_text(text: str, params: Mapping[str, Any], settings: Any) -> CheckResult:
    """Judge a saved ``ap-bandwidth`` line, ``bandwidthTest`` output or ``nvidia-smi -q`` report."""
    threshold = _threshold(params, settings)
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
        return evaluate(readings, threshold, tool="ap-bandwidth")
    if nvsmi.looks_like_q(text):
        try:
            report = nvsmi.parse_q(text)
        except nvsmi.ParseError as exc:
            return CheckResult(NAME, Status.ERROR, f"unreadable nvidia-smi -q report: {exc}")
        links: list[tuple[int | str, gpus.PcieLink | None, str | None]] = []
        for section in report.gpus:
            gpu = report.device_id(section)
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
        return evaluate_links(links)
    if "bandwidthTest" in text or "Bandwidth Test" in text:
        try:
            parsed = parse_bandwidthtest(text)
        except ParseError as exc:
            return CheckResult(NAME, Status.ERROR, str(exc))
        index = parsed.device_index if parsed.device_index is not None else 0
        reading = GpuReading(index, h2d_gbps=parsed.h2d_gbps, figures={"name": parsed.device_name, "form": parsed.form})
        return evaluate([reading], threshold, tool="bandwidthTest")
    return CheckResult(NAME, Status.ERROR, "not ap-bandwidth, bandwidthTest or nvidia-smi -q output")


# ---------------------------------------------------------------- collect


def check_identity(ctx: CheckContext, reading: GpuReading) -> GpuReading:
    """Error a reading whose CUDA device is not the NVML GPU of the same index."""
    if reading.error:
        return reading
    mismatch = identity_mismatch(ctx.gpus, reading.index, str(reading.figures.get("pci_bus_id") or ""))
    return reading if mismatch is None else dataclasses.replace(reading, h2d_gbps=None, error=mismatch)


def read_link(ctx: CheckContext, index: int) -> tuple[gpus.PcieLink | None, str | None]:
    try:
        return ctx.gpus.pcie_link(index), None
    except errors.GpuUnavailable:
        raise
    except errors.GpuError as exc:
        return None, f"NVML: {exc}"


def _measure(ctx: CheckContext, tool: str, path: str, index: int, params: Mapping[str, Any]) -> GpuReading:
    if tool == "bandwidthTest":
        argv = bandwidthtest_argv(path, index)
    else:
        argv = ap_bandwidth_argv(
            path, index, int(params.get("size_mib", DEFAULT_SIZE_MIB)), int(params.get("runs", DEFAULT_RUNS))
        )
    with Sampler(ctx.gpus, index) as sampler:
        try:
            result = ctx.commands.run(argv, timeout=RUN_TIMEOUT_S)
        except errors.ToolTimeout as exc:
            return GpuReading(index, error=str(exc), telemetry=sampler.summary())
    if tool == "bandwidthTest":
        reading = reading_from_bandwidthtest(result.returncode, result.stdout, result.stderr, index)
    else:
        reading = check_identity(ctx, reading_from_ap_bandwidth(result.returncode, result.stdout, result.stderr, index))
    link, link_error = read_link(ctx, index)
    return dataclasses.replace(reading, link=link, link_error=link_error, telemetry=sampler.summary())


@registry.check(
    NAME,
    description="Pinned host-to-device PCIe bandwidth of each GPU in GB/s (gigabytes per second), with PCIe link state",
    params=(
        registry.Param(
            "threshold_gbps",
            float,
            None,
            "minimum pinned H2D bandwidth in GB/s (1e9 bytes/s); default: AUTOPILOT_PCIEBW_THRESHOLD_GBPS (4)",
            minimum=0,
        ),
        registry.Param(
            "size_mib", int, DEFAULT_SIZE_MIB, "bytes per ap-bandwidth transfer, in MiB", minimum=1, maximum=4096
        ),
        registry.Param(
            "runs", int, DEFAULT_RUNS, "ap-bandwidth copies per figure (the best counts)", minimum=1, maximum=100
        ),
    ),
    timeout_s=600.0,
    uses_gpu=True,
    evaluate_text=evaluate_text,
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    count = ctx.gpus.count()
    if count == 0:
        return CheckResult(NAME, Status.SKIPPED, "no GPU on this node")
    threshold = _threshold(params, ctx.settings)
    if ctx.settings.bandwidthtest_path:
        tool, path = "bandwidthTest", ctx.settings.bandwidthtest_path
    else:
        tool, path = "ap-bandwidth", os.path.join(ctx.settings.cuda_bin_dir, "ap-bandwidth")
    if ctx.commands.which(path) is None:
        where = "AUTOPILOT_BANDWIDTHTEST_PATH" if tool == "bandwidthTest" else "AUTOPILOT_CUDA_BIN_DIR"
        return CheckResult(NAME, Status.ERROR, f"{tool} not found at {path} (set {where}, or build cuda_src)")
    readings = [_measure(ctx, tool, path, i, params) for i in range(count)]
    return evaluate(readings, threshold, tool=tool)
