"""The execution engine: run registered checks so that nothing escapes and nothing hangs.

``run_check`` (one check) and ``run_checks`` (several, one after another) validate parameters,
run the checks in a check thread while the calling thread watches their deadlines, and always
return a ``CheckResult`` per check:

- the check's own result, stamped with node, params, start time and duration;
- ``error`` "timed out after N s" when the check outlives its timeout: the watchdog kills
  every process group the check started (through the ``ProcessScope`` bound to its runner);
- ``error`` for any exception or bad parameter; ``skipped`` when NVML cannot start on a machine
  that nothing says has GPUs; a fatal ``fail`` for a GPU that NVML calls lost;
- for the GPU checks of a context with a ``gpu_probe``, the result as ``gpucensus.judge`` corrects
  it against the census the sequence takes before its first GPU check (NVML down on a node that
  should have GPUs is ``error``; missing or lost GPUs are a fatal ``fail``).

The checks of one ``run_checks`` call share one check thread and hand back to the caller once
(``_Sequence``). Check threads are reused (``_CheckThreads``): a sequence goes to an idle one, or
to a new one when none is idle, so a hung check never delays another, and a simulator running
thousands of checks a second neither starts a thread nor wakes its caller per check. A thread
whose check hung is abandoned until the check returns; idle ones end after ``_IDLE_S``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autopilot import commands, errors, gpucensus, gpuident, registry, results
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status

log = logging.getLogger(__name__)

# How long a check that ran past its deadline gets to unwind after its processes were killed,
# before the engine stops waiting for its thread.
_UNWIND_S = 1.0
# How long an idle check thread waits for its next check before it ends.
_IDLE_S = 30.0

# (every_s, fn): while checks still run, fn(results finished since the last call) every every_s.
Progress = tuple[float, Callable[[Sequence[CheckResult]], None]]


def run_check(
    name: str,
    ctx: CheckContext,
    params: Mapping[str, Any] | None = None,
    *,
    checks: registry.CheckRegistry | None = None,
) -> CheckResult:
    """Run one check by name (looked up in ``checks``, default the context's). Never raises (except
    ``KeyboardInterrupt``/``SystemExit``)."""
    return run_checks([name], ctx, {name: params or {}}, checks=checks)[0]


def run_checks(
    names: Sequence[str],
    ctx: CheckContext,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    checks: registry.CheckRegistry | None = None,
    progress: Progress | None = None,
) -> list[CheckResult]:
    """Run several checks one after another, each under its own timeout; a failing, erroring or
    hung check never skips the rest. Never raises.

    The checks run in one check thread, which hands back to the caller once, at the end (a
    thread hand-off per check was about a fifth of a simulator's CPU). ``progress=(every_s, fn)``:
    while checks still run, ``fn(new_results)`` is called in the calling thread every ``every_s``
    with the results finished since the last call (a task writes them to the store). An
    exception from ``fn`` is logged, never raised: the checks stay under watch.
    """
    reg = checks if checks is not None else ctx.checks
    by_check = params or {}
    jobs = [_job(name, ctx, by_check.get(name), reg) for name in names]
    return _Sequence(jobs, ctx).watch(progress) if jobs else []


@dataclasses.dataclass
class _Job:
    """One check of a sequence. ``decided``: its result without running (bad parameters)."""

    name: str
    spec: registry.CheckSpec | None
    params: Mapping[str, Any]
    timeout: float
    decided: CheckResult | None = None
    scope: commands.ProcessScope = dataclasses.field(default_factory=commands.ProcessScope)
    started: str = ""  # stamped on the result (the context's clock)
    t0: float = 0.0  # the context's monotonic clock when it started, for its duration


def _job(name: str, ctx: CheckContext, params: Mapping[str, Any] | None, reg: registry.CheckRegistry) -> _Job:
    raw = dict(params or {})
    try:
        spec = reg.get(name)
        typed = spec.validate(raw)
    except errors.BadParameter as exc:
        return _Job(name, None, raw, math.inf, decided=CheckResult(name, Status.ERROR, str(exc)))
    return _Job(name, spec, typed, ctx.timeout_for(name, spec.timeout_s))


class _Sequence:
    """The checks of one ``run_checks`` call: run by a check thread, watched by the caller's.

    The check thread moves ``index`` on after each check and wakes the watcher only at the end,
    or when the watcher waits for a check it timed out. The watcher sleeps until the running
    check's deadline, the next progress call, or the earliest deadline a later check could
    have. At a deadline it kills the check's processes (its ``ProcessScope``), gives it
    ``_UNWIND_S`` to return, answers it "timed out", and when it is still stuck abandons its
    thread (a new ``generation``) and runs the rest on another.
    """

    def __init__(self, jobs: list[_Job], ctx: CheckContext) -> None:
        self.jobs = jobs
        self.ctx = ctx
        # What ``isinstance(ctx.commands, commands.ScopedRunner)`` decides (a one-method protocol: the
        # attribute is there and not None), without the protocol machinery's walk of its members,
        # which was a tenth of the engine's own CPU in the calling thread.
        self._bind: Callable[[commands.ProcessScope], commands.CommandRunner] | None = getattr(
            ctx.commands, "bind", None
        )
        self.results: list[CheckResult | None] = [None] * len(jobs)
        self.cond = threading.Condition(threading.Lock())
        self.index = 0  # the check running now; len(jobs) once all are done
        self.since = 0.0  # real monotonic time it started (the watchdog's clock)
        self.generation = 0  # bumped when the watcher abandons a hung check's thread
        self.watched = -1  # a timed-out check whose end the watcher waits for
        # _shortest_after[i]: the shortest timeout among the checks after check i.
        self._shortest_after = [math.inf] * len(jobs)
        for i in range(len(jobs) - 2, -1, -1):
            self._shortest_after[i] = min(jobs[i + 1].timeout, self._shortest_after[i + 1])
        self._census: gpucensus.Census | None = None
        self._census_taken = False
        self._sighting: gpuident.Sighting | None = None

    def watch(self, progress: Progress | None) -> list[CheckResult]:
        n = len(self.jobs)
        every, report = progress if progress is not None else (math.inf, None)
        reported = 0
        next_report = time.monotonic() + every
        with self.cond:
            self._begin(0)
            _THREADS.run(functools.partial(self._serve, 0, self.generation), then=self._wake)
        while True:
            with self.cond:
                while True:
                    if self.index >= n:
                        return [r for r in self.results if r is not None]
                    running, now = self.index, time.monotonic()
                    deadline = self.since + self.jobs[running].timeout
                    if now >= deadline or now >= next_report:
                        break
                    # The check thread moves on without waking us: a later check with a shorter
                    # timeout may start any moment, so never sleep past now + its timeout.
                    wake = min(deadline, next_report, now + self._shortest_after[running])
                    self.cond.wait(min(wake - now, threading.TIMEOUT_MAX))
                new = [r for r in self.results[reported:running] if r is not None]
            if now >= deadline:
                self._time_out(running)
                continue
            reported = running
            next_report = now + every
            if new and report is not None:
                try:
                    report(new)
                except Exception:  # noqa: BLE001 - the caller's work must not end the watch
                    log.exception("progress of checks %s failed", ",".join(j.name for j in self.jobs))

    def _begin(self, i: int) -> None:
        """Check ``i`` starts now (called with ``cond`` held)."""
        self.index = i
        self.since = time.monotonic()
        if i < len(self.jobs):
            self.jobs[i].started = results.utc_now_iso(self.ctx.clock.now())
            self.jobs[i].t0 = self.ctx.clock.monotonic()

    def _serve(self, first: int, generation: int) -> None:
        """The check thread: run checks from ``first`` on, until done or abandoned."""
        for i in range(first, len(self.jobs)):
            job = self.jobs[i]
            if job.decided is not None:
                raw = job.decided
            else:
                assert job.spec is not None
                ctx = self.ctx if self._bind is None else dataclasses.replace(self.ctx, commands=self._bind(job.scope))
                census = self._gpu_census() if job.spec.uses_gpu else None
                raw = _guarded(job.spec, ctx, job.params)
                if census is not None:
                    raw = gpucensus.judge(census, raw)
                if job.spec.uses_gpu:
                    raw = gpuident.attach(raw, self._gpu_sighting().identities)
                _log(raw)
            result = _stamp(raw, self.ctx, job)
            with self.cond:
                if self.generation != generation:
                    return  # the watcher gave up on this thread's check: its answer is "timed out"
                self.results[i] = result
                self._begin(i + 1)
                if self.watched == i:
                    self.cond.notify_all()
        # After the last check the watcher is woken by ``_wake``, once this thread is idle again:
        # the caller's next checks then find it idle instead of starting another thread.

    def _gpu_census(self) -> gpucensus.Census | None:
        """The sequence's census, taken once, in the check thread (under the first GPU check's
        deadline: NVML or the API server may hang); None without a probe or when it failed."""
        if self.ctx.gpu_probe is None or self._census_taken:
            return self._census
        self._census_taken = True
        try:
            expected = self.ctx.gpu_probe.read(self.ctx.cluster, self.ctx.node)
            self._census = gpucensus.take(self._gpu_sighting(), expected)
        except Exception:  # noqa: BLE001 - a census that breaks must not take the checks with it
            log.exception("GPU census of %s failed: GPU checks are not held to expected GPUs", self.ctx.node)
        return self._census

    def _gpu_sighting(self) -> gpuident.Sighting:
        """NVML's count and identities, read once per sequence (in the check thread) for the census
        and the identities alike: walking NVML twice cost a second count and identity per GPU."""
        if self._sighting is None:
            try:
                self._sighting = gpuident.look(self.ctx.gpus)
            except Exception as exc:  # noqa: BLE001 - devices then keep their ids; the checks' results stand
                log.exception("GPU identities of %s unreadable", self.ctx.node)
                self._sighting = gpuident.Sighting(None, f"NVML could not be read: {exc}")
        return self._sighting

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _time_out(self, i: int) -> None:
        job = self.jobs[i]
        job.scope.cancel()  # kills every process group the check started
        with self.cond:
            self.watched = i
            give_up = time.monotonic() + _UNWIND_S
            while self.index == i and (left := give_up - time.monotonic()) > 0:
                self.cond.wait(left)
            self.watched = -1
            # Whatever the check answered while unwinding: it ran past its time.
            timed_out = CheckResult(
                job.name, Status.ERROR, f"timed out after {job.timeout:g} s", data={"timeout_s": job.timeout}
            )
            _log(timed_out)
            self.results[i] = _stamp(timed_out, self.ctx, job)
            if self.index == i:  # still stuck: its thread is abandoned, the rest run on another
                self.generation += 1
                self._begin(i + 1)
                if i + 1 < len(self.jobs):
                    _THREADS.run(functools.partial(self._serve, i + 1, self.generation), then=self._wake)


# What a check thread is handed: the work, and what to call once it is idle again.
_Work = tuple[Callable[[], None], Callable[[], None] | None]


class _CheckThreads:
    """Daemon threads that run checks: an idle one takes the next, a new one starts when none is idle.

    Never a bounded pool: a check that hangs keeps its thread, and the next check must still start
    at once. Each thread has its own inbox, so a check is handed to one known-idle thread.
    """

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Work]] = []
        self._started = 0

    def run(self, target: Callable[[], None], *, then: Callable[[], None] | None = None) -> None:
        """Start ``target`` on an idle thread (or a new one); ``then()`` is called on that thread when
        ``target`` has ended, after the thread is idle again, so work handed over right after
        ``then`` reuses it."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            with self._lock:
                self._started += 1
                name = f"check-{self._started}"
            threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()
        inbox.put((target, then))

    def _serve(self, inbox: queue.SimpleQueue[_Work]) -> None:
        while True:
            try:
                target, then = inbox.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                # Taken off the idle list just now: its check is on the way.
                continue
            try:
                target()
                del target  # the finished check's context is not kept alive while idle
                with self._lock:
                    self._idle.append(inbox)
            finally:
                if then is not None:
                    then()

    def reset(self) -> None:
        """After a fork: the parent's threads do not exist in the child."""
        self._lock = threading.Lock()
        self._idle = []


_THREADS = _CheckThreads(_IDLE_S)
os.register_at_fork(after_in_child=_THREADS.reset)


def _guarded(spec: registry.CheckSpec, ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    """Call the check and turn every way it can go wrong into a result."""
    try:
        # typed as object: a check is user code and may break its contract
        result: object = spec.run(ctx, params)
    except errors.GpuUnavailable as exc:
        # Where GPUs are expected, gpucensus.judge turns this into an error naming the cause.
        return CheckResult(spec.name, Status.SKIPPED, f"no GPU here: {exc}")
    except errors.GpuLost as exc:
        return gpucensus.lost_result(spec.name, exc)
    except errors.ToolTimeout as exc:
        return CheckResult(spec.name, Status.ERROR, str(exc), data={"timeout_s": exc.timeout_s})
    except errors.AutopilotError as exc:
        return CheckResult(spec.name, Status.ERROR, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - the engine's promise is that nothing escapes
        log.exception("check %s crashed", spec.name)
        return CheckResult(spec.name, Status.ERROR, f"check crashed: {type(exc).__name__}: {exc}")
    if not isinstance(result, CheckResult):
        return CheckResult(spec.name, Status.ERROR, f"check returned {type(result).__name__}, not a result")
    return result


def _stamp(result: CheckResult, ctx: CheckContext, job: _Job) -> CheckResult:
    return dataclasses.replace(
        # A tool's words are written out before the result reaches a log, the store or Kubernetes.
        results.tidy(result),
        node=ctx.node,
        params=dict(job.params),
        started_at=job.started,
        duration_s=max(0.0, ctx.clock.monotonic() - job.t0),
        # fatal only ever accompanies a fail, whatever a check set
        fatal=result.fatal and result.status is Status.FAIL,
    )


def _log(result: CheckResult) -> None:
    level = logging.INFO if result.status in (Status.OK, Status.SKIPPED) else logging.WARNING
    log.log(level, "check %s: %s: %s", result.check, result.status.value, results.printable(result.summary))
