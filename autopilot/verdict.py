"""The node verdict of ARCHITECTURE.md 4.2: a pure function of the latest results.

``EVICT``  a fresh result is a fatal ``fail`` (or the node was evicted and nothing has cleared it)
``WARN``   a fresh result is ``fail``, ``warn`` or ``error``
``UNKNOWN`` a periodic check has no fresh result (never ran, or older than three intervals)
``PASS``   otherwise
``TESTING`` while an invasive Job holds the node (it wins over everything but a sticky ``EVICT``)

``EVICT`` is sticky: once a node is evicted only a passing invasive DCGM run (level 3 or more)
that started after the eviction, or an operator's clear, lifts it. A periodic pass never does.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from datetime import datetime

from autopilot import results
from autopilot.results import CheckResult, Status


class Verdict(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    EVICT = "EVICT"
    TESTING = "TESTING"
    UNKNOWN = "UNKNOWN"


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]


def is_fresh(result: CheckResult, now: datetime, max_age_s: float) -> bool:
    if not result.started_at:
        return False
    age = (now - results.parse_iso(result.started_at)).total_seconds()
    return age <= max_age_s


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
) -> Decision:
    """Verdict for one node from its latest result per check.

    ``evicted_at`` is when the node was last given ``EVICT`` (None if it is not evicted);
    ``testing`` is true while an invasive Job holds the node.
    """
    found = list(latest.values()) if isinstance(latest, Mapping) else list(latest)
    fresh = [r for r in found if is_fresh(r, now, max_age_s)]
    if evicted_at is not None and not any(clears_evict(r, evicted_at) for r in found):
        return Decision(Verdict.EVICT, (f"evicted since {results.utc_now_iso(evicted_at)}; not cleared",))
    fatal = [r for r in fresh if r.status is Status.FAIL and r.fatal]
    if fatal:
        return Decision(Verdict.EVICT, tuple(f"{r.check}: {r.summary}" for r in fatal))
    if testing:
        return Decision(Verdict.TESTING, ("an invasive test holds the node",))
    bad = [r for r in fresh if r.is_bad]
    if bad:
        return Decision(Verdict.WARN, tuple(f"{r.check}: {r.status.value}: {r.summary}" for r in bad))
    have = {r.check for r in fresh}
    missing = [c for c in periodic if c not in have]
    if missing:
        return Decision(Verdict.UNKNOWN, tuple(f"{c}: no fresh result" for c in missing))
    return Decision(Verdict.PASS, ())
