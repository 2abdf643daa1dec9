"""The node verdict of ARCHITECTURE.md 4.2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from autopilot import results
from autopilot.results import CheckResult, Status
from autopilot.verdict import Verdict, decide

NOW = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
PERIODIC = ("pciebw", "remapped")
HOUR = 3600.0


def res(check: str, status: Status, *, age_s: float = 60, fatal: bool = False, **params: object) -> CheckResult:
    return CheckResult(
        check, status, fatal=fatal, started_at=results.utc_now_iso(NOW - timedelta(seconds=age_s)), params=params
    )


def verdict(found: list[CheckResult], **kw: object) -> Verdict:
    return decide(found, periodic=PERIODIC, now=NOW, max_age_s=3 * HOUR, **kw).verdict  # type: ignore[arg-type]


def test_all_fresh_ok_is_pass() -> None:
    assert verdict([res("pciebw", Status.OK), res("remapped", Status.OK)]) is Verdict.PASS


def test_skipped_counts_as_fresh_and_not_bad() -> None:
    assert verdict([res("pciebw", Status.SKIPPED), res("remapped", Status.OK)]) is Verdict.PASS


def test_error_is_never_a_pass() -> None:
    assert verdict([res("pciebw", Status.ERROR), res("remapped", Status.OK)]) is Verdict.WARN


def test_fatal_fail_evicts_and_nonfatal_warns() -> None:
    assert verdict([res("pciebw", Status.OK), res("remapped", Status.FAIL, fatal=True)]) is Verdict.EVICT
    assert verdict([res("pciebw", Status.FAIL), res("remapped", Status.OK)]) is Verdict.WARN


def test_missing_or_stale_periodic_result_is_unknown() -> None:
    assert verdict([res("pciebw", Status.OK)]) is Verdict.UNKNOWN
    assert verdict([res("pciebw", Status.OK), res("remapped", Status.OK, age_s=3 * HOUR + 1)]) is Verdict.UNKNOWN


def test_stale_failure_no_longer_counts() -> None:
    found = [res("pciebw", Status.OK), res("remapped", Status.OK), res("dcgm", Status.FAIL, age_s=4 * HOUR)]
    assert verdict(found) is Verdict.PASS


def test_evict_is_sticky_until_a_level3_dcgm_pass_after_it() -> None:
    evicted_at = NOW - timedelta(minutes=30)
    ok = [res("pciebw", Status.OK), res("remapped", Status.OK)]
    assert verdict(ok, evicted_at=evicted_at) is Verdict.EVICT
    assert verdict([*ok, res("dcgm", Status.OK, r=1)], evicted_at=evicted_at) is Verdict.EVICT
    assert verdict([*ok, res("dcgm", Status.OK, age_s=3600, r=3)], evicted_at=evicted_at) is Verdict.EVICT
    assert verdict([*ok, res("dcgm", Status.OK, age_s=60, r=3)], evicted_at=evicted_at) is Verdict.PASS


def test_testing_holds_unless_fatal() -> None:
    ok = [res("pciebw", Status.OK), res("remapped", Status.OK)]
    assert verdict(ok, testing=True) is Verdict.TESTING
    assert verdict([*ok, res("remapped", Status.FAIL, fatal=True)], testing=True) is Verdict.EVICT
