"""The worker's and beat's heartbeat file: touched by each process's own loop, read by ``workers.probe``.

A hung consumer or a wedged beat heartbeats nothing, yet nothing restarted it. Each process now marks
its progress on a file (``AUTOPILOT_LIVENESS_FILE``; its modification time is the mark):

- the worker, from the consumer's event loop: a repeating entry on the loop's own timer
  (``ConsumerHeartbeat``, a Celery consumer bootstep). A task running in a pool thread does not hold
  the loop, so a long DCGM run does not age the file; a loop stuck in a call does;
- beat, at every tick of its scheduler (``BeatScheduler``), with the loop's longest sleep bounded by
  ``AUTOPILOT_LIVENESS_INTERVAL`` (Celery's default is 5 minutes between ticks when nothing is due).

A mark is one ``utime`` call every interval (10 s by default): nothing measurable.

A free loop is not enough: a worker whose every pool thread is stuck in a task (an NVML call, a hang no
tool timeout covers) takes no work while its loop and its heartbeat thread tick on. ``PoolWatch`` knows
which task each pool thread holds since when, and how long that task may take (``workers.app`` tells it,
from Celery's ``task_prerun``/``task_postrun`` signals); when every thread has held its task past that
plus ``AUTOPILOT_WEDGE_MARGIN``, the worker is wedged: the consumer stops marking the file (the probe
fails, the kubelet restarts the pod), and the node record says ``wedged_since`` (``workers.main``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from celery.beat import PersistentScheduler

from autopilot import config

log = logging.getLogger(__name__)

CONF_KEY = "autopilot_liveness"  # app.conf[CONF_KEY]: (file, interval_s), read by the step and the scheduler
BEAT_SCHEDULER = "workers.liveness:BeatScheduler"


def touch(path: str) -> None:
    """Mark progress now. A file that cannot be written is logged: the probe then fails, as it should."""
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            with open(path, "a", encoding="utf-8"):
                pass
    except OSError as exc:
        log.warning("liveness file %s not touched: %s", path, exc)


@dataclasses.dataclass(frozen=True)
class Held:
    """The task a pool thread holds: its name, when it started, and how long it may hold the thread."""

    task: str
    started: float  # monotonic seconds
    may_take_s: float


class PoolWatch:
    """Which task each pool thread holds and since when; whether every thread is wedged (``wedged_since``).

    One per worker process (``POOL``): Celery's signals name no worker, and a process runs one pool at a time.
    ``threads`` is the pool's size; 0 (the API, beat, tests that apply a task in their own thread) is never
    wedged.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.threads = 0
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._held: dict[int, Held] = {}
        self._since: float | None = None  # epoch s the pool wedged, fixed while it stays wedged

    def started(self, task: str, may_take_s: float) -> None:
        """The calling (pool) thread starts ``task``, which may hold it ``may_take_s`` (its margin included)."""
        with self._lock:
            self._held[threading.get_ident()] = Held(task, self._clock(), may_take_s)

    def finished(self) -> None:
        """The calling (pool) thread is done with its task."""
        with self._lock:
            self._held.pop(threading.get_ident(), None)

    def wedged_since(self) -> float | None:
        """Epoch seconds since when every pool thread has held its task past what it may take; None while one
        is free, or within its bound. Logged once when it starts (the tasks and how long) and when it ends."""
        now = self._clock()
        with self._lock:
            held = list(self._held.values())
            threads = self.threads
            overdue = [h for h in held if now - h.started > h.may_take_s]
            if threads <= 0 or len(overdue) < threads:
                if self._since is not None:
                    self._since = None
                    log.warning("the worker's pool has a free thread again: no longer wedged")
                return None
            if self._since is None:
                # Wedged from the moment the last of them ran past its bound; fixed from now on, so every
                # heartbeat writes the same ``wedged_since`` and ``last_seen``.
                crossed = max(h.started + h.may_take_s for h in overdue)
                self._since = self._wall() - (now - crossed)
                log.error(
                    "worker wedged: all %d pool thread(s) hold a task past what it may take: %s",
                    threads,
                    ", ".join(f"{h.task} for {now - h.started:.0f} s (may take {h.may_take_s:g} s)" for h in overdue),
                )
            return self._since


POOL = PoolWatch()


def mark(path: str, pool: PoolWatch | None = None) -> None:
    """The consumer's mark: ``touch(path)``, unless the pool is wedged (then the file ages and the probe fails)."""
    if (pool or POOL).wedged_since() is None:
        touch(path)


def _conf(app: Celery) -> tuple[str, float]:
    path, interval_s = app.conf.get(CONF_KEY) or ("", 0.0)
    return str(path), float(interval_s)


class ConsumerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Touches the liveness file from the consumer's event loop, every ``AUTOPILOT_LIVENESS_INTERVAL``.

    Started (again) each time the consumer (re)connects and stopped when it loses its connection:
    during a broker outage the file ages, and the probe excuses that by asking the broker itself.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.path, self.interval_s = _conf(parent.app)
        self.entry: Any = None

    def start(self, parent: Any) -> None:
        if not self.path:
            return
        if parent.hub is None:
            # Without an event loop the timer is a thread of its own, which would tick on while the
            # consumer hangs: no mark at all is honest (the probe fails), a thread's would not be.
            log.warning("the worker runs without an event loop: %s is not touched", self.path)
            return
        mark(self.path)
        self.entry = parent.timer.call_repeatedly(self.interval_s, mark, (self.path,))

    def stop(self, parent: Any) -> None:
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)


class BeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery beat's own scheduler (the schedule file as before), touching the liveness file at every tick."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = float(super().tick(*args, **kwargs))
        path, _ = _conf(self.app)
        if path:
            touch(path)
        return interval


def install_worker(app: Celery, settings: config.Settings, threads: int) -> None:
    """The worker's consumer marks ``settings.liveness_file`` (nothing when it is unset) while its pool of
    ``threads`` is not wedged."""
    POOL.threads = threads
    app.conf[CONF_KEY] = (settings.liveness_file, settings.liveness_interval_s)
    if settings.liveness_file:
        app.steps["consumer"].add(ConsumerHeartbeat)


def install_beat(app: Celery, settings: config.Settings) -> None:
    """Beat ticks at least every ``settings.liveness_interval_s`` and touches ``settings.liveness_file`` each time."""
    app.conf[CONF_KEY] = (settings.liveness_file, settings.liveness_interval_s)
    if settings.liveness_file:
        app.conf.beat_scheduler = BEAT_SCHEDULER
        app.conf.beat_max_loop_interval = settings.liveness_interval_s
