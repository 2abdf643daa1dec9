"""History per GPU: the incidents of one physical GPU, and whether it is a repeat offender. Pure.

An incident is recorded against the GPU's UUID (and its board serial, when the board reports
one), never against its node, so it survives the node being renamed or re-imaged and follows a
GPU moved to another node. Kinds:

``verdict``  the GPU's verdict changed (changes only between ``PASS`` and ``UNKNOWN``, which
             are results ageing out, are not incidents)
``clear``    a sticky ``EVICT`` was lifted (a level-3 DCGM pass, or an operator's clear)
``event``    a bad finding on the GPU from a result of a check that is not periodic (a passive
             event follower's result, an on-demand run), new since the last reconcile

A GPU with at least ``count`` incidents that are faults (``event``, or a change into ``WARN`` or
``EVICT``) within ``window_s`` is a repeat offender: ``offender_reason`` says so, and it is added
to the GPU's reasons and exported as a metric. Storage (bounded by count and age) is the
store's job (``workers/gpustore.py``); this module decides what is recorded and what it means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from autopilot import results
from autopilot.gpuverdict import GpuState
from autopilot.results import CheckResult
from autopilot.verdict import Verdict

VERDICT = "verdict"
CLEAR = "clear"
EVENT = "event"
_QUIET = frozenset({Verdict.PASS.value, Verdict.UNKNOWN.value})


@dataclasses.dataclass(frozen=True)
class Incident:
    at: str
    uuid: str
    node: str
    kind: str
    verdict: str
    before: str = ""
    serial: str = ""
    reasons: tuple[str, ...] = ()

    @property
    def is_fault(self) -> bool:
        return self.kind == EVENT or (
            self.kind == VERDICT and self.verdict in (Verdict.WARN.value, Verdict.EVICT.value)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "uuid": self.uuid,
            "serial": self.serial,
            "node": self.node,
            "kind": self.kind,
            "verdict": self.verdict,
            "before": self.before,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Incident:
        return cls(
            at=str(raw.get("at") or ""),
            uuid=str(raw.get("uuid") or ""),
            node=str(raw.get("node") or ""),
            kind=str(raw.get("kind") or ""),
            verdict=str(raw.get("verdict") or ""),
            before=str(raw.get("before") or ""),
            serial=str(raw.get("serial") or ""),
            reasons=tuple(str(r) for r in raw.get("reasons") or ()),
        )


def incidents(
    node: str,
    before: Mapping[str, GpuState],
    after: Mapping[str, GpuState],
    *,
    now: datetime,
    new_results: Iterable[CheckResult] = (),
    periodic: Iterable[str] = (),
) -> list[Incident]:
    """What changed between two reconciles of ``node``'s GPUs, one incident per GPU and kind.

    ``new_results``: the results written since the last reconcile (their bad GPU devices of
    non-periodic checks are ``event`` incidents). Only GPUs with a UUID get incidents: a GPU
    known by its address alone has no identity to keep a history under.
    """
    stamp = results.utc_now_iso(now)
    out: list[Incident] = []
    for key, state in after.items():
        if not state.uuid:
            continue
        old = before.get(key)
        old_verdict = old.verdict.value if old is not None else ""
        new_verdict = state.verdict.value
        if old is not None and old.evicted_at and not state.evicted_at:
            kind = CLEAR
        elif old_verdict != new_verdict and not ({old_verdict or Verdict.PASS.value, new_verdict} <= _QUIET):
            kind = VERDICT
        else:
            continue
        out.append(Incident(stamp, state.uuid, node, kind, new_verdict, old_verdict, state.serial, state.reasons))
    skip = set(periodic)
    for result in new_results:
        if result.check in skip:
            continue
        for device in result.devices:
            if device.uuid and device.status.value in ("warn", "fail", "error"):
                out.append(
                    Incident(
                        result.started_at or stamp,
                        device.uuid,
                        node,
                        EVENT,
                        device.status.value,
                        serial=device.serial,
                        reasons=(f"{result.check}: {device.detail or result.summary}"[:200],),
                    )
                )
    return out


def standing_eviction(found: Sequence[Incident]) -> Incident | None:
    """The ``EVICT`` verdict incident that still stands in one GPU's incidents (newest first): the newest of its
    verdict changes and clears is a change into ``EVICT``; None when none stands (never evicted, or cleared)."""
    for incident in found:
        if incident.kind == CLEAR:
            return None
        if incident.kind == VERDICT:
            return incident if incident.verdict == Verdict.EVICT.value else None
    return None


OFFENDER = "repeat offender"  # how a repeat offender's reason starts (metrics and reconcile look for it)


def offender_reason(found: Sequence[Incident], *, now: datetime, count: int, window_s: float) -> str:
    """``"repeat offender: N incidents in the last D days"`` when ``found`` has ``count`` faults within
    ``window_s`` of ``now``; empty otherwise (and always when ``count`` is 0: the rule is off)."""
    if count <= 0:
        return ""
    recent = [i for i in found if i.is_fault and _age_s(i.at, now) <= window_s]
    if len(recent) < count:
        return ""
    return f"{OFFENDER}: {len(recent)} incidents in the last {window_s / 86400:g} days"


def _age_s(stamp: str, now: datetime) -> float:
    try:
        return (now - results.parse_iso(stamp)).total_seconds()
    except ValueError:
        return float("inf")


def retained(
    found: Iterable[Incident], *, now: datetime, retention_s: float, offsets: Mapping[str, float | None] | None = None
) -> list[Incident]:
    """The incidents younger than ``retention_s`` (the store trims the rest).

    ``offsets``: node -> its worker's clock minus the store's (``clock_offset``), with ``now`` the store's clock: an
    incident is stamped on the clock of the node that recorded it (its reconcile's), so its age is judged at ``now``
    on that clock, as that node's reconcile judges it. None: every stamp on ``now``'s clock."""
    if not offsets:
        return [i for i in found if _age_s(i.at, now) <= retention_s]
    return [i for i in found if _age_s(i.at, results.on_node_clock(now, offsets.get(i.node))) <= retention_s]
