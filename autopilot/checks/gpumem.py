"""gpumem: HBM bandwidth (DAXPY), FP64 compute (cuBLAS DGEMM, verified) and pinned H2D bandwidth per GPU.

The tool is ``ap-gpumem`` from ``cuda_src/`` (in ``settings.cuda_bin_dir``), run once per GPU,
named by its NVML PCI bus id::

    $ ap-gpumem --pci-bus-id 00000000:19:00.0 --elements 268435456 --samples 20 --warmup-ms 250 \
          --daxpy-iters 5 --dgemm-n 8192 --dgemm-iters 2 --dgemm-seconds 0
    {"tool":"ap-gpumem","version":2,...,"cublas_version":130100,"devices":[{"index":0,
     "name":"NVIDIA H100 80GB HBM3","pci_bus_id":"0000:19:00.0","l2_bytes":52428800,"numa":{...},
     "h2d":{"samples":[...],"median":53.2,...},"daxpy":{...},"daxpy_variant":"vector",
     "daxpy_mismatches":0,"dgemm":{...},"dgemm_mismatches":0,"telemetry":{...},"counters":{...}}]}

GB/s are 1e9 bytes/s; DAXPY counts 24 bytes per element over a working set of at least 4x the
GPU's L2 (the faster of a scalar and a vectorised kernel); TFLOPS are 1e12 FP64 operations/s.
Each figure's median over at least 10 samples is judged: strictly below its threshold fails (not
fatal); a coefficient of variation above ``settings.gpu_cv_threshold_pct`` and a GPU under 90% of
the median of identical GPUs of the node warn. Both kernels compute exactly representable
numbers and every element is checked: any wrong value is silent data corruption, a fatal
``fail``. Hardware CUDA errors, counters that grew, MIG and a pod without a CPU local to the GPU
follow ``pciebw``'s rules (the H2D figure is then not judged). A GPU in use by another process
when our program started (memory allocated, kernels running, another compute process:
``_cuda.in_use_of``; kernel time while it runs is ours) has its figures reported, not judged:
``skipped`` with the evidence in ``data.gpus.<i>.in_use``, left out of the neighbours' comparison
and of the fleet baselines; wrong values, counters that grew and hardware errors are still
judged on it, and our program finding no device memory left there is skipped too. A set-up
error, a missing figure
or unreadable output is an ``error`` for that GPU. ``dgemm_seconds`` adds a sustained DGEMM whose
clocks and power (NVML, sampled by the program) are reported under ``under_load``.

Thresholds, most specific first: the check's parameters (``h2d_gbps``, ``daxpy_gbps``,
``dgemm_tflops``), then ``AUTOPILOT_GPUMEM_THRESHOLDS`` (``settings.gpumem_thresholds``, same
keys, applied to every model), then the model table below; ``h2d_gbps`` otherwise is ``pciebw``'s
floor for the link seen under load (``settings.pciebw_threshold_gbps`` when it is unknown).

Model table (matched on the NVML name, most specific pattern first). Upstream used one pair,
1300 GB/s and 16 TFLOPS, for every GPU, which fails every non-A100/H100 GPU and is tight for
an A100 40GB. Here each threshold is 0.8 x the low end of what a healthy GPU of that model
typically measures with this kind of kernel, so a hot or slightly slow but healthy GPU passes
and a GPU with a memory or clock fault does not. docs/THRESHOLDS.md names the source of every
typical figure; they are to be tightened from our own recordings (scripts/gpu-check.sh):

=============  ===============  ==============  =============================================
model          daxpy GB/s >=    dgemm TFLOPS >=  typical DAXPY GB/s; DGEMM TFLOPS (x 0.8)
=============  ===============  ==============  =============================================
A100 40GB      1080             14.8             1350; 18.5
A100 80GB      1360             14.8             1700; 18.5
H100 PCIe      1360             28               1700; 35
H100 NVL       2640             36               3300; 45
H100 (SXM)     2320             40               2900; 50
H200 NVL       3280             36               4100; 45
H200 (SXM)     3440             40               4300; 50
GH200          2880             40               3600; 50
B200 / GB200   5200             24               6500; 30
=============  ===============  ==============  =============================================

Any other model (L40S, RTX, B300 with its cut FP64, ...) has no DAXPY/DGEMM thresholds: its
figures are reported, only H2D is judged (a link below the floor is broken on any GPU), and the
summary says "no thresholds for model X". It never fails on DAXPY/DGEMM unless thresholds are
given through parameters or settings.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from autopilot import errors, registry
from autopilot.checks._cuda import (
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
    selected_entry,
    series,
    series_of,
    skipped_summary,
    slowdown_note,
    stored_entry,
    under_load,
)
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status, from_devices

NAME = "gpumem"
KEYS = ("h2d_gbps", "daxpy_gbps", "dgemm_tflops")
# Output field of ap-gpumem for each threshold key, and its unit.
FIELDS = {
    "h2d_gbps": ("h2d_pinned_gbps", "GB/s"),
    "daxpy_gbps": ("daxpy_gbps", "GB/s"),
    "dgemm_tflops": ("dgemm_tflops", "TFLOPS"),
}
# Series in the program's output for each threshold key.
SERIES = {"h2d_gbps": "h2d", "daxpy_gbps": "daxpy", "dgemm_tflops": "dgemm"}
DEFAULT_ELEMENTS = 256 * 1024 * 1024  # 2 x 2 GiB DAXPY working set: > 4x the L2 of every GPU below
# The smallest ``elements`` allowed: a 512 MiB working set, 4x an L2 of 128 MiB (more than any
# GPU of the table). The program refuses less than 4x the L2 of the GPU it runs on, whatever this is.
MIN_ELEMENTS = 1 << 25
DEFAULT_SAMPLES = 20
DEFAULT_WARMUP_MS = 250
DEFAULT_DAXPY_ITERS = 5
DEFAULT_DGEMM_N = 8192
DEFAULT_DGEMM_ITERS = 2
RUN_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class ModelThresholds:
    model: str
    pattern: re.Pattern[str]
    daxpy_gbps: float
    dgemm_tflops: float


def _model(model: str, pattern: str, daxpy: float, dgemm: float) -> ModelThresholds:
    return ModelThresholds(model, re.compile(pattern, re.IGNORECASE), daxpy, dgemm)


# First match wins: "GH200" contains "H200" and "GB200" contains "B200", so order matters.
MODEL_TABLE: tuple[ModelThresholds, ...] = (
    _model("GB200", r"\bGB200\b", 5200, 24),
    _model("B200", r"\bB200\b", 5200, 24),
    _model("GH200", r"\bGH200\b", 2880, 40),
    _model("H200 NVL", r"\bH200\s+NVL\b", 3280, 36),
    _model("H200", r"\bH200\b", 3440, 40),
    _model("H100 NVL", r"\bH100\s+NVL\b", 2640, 36),
    _model("H100 PCIe", r"\bH100\b.*\bPCIE\b", 1360, 28),
    _model("H100", r"\bH100\b", 2320, 40),
    _model("A100 80GB", r"\bA100\b.*\b80\s*GB\b", 1360, 14.8),
    _model("A100 40GB", r"\bA100\b", 1080, 14.8),
)


def model_thresholds(name: str) -> ModelThresholds | None:
    """The table entry for an NVML/CUDA device name, or None for a model we have no figures for."""
    return next((m for m in MODEL_TABLE if m.pattern.search(name)), None)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """What one GPU is judged against; None: that figure is reported, not judged."""

    h2d_gbps: float | None
    daxpy_gbps: float | None
    dgemm_tflops: float | None
    model: str | None  # the table entry used, None when the model is unknown

    def get(self, key: str) -> float | None:
        value: float | None = getattr(self, key)
        return value


def thresholds_for(
    name: str, params: Mapping[str, Any], overrides: Mapping[str, float], h2d_default: float
) -> Thresholds:
    """Params over settings overrides over the model table (see the module docstring)."""
    entry = model_thresholds(name)
    table: dict[str, float | None] = {
        "h2d_gbps": h2d_default,
        "daxpy_gbps": entry.daxpy_gbps if entry else None,
        "dgemm_tflops": entry.dgemm_tflops if entry else None,
    }
    chosen: dict[str, float | None] = {}
    for key in KEYS:
        if params.get(key) is not None:
            chosen[key] = float(params[key])
        elif key in overrides:
            chosen[key] = float(overrides[key])
        else:
            chosen[key] = table[key]
    return Thresholds(chosen["h2d_gbps"], chosen["daxpy_gbps"], chosen["dgemm_tflops"], entry.model if entry else None)


def unknown_override_keys(overrides: Mapping[str, float]) -> list[str]:
    return sorted(set(overrides) - set(KEYS))


# ---------------------------------------------------------------- parsing and judgement (pure)


@dataclasses.dataclass(frozen=True)
class GpuReading:
    index: int
    device: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the ap-gpumem entry
    error: str | None = None
    telemetry: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    in_use: InUse | None = None  # whether others used the GPU (None: not asked, as for a saved output)


def argv_for(path: str, pci_bus_id: str, params: Mapping[str, Any]) -> list[str]:
    """The GPU is named by its NVML bus id, never by CUDA's index."""
    return [
        path,
        "--pci-bus-id",
        pci_bus_id,
        "--elements",
        str(params.get("elements", DEFAULT_ELEMENTS)),
        "--samples",
        str(params.get("samples", DEFAULT_SAMPLES)),
        "--warmup-ms",
        str(params.get("warmup_ms", DEFAULT_WARMUP_MS)),
        "--daxpy-iters",
        str(params.get("daxpy_iterations", DEFAULT_DAXPY_ITERS)),
        "--dgemm-n",
        str(params.get("dgemm_n", DEFAULT_DGEMM_N)),
        "--dgemm-iters",
        str(params.get("dgemm_iterations", DEFAULT_DGEMM_ITERS)),
        "--dgemm-seconds",
        str(params.get("dgemm_seconds", 0)),
    ]


def reading_from_run(returncode: int, stdout: str, stderr: str, index: int, nvml_bus_id: str = "") -> GpuReading:
    """One ``ap-gpumem --pci-bus-id B`` run (exit codes: see cuda_src/README.md)."""
    try:
        device, run_error = selected_entry("ap-gpumem", returncode, stdout, stderr, index, nvml_bus_id)
    except ParseError as exc:
        return GpuReading(index, error=str(exc))
    return reading_from_device(device, index, run_error)


def reading_from_device(device: Mapping[str, Any], index: int, run_error: str = "") -> GpuReading:
    if device.get("error"):
        return GpuReading(index, device, error=f"CUDA error: {device['error']}")
    if device.get("skipped"):
        return GpuReading(index, device)
    return GpuReading(index, device, error=run_error or None)


@dataclasses.dataclass(frozen=True)
class Judged:
    """One GPU's result, whether it is fatal, and its figures (median per key) for the peer rule."""

    result: DeviceResult
    fatal: bool = False
    figures: Mapping[str, float] = dataclasses.field(default_factory=dict)


def _series(device: Mapping[str, Any], key: str) -> Series:
    name = SERIES[key]
    if name in device:
        return series(device, name)
    return series_of([number_field(device, FIELDS[key][0])])  # a version-1 line: one figure


def working_set_note(device: Mapping[str, Any], elements: int | None) -> str | None:
    """Why the DAXPY figure measured a cache, not HBM: a working set under 4x the L2."""
    l2 = device.get("l2_bytes")
    if elements is None or isinstance(l2, bool) or not isinstance(l2, int) or l2 <= 0:
        return None
    working_set = 2 * 8 * elements
    if working_set >= 4 * l2:
        return None
    return f"DAXPY working set {working_set} bytes < 4x L2 ({l2} bytes): it measured the cache"


def judge_gpu(
    reading: GpuReading, limits: Thresholds, *, cv_limit_pct: float = 5.0, elements: int | None = None
) -> Judged:
    """skipped (MIG; in use by others) / fail (hardware error, wrong values: fatal; counters grew; a
    median below its threshold) / warn (samples vary) / error (no figures) / ok. Without a CPU
    local to the GPU the H2D figure is reported, not judged, and the detail says so: that is the
    pod's placement, not the GPU's health. On a GPU in use by others no figure is judged (nor
    returned for the neighbours' comparison): wrong values and counters still are."""
    gpu_id = str(reading.index)
    device = reading.device
    if device.get("skipped"):
        return Judged(DeviceResult(gpu_id, Status.SKIPPED, None, None, str(device["skipped"])))
    counters = counter_findings(device)
    fatal = any(f for _s, _d, f in counters)
    finding = hardware_finding(device) if reading.error else None
    if finding is not None:
        detail = "; ".join([finding.detail, *(d for _s, d, _f in counters)])
        return Judged(DeviceResult(gpu_id, Status.FAIL, None, None, detail), finding.fatal or fatal)
    if reading.error is not None:
        crowded = crowded_out(reading.in_use, device, reading.error)
        if crowded is not None:
            return Judged(DeviceResult(gpu_id, Status.SKIPPED, None, None, crowded))
        return Judged(DeviceResult(gpu_id, Status.ERROR, None, None, reading.error))
    small = working_set_note(device, elements)
    if small:
        return Judged(DeviceResult(gpu_id, Status.ERROR, None, None, small))
    figures: dict[str, Series] = {}
    try:
        for key in KEYS:
            figures[key] = _series(device, key)
        wrong = {
            kernel: int(number_field(device, f"{kernel}_mismatches"))
            for kernel in ("daxpy", "dgemm")
            if f"{kernel}_mismatches" in device
        }
    except ParseError as exc:
        return Judged(DeviceResult(gpu_id, Status.ERROR, None, None, str(exc)))
    medians = {k: v.median for k, v in figures.items()}
    daxpy = round(medians["daxpy_gbps"], 1)
    fails = [d for st, d, _f in counters if st == "fail"]
    warns = [d for st, d, _f in counters if st == "warn"]
    for kernel, count in wrong.items():
        if count:
            # Silent data corruption: the GPU computed or stored wrong numbers.
            fails.insert(0, f"{kernel.upper()} wrote {count} wrong value(s)")
            fatal = True
    shown = (
        f"H2D {medians['h2d_gbps']:.1f} GB/s, DAXPY {medians['daxpy_gbps']:.0f} GB/s, "
        f"DGEMM {medians['dgemm_tflops']:.1f} TFLOPS"
    )
    if reading.in_use is not None and reading.in_use.busy:
        detail = f"{reading.in_use.describe()}: {shown} not judged"
        if fails or warns:
            status = Status.FAIL if fails else Status.WARN
            return Judged(DeviceResult(gpu_id, status, daxpy, "GB/s", "; ".join([*fails, *warns, detail])), fatal)
        return Judged(DeviceResult(gpu_id, Status.SKIPPED, daxpy, "GB/s", detail))
    off_node = numa(device).get("cpu_local") is False
    for key, (_field, unit) in FIELDS.items():
        limit = limits.get(key)
        if key == "h2d_gbps" and off_node:
            continue
        if limit is not None and medians[key] < limit:
            why = slowdown_note(device, SERIES[key])
            fails.append(f"{key.split('_')[0].upper()} median {medians[key]:.1f} {unit} < {limit:g}{why}")
        note = cv_note(key.split("_")[0].upper(), figures[key], cv_limit_pct)
        if note:
            warns.append(note)
    unknown = reading.in_use.unknown_note() if reading.in_use is not None else ""
    if fails:
        detail = "; ".join([*fails, *warns]) + unknown
        return Judged(DeviceResult(gpu_id, Status.FAIL, daxpy, "GB/s", detail), fatal, medians)
    if warns:
        return Judged(
            DeviceResult(gpu_id, Status.WARN, daxpy, "GB/s", "; ".join(warns) + f" ({shown}){unknown}"), False, medians
        )
    unjudged = limits.daxpy_gbps is None or limits.dgemm_tflops is None
    note = " (no DAXPY/DGEMM thresholds for this model: reported only)" if unjudged else ""
    if off_node:
        note += " (H2D not judged: no CPU of this pod's cpuset is local to the GPU)"
    note += unknown
    return Judged(DeviceResult(gpu_id, Status.OK, daxpy, "GB/s", shown + note), False, medians)


def _with_peers(judged: Judged, notes: list[str]) -> Judged:
    """A GPU far below its identical neighbours warns (an ok one; worse findings stay)."""
    if not notes or judged.result.status is not Status.OK:
        return judged
    r = judged.result
    return dataclasses.replace(
        judged, result=DeviceResult(r.id, Status.WARN, r.value, r.unit, "; ".join(notes) + f" ({r.detail})")
    )


def evaluate(
    readings: Sequence[GpuReading],
    params: Mapping[str, Any],
    overrides: Mapping[str, float],
    h2d_default: float,
    *,
    cv_limit_pct: float = 5.0,
    cublas_version: int | None = None,
) -> CheckResult:
    """Per-GPU judgement folded into one result (pure)."""
    bad_keys = unknown_override_keys(overrides)
    if bad_keys:
        return CheckResult(
            NAME,
            Status.ERROR,
            f"AUTOPILOT_GPUMEM_THRESHOLDS: unknown key(s) {', '.join(bad_keys)} (allowed: {', '.join(KEYS)})",
        )
    elements = params.get("elements")
    judged: dict[int, Judged] = {}
    per_gpu: dict[str, Any] = {}
    unknown_models: set[str] = set()
    for r in readings:
        name = str(r.device.get("name") or "")
        link = link_under_load(r.device, "h2d")
        limits = thresholds_for(name, params, overrides, pcie_floor(link) if link and link.max_gen else h2d_default)
        if name and (limits.daxpy_gbps is None or limits.dgemm_tflops is None):
            unknown_models.add(name)
        judged[r.index] = judge_gpu(
            r, limits, cv_limit_pct=cv_limit_pct, elements=int(elements) if elements is not None else None
        )
        entry: dict[str, Any] = stored_entry(r.device, tuple(SERIES.values()))
        entry["thresholds"] = {k: limits.get(k) for k in KEYS}
        entry["threshold_model"] = limits.model
        loaded = {section: under_load(r.device, section) for section in ("h2d", "daxpy", "dgemm", "dgemm_sustained")}
        entry["under_load"] = {k: v for k, v in loaded.items() if v}
        if r.error:
            entry["error"] = r.error
        if r.telemetry:
            entry["sampler"] = dict(r.telemetry)
        if r.in_use is not None:
            entry["in_use"] = r.in_use.to_dict()
        per_gpu[str(r.index)] = entry
    peer_notes: dict[int, list[str]] = {}
    for key in ("daxpy_gbps", "dgemm_tflops"):
        values = {
            i: (str(r.device.get("name") or ""), judged[i].figures[key])
            for i, r in ((r.index, r) for r in readings)
            if key in judged[i].figures
        }
        for i, note in peer_outliers(values).items():
            peer_notes.setdefault(i, []).append(f"{key.split('_')[0].upper()} {note}")
    results = [_with_peers(judged[r.index], peer_notes.get(r.index, [])) for r in readings]
    devices = [j.result for j in results]
    counted = gpus_judged(devices)
    summary = f"{counted}: H2D, DAXPY and DGEMM medians at or above thresholds"
    if unknown_models:
        summary = (
            f"{counted} ok; no thresholds for model {', '.join(sorted(unknown_models))} "
            "(DAXPY/DGEMM reported only, H2D judged)"
        )
    data = {
        "units": {"h2d_gbps": "GB/s", "daxpy_gbps": "GB/s", "dgemm_tflops": "TFLOPS"},
        "cv_limit_pct": cv_limit_pct,
        "cublas_version": cublas_version,
        "gpus": per_gpu,
    }
    result = skipped_summary(
        from_devices(NAME, devices, ok_summary=summary, data=data, fatal=any(j.fatal for j in results))
    )
    if unknown_models and result.status is not Status.OK:
        result = dataclasses.replace(
            result, summary=f"{result.summary}; no thresholds for model {', '.join(sorted(unknown_models))}"
        )
    return result


def evaluate_text(text: str, params: Mapping[str, Any], settings: Any) -> CheckResult:
    """Judge a saved ``ap-gpumem`` JSON line."""
    try:
        doc = parse_tool_json(text, "ap-gpumem")
    except ParseError as exc:
        return CheckResult(NAME, Status.ERROR, str(exc))
    if doc.get("cache_sweep") or doc.get("daxpy_only"):
        return CheckResult(NAME, Status.ERROR, "an ap-gpumem size sweep (--allow-cache/--daxpy-only) is not judged")
    readings: list[GpuReading] = []
    for device in doc.get("devices", []):
        index = device.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            return CheckResult(NAME, Status.ERROR, f"ap-gpumem device without an index: {device!r}"[:200])
        readings.append(reading_from_device(device, index))
    if not readings:
        return CheckResult(NAME, Status.ERROR, f"ap-gpumem measured no GPU: {doc.get('error') or 'no devices'}")
    elements = doc.get("elements")
    judged_params = (
        {**params, "elements": elements} if isinstance(elements, int) and "elements" not in params else params
    )
    return evaluate(
        readings,
        judged_params,
        settings.gpumem_thresholds,
        float(settings.pciebw_threshold_gbps),
        cv_limit_pct=float(settings.gpu_cv_threshold_pct),
        cublas_version=_cublas_version(doc),
    )


def _cublas_version(doc: Mapping[str, Any]) -> int | None:
    value = doc.get("cublas_version")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- collect


def _measure(ctx: CheckContext, path: str, index: int, params: Mapping[str, Any]) -> tuple[GpuReading, int | None]:
    try:
        bus = ctx.gpus.identity(index).pci_bus_id
    except (errors.GpuUnavailable, errors.GpuLost):  # out of service: a fatal fail of the GPU (``measure_each``)
        raise
    except errors.GpuError as exc:
        return GpuReading(index, error=f"NVML has no PCI bus id for GPU {index}: {exc}"), None
    # Read before our program starts: its own buffers and kernels would count once it runs.
    in_use = in_use_of(read_activity(ctx.gpus, index, bus))
    with Sampler(ctx.gpus, index) as sampler:
        try:
            result = ctx.commands.run(
                argv_for(path, bus, params), timeout=RUN_TIMEOUT_S + 2 * float(params.get("dgemm_seconds", 0))
            )
        except errors.ToolTimeout as exc:
            return GpuReading(index, error=str(exc), telemetry=sampler.summary()), None
        finally:
            own_program_ended(ctx.gpus, bus)
    reading = reading_from_run(result.returncode, result.stdout, result.stderr, index, bus)
    try:
        version = _cublas_version(parse_tool_json(result.stdout, "ap-gpumem"))
    except ParseError:
        version = None
    return dataclasses.replace(reading, telemetry=sampler.summary(), in_use=in_use), version


def _threshold_param(key: str, help_text: str) -> registry.Param:
    return registry.Param(key, float, None, help_text, minimum=0)


@registry.check(
    NAME,
    description="DAXPY HBM bandwidth (GB/s), FP64 DGEMM TFLOPS and pinned H2D GB/s per GPU, vs per-model thresholds",
    params=(
        _threshold_param("h2d_gbps", "minimum pinned H2D GB/s (1e9 bytes/s); default: the pciebw threshold"),
        _threshold_param("daxpy_gbps", "minimum DAXPY GB/s (24 bytes/element); default: per-model table"),
        _threshold_param("dgemm_tflops", "minimum FP64 DGEMM TFLOPS; default: per-model table"),
        registry.Param(
            "elements",
            int,
            DEFAULT_ELEMENTS,
            "doubles per DAXPY vector; the working set (16 bytes each) must be at least 4x the GPU's L2",
            minimum=MIN_ELEMENTS,
            maximum=1 << 31,
        ),
        registry.Param(
            "samples", int, DEFAULT_SAMPLES, "timed samples per figure (median judged)", minimum=10, maximum=1000
        ),
        registry.Param(
            "warmup_ms", int, DEFAULT_WARMUP_MS, "warm-up before each figure, in ms", minimum=200, maximum=60_000
        ),
        registry.Param(
            "daxpy_iterations", int, DEFAULT_DAXPY_ITERS, "DAXPY launches per sample", minimum=1, maximum=10_000
        ),
        registry.Param("dgemm_n", int, DEFAULT_DGEMM_N, "DGEMM matrix size N (N x N x N)", minimum=256, maximum=32768),
        registry.Param(
            "dgemm_iterations", int, DEFAULT_DGEMM_ITERS, "DGEMM calls per sample", minimum=1, maximum=10_000
        ),
        registry.Param(
            "dgemm_seconds",
            int,
            0,
            "sustained DGEMM afterwards, in seconds, with clocks and power under load (0: none)",
            minimum=0,
            maximum=600,
        ),
    ),
    timeout_s=900.0,
    uses_gpu=True,
    evaluate_text=evaluate_text,
    health="gpumem",
    tag="GPU-MEM",
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    count = ctx.gpus.count()
    if count == 0:
        return CheckResult(NAME, Status.SKIPPED, "no GPU on this node")
    overrides = ctx.settings.gpumem_thresholds
    bad_keys = unknown_override_keys(overrides)
    if bad_keys:
        return evaluate([], params, overrides, ctx.settings.pciebw_threshold_gbps)
    path = os.path.join(ctx.settings.cuda_bin_dir, "ap-gpumem")
    if ctx.commands.which(path) is None:
        return CheckResult(
            NAME, Status.ERROR, f"ap-gpumem not found at {path} (set AUTOPILOT_CUDA_BIN_DIR, or build cuda_src)"
        )

    def judge(measured: list[tuple[GpuReading, int | None]]) -> CheckResult:
        versions = [v for _r, v in measured if v is not None]
        return evaluate(
            [r for r, _v in measured],
            params,
            overrides,
            float(ctx.settings.pciebw_threshold_gbps),
            cv_limit_pct=float(ctx.settings.gpu_cv_threshold_pct),
            cublas_version=versions[0] if versions else None,
        )

    return measure_each(count, lambda i: _measure(ctx, path, i, params), judge)
