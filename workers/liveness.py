"""The worker's and beat's heartbeat file: touched by each process's own loop, read by ``workers.probe``.

A hung consumer or a wedged beat heartbeats nothing, yet nothing restarted it. Each process now marks
its progress on a file (``AUTOPILOT_LIVENESS_FILE``; its modification time is the mark):

- the worker, from the consumer's event loop: a repeating entry on the loop's own timer
  (``ConsumerHeartbeat``, a Celery consumer bootstep). A task running in a pool thread does not hold
  the loop, so a long DCGM run does not age the file; a loop stuck in a call does;
- beat, at every tick of its scheduler (``BeatScheduler``), with the loop's longest sleep bounded by
  ``AUTOPILOT_LIVENESS_INTERVAL`` (Celery's default is 5 minutes between ticks when nothing is due).

A mark is one ``utime`` call every interval (10 s by default): nothing measurable.
"""

from __future__ import annotations

import logging
import os
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
        touch(self.path)
        self.entry = parent.timer.call_repeatedly(self.interval_s, touch, (self.path,))

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


def install_worker(app: Celery, settings: config.Settings) -> None:
    """The worker's consumer touches ``settings.liveness_file`` (nothing when it is unset)."""
    app.conf[CONF_KEY] = (settings.liveness_file, settings.liveness_interval_s)
    if settings.liveness_file:
        app.steps["consumer"].add(ConsumerHeartbeat)


def install_beat(app: Celery, settings: config.Settings) -> None:
    """Beat ticks at least every ``settings.liveness_interval_s`` and touches ``settings.liveness_file`` each time."""
    app.conf[CONF_KEY] = (settings.liveness_file, settings.liveness_interval_s)
    if settings.liveness_file:
        app.conf.beat_scheduler = BEAT_SCHEDULER
        app.conf.beat_max_loop_interval = settings.liveness_interval_s
