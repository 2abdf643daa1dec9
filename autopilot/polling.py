"""The one polling loop: ask until there is an answer or the deadline passes, never sleeping past it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    probe: Callable[[], T | None],
    *,
    deadline: float,
    interval_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """The first truthy value of ``probe()``, or None once ``clock()`` reaches ``deadline``.

    ``probe`` is asked at once, then every ``interval_s``; the last wait is cut short at the deadline, so
    a caller holds nothing past it, and ``probe`` is asked once more there. An exception from ``probe``
    ends the poll (a probe that must outlast an error catches it itself).
    """
    while True:
        value = probe()
        if value:
            return value
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(interval_s, left))
