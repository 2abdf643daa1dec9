"""Confirm before acting (issue 15 item 2): sequences of one check's results and what the verdict sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from autopilot import confirmation, results
from autopilot.confirmation import Policy, State
from autopilot.results import CheckResult, Status
from autopilot.verdict import Verdict, decide

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = Policy(need=2, window=3, recover=2)


def seq(check: str, *statuses: str, fatal_at: int | None = None, **params: object) -> list[CheckResult]:
    """Results of ``check`` oldest first (one an hour), returned newest first as the store's history is."""
    out = []
    for i, word in enumerate(statuses):
        out.append(
            CheckResult(
                check,
                Status(word),
                f"{check} #{i} {word}",
                node="n1",
                fatal=fatal_at == i,
                started_at=results.utc_now_iso(T0 + timedelta(hours=i)),
                params=dict(params),
            )
        )
    return list(reversed(out))


def states_over(check: str, statuses: list[str], policy: Policy = POLICY, **params: object) -> list[str]:
    """The effective status the verdict sees after each result of the sequence."""
    seen = []
    for n in range(1, len(statuses) + 1):
        j = confirmation.judge(seq(check, *statuses[:n], **params), policy)
        seen.append(j.effective.status.value)
    return seen


def test_one_noisy_failure_between_passes_never_reaches_the_verdict() -> None:
    assert states_over("pciebw", ["ok", "ok", "fail", "ok", "ok"]) == ["ok"] * 5


def test_the_pass_after_a_pending_failure_counts_a_prevented_flap() -> None:
    j = confirmation.judge(seq("pciebw", "ok", "fail", "ok"), POLICY)
    assert j.flap_prevented and j.state is State.CLEAN
    pending = confirmation.judge(seq("pciebw", "ok", "fail"), POLICY)
    assert pending.state is State.PENDING and pending.wants_confirmation_run and not pending.flap_prevented
    assert pending.effective.summary == "pciebw #0 ok"  # the last good result is what the verdict judges


def test_a_repeated_failure_is_confirmed_by_the_second_result() -> None:
    # The confirmation run is the second result: a real fault moves the verdict within one run.
    assert states_over("gpumem", ["ok", "fail", "fail"]) == ["ok", "ok", "fail"]
    assert confirmation.judge(seq("gpumem", "ok", "fail", "fail"), POLICY).state is State.CONFIRMED


def test_two_of_three_confirms_with_a_pass_between() -> None:
    assert states_over("ping", ["ok", "fail", "ok", "fail"]) == ["ok", "ok", "ok", "fail"]


def test_recovery_needs_k_consecutive_passes() -> None:
    # Confirmed at #2; one pass (#3) keeps WARN, the second (#4) recovers.
    assert states_over("iperf", ["ok", "fail", "fail", "ok", "ok"]) == ["ok", "ok", "fail", "fail", "ok"]
    j = confirmation.judge(seq("iperf", "ok", "fail", "fail", "ok"), POLICY)
    assert j.state is State.RECOVERING and j.passes == 1 and j.wants_confirmation_run


def test_a_failure_while_recovering_is_a_prevented_flap_and_resets_the_passes() -> None:
    j = confirmation.judge(seq("iperf", "ok", "fail", "fail", "ok", "fail"), POLICY)
    assert j.flap_prevented and j.state is State.CONFIRMED
    assert states_over("iperf", ["fail", "fail", "ok", "fail", "ok", "ok"])[-2:] == ["fail", "ok"]


@pytest.mark.parametrize(
    ("check", "status", "fatal"),
    [
        ("remapped", "fail", True),  # row-remap failure
        ("dcgm", "fail", True),  # a fatal DCGM category (ECC, PCIe, ...)
        ("pciebw", "fail", True),  # a lost GPU is a fatal fail of whatever check meets it
        ("remapped", "warn", False),  # not a noisy check: a pending remap is a fact, not a sample
        ("gpupower", "warn", False),
        ("pciebw", "error", False),  # a check that could not run is never a pass, not even pending
    ],
)
def test_signals_that_are_never_noise_act_at_once(check: str, status: str, fatal: bool) -> None:
    statuses = ["ok", status]
    j = confirmation.judge(seq(check, *statuses, fatal_at=1 if fatal else None), POLICY)
    assert j.state is State.CONFIRMED and j.effective.status is Status(status)


def test_a_fatal_failure_is_not_held_by_hysteresis_the_sticky_evict_governs_it() -> None:
    # After repair, one fresh pass is what an operator's clear must see (docs/OPERATIONS.md).
    j = confirmation.judge(seq("remapped", "ok", "fail", "ok", fatal_at=1), POLICY)
    assert j.state is State.CLEAN and j.effective.status is Status.OK


def test_a_dcgm_level_3_pass_recovers_at_once() -> None:
    history = seq("dcgm", "fail", "fail", "ok", r=3)
    assert confirmation.judge(history, POLICY).state is State.CLEAN
    level1 = seq("dcgm", "fail", "fail", "ok", r=1)
    assert confirmation.judge(level1, POLICY).state is State.RECOVERING


def test_a_first_ever_result_that_fails_counts_as_it_is_and_asks_for_a_confirmation_run() -> None:
    # No pass to keep judging: holding it back would claim a health nobody measured. Before, it was
    # CLEAN: no confirmation run, so one noise sample of a new node held WARN for a whole interval.
    j = confirmation.judge(seq("pciebw", "fail"), POLICY)
    assert j.effective.status is Status.FAIL and j.state is State.PENDING and j.wants_confirmation_run


def test_a_first_failure_that_its_confirmation_run_does_not_repeat_stops_counting() -> None:
    settled = confirmation.judge(seq("gpumem", "fail", "ok"), POLICY)
    assert settled.state is State.CLEAN and settled.effective.status is Status.OK
    # The verdict did count the first failure (there was no pass to keep): no flap was prevented.
    assert not settled.flap_prevented
    confirmed = confirmation.judge(seq("gpumem", "fail", "fail"), POLICY)
    assert confirmed.state is State.CONFIRMED and confirmed.effective.status is Status.FAIL


def test_a_first_failure_that_is_never_noise_is_not_re_run() -> None:
    j = confirmation.judge(seq("gpupower", "fail"), POLICY)
    assert j.state is State.CONFIRMED and not j.wants_confirmation_run


def test_skipped_results_are_passed_over() -> None:
    assert states_over("pciebw", ["ok", "fail", "skipped", "fail"])[-1] == "fail"
    assert confirmation.judge(seq("pciebw", "ok", "skipped"), POLICY).state is State.CLEAN


def test_need_1_and_recover_1_is_todays_behaviour() -> None:
    at_once = Policy(need=1, window=1, recover=1)
    assert states_over("pciebw", ["ok", "fail", "ok", "fail"], at_once) == ["ok", "fail", "ok", "fail"]


def test_three_of_five_waits_for_the_third() -> None:
    wide = Policy(need=3, window=5, recover=1)
    assert states_over("pciebw", ["ok", "fail", "ok", "fail", "fail"], wide) == ["ok", "ok", "ok", "ok", "fail"]


def test_policy_rejects_impossible_values() -> None:
    with pytest.raises(ValueError):
        Policy(need=4, window=3)
    with pytest.raises(ValueError):
        Policy(recover=0)


def test_effective_feeds_the_verdict_no_flap_where_the_raw_results_flap() -> None:
    """The node verdict over a noisy sequence: raw results flap PASS/WARN, confirmed ones stay PASS."""
    statuses = ["ok", "fail", "ok", "ok", "fail", "ok", "ok", "ok"]
    raw_verdicts, confirmed_verdicts = [], []
    for n in range(1, len(statuses) + 1):
        history = seq("pciebw", *statuses[:n])
        latest = {"pciebw": history[0]}
        now = T0 + timedelta(hours=n - 1, minutes=5)
        raw = decide(latest, periodic=["pciebw"], now=now, max_age_s=3 * 3600)
        eff, _ = confirmation.effective(latest, history, POLICY)
        confirmed = decide(eff, periodic=["pciebw"], now=now, max_age_s=3 * 3600)
        raw_verdicts.append(raw.verdict)
        confirmed_verdicts.append(confirmed.verdict)
    assert Verdict.WARN in raw_verdicts
    assert set(confirmed_verdicts) == {Verdict.PASS}


def test_series_for_does_not_count_the_latest_twice() -> None:
    history = seq("pciebw", "ok", "fail") + seq("ping", "ok")
    assert len(confirmation.series_for("pciebw", history[0], history)) == 2
    newer = CheckResult("pciebw", Status.FAIL, "newer", node="n1", started_at="2026-11-30T00:00:00Z")
    assert len(confirmation.series_for("pciebw", newer, history)) == 3


def test_needs_history_only_when_something_is_bad_or_the_node_warns() -> None:
    ok = {"pciebw": seq("pciebw", "ok")[0]}
    bad = {"pciebw": seq("pciebw", "fail")[0]}
    assert not confirmation.needs_history(ok, "PASS", POLICY)
    assert confirmation.needs_history(ok, "WARN", POLICY)
    assert confirmation.needs_history(bad, "PASS", POLICY)
    assert not confirmation.needs_history(bad, "PASS", Policy(need=1, window=1, recover=1))
