"""Per-GPU readings from NVML, with ``nvidia-smi`` answering for what NVML could not read.

Shared by ``remapped`` and ``gpupower``. NVML is asked first, GPU by GPU; a GPU that NVML cannot
read is looked up in one ``nvidia-smi`` query (run at most once per check run); if NVML cannot
start at all, ``nvidia-smi`` answers for every GPU. A GPU neither can read becomes an ``error``
device, never a pass. A GPU that NVML calls out of service (``GpuLost``: lost, requires a reset,
insufficient power) is not asked again: it is a
``fail`` device and the check a fatal ``fail``; so is a GPU nvidia-smi could not open because it
``is lost`` (its words for the same NVML error), live or in saved output (``unopened``).
``GpuUnavailable`` propagates when there is no driver at all (the engine then reports ``skipped``,
or ``error`` where GPUs are expected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from autopilot import errors, gpucensus, names, nvsmi
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status

NVIDIA_SMI = "nvidia-smi"
NVSMI_TIMEOUT_S = 30.0
# Key of a per-GPU fact naming the id to report the GPU under, when its index is not known.
DEVICE_ID = "device_id"

R = TypeVar("R")
Facts = dict[int, dict[str, Any]]
# What an nvidia-smi query gives: (readings, facts) per GPU index, or a one-line reason it gave none.
Answer = tuple[dict[int, R], Facts] | str
# What a check judges: (readings, facts, source), from ``collect`` or from saved output.
Readings = tuple[dict[int, Any], Facts, str]
# The check's ``evaluate(readings, data=facts, source=source)``.
Evaluate = Callable[..., CheckResult]


def no_gpus(name: str, source: str) -> CheckResult:
    """The answer for a node where the source found no GPU at all."""
    return CheckResult(name, Status.SKIPPED, "no GPUs on this node", data={"source": source, "gpus": {}})


def fold(
    readings: Mapping[int, R | DeviceResult],
    data: Mapping[int, Mapping[str, Any]] | None,
    kind: type[R],
    judge: Callable[[int, R, dict[str, Any]], DeviceResult],
) -> tuple[list[DeviceResult], dict[str, dict[str, Any]]]:
    """Every GPU in index order: ``judge(index, reading, facts)`` for a reading of ``kind`` (it may
    add to ``facts``), an already decided ``DeviceResult`` as it is; facts start from ``data``."""
    devices: list[DeviceResult] = []
    per_gpu: dict[str, dict[str, Any]] = {}
    for index in sorted(readings):
        reading = readings[index]
        facts: dict[str, Any] = dict((data or {}).get(index, {}))
        if isinstance(reading, kind):
            device = judge(index, reading, facts)
        elif isinstance(reading, DeviceResult):
            device = reading
        else:
            raise TypeError(f"GPU {index}: neither a {kind.__name__} nor a DeviceResult: {reading!r}")
        # A one-GPU capture (``-q -i N``) does not say N: the GPU is named by its bus id instead.
        device_id = str(facts.pop(DEVICE_ID, device.id))
        # The device as judged when its id stands (the usual case): a ``replace`` for every GPU of every
        # NVML check was a tenth of a simulated node's remapped and gpupower (the result is immutable).
        devices.append(device if device.id == device_id else dataclasses.replace(device, id=device_id))
        per_gpu[device_id] = facts
    return devices, per_gpu


def unopened(index: int, error: str, lost: bool, facts: dict[str, Any]) -> DeviceResult:
    """A GPU nvidia-smi could not open or read: ``lost`` (its line says ``GPU is lost``, or its CSV row ``[GPU is
    lost]``: NVML_ERROR_GPU_IS_LOST) is NVML's lost GPU, a ``fail`` at its index that makes the check fatal
    (``facts["lost"]``); any other reason (Unknown Error, Insufficient Permissions) proves nothing about the GPU:
    ``error``."""
    if lost:
        facts["lost"] = True
        return gpucensus.lost_device(index, error)
    return DeviceResult(str(index), Status.ERROR, detail=error)


def section_facts(report: nvsmi.QReport, section: nvsmi.GpuSection) -> dict[str, Any]:
    """The facts every reader of a ``-q`` section starts from: bus id, the id to report it under
    (``fold`` applies it) and, best effort, the page retirement counts of GPUs that have them."""
    facts: dict[str, Any] = {"bus_id": section.bus_id}
    if report.partial:
        facts[DEVICE_ID] = report.device_id(section)
    try:
        retired = nvsmi.retired_pages_from_q(section)
    except nvsmi.ParseError:
        retired = None
    if retired is not None:
        facts["retired_pages"] = retired
    said = [w for w in report.warnings if names.bus_id(w.rsplit(" ", 1)[-1]) == names.bus_id(section.bus_id)]
    if said:
        facts["nvidia_smi_warnings"] = said
    return facts


def source_of(report: nvsmi.QReport, source: str) -> str:
    """``source`` plus the form (XML) and what was captured (one GPU of N) when it is not the usual."""
    if report.xml:
        source = source.replace("nvidia-smi -q", "nvidia-smi -q -x", 1)
    if report.partial:
        source += f" (1 of {report.attached} GPUs)"
    return source


def judge_collected(
    name: str, what: str, ctx: CheckContext, collect: Callable[[CheckContext], Readings], evaluate: Evaluate
) -> CheckResult:
    """A check run: ``evaluate`` over ``collect(ctx)``; no reading of ``what`` at all is an ``error``.

    ``GpuUnavailable`` propagates: the engine reports ``skipped`` for a machine without a driver
    (``error`` where GPUs are expected). A lost GPU makes the check a fatal ``fail``.
    """
    try:
        readings, facts, source = collect(ctx)
    except errors.ToolError as exc:
        return CheckResult(name, Status.ERROR, f"no reading of {what}: {exc}")
    return _lost_is_fatal(evaluate(readings, data=facts, source=source), facts)


def _lost_is_fatal(result: CheckResult, facts: Facts) -> CheckResult:
    """``result``, a fatal ``fail`` when a GPU was found lost (NVML or nvidia-smi), whatever the others read."""
    if any(f.get("lost") for f in facts.values()):
        return dataclasses.replace(result, status=Status.FAIL, fatal=True)
    return result


def judge_saved(name: str, text: str, parse_text: Callable[[str], Readings], evaluate: Evaluate) -> CheckResult:
    """``autopilot evaluate NAME FILE``: ``evaluate`` over saved nvidia-smi output; unreadable is ``error``."""
    try:
        readings, facts, source = parse_text(text)
    except nvsmi.ParseError as exc:
        return CheckResult(name, Status.ERROR, f"unreadable nvidia-smi output: {exc}")
    return _lost_is_fatal(evaluate(readings, data=facts, source=source), facts)


class SmiQuery(Generic[R]):
    """One ``nvidia-smi`` query run at most once per check run. Subclasses implement ``run``."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self._answer: Answer[R] | None = None
        self.no_driver = False  # set by ``run`` when nvidia-smi says there is no driver

    def installed(self) -> bool:
        return self.ctx.commands.which(NVIDIA_SMI) is not None

    def read_all(self) -> Answer[R]:
        if self._answer is None:
            self._answer = self.run()
        return self._answer

    def run(self) -> Answer[R]:
        raise NotImplementedError


def collect(
    ctx: CheckContext,
    smi: SmiQuery[R],
    read_nvml: Callable[[int], R],
    *,
    on_nvml_error: Callable[[int, errors.GpuError, dict[str, Any]], DeviceResult | None] | None = None,
) -> tuple[dict[int, R | DeviceResult], Facts, str]:
    """(readings, facts, source) for every GPU; ``on_nvml_error`` may settle a GPU without nvidia-smi (and
    add to that GPU's facts, given to it)."""
    try:
        count = ctx.gpus.count()
    except errors.GpuError as exc:
        # No usable NVML (library missing from the image, or a driver/library mismatch): nvidia-smi
        # may still answer, and an installed nvidia-smi that cannot is itself a finding, unless it
        # agrees with NVML that there is no driver here at all.
        if not smi.installed():
            raise
        answer = smi.read_all()
        if isinstance(answer, str):
            if smi.no_driver and isinstance(exc, errors.GpuUnavailable):
                raise
            raise errors.ToolError(f"NVML: {exc}; {answer}") from None
        smi_readings, smi_facts = answer
        for fact in smi_facts.values():
            fact["source"] = NVIDIA_SMI
        return dict(smi_readings), smi_facts, NVIDIA_SMI

    readings: dict[int, R | DeviceResult] = {}
    facts: Facts = {}
    used_smi = False
    for index in range(count):
        try:
            readings[index] = read_nvml(index)
            facts[index] = {"source": "nvml"}
            continue
        except errors.GpuLost as exc:
            # nvidia-smi would only say the same about a GPU off the bus, after a long wait.
            readings[index] = gpucensus.lost_device(index, str(exc))
            facts[index] = {"source": "nvml", "lost": True}
            continue
        except errors.GpuError as exc:
            nvml_error = exc
        found: dict[str, Any] = {"source": "nvml"}
        settled = on_nvml_error(index, nvml_error, found) if on_nvml_error is not None else None
        if settled is not None:
            readings[index], facts[index] = settled, found
            continue
        pair = _fallback(smi, index, nvml_error)
        readings[index], facts[index] = pair
        used_smi = used_smi or pair[1].get("source") == NVIDIA_SMI
    return readings, facts, "nvml+nvidia-smi" if used_smi else "nvml"


def _fallback(smi: SmiQuery[R], index: int, nvml_error: errors.GpuError) -> tuple[R | DeviceResult, dict[str, Any]]:
    gpu = str(index)
    if not smi.installed():
        return DeviceResult(gpu, Status.ERROR, detail=f"NVML: {nvml_error}"), {"source": "nvml"}
    answer = smi.read_all()
    if isinstance(answer, str):
        return DeviceResult(gpu, Status.ERROR, detail=f"NVML: {nvml_error}; {answer}"), {"source": NVIDIA_SMI}
    readings, facts = answer
    if index not in readings:
        detail = f"NVML: {nvml_error}; nvidia-smi lists no GPU {index}"
        return DeviceResult(gpu, Status.ERROR, detail=detail), {"source": NVIDIA_SMI}
    return readings[index], {**facts.get(index, {}), "source": NVIDIA_SMI, "nvml_error": str(nvml_error)}
