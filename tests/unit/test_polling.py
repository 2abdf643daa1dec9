"""The one polling loop: it answers as soon as the probe does, and never waits past the deadline."""

from __future__ import annotations

import pytest

from autopilot.polling import Backoff, poll_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_last_wait_ends_at_the_deadline_and_the_probe_is_asked_there_once_more() -> None:
    clock, asked = Clock(), []

    def probe() -> str | None:
        asked.append(clock.now)
        return None

    assert poll_until(probe, deadline=25.0, interval_s=10.0, clock=lambda: clock.now, sleep=clock.sleep) is None
    assert clock.slept == [10.0, 10.0, 5.0] and asked == [0.0, 10.0, 20.0, 25.0]


def test_the_first_answer_is_returned_without_another_wait() -> None:
    clock = Clock()
    answers = iter([None, "", "done", "later"])
    got = poll_until(lambda: next(answers), deadline=100.0, interval_s=1.0, clock=lambda: clock.now, sleep=clock.sleep)
    assert got == "done" and clock.slept == [1.0, 1.0]


def test_a_backoff_grows_its_waits_and_starts_over_on_progress() -> None:
    news = iter([False, False, False, True, False])
    backoff = Backoff(0.02, 0.05, 2.0, lambda: next(news))
    assert [backoff() for _ in range(5)] == [0.02, 0.04, 0.05, 0.02, 0.04]


def test_a_callable_interval_is_asked_before_each_wait_and_the_deadline_still_cuts_it() -> None:
    clock, waits = Clock(), iter([1.0, 0.0, 3.0, 50.0])
    got = poll_until(
        lambda: None, deadline=10.0, interval_s=lambda: next(waits), clock=lambda: clock.now, sleep=clock.sleep
    )
    # A wait of 0 (a deadline already due) still sleeps a millisecond instead of spinning.
    assert got is None and clock.slept == pytest.approx([1.0, 0.001, 3.0, 10.0 - 4.001])
