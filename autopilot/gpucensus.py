"""Whether a node's GPUs are all there: the rules that keep a GPU node without working GPUs from passing.

Before the first GPU check of a sequence, the engine takes a ``Census``: the GPUs the node should
have (``nodeinfo.GpuProbe``: Node allocatable, sysfs, ``/dev/nvidia<N>``, ``AUTOPILOT_EXPECT_GPUS``)
and what NVML sees (count, bus ids, GPUs that answer ``NVML_ERROR_GPU_IS_LOST``). ``judge`` then
corrects each GPU check's result:

- NVML could not start or count on a node expected to have GPUs: ``error``, the summary naming the
  cause (library not found, driver not loaded, driver/library mismatch, ...) and what said the node
  has GPUs; a ``fail`` the check found anyway stays a ``fail``. On a node nothing says has GPUs, the
  engine's ``skipped`` ("no GPU here") stands.
- fewer GPUs visible to NVML than expected: a fatal ``fail``, with one ``fail`` device per missing
  bus id ("fell off the bus"), or the shortfall in words when no bus ids are known.
- a GPU out of service (NVML answers ``NVML_ERROR_GPU_IS_LOST``, ``RESET_REQUIRED`` or
  ``INSUFFICIENT_POWER``, ``gpus.OUT_OF_SERVICE``): a fatal ``fail``, with a ``fail`` device for that GPU.

The census is read again for every sequence (never cached across runs), so a driver that comes
back, or a GPU that falls off, shows on the next run.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from autopilot import errors
from autopilot.gpuident import Sighting
from autopilot.names import bus_id
from autopilot.nodeinfo import ExpectedGpus
from autopilot.results import CheckResult, DeviceResult, Status, worst

FELL_OFF = "expected but not visible to NVML (fell off the bus?)"
# nvidia-smi's words for NVML_ERROR_RESET_REQUIRED ("GPU requires reset"), NVML's ("GPU requires a reset").
_RESET_REQUIRED = re.compile(r"\bGPU\s+requires\s+(?:a\s+)?reset\b", re.IGNORECASE)
# nvidia-smi's and NVML's words for NVML_ERROR_INSUFFICIENT_POWER ("Insufficient External Power").
_NO_POWER = re.compile(r"\binsufficient\s+external\s+power\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Census:
    """Expected GPUs against what NVML sees at one moment."""

    expected: ExpectedGpus
    visible: int | None
    """GPUs NVML counts (lost ones included); None when NVML could not start or count."""
    nvml_error: str = ""
    """Why NVML could not start or count (the ``GpuError`` text, naming the cause)."""
    bus_ids: tuple[str, ...] = ()
    """Bus ids (``names.bus_id`` spelling) of the GPUs NVML identified."""
    lost: Mapping[int, str] = dataclasses.field(default_factory=dict)
    """GPU index -> NVML's words, for GPUs out of service (``GpuLost``: lost, requires a reset, unpowered)."""

    @property
    def shortfall(self) -> int:
        """How many expected GPUs NVML does not count (0 when it could not count at all)."""
        return max(0, self.expected.count - self.visible) if self.visible is not None else 0

    @property
    def missing(self) -> tuple[str, ...]:
        """Expected bus ids (from sysfs) that NVML did not identify; empty when none are short."""
        if not self.shortfall:
            return ()
        seen = set(self.bus_ids)
        return tuple(b for b in self.expected.bus_ids if b not in seen)


def take(seen: Sighting, expected: ExpectedGpus) -> Census:
    """What NVML counted and identified (``gpuident.look``, read once per sequence), next to ``expected``."""
    if seen.count is None:
        return Census(expected, None, seen.error)
    found = tuple(bus_id(seen.identities[i].pci_bus_id) for i in sorted(seen.identities))
    return Census(expected, seen.count, "", found, dict(seen.lost))


def lost_device(index: int | str, words: str) -> DeviceResult:
    """The ``fail`` device of a GPU out of service (NVML_ERROR_GPU_IS_LOST, RESET_REQUIRED or INSUFFICIENT_POWER,
    or nvidia-smi's ``GPU is lost``, ``GPU requires reset`` or ``Insufficient External Power``, said in its own
    words), by its
    index, or by its bus id where the index is not known (a one-GPU capture of ``nvidia-smi -q -i``)."""
    if _RESET_REQUIRED.search(words):
        # NVML_ERROR_RESET_REQUIRED, which the nvidia-smi readers judge as a lost GPU: out of service until reset.
        detail = f"GPU requires a reset before it can be used again: {words}"
        return DeviceResult(str(index), Status.FAIL, detail=detail)
    if _NO_POWER.search(words):
        # NVML_ERROR_INSUFFICIENT_POWER: the board's external power is not connected; the driver runs nothing on it.
        detail = f"GPU has insufficient external power (check its power cables), it cannot be used: {words}"
        return DeviceResult(str(index), Status.FAIL, detail=detail)
    return DeviceResult(str(index), Status.FAIL, detail=f"GPU is lost, fell off the bus: {words}")


def lost_result(check: str, exc: errors.GpuLost) -> CheckResult:
    """What a check that met a lost GPU answers: a fatal ``fail`` for that GPU."""
    return CheckResult(
        check, Status.FAIL, f"GPU {exc.index} is lost: {exc}", fatal=True, devices=(lost_device(exc.index, str(exc)),)
    )


def _out_of_service(indices: Iterable[int]) -> str:
    return (
        f"GPU {', '.join(str(i) for i in sorted(indices))} out of service (lost, reset required "
        "or unpowered: NVML_ERROR_GPU_IS_LOST, RESET_REQUIRED, INSUFFICIENT_POWER)"
    )


def _reported_lost(result: CheckResult) -> set[int]:
    """The GPUs ``result`` already names out of service (``with_lost``'s ``gpus_lost``)."""
    raw = result.data.get("gpus_lost")
    return {i for i in raw if isinstance(i, int) and not isinstance(i, bool)} if isinstance(raw, list) else set()


def with_lost(result: CheckResult, lost: Mapping[int, str]) -> CheckResult:
    """``result`` of a GPU check that itself met GPUs out of service (index -> NVML's words, ``errors.GpuLost``):
    a fatal ``fail`` with a ``fail`` device for each (``lost_device``, in place of the check's own entry for it), as
    ``judge`` makes of the GPUs the census finds so. The check's own reading must say it: a context built without a
    GPU probe takes no census, and a GPU may go out of service after the census was taken."""
    if not lost:
        return result
    added = [lost_device(i, words) for i, words in sorted(lost.items())]
    replaced = {d.id for d in added}
    return dataclasses.replace(
        result,
        status=Status.FAIL,
        fatal=True,
        summary=_joined(_out_of_service(lost), result),
        devices=(*(d for d in result.devices if d.id not in replaced), *added),
        data={**result.data, "gpus_lost": sorted(_reported_lost(result) | set(lost))},
    )


def judge(census: Census, result: CheckResult) -> CheckResult:
    """``result`` of a GPU check, corrected by what ``census`` says (the rules above)."""
    expected = census.expected
    if census.visible is None:
        if not expected.count:
            return result  # no GPU expected, none working: the engine's skipped (or the check's answer) stands
        why = f"{census.nvml_error} (this node should have {expected.count} GPUs: {expected.describe()})"
        return dataclasses.replace(
            result,
            status=worst([Status.ERROR, result.status]),
            # A skip here only repeats NVML's failure ("no GPU here: ..."), which ``why`` already says.
            summary=why if result.status is Status.SKIPPED else _joined(why, result),
            data={**result.data, "gpus_expected": expected.count, "nvml_error": census.nvml_error},
        )
    if not census.shortfall and not census.lost:
        return result
    findings: list[str] = []
    added = [lost_device(i, words) for i, words in sorted(census.lost.items())]
    reported = _reported_lost(result)
    if set(census.lost) - reported:  # the check's own reading (``with_lost``) already says so of the others
        findings.append(_out_of_service(set(census.lost) - reported))
    if census.shortfall:
        shown = expected.count - census.shortfall
        names = census.missing
        which = f"missing {', '.join(names)}" if names else "bus ids unknown"
        findings.append(
            f"{shown} of {expected.count} expected GPUs visible to NVML ({which}: fell off the bus?; "
            f"expected from {expected.describe()})"
        )
        added += [DeviceResult(b, Status.FAIL, detail=FELL_OFF) for b in names]
    replaced = {d.id for d in added}
    return dataclasses.replace(
        result,
        status=Status.FAIL,
        fatal=True,
        summary=_joined("; ".join(findings), result),
        devices=(*(d for d in result.devices if d.id not in replaced), *added),
        data={
            **result.data,
            "gpus_expected": expected.count,
            "gpus_visible": census.visible,
            "gpus_missing": list(census.missing),
            "gpus_lost": sorted(set(census.lost) | reported),
        },
    )


def _joined(finding: str, result: CheckResult) -> str:
    return f"{finding}; {result.check}: {result.summary}" if result.summary else finding
