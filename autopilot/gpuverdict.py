"""A verdict per GPU, keyed by its UUID: pure functions from a node's latest results to its GPUs' states.

Every fresh result contributes its GPU devices (those with a ``uuid`` or ``bus_id``, which the
engine stamps on the devices of GPU checks, or any device of a GPU check): for each GPU,

``EVICT``   a ``fail`` device of a fatal result (row remap failure, a lost GPU, a DCGM fatal
            category), or the GPU was evicted and nothing has cleared it (sticky, as the node's)
``WARN``    a ``fail``, ``warn`` or ``error`` device
``PASS``    only ``ok`` (or ``skipped``) devices; a device skipped as in use by others adds its
            detail to the reasons, whatever the verdict (docs/RESULTS.md)
``UNKNOWN`` the GPU is known from earlier but no fresh result names it

Each GPU also keeps, per figure check (``pciebw``, ``gpumem``), when its figure was last actually
measured (``measured``: an ``ok``/``warn``/``fail`` device with a figure, not in use by others), or,
never measured, since when a fresh result of that check named it unmeasured (``unmeasured_since``). A
GPU left unmeasured past ``unmeasured_after_s`` gets "pciebw not measured for 9 d (in use by others)"
among its reasons: informational, its verdict unchanged (a busy GPU is no finding).

A GPU's ``EVICT`` is cleared as the node's is (ARCHITECTURE.md 4.2): a level-3 DCGM pass that
started after it, or an operator's clear of the node. The node verdict stays
``verdict.decide`` over the same results (so upstream's label keeps its meaning); it is never
better than its worst GPU, since a GPU's ``EVICT``/``WARN`` comes from a result that moves the
node's too. Results without GPU devices (``ping``, ``iperf``, ``pvc``, a check that could not
run at all) are node-level findings and stay with the node verdict only.

Published beside the node's labels (``labels``): counts of GPUs that are ``EVICT``, ``WARN``
and healthy (``PASS``), and an annotation (``annotation``) with every GPU's verdict, reasons and
since-when, bounded to ``ANNOTATION_LIMIT`` bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from autopilot import baseline, registry, results, verdict
from autopilot.labeling import PREFIX
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.verdict import Verdict

GPUS_EVICT = PREFIX + "gpus-evict"
GPUS_WARN = PREFIX + "gpus-warn"
GPUS_HEALTHY = PREFIX + "gpus-healthy"
ANNOTATION = PREFIX + "gpus"
ANNOTATION_LIMIT = 16 * 1024
"""Bytes of the ``autopilot.ibm.com/gpus`` annotation (Kubernetes allows 256 KiB for all of a Node's)."""
REASONS_PER_GPU = 4
REASON_CHARS = 200
MAX_GPUS = 64
"""GPUs kept per node: a node never has more; past it the oldest UNKNOWN entries are forgotten."""

FIGURE_CHECKS = tuple(baseline.GPU_FIELDS)
"""Checks whose per-GPU figure may go unmeasured while others use the GPU (``pciebw``, ``gpumem``)."""
_FIGURE_UNIT = "GB/s"  # pciebw's link-only mode stores lane counts: no bandwidth was measured

_ORDER = {Verdict.PASS: 0, Verdict.UNKNOWN: 1, Verdict.WARN: 2, Verdict.EVICT: 3}


@dataclasses.dataclass(frozen=True)
class GpuState:
    """One GPU's verdict on its node. ``key`` is its UUID, or ``bus:<id>`` / ``index:<n>`` when unknown."""

    key: str
    verdict: Verdict
    since: str
    uuid: str = ""
    index: str = ""
    bus_id: str = ""
    reasons: tuple[str, ...] = ()
    evicted_at: str = ""
    serial: str = ""
    measured: tuple[tuple[str, str], ...] = ()
    """(check, when its figure of this GPU was last measured), sorted by check."""
    unmeasured_since: tuple[tuple[str, str], ...] = ()
    """(check, since when it named this GPU without ever measuring it), sorted by check."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "index": self.index,
            "bus_id": self.bus_id,
            "verdict": self.verdict.value,
            "since": self.since,
            "reasons": list(self.reasons),
        }
        if self.evicted_at:
            out["evicted_at"] = self.evicted_at
        if self.serial:
            out["serial"] = self.serial
        if self.measured:
            out["measured"] = dict(self.measured)
        if self.unmeasured_since:
            out["unmeasured_since"] = dict(self.unmeasured_since)
        return out

    @classmethod
    def from_dict(cls, key: str, raw: Mapping[str, Any]) -> GpuState:
        try:
            found = Verdict(str(raw.get("verdict")))
        except ValueError:
            found = Verdict.UNKNOWN
        return cls(
            key=key,
            verdict=found,
            since=str(raw.get("since") or ""),
            uuid=str(raw.get("uuid") or ""),
            index=str(raw.get("index") or ""),
            bus_id=str(raw.get("bus_id") or ""),
            reasons=tuple(str(r) for r in raw.get("reasons") or ()),
            evicted_at=str(raw.get("evicted_at") or ""),
            serial=str(raw.get("serial") or ""),
            measured=_stamps(raw.get("measured")),
            unmeasured_since=_stamps(raw.get("unmeasured_since")),
        )


def _stamps(raw: object) -> tuple[tuple[str, str], ...]:
    """A stored check -> time mapping, only the figure checks' readable times kept (anything else is dropped)."""
    if not isinstance(raw, Mapping):
        return ()
    found = {
        c: _canonical(s) if isinstance(s, str) and len(s) <= 40 else None for c, s in raw.items() if c in FIGURE_CHECKS
    }
    return tuple(sorted((c, at) for c, at in found.items() if at is not None))


@functools.lru_cache(maxsize=4096)
def _canonical(stamp: str) -> str | None:
    """``stamp`` in the one format of results (so that two times compare as text), None when unreadable.
    Cached: the GPUs a result measured share its time, and /metrics reads every node's GPUs per rendering."""
    at = _when(stamp)
    return results.utc_now_iso(at) if at is not None else None


def _when(stamp: str) -> datetime | None:
    try:
        return results.parse_iso(stamp) if stamp else None
    except (ValueError, TypeError, OverflowError):
        return None


def dumps(states: Mapping[str, GpuState]) -> str:
    """The node-state form (``state:<node>`` field ``gpus``): key -> state, sorted."""
    return json.dumps({k: states[k].to_dict() for k in sorted(states)}, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> dict[str, GpuState]:
    """Inverse of ``dumps``; anything unreadable is no state (the next reconcile rebuilds it)."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): GpuState.from_dict(str(k), v) for k, v in raw.items() if isinstance(v, dict)}


def _is_gpu_device(result: CheckResult, device: DeviceResult, checks: registry.CheckRegistry) -> bool:
    if device.uuid or device.bus_id:
        return True
    return bool(result.check in checks and checks.get(result.check).uses_gpu and device.id.isdigit())


@dataclasses.dataclass
class _Seen:
    uuid: str = ""
    index: str = ""
    bus_id: str = ""
    serial: str = ""
    worst: Verdict = Verdict.PASS
    reasons: list[str] = dataclasses.field(default_factory=list)
    looked: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: dict[str, tuple[bool, str, str]] = dataclasses.field(default_factory=dict)
    """check -> (measured, why not, the result's start) for this GPU's device in a fresh figure check."""


def decide(
    latest: Mapping[str, CheckResult] | Iterable[CheckResult],
    previous: Mapping[str, GpuState],
    *,
    now: datetime,
    max_age_s: float,
    cleared_at: datetime | None = None,
    flags: Mapping[str, str] | None = None,
    checks: registry.CheckRegistry,
    unmeasured_after_s: float = 0.0,
) -> dict[str, GpuState]:
    """Each GPU's state from the node's latest results and its previous GPU states.

    ``cleared_at``: the operator's last clear of the node (lifts every GPU's sticky ``EVICT``
    that began before it). ``flags``: UUID -> a reason to add whatever the verdict (a repeat
    offender, from ``gpuhistory``). ``unmeasured_after_s``: a GPU whose figure a fresh result
    left unmeasured, last measured longer ago than this, says so among its reasons (0: never).
    """
    found = list(latest.values()) if isinstance(latest, Mapping) else list(latest)
    fresh = [r for r in found if verdict.is_fresh(r, now, max_age_s)]
    by_bus = {s.bus_id: k for k, s in previous.items() if s.bus_id}
    by_index = {s.index: k for k, s in previous.items() if s.index and s.uuid}
    seen: dict[str, _Seen] = {}
    # Devices with a UUID first, so that a device known only by index or bus id in another
    # result lands on the same GPU.
    pairs = [(r, d) for r in fresh for d in r.devices if _is_gpu_device(r, d, checks)]
    for result, device in sorted(pairs, key=lambda p: not p[1].uuid):
        if device.uuid:
            key = device.uuid
            if device.bus_id:
                by_bus[device.bus_id] = key
            if device.id.isdigit():
                by_index[device.id] = key
        elif device.bus_id:
            key = by_bus.get(device.bus_id, f"bus:{device.bus_id}")
        else:
            key = by_index.get(device.id, f"index:{device.id}")
        entry = seen.setdefault(key, _Seen())
        entry.uuid = entry.uuid or device.uuid
        entry.bus_id = entry.bus_id or device.bus_id
        entry.serial = entry.serial or device.serial
        if device.id.isdigit():
            entry.index = entry.index or device.id
        contribution = _contribution(result, device)
        if contribution is not None:
            entry.looked = True
            if _ORDER[contribution] > _ORDER[entry.worst]:
                entry.worst = contribution
            if contribution is not Verdict.PASS:
                entry.reasons.append(_reason(result, device))
        elif _in_use_by_others(result, device):
            # No finding, yet the only sign in the per-GPU view that this GPU's figure went
            # unjudged (a GPU held at every run never is): the skip and its evidence.
            entry.notes.append(_reason(result, device))
        if result.check in FIGURE_CHECKS:
            entry.figures[result.check] = _figure(result, device)
    clears = [r for r in found if r.check == "dcgm" and not verdict.is_ahead(r, now, max_age_s)]
    out: dict[str, GpuState] = {}
    for key in set(previous) | set(seen):
        before = previous.get(key)
        current = seen.get(key)
        if current is not None:
            entry = current
            if not entry.looked:
                entry.worst, entry.reasons = Verdict.UNKNOWN, ["no fresh finding (skipped)"]
            entry.reasons += entry.notes
        elif before is None or (before.bus_id and any(s.bus_id == before.bus_id for s in seen.values())):
            continue  # another GPU now sits at its address: this one was replaced
        else:
            entry = _Seen(before.uuid, before.index, before.bus_id, before.serial, Verdict.UNKNOWN, ["no fresh result"])
        state = _state(key, entry, before, clears, now=now, cleared_at=cleared_at)
        state = _coverage(state, before, entry.figures, now=now, after_s=unmeasured_after_s)
        flag = (flags or {}).get(state.uuid)
        if flag:
            state = dataclasses.replace(state, reasons=(*state.reasons, flag))
        out[key] = state
    return _bounded(out)


def _contribution(result: CheckResult, device: DeviceResult) -> Verdict | None:
    if device.status is Status.FAIL:
        return Verdict.EVICT if result.fatal else Verdict.WARN
    if device.status in (Status.WARN, Status.ERROR):
        return Verdict.WARN
    if device.status is Status.OK:
        return Verdict.PASS
    return None  # skipped or busy: not looked at


def _figure(result: CheckResult, device: DeviceResult) -> tuple[bool, str, str]:
    """(whether the device's figure was measured, why not, the result's start): measured is a judged device with
    a bandwidth figure that nobody else shared; skipped (in use by others, MIG, ...) and error are not."""
    stamp = _canonical(result.started_at) or ""
    if _busy_entry(result, device):
        return False, "in use by others", stamp
    if device.status not in (Status.OK, Status.WARN, Status.FAIL):
        return False, device.status.value, stamp
    value = device.value
    figure = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    return (True, "", stamp) if figure and device.unit == _FIGURE_UNIT else (False, "no figure", stamp)


def _coverage(
    state: GpuState,
    before: GpuState | None,
    figures: Mapping[str, tuple[bool, str, str]],
    *,
    now: datetime,
    after_s: float,
) -> GpuState:
    """``state`` with its measured times carried from ``before`` and moved by this view's figure checks, and a
    "not measured for" reason for each check that left it unmeasured past ``after_s`` (never its verdict)."""
    measured = dict(before.measured) if before is not None else {}
    unmeasured = dict(before.unmeasured_since) if before is not None else {}
    notes: list[str] = []
    for check, (took, why, stamp) in sorted(figures.items()):
        if took:
            if stamp and stamp > measured.get(check, ""):
                measured[check] = stamp
            unmeasured.pop(check, None)
            continue
        if check not in measured:
            unmeasured.setdefault(check, stamp or results.utc_now_iso(now))
        start = _when(measured.get(check) or unmeasured.get(check, ""))
        if after_s > 0 and start is not None and (now - start).total_seconds() > after_s:
            notes.append(f"{check} not measured for {_span((now - start).total_seconds())} ({why})")
    new_measured, new_unmeasured = tuple(sorted(measured.items())), tuple(sorted(unmeasured.items()))
    if not notes and new_measured == state.measured and new_unmeasured == state.unmeasured_since:
        return state
    return dataclasses.replace(
        state,
        measured=new_measured,
        unmeasured_since=new_unmeasured,
        reasons=tuple(dict.fromkeys((*state.reasons, *notes))),
    )


def _span(seconds: float) -> str:
    """``9 d``, ``5 h`` or ``40 min``: whole units, rounded down (the reason changes at most once a day past a day)."""
    if seconds >= 86400:
        return f"{int(seconds // 86400)} d"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 60)} min"


def coverage_changed_only(before: Mapping[str, GpuState], after: Mapping[str, GpuState]) -> bool:
    """Whether ``after`` differs from ``before`` in the GPUs' measured times alone (nothing a sighting,
    a label or the annotation shows): the reconcile then writes no GPU history."""
    if before.keys() != after.keys():
        return False

    def bare(state: GpuState) -> GpuState:
        return dataclasses.replace(state, measured=(), unmeasured_since=())

    return all(bare(before[k]) == bare(after[k]) for k in before)


def _busy_entry(result: CheckResult, device: DeviceResult) -> bool:
    per_gpu = result.data.get("gpus")
    entry = per_gpu.get(device.id) if isinstance(per_gpu, Mapping) else None
    return isinstance(entry, Mapping) and baseline.in_use_by_others(entry)


def _in_use_by_others(result: CheckResult, device: DeviceResult) -> bool:
    """A ``skipped`` device whose ``data.gpus.<id>`` says others used the GPU while it was measured."""
    return device.status is Status.SKIPPED and _busy_entry(result, device)


def _reason(result: CheckResult, device: DeviceResult) -> str:
    text = f"{result.check}: {device.status.value}: {device.detail or result.summary}"
    return text[:REASON_CHARS]


def _state(
    key: str,
    entry: _Seen,
    before: GpuState | None,
    clears: Sequence[CheckResult],
    *,
    now: datetime,
    cleared_at: datetime | None,
) -> GpuState:
    stamp = results.utc_now_iso(now)
    evicted_at = before.evicted_at if before is not None else ""
    if evicted_at:
        moment = results.parse_iso(evicted_at)
        lifted = (cleared_at is not None and cleared_at > moment) or any(
            verdict.clears_evict(r, moment) for r in clears
        )
        if lifted:
            evicted_at = ""
        elif entry.worst is not Verdict.EVICT:
            entry.worst = Verdict.EVICT
            entry.reasons.insert(0, f"evicted since {evicted_at}; not cleared")
    if entry.worst is Verdict.EVICT and not evicted_at:
        evicted_at = stamp
    since = before.since if before is not None and before.verdict is entry.worst and before.since else stamp
    return GpuState(
        key=key,
        verdict=entry.worst,
        since=since,
        uuid=entry.uuid,
        index=entry.index,
        bus_id=entry.bus_id,
        reasons=tuple(dict.fromkeys(entry.reasons)),
        evicted_at=evicted_at if entry.worst is Verdict.EVICT else "",
        serial=entry.serial or (before.serial if before is not None else ""),
    )


def _bounded(states: dict[str, GpuState]) -> dict[str, GpuState]:
    if len(states) <= MAX_GPUS:
        return states
    # Keep every GPU with a finding; forget the UNKNOWN ones that were last judged longest ago.
    ranked = sorted(states.values(), key=lambda s: (s.verdict is not Verdict.UNKNOWN, s.since), reverse=True)
    return {s.key: s for s in ranked[:MAX_GPUS]}


def counts(states: Mapping[str, GpuState]) -> dict[str, int]:
    """``{"EVICT": n, "WARN": n, "PASS": n, "UNKNOWN": n}`` over the GPUs."""
    out = {v.value: 0 for v in (Verdict.EVICT, Verdict.WARN, Verdict.PASS, Verdict.UNKNOWN)}
    for state in states.values():
        out[state.verdict.value] = out.get(state.verdict.value, 0) + 1
    return out


def labels(states: Mapping[str, GpuState]) -> dict[str, str]:
    """The count labels a scheduler selects on (``gpus-evict``, ``gpus-warn``, ``gpus-healthy``)."""
    found = counts(states)
    return {
        GPUS_EVICT: str(found[Verdict.EVICT.value]),
        GPUS_WARN: str(found[Verdict.WARN.value]),
        GPUS_HEALTHY: str(found[Verdict.PASS.value]),
    }


def ordered(states: Mapping[str, GpuState]) -> list[GpuState]:
    """GPUs by index (those without one last, by key): the order of tables and the annotation."""
    return sorted(
        states.values(), key=lambda s: (not s.index.isdigit(), int(s.index) if s.index.isdigit() else 0, s.key)
    )


def annotation(states: Mapping[str, GpuState], limit: int = ANNOTATION_LIMIT) -> str:
    """Every GPU's verdict, reasons and since-when as JSON, at most ``limit`` bytes.

    ``{"gpus": [{"uuid", "index", "bus_id", "verdict", "since", "reasons"}], "truncated": false}``.
    Each GPU keeps at most ``REASONS_PER_GPU`` reasons of ``REASON_CHARS`` characters. When that
    is still too long, reasons are cut in steps (healthy GPUs' first, then all to one, then none);
    every GPU keeps its uuid, index and verdict, and ``truncated`` says something was cut.
    """
    rows = [s.to_dict() for s in ordered(states)]
    for row in rows:
        row.pop("evicted_at", None)
        row.pop("serial", None)
        # Times that move with every measurement would rewrite the Node at every run.
        row.pop("measured", None)
        row.pop("unmeasured_since", None)
        row["reasons"] = [r[:REASON_CHARS] for r in row["reasons"][:REASONS_PER_GPU]]
    text = _annotation_text(rows, False)
    steps = (
        lambda r: r if r["verdict"] in (Verdict.EVICT.value, Verdict.WARN.value) else {**r, "reasons": []},
        lambda r: {**r, "reasons": r["reasons"][:1]},
        lambda r: {**r, "reasons": []},
        lambda r: {"uuid": r["uuid"], "index": r["index"], "verdict": r["verdict"]},
    )
    for step in steps:
        if len(text.encode()) <= limit:
            return text
        rows = [step(r) for r in rows]
        text = _annotation_text(rows, True)
    if len(text.encode()) <= limit:
        return text
    # More GPUs than fit even bare (never on a real node): keep the worst first.
    rows.sort(key=lambda r: -_ORDER.get(Verdict(r["verdict"]), 0))
    while rows and len(_annotation_text(rows, True).encode()) > limit:
        rows.pop()
    return _annotation_text(rows, True)


def _annotation_text(rows: list[dict[str, Any]], truncated: bool) -> str:
    return json.dumps({"gpus": rows, "truncated": truncated}, separators=(",", ":"))


def publication(states: Mapping[str, GpuState]) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) a node carries for its GPUs (next to ``publish.desired``'s)."""
    return labels(states), {ANNOTATION: annotation(states)}
