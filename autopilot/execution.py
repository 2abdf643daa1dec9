"""The execution engine: run registered checks so that nothing escapes and nothing hangs.

``run_check`` validates parameters, runs the check in a worker thread under a watchdog, and
always returns a ``CheckResult``:

- the check's own result, stamped with node, params, start time and duration;
- ``error`` "timed out after N s" when the check outlives its timeout: the watchdog kills
  every process group the check started (through the ``ProcessScope`` bound to its runner);
- ``error`` for any exception, ``skipped`` when the machine has no GPU or driver.

The worker threads are reused (``_CheckThreads``): a check goes to an idle one, or to a new one
when none is idle, so a hung check never delays another, and a simulator running thousands of
checks a second does not start a thread for each (starting one was about 5% of its CPU). A
thread whose check hung is abandoned until the check returns, as before; idle ones end after
``_IDLE_S``.
"""

from __future__ import annotations

import _thread
import dataclasses
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from autopilot import commands, errors, registry, results
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status

log = logging.getLogger(__name__)

# How long a check that ran past its deadline gets to unwind after its processes were killed,
# before the engine stops waiting for its thread.
_UNWIND_S = 1.0
# How long an idle check thread waits for its next check before it ends.
_IDLE_S = 30.0


def run_check(
    name: str,
    ctx: CheckContext,
    params: Mapping[str, Any] | None = None,
    *,
    checks: registry.CheckRegistry | None = None,
) -> CheckResult:
    """Run one check by name. Never raises (except ``KeyboardInterrupt``/``SystemExit``)."""
    reg = checks or registry.REGISTRY
    started = results.utc_now_iso(ctx.clock.now())
    t0 = ctx.clock.monotonic()
    raw_params = dict(params or {})
    try:
        spec = reg.get(name)
        typed = spec.validate(raw_params)
    except errors.BadParameter as exc:
        return _stamp(CheckResult(name, Status.ERROR, str(exc)), ctx, raw_params, started, t0)
    timeout = ctx.timeout_for(name, spec.timeout_s)
    result = _run_with_watchdog(spec, ctx, typed, timeout)
    _log(result)
    return _stamp(result, ctx, typed, started, t0)


def run_checks(
    names: Iterable[str],
    ctx: CheckContext,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    checks: registry.CheckRegistry | None = None,
) -> list[CheckResult]:
    """Run several checks one after another; a failing or erroring check never skips the rest."""
    by_check = params or {}
    return [run_check(n, ctx, by_check.get(n), checks=checks) for n in names]


def _run_with_watchdog(
    spec: registry.CheckSpec, ctx: CheckContext, params: Mapping[str, Any], timeout: float
) -> CheckResult:
    scope = commands.ProcessScope()
    bind = getattr(ctx.commands, "bind", None)
    bound_ctx = dataclasses.replace(ctx, commands=bind(scope)) if callable(bind) else ctx
    box: list[CheckResult] = []

    def target() -> None:
        box.append(_guarded(spec, bound_ctx, params))

    done = _THREADS.run(target)
    if not done.acquire(timeout=timeout):
        scope.cancel()
        done.acquire(timeout=_UNWIND_S)
        return CheckResult(spec.name, Status.ERROR, f"timed out after {timeout:g} s", data={"timeout_s": timeout})
    return box[0]


class _CheckThreads:
    """Daemon threads that run checks: an idle one takes the next, a new one starts when none is idle.

    Never a bounded pool: a check that hangs keeps its thread, and the next check must still start
    at once. Each thread has its own inbox, so a check is handed to one known-idle thread.
    """

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], None], _thread.LockType]]] = []
        self._started = 0

    def run(self, target: Callable[[], None]) -> _thread.LockType:
        """Start ``target`` on an idle thread (or a new one); the lock returned is released when it ends.

        The thread is idle again before the lock is released, so checks run one after another
        reuse one thread.
        """
        done = _thread.allocate_lock()
        done.acquire()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            with self._lock:
                self._started += 1
                name = f"check-{self._started}"
            threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()
        inbox.put((target, done))
        return done

    def _serve(self, inbox: queue.SimpleQueue[tuple[Callable[[], None], _thread.LockType]]) -> None:
        while True:
            try:
                target, done = inbox.get(timeout=self._idle_s)
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
                done.release()

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
        return CheckResult(spec.name, Status.SKIPPED, f"no GPU here: {exc}")
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


def _stamp(result: CheckResult, ctx: CheckContext, params: Mapping[str, Any], started: str, t0: float) -> CheckResult:
    return dataclasses.replace(
        result,
        node=ctx.node,
        params=dict(params),
        started_at=started,
        duration_s=max(0.0, ctx.clock.monotonic() - t0),
        # fatal only ever accompanies a fail, whatever a check set
        fatal=result.fatal and result.status is Status.FAIL,
    )


def _log(result: CheckResult) -> None:
    level = logging.INFO if result.status in (Status.OK, Status.SKIPPED) else logging.WARNING
    log.log(level, "check %s: %s: %s", result.check, result.status.value, result.summary)
