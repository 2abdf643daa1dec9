"""The one polling loop: it answers as soon as the probe does, and never waits past the deadline."""

from __future__ import annotations

from autopilot.polling import poll_until


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
