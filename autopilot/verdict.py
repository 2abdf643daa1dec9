"""The node verdict of ARCHITECTURE.md 4.2: a pure function of the latest results.

``EVICT``  a fresh result is a fatal ``fail`` (or the node was evicted and nothing has cleared it)
``UNKNOWN`` the node is lost: no heartbeat for ``AUTOPILOT_NODE_LOST_AFTER`` ("no heartbeat since <time>")
``TESTING`` while an invasive Job holds the node
``WARN``   a fresh result is ``fail``, ``warn`` or ``error``
``UNKNOWN`` a periodic check has no fresh result (never ran, older than three intervals, or stamped further ahead)
``PASS``   otherwise

The first that applies wins. ``EVICT`` is sticky: once a node is evicted only a passing invasive
DCGM run (level 3 or more) that started after the eviction (and is not stamped ahead of the clock:
``is_ahead``), or an operator's clear, lifts it; a
periodic pass never does, and neither does losing the node (its GPUs are still bad when it comes
back). The eviction's causes (check, GPUs, summary, time of the result) are kept with it and
named in its reason for as long as it holds.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from autopilot import results
from autopilot.results import CheckResult, Status


class Verdict(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    EVICT = "EVICT"
    TESTING = "TESTING"
    UNKNOWN = "UNKNOWN"


@dataclasses.dataclass(frozen=True)
class Cause:
    """Why a node was evicted: one fatal result, as it was when the eviction was decided."""

    check: str
    summary: str
    at: str  # the result's ``started_at``
    gpus: tuple[str, ...] = ()  # ids of the failing devices

    @classmethod
    def of(cls, result: CheckResult) -> Cause:
        gpus = tuple(d.id for d in result.devices if d.status is Status.FAIL)
        return cls(result.check, result.summary, result.started_at, gpus)

    def text(self) -> str:
        """``dcgm on GPU 3: PCIe failed (2026-11-29T22:00:00Z)``."""
        where = f" on GPU {','.join(self.gpus)}" if self.gpus else ""
        return f"{self.check}{where}: {self.summary} ({self.at or 'time unknown'})"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "summary": self.summary, "at": self.at, "gpus": list(self.gpus)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Cause:
        gpus = tuple(str(g) for g in raw.get("gpus") or ())
        return cls(str(raw.get("check", "")), str(raw.get("summary", "")), str(raw.get("at", "")), gpus)


def causes_to_json(causes: Sequence[Cause]) -> str:
    return json.dumps([c.to_dict() for c in causes])


def causes_from_json(raw: str | None) -> tuple[Cause, ...]:
    """The causes stored with an eviction; () for none, or for a value this version cannot read."""
    try:
        items = json.loads(raw) if raw else []
    except ValueError:
        return ()
    return tuple(Cause.from_dict(i) for i in items if isinstance(i, dict)) if isinstance(items, list) else ()


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    causes: tuple[Cause, ...] = ()
    """For ``EVICT``: the fatal results that caused it (kept from the first decision while it holds)."""
    notes: tuple[str, ...] = ()
    """What else a reader should know that is no reason for the verdict (who cleared an eviction)."""


def lost_reason(last_seen: datetime) -> str:
    return f"no heartbeat since {results.utc_now_iso(last_seen)}"


def is_fresh(result: CheckResult, now: datetime, max_age_s: float) -> bool:
    """Started at most ``max_age_s`` before ``now``, and at most as long after it: a result stamped further
    ahead (a clock gone wrong, another writer) can be placed nowhere, and would count for ever."""
    if not result.started_at:
        return False
    age = (now - results.parse_iso(result.started_at)).total_seconds()
    return -max_age_s <= age <= max_age_s


def is_ahead(result: CheckResult, now: datetime, max_age_s: float) -> bool:
    """Stamped further ahead of ``now`` than a result stays fresh (``is_fresh``): placed nowhere in time, it
    neither counts as fresh nor clears an eviction (any stamp far enough ahead "started after" it)."""
    return bool(result.started_at) and (results.parse_iso(result.started_at) - now).total_seconds() > max_age_s


def clears_evict(result: CheckResult, evicted_at: datetime | None) -> bool:
    """An invasive DCGM pass (level >= 3) that started after the eviction."""
    if result.check != "dcgm" or result.status is not Status.OK:
        return False
    if int(result.params.get("r", 0) or 0) < 3:
        return False
    return evicted_at is None or results.parse_iso(result.started_at) > evicted_at


def decide(
    latest: Mapping[str, CheckResult] | Iterable[CheckResult],
    *,
    periodic: Iterable[str],
    now: datetime,
    max_age_s: float,
    evicted_at: datetime | None = None,
    testing: bool = False,
    lost_since: datetime | None = None,
    evict_causes: Sequence[Cause] = (),
) -> Decision:
    """Verdict for one node from its latest result per check.

    ``evicted_at`` is when the node was last given ``EVICT`` (None if it is not evicted) and
    ``evict_causes`` what caused it; ``testing`` is true while an invasive Job holds the node;
    ``lost_since`` is the node's last heartbeat when it is lost (None while it is heard from).
    """
    found = list(latest.values()) if isinstance(latest, Mapping) else list(latest)
    fresh = [r for r in found if is_fresh(r, now, max_age_s)]
    lost = (lost_reason(lost_since),) if lost_since is not None else ()
    if evicted_at is not None and not any(
        clears_evict(r, evicted_at) and not is_ahead(r, now, max_age_s) for r in found
    ):
        since = results.utc_now_iso(evicted_at)
        if evict_causes:
            held = tuple(f"evicted since {since} by {c.text()}; not cleared" for c in evict_causes)
        else:
            held = (f"evicted since {since}; not cleared",)
        return Decision(Verdict.EVICT, held + lost, tuple(evict_causes))
    fatal = [r for r in fresh if r.status is Status.FAIL and r.fatal]
    if fatal:
        reasons = tuple(f"{r.check}: {r.summary}" for r in fatal)
        return Decision(Verdict.EVICT, reasons + lost, tuple(Cause.of(r) for r in fatal))
    if lost:
        return Decision(Verdict.UNKNOWN, lost)
    if testing:
        return Decision(Verdict.TESTING, ("an invasive test holds the node",))
    bad = [r for r in fresh if r.is_bad]
    if bad:
        return Decision(Verdict.WARN, tuple(f"{r.check}: {r.status.value}: {r.summary}" for r in bad))
    have = {r.check for r in fresh}
    missing = [c for c in periodic if c not in have]
    if missing:
        ahead = {r.check: r.started_at for r in found if is_ahead(r, now, max_age_s)}
        return Decision(Verdict.UNKNOWN, tuple(_missing(c, ahead.get(c)) for c in missing))
    return Decision(Verdict.PASS, ())


def _missing(check: str, ahead: str | None) -> str:
    if ahead is None:
        return f"{check}: no fresh result"
    return f"{check}: no fresh result (the latest is stamped {ahead}, ahead of this clock)"
