"""The worker's side of invasive DCGM level 3: hold the node in ``TESTING`` while its Job runs.

In a cluster, ``dcgm`` with ``r`` >= 3 does not run in the worker: it becomes a Job pinned to the
node, started only when no pod holds the node's GPUs (``autopilot.invasive``). The node is
``TESTING`` from just before the Job is created until its outcome is stored; every way out
(Job refused, pod not admitted, deadline, the Job vanishing, an exception) stores a result and
ends ``TESTING``. A worker that restarts while a node is ``TESTING`` resumes watching the Job
(``resume``), so a node never stays ``TESTING``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from autopilot import config, errors, invasive, polling, results
from autopilot.cluster import ClusterClient
from autopilot.results import CheckResult, Status
from workers import reconcile as reconciling
from workers.host import NodeHost

log = logging.getLogger(__name__)

POLL_S = 10.0
# Beyond the Job's own deadline: time for the controller to mark it failed and for us to notice.
_GRACE_S = 180.0


def run(
    host: NodeHost, node: str, cluster: ClusterClient, *, sleep: Callable[[float], None] | None = None
) -> CheckResult:
    """Start the node's level-3 Job (if its GPUs are free) and wait for its outcome."""
    ctx = host.context(node)
    assert ctx is not None
    pause = sleep or ctx.clock.sleep
    settings = host.settings

    def mark_testing() -> None:
        host.store.set_state(
            node, {"testing_since": results.utc_now_iso(ctx.clock.now()), "testing_job": invasive.job_name(node)}
        )
        reconciling.reconcile_node(host.store, node, settings, cluster=cluster, checks=ctx.checks)

    try:
        outcome = invasive.start(cluster, node, settings, before_create=mark_testing, now=ctx.clock.now())
        if outcome.state in (invasive.StartState.BUSY, invasive.StartState.NO_GPUS):
            return _level3(CheckResult("dcgm", Status.SKIPPED, f"level-3 Job not started: {outcome.reason}", node=node))
        if outcome.state is invasive.StartState.REFUSED:
            assert outcome.result is not None
            return _level3(outcome.result)
        if outcome.state is invasive.StartState.ALREADY_RUNNING:
            mark_testing()
        return watch(host, node, cluster, outcome.job_name, sleep=pause)
    finally:
        end_testing(host, node)


def watch(
    host: NodeHost, node: str, cluster: ClusterClient, job_name: str, *, sleep: Callable[[float], None]
) -> CheckResult:
    """Poll the Job until it ends, or until its deadline plus a grace period has passed."""
    ctx = host.context(node)
    assert ctx is not None
    settings = host.settings
    limit = ctx.clock.monotonic() + longest_wait_s(settings)

    unreadable: list[str] = []  # the last transient error, while the API server is away

    def finished() -> invasive.JobOutcome | None:
        try:
            outcome = invasive.poll(
                cluster,
                job_name,
                namespace=settings.namespace,
                node=node,
                deadline_s=settings.invasive_deadline_s,
                now=ctx.clock.now(),
                admission_wait_s=settings.invasive_admission_wait_s,
            )
        except errors.Transient as exc:
            # The seam's retries span seconds; an API server restart, an etcd leader election or APF's 429s can
            # outlast them while the Job runs on for an hour. Asked again next poll, up to the same limit.
            log.warning(
                "invasive Job %s on %s: cannot read it now, asked again in %g s: %s", job_name, node, POLL_S, exc
            )
            unreadable[:] = [str(exc)]
            return None
        unreadable.clear()
        return outcome if outcome.finished else None

    try:
        outcome = polling.poll_until(
            finished, deadline=limit, interval_s=POLL_S, clock=ctx.clock.monotonic, sleep=sleep
        )
    except errors.ClusterError as exc:  # refused (403, ...): no retry changes it; the run is an error, not a crash
        reason = f"invasive Job {job_name} could not be read: {exc}"
        # TESTING ends with this result: the Job must not hold the GPUs on, unread, until its own deadline.
        try:
            cluster.delete_job(settings.namespace, job_name)
        except errors.ClusterError as gone:
            log.warning("invasive Job %s on %s not deleted (its deadline and TTL end it): %s", job_name, node, gone)
        return _level3(invasive.error_result(node, reason, job=job_name, now=ctx.clock.now()))
    if outcome is None:
        reason = f"invasive Job {job_name} still running {longest_wait_s(settings):g} s after start"
        if unreadable:
            reason = f"invasive Job {job_name} unreadable at its deadline: {unreadable[0]}"
        return _level3(invasive.error_result(node, reason, job=job_name, now=ctx.clock.now()))
    assert outcome.result is not None
    log.info("invasive Job %s on %s: %s (%s)", job_name, node, outcome.state.value, outcome.reason)
    return _level3(outcome.result)


def longest_wait_s(settings: config.Settings) -> float:
    """The longest ``watch`` waits for a Job (its deadline and the grace), its API calls aside: what a level-3 run
    may hold its worker thread (``workers.app.task_may_take_s``)."""
    return settings.invasive_deadline_s + _GRACE_S


def end_testing(host: NodeHost, node: str) -> None:
    host.store.set_state(node, {"testing_since": None, "testing_job": None})


def resume(host: NodeHost, node: str, cluster: ClusterClient, *, sleep: Callable[[float], None] | None = None) -> None:
    """After a restart: finish what a previous worker left in ``TESTING`` (store its Job's outcome)."""
    state = host.store.state(node)
    if not state.testing_since:
        return
    ctx = host.context(node)
    assert ctx is not None
    job = state.testing_job or invasive.job_name(node)
    try:
        result = watch(host, node, cluster, job, sleep=sleep or ctx.clock.sleep)
        host.store.save_result(dataclasses.replace(result, node=node))
    finally:
        end_testing(host, node)
        reconciling.reconcile_node(host.store, node, host.settings, cluster=cluster, checks=ctx.checks)


def _level3(result: CheckResult) -> CheckResult:
    """A level-3 DCGM result as the verdict expects it: check ``dcgm`` with ``r`` = 3."""
    return dataclasses.replace(result, check="dcgm", params={**result.params, "r": invasive.LEVEL})
