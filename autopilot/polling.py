"""The one polling loop: ask until there is an answer or the deadline passes, never sleeping past it.

Its wait between asks is fixed (``interval_s`` a number) or chosen before each wait (a callable): a
``Backoff`` waits little while answers arrive and longer while none do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
MIN_WAIT_S = 0.001  # a callable's wait of 0 (a deadline already due) must not spin


class Backoff:
    """Waits that start at ``first_s`` and grow by ``growth`` up to ``max_s``, starting over whenever
    ``progressed()`` says the last ask found something new: the next answer of a busy spell is seen
    within ``first_s``, and an idle wait costs few asks."""

    def __init__(self, first_s: float, max_s: float, growth: float, progressed: Callable[[], bool]) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.growth = growth
        self.progressed = progressed
        self._next = first_s

    def __call__(self) -> float:
        if self.progressed():
            self._next = self.first_s
        wait = self._next
        self._next = min(self.max_s, wait * self.growth)
        return wait


def poll_until(
    probe: Callable[[], T | None],
    *,
    deadline: float,
    interval_s: float | Callable[[], float],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """The first truthy value of ``probe()``, or None once ``clock()`` reaches ``deadline``.

    ``probe`` is asked at once, then every ``interval_s`` (or, when it is a callable, after the wait it
    answers each time, e.g. a ``Backoff``; never under a millisecond); the last wait is cut short at the
    deadline, so a caller holds nothing past it, and ``probe`` is asked once more there. An exception from ``probe``
    ends the poll (a probe that must outlast an error catches it itself).
    """
    while True:
        value = probe()
        if value:
            return value
        left = deadline - clock()
        if left <= 0:
            return None
        wait = interval_s() if callable(interval_s) else interval_s
        sleep(min(max(MIN_WAIT_S, wait), left))
