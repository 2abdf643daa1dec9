"""The fleet's baselines in Redis: where a result is judged against its cohort before it is stored.

Keys (prefix ``ap:``, beside the results store's):

- ``baseline:<cohort key>``  list of the cohort's latest figures, newest first, trimmed to
                             ``baseline_window``
- ``baselines``              sorted set cohort key -> when it was last added to (epoch s, the store's clock:
                             every writer scores it on one clock, whatever its host's reads); at most
                             ``baseline_max_cohorts`` cohorts, the one updated longest ago is dropped

A worker judges each result of a check with fleet figures (``autopilot.baseline``) just before it
is saved: ``FleetBaselines.judge``. Baselines are read at most once per ``CACHE_S`` per process
(a simulator hosts 1,000 nodes: one read per cohort serves them all); figures are added at once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from autopilot import baseline, config, errors
from autopilot.baseline import Baseline, Cohort, Sample
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from workers.store import NodeRecord, P, decoded, server_seconds, translating

INDEX = f"{P}baselines"
CACHE_S = 30.0


def _key(cohort: Cohort) -> str:
    return f"{P}baseline:{cohort.key}"


@translating
class FleetBaselines:
    """``baseline.Source`` over Redis, for one process (thread-safe)."""

    def __init__(
        self, client: redis.Redis[bytes], settings: config.Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.r = client
        self.policy = baseline.policy_of(settings)
        self.max_cohorts = settings.baseline_max_cohorts
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[Cohort, tuple[float, Baseline | None]] = {}
        # This host's clock minus the store's (Redis ``TIME``), learned from a TIME riding in the baseline reads
        # (at most one per ``CACHE_S``): the index is scored on the store's clock with no round trip of its own.
        self._offset: float | None = None

    # ------------------------------------------------------------------ baseline.Source

    def baselines(self, cohorts: Iterable[Cohort], min_samples: int) -> dict[Cohort, Baseline]:
        now = self._clock()
        wanted = set(cohorts)
        with self._lock:
            stale = [c for c in wanted if c not in self._cache or now - self._cache[c][0] >= CACHE_S]
        if stale:
            pipe = self.r.pipeline(transaction=False)
            for c in stale:
                pipe.lrange(_key(c), 0, self.policy.window - 1)
            pipe.time()
            *lists, told = pipe.execute()
            self._learn(told)
            fresh = {c: baseline.summarize(c, _floats(raw), min_samples) for c, raw in zip(stale, lists, strict=True)}
            with self._lock:
                self._cache.update({c: (now, b) for c, b in fresh.items()})
        with self._lock:
            found = {c: self._cache[c][1] for c in wanted if c in self._cache}
        return {c: b for c, b in found.items() if b is not None}

    def add(self, found: Iterable[Sample]) -> None:
        pipe = self.r.pipeline(transaction=True)
        if self.queue_add(pipe, found):
            self.added(pipe.execute()[-1])

    def queue_add(self, pipe: Any, found: Iterable[Sample]) -> bool:
        """``add``'s writes queued on ``pipe`` (a task's MULTI), the cohorts' count last; False when
        there is nothing to add. Whoever executes ``pipe`` hands that count to ``added``."""
        by_cohort: dict[Cohort, list[float]] = {}
        for s in found:
            by_cohort.setdefault(s.cohort, []).append(s.value)
        if not by_cohort:
            return False
        for cohort, values in by_cohort.items():
            pipe.lpush(_key(cohort), *(repr(v) for v in values))
            pipe.ltrim(_key(cohort), 0, self.policy.window - 1)
        # Scored on the store's clock: each writer's own clock ordered the cohorts by whose clock ran ahead, so
        # above ``baseline_max_cohorts`` a cohort a fast host fed 10 min ago outlived one fed just now.
        score = self._store_now()
        pipe.zadd(INDEX, {c.key: score for c in by_cohort})
        pipe.zcard(INDEX)
        return True

    def _learn(self, told: Any) -> float:
        """Keep this host's clock minus the store's from a ``TIME`` reply just received (off by at most its trip)."""
        self._offset = offset = self._clock() - server_seconds(told)
        return offset

    def _store_now(self) -> float:
        """The store's clock, from this host's and the learned offset; asked of the store once, when figures are
        written before any baseline was read (a process's first ``add``), never again on the task's path."""
        offset = self._offset
        if offset is None:
            offset = self._learn(self.r.time())
        return self._clock() - offset

    def added(self, count: Any) -> None:
        """After ``queue_add``'s writes: drop the cohorts updated longest ago beyond ``baseline_max_cohorts``."""
        if int(count) > self.max_cohorts:
            self._drop_oldest(int(count) - self.max_cohorts)

    def _drop_oldest(self, n: int) -> None:
        old = [decoded(k) for k in self.r.zrange(INDEX, 0, n - 1)]
        if old:
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(INDEX, *old)
            pipe.delete(*(f"{P}baseline:{k}" for k in old))
            pipe.execute()

    # ------------------------------------------------------------------ use

    def judge(self, result: CheckResult, *, model: str, driver: str, into: FleetFigures | None = None) -> CheckResult:
        """``result`` judged against its fleet (``baseline.assess``), its figures added to the fleet's:
        at once, or with ``into`` kept there until its task writes them with its results."""
        if result.status is Status.BUSY or not self.policy.enabled:
            return result
        source: baseline.Source = self if into is None else into
        return baseline.assess(result, model=model, driver=driver, source=source, policy=self.policy)

    def all(self) -> list[dict[str, Any]]:
        """Every kept cohort: its baseline (median and MAD; None below the minimum sample size)."""
        keys = [decoded(k) for k in self.r.zrange(INDEX, 0, -1)]
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.lrange(f"{P}baseline:{k}", 0, self.policy.window - 1)
        out: list[dict[str, Any]] = []
        for key, raw in zip(keys, pipe.execute(), strict=True):
            cohort = Cohort.from_key(key)
            values = _floats(raw)
            base = baseline.summarize(cohort, values, self.policy.min_samples)
            entry: dict[str, Any] = {**dataclasses.asdict(cohort), "count": len(values), "judging": base is not None}
            entry["median"] = round(base.median, 4) if base else None
            entry["mad"] = round(base.mad, 4) if base else None
            out.append(entry)
        return sorted(out, key=lambda e: (e["check"], e["metric"], e["model"], e["driver"]))


class FleetFigures:
    """``baseline.Source`` for one task: baselines from its ``FleetBaselines`` (cached there), the
    figures of its judged results kept until the task writes them, in the MULTI that writes those
    results (``ResultsStore.save_many``): a write of their own was a MULTI per task (PERFORMANCE.md,
    round 5), and figures of results never stored now never count in the fleet either."""

    def __init__(self, fleet: FleetBaselines) -> None:
        self.fleet = fleet
        self._found: list[Sample] = []

    def baselines(self, cohorts: Iterable[Cohort], min_samples: int) -> dict[Cohort, Baseline]:
        return self.fleet.baselines(cohorts, min_samples)

    def add(self, found: Iterable[Sample]) -> None:
        self._found.extend(found)

    @property
    def kept(self) -> int:
        """How many figures wait for the task's write."""
        return len(self._found)

    def queue(self, pipe: Any) -> bool:
        """The kept figures' writes queued on ``pipe`` (``FleetBaselines.queue_add``); False: none kept."""
        return self.fleet.queue_add(pipe, self._found)

    def written(self, count: Any) -> None:
        """``pipe`` ran (``count``: its cohorts' count): the figures are the fleet's now, not kept here.
        Until then they are kept, so a write that failed writes them with the task's next one."""
        self._found = []
        self.fleet.added(count)


class Judge:
    """``fleet.judge`` for the results of ``ctx``'s node: its GPU model and driver read once, when
    first needed; the figures kept in ``figures`` for the task's write."""

    def __init__(self, fleet: FleetBaselines, ctx: CheckContext) -> None:
        self.fleet = fleet
        self.ctx = ctx
        self.figures = FleetFigures(fleet)
        self._known: tuple[str, str] | None = None

    def __call__(self, result: CheckResult) -> CheckResult:
        if self._known is None:
            self._known = gpu_of(self.ctx)
        model, driver = self._known
        return self.fleet.judge(result, model=model, driver=driver, into=self.figures)


def judge_in(fleet: FleetBaselines, ctx: CheckContext) -> Judge:
    """``Judge`` of ``ctx``'s node on ``fleet``."""
    return Judge(fleet, ctx)


def gpu_of(ctx: CheckContext) -> tuple[str, str]:
    """The node's GPU model and driver version from NVML; ``""``/``unknown`` when it cannot say."""
    try:
        model = ctx.gpus.identity(0).name if ctx.gpus.count() else ""
    except errors.AutopilotError:
        model = ""
    try:
        driver = ctx.gpus.driver_version()
    except errors.AutopilotError:
        driver = "unknown"
    return model, driver


def judge_for_record(fleet: FleetBaselines, result: CheckResult, record: NodeRecord | None) -> CheckResult:
    """``fleet.judge`` for a result written for another node (the iperf ring), from its heartbeat record."""
    if record is None:
        return fleet.judge(result, model="", driver="unknown")
    return fleet.judge(result, model=record.gpu_model, driver=record.driver_version or "unknown")


def _floats(raw: Iterable[bytes | str]) -> list[float]:
    out: list[float] = []
    for item in raw:
        try:
            out.append(float(decoded(item)))
        except ValueError:
            continue  # written by something else: not a figure
    return out
