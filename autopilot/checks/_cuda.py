"""What ``pciebw`` and ``gpumem`` share about the ``cuda_src`` programs they run.

- ``parse_tool_json``: the one JSON line each program prints;
- ``same_gpu``: CUDA's and NVML's spelling of a PCI bus id compared;
- ``pcie_floor``: the H2D floor for a PCIe generation and width (docs/THRESHOLDS.md);
- ``series``, ``hardware_finding``, ``counter_findings``, ``under_load``, ``slowdown_note``, ``cv_note``,
  ``peer_outliers``: the rules both checks apply to a device entry of the programs' JSON
  (samples judged on their median, CUDA errors that are hardware findings, PCIe replay and ECC
  counters that grew during the run, the link and clocks under load, a GPU far below its
  identical neighbours);
- ``read_activity``, ``in_use_of``, ``InUse``: whether another process used the GPU while it was
  measured (the signals and why: ``autopilot.gpus``); a figure taken then is not judged;
- ``Sampler``: telemetry of one GPU sampled in the background while a program runs on it (by
  one thread per process for all GPUs). A
  bandwidth figure means little without the temperature, power and SM clock the GPU ran at,
  since a hot or power-capped GPU measures low for reasons that are neither link nor memory.
  Samples go through ``ctx.gpus`` (the NVML seam) only.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeGuard, TypeVar

from autopilot import errors, gpucensus, gpus, jsoncodec, names
from autopilot.results import CheckResult, DeviceResult, Status

_FIELDS = ("temperature_c", "power_w", "sm_clock_mhz", "utilization_pct")
R = TypeVar("R")


# One parse error for every reader of tool output (kept under this name for callers).
ParseError = errors.ParseError


def parse_tool_json(text: str, tool: str) -> dict[str, Any]:
    """The JSON line a ``cuda_src`` program printed (the last line that parses and names ``tool``)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = jsoncodec.loads(line)  # orjson, json for what it refuses: the same document, faster
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("tool") == tool:
            devices = doc.get("devices", [])
            if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
                raise ParseError(f"{tool}: 'devices' is not a list of objects")
            return doc
    raise ParseError(f"no {tool} JSON line in the output: {tail(text)!r}")


def number_field(device: Mapping[str, Any], field: str) -> float:
    """A finite non-negative number from a device entry, or ``ParseError``."""
    value = device.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or not 0 <= value < float("inf"):
        raise ParseError(f"device {device.get('index')}: {field} is not a non-negative number: {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Series:
    """Every timed sample of one figure and the statistics judged on (recomputed here, not trusted)."""

    samples: tuple[float, ...]
    median: float
    minimum: float
    maximum: float
    cv: float  # sample standard deviation / mean; 0 for a single sample

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": list(self.samples),
            "median": round(self.median, 3),
            "min": round(self.minimum, 3),
            "max": round(self.maximum, 3),
            "cv": round(self.cv, 5),
        }


def series_of(values: Sequence[float]) -> Series:
    """The statistics of ``values`` (at least one)."""
    mean = statistics.fmean(values)
    # The sample deviation in floats (fsum), not ``statistics.stdev``'s exact fractions: same to the
    # last bit or two, which ``cv`` rounded to 5 places never shows, and stdev was half of pciebw's
    # CPU per node in a fan-out (PERFORMANCE.md, round 4).
    # (A list, not a generator: the same terms summed exactly, without a frame switch per sample.)
    sd = math.sqrt(math.fsum([(v - mean) ** 2 for v in values]) / (len(values) - 1)) if len(values) > 1 else 0.0
    return Series(tuple(values), statistics.median(values), min(values), max(values), sd / mean if mean > 0 else 0.0)


_PLAIN = (int, float)  # exact types: bool (an int) is no sample


def series(device: Mapping[str, Any], field: str) -> Series:
    """``device[field]``'s samples (``{"samples": [...], ...}``) as a ``Series``, or ``ParseError``."""
    raw = device.get(field)
    samples = raw.get("samples") if _is_mapping(raw) else None
    if not isinstance(samples, list) or not samples:
        raise ParseError(f"device {device.get('index')}: {field} has no samples")
    # One pass over plain numbers (what JSON gives); anything else goes through ``number_field``,
    # which names the bad sample. A dict per sample for that check was a fifth of reading an entry.
    values = [float(v) for v in samples if type(v) in _PLAIN and 0 <= v < math.inf]
    if len(values) != len(samples):
        values = [number_field({"index": device.get("index"), field: v}, field) for v in samples]
    return series_of(values)


def cv_note(name: str, s: Series, limit_pct: float) -> str | None:
    """A note when the samples vary more than ``limit_pct`` percent (a flaky or still-training link)."""
    if s.cv * 100.0 <= limit_pct:
        return None
    return (
        f"{name} varies {s.cv * 100:.1f}% (> {limit_pct:g}%) over {len(s.samples)} samples "
        f"({s.minimum:.1f}-{s.maximum:.1f})"
    )


# A GPU is in use by others when, before our program starts, more memory than a CUDA context or
# two is allocated (a context costs about 0.3-0.6 GiB; a training job holds tens of GiB, and the
# driver's own reserve is not counted), or kernels ran for this share of the last sample period (a
# stray monitoring kernel is no contention; a training loop keeps kernels on the GPU nearly always).
IN_USE_MEMORY_BYTES = 1 << 30
IN_USE_UTILIZATION_PCT = 5.0
_GIB = float(1 << 30)


@dataclasses.dataclass(frozen=True)
class InUse:
    """The evidence that another process used a GPU while we measured it (``busy``), or that NVML
    could not tell (``unknown``: judged as if idle, with a note)."""

    busy: bool
    processes: int | None = None
    memory_used_bytes: int | None = None
    utilization_pct: float | None = None  # before our program started
    utilization_during_pct: float | None = None  # highest while it ran (only where ours runs no kernel)
    reasons: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()

    def describe(self) -> str:
        """``in use by others (61 GiB used, kernels 97% of the time before the run)``."""
        return f"in use by others ({', '.join(self.reasons)})"

    def unknown_note(self) -> str:
        """`` (whether others used the GPU is partly unknown: utilization: Not Supported)``, or ""."""
        if self.busy or not self.unknown:
            return ""
        return f" (whether others used the GPU is partly unknown: {'; '.join(self.unknown)})"

    def to_dict(self) -> dict[str, Any]:
        """What ``data.gpus.<i>.in_use`` holds: ``busy`` and the signals read (none that were not)."""
        memory = round(self.memory_used_bytes / _GIB, 2) if self.memory_used_bytes is not None else None
        signals = {
            "processes": self.processes,
            "memory_used_gib": memory,
            "utilization_pct": self.utilization_pct,
            "utilization_during_pct": self.utilization_during_pct,
            "reasons": list(self.reasons),
            "unknown": list(self.unknown),
        }
        return {"busy": self.busy, **{k: v for k, v in signals.items() if v is not None and v != []}}


# NVML's kernel time covers its last sample period (1/6 to 1 s): read sooner after one of our own
# programs ended on that GPU (``gpumem`` then ``pciebw`` in one run), it is our kernels' time.
OWN_RUN_SETTLE_S = 1.0
# Per node's telemetry (a simulator runs many nodes, with the same bus ids, in one process): GPU
# (bus id, else index) -> the monotonic time our last program on it ended.
_own_ends: weakref.WeakKeyDictionary[gpus.GpuTelemetry, dict[str, float]] = weakref.WeakKeyDictionary()
_own_ends_lock = threading.Lock()


def measure_each(count: int, measure: Callable[[int], R], judge: Callable[[list[R]], CheckResult]) -> CheckResult:
    """``judge`` of ``measure`` run on each of the node's ``count`` GPUs, where a GPU NVML answers is out of service
    (``errors.GpuLost``: lost, reset required, unpowered) met while measuring it is a fatal ``fail`` device
    (``gpucensus.with_lost``), as the engine's census makes it, not an ``error``: a context built without a GPU probe
    has no census, and a GPU can go out of service after it. The other GPUs are measured and judged as ever."""
    readings: list[R] = []
    lost: dict[int, str] = {}
    for index in range(count):
        try:
            readings.append(measure(index))
        except errors.GpuLost as exc:
            lost[index] = str(exc)
    return gpucensus.with_lost(judge(readings), lost)


def own_program_ended(telemetry: gpus.GpuTelemetry, gpu: str) -> None:
    """Note that one of our programs on the node's ``gpu`` (its bus id, else its index) has just ended."""
    with _own_ends_lock:
        _own_ends.setdefault(telemetry, {})[gpu] = time.monotonic()


def read_activity(telemetry: gpus.GpuTelemetry, index: int, gpu: str = "") -> gpus.GpuActivity:
    """``telemetry.activity(index)``; a GPU NVML cannot answer for at all is unknown, never busy.
    Kernel time read within ``OWN_RUN_SETTLE_S`` of our own program's end on ``gpu`` (its bus id,
    else the index) is unknown too: it is ours."""
    try:
        activity = telemetry.activity(index)
    except (errors.GpuUnavailable, errors.GpuLost):  # out of service: the check's finding (``measure_each``)
        raise
    except errors.GpuError as exc:
        return gpus.GpuActivity(None, None, None, (f"NVML: {exc}",))
    with _own_ends_lock:
        ended = _own_ends.get(telemetry, {}).get(gpu or str(index))
    ago = time.monotonic() - ended if ended is not None else math.inf
    if activity.utilization_pct is None or ago >= OWN_RUN_SETTLE_S:
        return activity
    note = f"utilization: our own program ran on this GPU {ago:.1f} s ago"
    return dataclasses.replace(activity, utilization_pct=None, unknown=(*activity.unknown, note))


def in_use_of(before: gpus.GpuActivity, during_pct: float | None = None) -> InUse:
    """Judge the signals (pure): ``before`` read just before our program started, ``during_pct``
    the highest kernel time sampled while it ran (None where our program runs kernels itself)."""
    reasons: list[str] = []
    if before.processes:
        reasons.append(f"{before.processes} other process{'es' if before.processes > 1 else ''}")
    if before.memory_used_bytes is not None and before.memory_used_bytes > IN_USE_MEMORY_BYTES:
        gib = before.memory_used_bytes / _GIB
        reasons.append(f"{gib:.0f} GiB used" if gib >= 10 else f"{gib:.1f} GiB used")
    ahead = before.utilization_pct is not None and before.utilization_pct >= IN_USE_UTILIZATION_PCT
    during = during_pct is not None and during_pct >= IN_USE_UTILIZATION_PCT
    if ahead and during:
        reasons.append(f"kernels {before.utilization_pct:.0f}% of the time before the run, {during_pct:.0f}% during it")
    elif ahead:
        reasons.append(f"kernels {before.utilization_pct:.0f}% of the time before the run")
    elif during and reasons:
        reasons.append(f"kernels {during_pct:.0f}% of the time during the run")
    # Kernel time while our copies ran is evidence, never the only one: were a driver to count copy
    # engine time as kernel time, it alone would skip every GPU's figure of the fleet, unseen (a
    # skipped GPU is no finding). A job holds its memory throughout, so the memory signal sees it.
    return InUse(
        bool(reasons),
        before.processes,
        before.memory_used_bytes,
        before.utilization_pct,
        during_pct,
        tuple(reasons),
        before.unknown,
    )


# The CUDA errors a job on the GPU causes our program: no memory left (a training job's allocator
# often takes nearly all of it), and our context refused while the job's process holds a GPU in
# compute mode EXCLUSIVE_PROCESS (cudaErrorDevicesUnavailable: "busy or unavailable").
_CROWDED_OUT = {
    "cudaErrorMemoryAllocation": "no device memory left",
    "CUBLAS_STATUS_ALLOC_FAILED": "no device memory left",  # cuBLAS's own allocations (gpumem)
    "cudaErrorDevicesUnavailable": "the GPU refused another process (compute mode exclusive)",
}


def crowded_out(in_use: InUse | None, device: Mapping[str, Any], error: str) -> str | None:
    """Why a GPU others use could not be measured at all, when our program met one of the errors
    a job causes (``_CROWDED_OUT``): that is the job's doing, not the GPU's, and not judged. None
    otherwise (the error stands; on a GPU nobody else uses these are our set-up's errors)."""
    why = _CROWDED_OUT.get(str(device.get("error_name") or ""))
    if in_use is None or not in_use.busy or why is None:
        return None
    return f"{in_use.describe()}: not measured, {why} ({error})"


def sampled_peak(summary: Mapping[str, Any], field: str) -> float | None:
    """The highest value of ``field`` in a ``Sampler.summary()`` (None: never read)."""
    stats = summary.get(field)
    peak = stats.get("max") if _is_mapping(stats) else None
    return float(peak) if isinstance(peak, int | float) and not isinstance(peak, bool) else None


@dataclasses.dataclass(frozen=True)
class Finding:
    """A hardware finding from the program's output: always ``fail``; ``fatal`` evicts the node."""

    detail: str
    fatal: bool


# CUDA errors only a faulty GPU produces while it runs our own known-good kernels and copies; the
# program classifies them too (``error_kind``), the names are checked here in case it did not.
HARDWARE_ERRORS = frozenset(
    {
        "cudaErrorECCUncorrectable",
        "cudaErrorLaunchFailure",
        "cudaErrorIllegalAddress",
        "cudaErrorHardwareStackError",
        "cudaErrorIllegalInstruction",
        "cudaErrorMisalignedAddress",
        "cudaErrorInvalidPc",
        "cudaErrorLaunchTimeout",
        "cudaErrorNvlinkUncorrectable",
    }
)
FATAL_ERRORS = frozenset({"cudaErrorECCUncorrectable"})


def hardware_finding(device: Mapping[str, Any]) -> Finding | None:
    """The device's CUDA error as a hardware finding (None when it is a set-up problem or no error).

    ``lost`` (NVML lists the GPU, CUDA cannot open it) and an uncorrectable ECC error are fatal;
    a faulting launch of our own kernel is a (non-fatal) ``fail``.
    """
    if not device.get("error"):
        return None
    kind = str(device.get("error_kind") or "")
    name = str(device.get("error_name") or "")
    text = str(device["error"])
    if kind == "lost":
        return Finding(f"GPU lost: {text}", True)
    if kind == "hardware" or name in HARDWARE_ERRORS:
        return Finding(f"hardware error: {text}", name in FATAL_ERRORS)
    return None


_COUNTERS = (
    # name, what it means, status when it grew, fatal
    ("ecc_uncorrected", "uncorrectable ECC errors", "fail", True),
    ("pcie_replay", "PCIe replays", "fail", False),
    ("ecc_corrected", "corrected ECC errors", "warn", False),
)


def counter_findings(device: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """``(status, detail, fatal)`` for each NVML counter that grew between before and after the run.

    Uncorrectable ECC errors and PCIe replays are ``fail`` (ECC fatal); corrected ECC errors are a
    ``warn``: HBM corrects single-bit errors routinely, one during a run is a sign, not a fault.
    """
    counters = device.get("counters")
    if not _is_mapping(counters):
        return []
    before, after = counters.get("before"), counters.get("after")
    if not _is_mapping(before) or not _is_mapping(after):
        return []
    out: list[tuple[str, str, bool]] = []
    for key, what, status, fatal in _COUNTERS:
        b, a = before.get(key), after.get(key)
        if isinstance(b, bool) or isinstance(a, bool) or not isinstance(b, int) or not isinstance(a, int):
            continue
        if a > b:
            out.append((status, f"{a - b} {what} during the run ({b} -> {a})", fatal))
    return out


# ``isinstance(x, Mapping)`` goes through the ABC machinery (about five times a plain type check),
# also for the numbers and strings that most fields of the programs' JSON hold: those exact types
# (and dict, which is one) are answered by their type alone.
_NOT_MAPPINGS = frozenset({int, float, str, bool, list, type(None)})


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, without the ABC machinery for what JSON gives."""
    kind = type(value)
    return kind is dict or (kind not in _NOT_MAPPINGS and isinstance(value, Mapping))


_NUMBERS = (int, float)
_UNDER_LOAD_FIELDS = (
    "pcie_gen",
    "pcie_width",
    "pcie_max_gen",
    "pcie_max_width",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "power_w",
)


def _telemetry_section(device: Mapping[str, Any], section: str) -> Mapping[str, Any] | None:
    telemetry = device.get("telemetry")
    part = telemetry.get(section) if _is_mapping(telemetry) else None
    return part if _is_mapping(part) else None


def _span(part: Mapping[str, Any], field: str) -> tuple[float, float] | None:
    """``(min, max)`` of an NVML field the program sampled during a section (None: not read)."""
    value = part.get(field)
    if not _is_mapping(value):
        return None
    low, high = value.get("min"), value.get("max")
    if type(low) is bool or type(high) is bool or not isinstance(low, _NUMBERS) or not isinstance(high, _NUMBERS):
        return None
    return float(low), float(high)


def under_load(device: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The link and clocks NVML saw while ``section`` ran, and the clock-event reasons it named."""
    out: dict[str, Any] = {}
    part = _telemetry_section(device, section)  # looked up once, not once per field
    if part is None:
        return out
    for field in _UNDER_LOAD_FIELDS:
        span = _span(part, field)
        if span is not None:
            out[field] = {"min": span[0], "max": span[1]}
    mask = part.get("clock_event_reasons_mask")
    if isinstance(mask, int) and not isinstance(mask, bool):
        out["clock_event_reasons"] = sorted(gpus.decode_reasons(mask))
    return out


# Clock-event reasons that lower a figure (idle, application clocks and the like do not).
_SLOWDOWNS = frozenset(
    {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
)


def slowdown_note(device: Mapping[str, Any], section: str) -> str:
    """`` (clock events while measuring: sw_power_cap)`` when NVML saw a slowdown during ``section``."""
    reasons = [r for r in under_load(device, section).get("clock_event_reasons", []) if r in _SLOWDOWNS]
    return f" (clock events while measuring: {', '.join(reasons)})" if reasons else ""


def link_under_load(device: Mapping[str, Any], section: str) -> gpus.PcieLink | None:
    """The PCIe link NVML saw while ``section`` ran: the highest generation and narrowest width
    reached, against the maximum the GPU and its slot allow (None when NVML was not read)."""
    part = _telemetry_section(device, section)
    if part is None:
        return None
    spans = [_span(part, f) for f in ("pcie_gen", "pcie_max_gen", "pcie_width", "pcie_max_width")]
    if any(span is None for span in spans):
        return None
    gen, max_gen, width, max_width = (span for span in spans if span is not None)
    return gpus.PcieLink(int(gen[1]), int(max_gen[1]), int(width[0]), int(max_width[1]))


# Pinned host-to-device floor of an x16 link per PCIe generation, about 0.7 of what a healthy
# link typically measures (docs/THRESHOLDS.md names the source of every number). Narrower links
# scale by width; generations above the table use its last row.
PCIE_FLOOR_X16_GBPS: Mapping[int, float] = {1: 2.2, 2: 4.5, 3: 9.0, 4: 18.0, 5: 38.0}


def pcie_floor(link: gpus.PcieLink) -> float:
    """The floor for a link that should run at ``max_gen`` x ``max_width``."""
    gen = min(max(link.max_gen, 1), max(PCIE_FLOOR_X16_GBPS))
    width = link.max_width if link.max_width > 0 else 16
    return round(PCIE_FLOOR_X16_GBPS[gen] * width / 16, 2)


def stored_entry(device: Mapping[str, Any], judged: Sequence[str]) -> dict[str, Any]:
    """A device entry as kept in the result's data, which lives in Redis history: every sample of
    the ``judged`` series, statistics only for the others, and the raw telemetry left out (its
    summary is ``under_load``)."""
    out: dict[str, Any] = {}
    for key, value in device.items():
        if key in ("index", "telemetry"):
            continue
        if _is_mapping(value) and "samples" in value and key not in judged:
            value = {k: v for k, v in value.items() if k != "samples"}
        out[key] = value
    return out


def numa(device: Mapping[str, Any]) -> dict[str, Any]:
    """The program's ``numa`` entry (``gpu_node``, ``host_node``, ``cpu_local``, ``notes``), or {}."""
    raw = device.get("numa")
    return dict(raw) if _is_mapping(raw) else {}


def peer_outliers(values: Mapping[int, tuple[str, float]], ratio: float = 0.9) -> dict[int, str]:
    """GPUs below ``ratio`` x the median of the identical GPUs (same model name) of this node.

    ``values``: GPU index -> (model name, figure). Needs at least two GPUs of a model.
    """
    models: dict[str, list[float]] = {}
    for name, value in values.values():
        models.setdefault(name, []).append(value)
    out: dict[int, str] = {}
    for index, (name, value) in values.items():
        peers = models[name]
        if len(peers) < 2:
            continue
        median = statistics.median(peers)
        if median > 0 and value < ratio * median:
            out[index] = (
                f"{value:.1f} is {value / median:.0%} of the median {median:.1f} of the {len(peers)} {name} "
                f"GPUs here (< {ratio:.0%})"
            )
    return out


def gpus_judged(devices: Sequence[DeviceResult]) -> str:
    """The count an ok summary starts with: ``8 GPU(s)`` when every GPU's figures were judged, ``7 of 8 GPU(s)
    judged`` when some were skipped (in use by others, MIG, a figure that errored), so that it does not read as if
    every GPU passed."""
    judged = sum(1 for d in devices if d.status is not Status.SKIPPED)
    return f"{len(devices)} GPU(s)" if judged == len(devices) else f"{judged} of {len(devices)} GPU(s) judged"


def skipped_summary(result: CheckResult) -> CheckResult:
    """A result whose every GPU was skipped says why, GPU by GPU, instead of the ok summary; an ok
    one with some GPUs skipped (in use by others, MIG) names them after it, so that the summary
    does not read as if every GPU passed."""
    if result.status is Status.OK:
        skipped = [d for d in result.devices if d.status is Status.SKIPPED]
        if not skipped:
            return result
        notes = "; ".join(f"GPU {d.id} skipped: {d.detail}" for d in skipped)
        return dataclasses.replace(result, summary=f"{result.summary}; {notes}")
    if result.status is not Status.SKIPPED or not result.devices:
        return result
    return dataclasses.replace(result, summary="; ".join(f"GPU {d.id}: {d.detail}" for d in result.devices))


def same_gpu(cuda_bus_id: str, nvml_bus_id: str) -> bool:
    """CUDA prints ``0000:19:00.0`` where NVML prints ``00000000:19:00.0``; unreadable ids never mismatch."""
    if not (names.is_bus_id(cuda_bus_id) and names.is_bus_id(nvml_bus_id)):
        return True
    return names.bus_id(cuda_bus_id) == names.bus_id(nvml_bus_id)


def selected_entry(
    tool: str, returncode: int, stdout: str, stderr: str, index: int, nvml_bus_id: str = ""
) -> tuple[dict[str, Any], str]:
    """The entry of a run that named one GPU by ``--pci-bus-id``, and the run's error text ("" if none).

    Exit codes (cuda_src/README.md): 0 ok, 1 CUDA error (JSON still printed), 2 usage, 3 no CUDA
    device. Raises ``ParseError`` with the reason when there is no entry to judge, or when the
    entry is another GPU than NVML's (``nvml_bus_id``).
    """
    try:
        doc = parse_tool_json(stdout, tool)
    except ParseError as exc:
        raise ParseError(f"{tool} exited {returncode}: {exc}{stderr_note(stderr)}") from None
    top_error = str(doc.get("error") or "")
    if returncode == 3:
        raise ParseError(f"CUDA sees no device although NVML lists GPU {index}: {top_error}")
    if returncode == 2:
        raise ParseError(f"{tool} usage error: {top_error}")
    devices = doc.get("devices", [])
    if len(devices) != 1:
        raise ParseError(
            f"{tool} exited {returncode} with {len(devices)} entries for GPU {index}: {top_error or 'no entry'}"
        )
    device = dict(devices[0])
    cuda_bus = str(device.get("pci_bus_id") or "")
    if nvml_bus_id and cuda_bus and not same_gpu(cuda_bus, nvml_bus_id):
        raise ParseError(f"{tool} measured {cuda_bus}, not NVML GPU {index} at {nvml_bus_id}")
    run_error = f"{tool} exited {returncode}: {top_error or 'no error text'}" if returncode != 0 else ""
    return device, run_error


def tail(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def stderr_note(stderr: str) -> str:
    return f" (stderr: {tail(stderr)})" if stderr.strip() else ""


class _SamplingThread:
    """The one background thread that samples every open ``Sampler``, each every its interval.

    Started on first use and kept for the life of the process (it waits without a timeout while
    no sampler is open). Entering a sampler registers it and wakes the thread only when it sleeps
    longer than the new sampler's first interval; a program that ends within that interval is
    never sampled here. ``remove`` returns only once the thread is not sampling that sampler, so
    no sample lands after its exit sample.
    """

    def __init__(self) -> None:
        lock = threading.Lock()
        self._wakeup = threading.Condition(lock)  # the thread waits here for the next due sample
        self._sampled = threading.Condition(lock)  # ``remove`` waits here for a sample in progress
        self._due: dict[Sampler, float] = {}  # open sampler -> when its next sample is due (monotonic)
        self._busy: frozenset[Sampler] = frozenset()
        self._wake_at: float | None = None  # when the sleeping thread looks again; None: idle or busy
        self._thread: threading.Thread | None = None

    def add(self, sampler: Sampler) -> None:
        with self._wakeup:
            due = time.monotonic() + sampler.interval_s
            self._due[sampler] = due
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
                self._thread.start()
            elif self._wake_at is None or due < self._wake_at:
                self._wakeup.notify()

    def remove(self, sampler: Sampler) -> None:
        with self._wakeup:
            self._due.pop(sampler, None)
            while sampler in self._busy:
                self._sampled.wait()

    def _loop(self) -> None:
        with self._wakeup:
            while True:
                if not self._due:
                    self._wake_at = None
                    self._wakeup.wait()
                    continue
                now = time.monotonic()
                next_due = min(self._due.values())
                if next_due > now:
                    self._wake_at = next_due
                    self._wakeup.wait(next_due - now)
                    continue
                self._wake_at = None
                busy = frozenset(s for s, due in self._due.items() if due <= now)
                for s in busy:
                    self._due[s] = now + s.interval_s
                self._busy = busy
                self._wakeup.release()
                try:
                    # NVML is slow only when something is wrong; the lock is free meanwhile, so
                    # samplers open and close without waiting for it.
                    for s in busy:
                        s.take()
                finally:
                    self._wakeup.acquire()
                    self._busy = frozenset()
                    self._sampled.notify_all()


_SAMPLING = _SamplingThread()


class Sampler:
    """``with Sampler(ctx.gpus, i) as s: run(...)``, then ``s.summary()``.

    One sample is taken on entry and one on exit, so even a program shorter than the interval
    has readings; while the program runs, the process's one sampling thread takes one every
    ``interval_s`` (one thread for every GPU and every check, not one per GPU). A failed NVML
    query loses that sample and is counted, never raised.
    """

    def __init__(self, telemetry: gpus.GpuTelemetry, index: int, *, interval_s: float = 0.2) -> None:
        self._telemetry = telemetry
        self._index = index
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self.samples: list[gpus.GpuSample] = []
        self.failures = 0

    def take(self) -> None:
        """One sample now (a failure is counted, never raised)."""
        try:
            sample = self._telemetry.sample(self._index)
        except errors.GpuError:
            with self._lock:
                self.failures += 1
            return
        with self._lock:
            self.samples.append(sample)

    def __enter__(self) -> Sampler:
        self.take()
        _SAMPLING.add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _SAMPLING.remove(self)
        self.take()

    def summary(self) -> dict[str, Any]:
        """``{"samples": n, "temperature_c": {"min", "max", "mean"}, ...}``; fields never read are left out."""
        with self._lock:
            samples = list(self.samples)
            failures = self.failures
        out: dict[str, Any] = {"samples": len(samples)}
        if failures:
            out["failed_samples"] = failures
        for field in _FIELDS:
            values = [v for s in samples if (v := getattr(s, field)) is not None]
            if values:
                out[field] = {
                    "min": round(min(values), 1),
                    "max": round(max(values), 1),
                    "mean": round(sum(values) / len(values), 1),
                }
        return out
