"""Task bodies as plain functions (the Celery wrappers in ``workers.app`` only decode and retry).

``run_checks``  run one node's checks of a run (light ones first, then the GPU ones under the
                node's GPU lock, handed back for a retry while another run holds it), save each
                result into the store (latest, history, run) as it is known and recompute the
                node's verdict after the task;
``fanout``      beat's periodic/invasive tick: one run over every live node, done once per tick
                however many beats sent it;
``reconcile``   beat's verdict/label tick and stale sweep over every known node;
``iperf_servers``, ``iperf_clients``, ``iperf_stop``
                one node's part of the ``iperf`` ring (``workers.ring``), answered into the
                ring's hash in the store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from autopilot import config, execution, invasive, registry, results
from autopilot.checks import iperf
from autopilot.cluster import ClusterClient
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from workers import invasive_flow, ring
from workers import reconcile as reconciling
from workers.dispatch import Dispatcher, Envelope, partition
from workers.host import NodeHost
from workers.store import NodeView, ResultsStore, Run

log = logging.getLogger(__name__)


class GpusBusy(Exception):
    """Another GPU check holds this node's GPUs; ``checks`` (the task's GPU checks) are retried shortly.

    The task's light checks are done and saved by then: only the GPU checks go back to the queue.
    """

    def __init__(self, node: str, checks: Sequence[str]) -> None:
        super().__init__(node)
        self.node = node
        self.checks = tuple(checks)


def run_checks(
    host: NodeHost,
    *,
    run_id: str,
    node: str,
    checks: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    deadline: float,
) -> list[CheckResult]:
    """Run one node's checks of a run: the light ones first, then the GPU ones under the node's GPU lock.

    Light checks never wait for the lock, so a long GPU check of another run does not hold them
    up. When the lock is busy the GPU checks are handed back (``GpusBusy``) to be retried until
    shortly before ``deadline``, then answered ``error``. The verdict is recomputed after the task
    from what it saved, also when it hands its GPU checks back.
    """
    ctx = host.context(node)
    if ctx is None:
        # A message for a node this process does not host: answer it so the run is not left
        # waiting, and say why (a mis-routed message is a deployment bug worth seeing).
        results = [CheckResult(c, Status.ERROR, f"worker does not host node {node}", node=node) for c in checks]
        for r in results:
            host.store.save_result(r, run_id)
        return results
    light, gpu = partition(checks)
    lock = host.gpu_lock(node) if gpu else None
    held = handed_back = False
    done: list[CheckResult] = []
    view: NodeView | None = None
    try:
        view = _run_group(host, ctx, run_id, light, params, done, last=lock is None)
        if lock is None:
            return done
        held = lock.acquire(blocking=False)
        if not held:
            if time.time() + 1 < deadline:
                handed_back = True
                raise GpusBusy(node, gpu)
            busy = [
                CheckResult(c, Status.ERROR, "GPUs busy with another check until the deadline", node=node) for c in gpu
            ]
            for i, result in enumerate(busy):
                view = _save(host, run_id, result, latest=True, last=i == len(busy) - 1)
                done.append(result)
            return done
        view = _run_group(host, ctx, run_id, gpu, params, done, last=True)
        return done
    finally:
        if held:
            lock.release()  # type: ignore[union-attr]
        # A retry that ran nothing (only GPU checks, lock still busy) changed nothing to judge.
        if done or not handed_back:
            reconciling.reconcile_node(host.store, node, host.settings, cluster=ctx.cluster, view=view)


def _run_group(
    host: NodeHost,
    ctx: CheckContext,
    run_id: str,
    checks: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    done: list[CheckResult],
    *,
    last: bool,
) -> NodeView | None:
    """Run ``checks`` in order, saving each result as soon as it is known (appended to ``done``).

    With ``last`` (nothing else is saved by the task after this group), the last save's MULTI
    also reads back what the verdict is recomputed from, which saves the reconcile a round trip.
    """
    view: NodeView | None = None
    for i, check in enumerate(checks):
        if _invasive(check, params.get(check) or {}, host.settings) and ctx.cluster is not None:
            # Level 3 in a cluster runs as a Job; the GPU lock stays held meanwhile, so no
            # other GPU check touches GPUs the Job is testing.
            result = _stamped(invasive_flow.run(host, ctx.node, ctx.cluster), ctx.clock.now())
            # "GPUs busy, no Job" answers the run but must not replace the node's latest dcgm result.
            latest = result.status is not Status.SKIPPED
        else:
            result = execution.run_check(check, ctx, params.get(check))
            latest = True
        # Saved at once: a gather sees it, and a worker that dies later loses nothing.
        view = _save(host, run_id, result, latest=latest, last=last and i == len(checks) - 1)
        done.append(result)
    return view


def _save(host: NodeHost, run_id: str, result: CheckResult, *, latest: bool, last: bool) -> NodeView | None:
    if last:
        return host.store.save_and_view(result, run_id, latest=latest)
    host.store.save_result(result, run_id, latest=latest)
    return None


def _invasive(check: str, params: Mapping[str, Any], settings: config.Settings) -> bool:
    return check == "dcgm" and int(params.get("r") or settings.dcgm_level) >= invasive.LEVEL


def _stamped(result: CheckResult, now: datetime) -> CheckResult:
    return result if result.started_at else dataclasses.replace(result, started_at=results.utc_now_iso(now))


def fanout(
    store: ResultsStore,
    dispatcher: Dispatcher,
    settings: config.Settings,
    *,
    kind: str,
    now: float | None = None,
) -> Run | None:
    """One tick of periodic (or invasive) work over every live node; None if already done."""
    moment = time.time() if now is None else now
    interval = settings.periodic_interval_s if kind == "periodic" else settings.invasive_interval_s
    if interval <= 0:
        return None
    # Two beats, or one tick delivered twice, claim the same tick: only the first does the work.
    if not store.claim_tick(f"fanout:{kind}", moment, interval):
        log.info("fanout %s: already done for this interval", kind)
        return None
    nodes = store.node_names(seen_since=moment - settings.live_after_s)
    if kind == "periodic":
        checks = reconciling.periodic_checks(settings)
        params: dict[str, dict[str, Any]] = {}
    else:
        checks = ["dcgm"]
        params = {"dcgm": {"r": 3}}
    if not nodes or not checks:
        return None
    timeout = max(registry.REGISTRY.get(c).timeout_s for c in checks)
    run = Run.new(checks, nodes, params, deadline_s=min(interval, timeout + 60), source=kind, now=moment)
    store.create_run(run)
    for node in nodes:
        dispatcher.send(Envelope(run.id, node, run.checks, params, run.deadline))
    log.info("fanout %s: run %s over %d nodes", kind, run.id, len(nodes))
    return run


def reconcile(store: ResultsStore, settings: config.Settings, cluster: ClusterClient | None = None) -> dict[str, str]:
    """Recompute every known node's verdict (and publish it); returns node -> verdict."""
    if not store.claim_tick("reconcile", time.time(), max(1.0, settings.reconcile_interval_s)):
        return {}
    return {
        n: reconciling.reconcile_node(store, n, settings, cluster=cluster).verdict.value for n in store.node_names()
    }


def iperf_servers(
    host: NodeHost, *, run_id: str, node: str, binds: Sequence[str], ports: Sequence[int], lifetime_s: float
) -> dict[str, Any]:
    ctx = host.context(node)
    if ctx is None:
        reply: dict[str, Any] = {"ok": False, "started": 0, "error": f"worker does not host node {node}"}
    else:
        reply = ring.SERVERS.start(ctx.commands, run_id, binds, [int(p) for p in ports], float(lifetime_s), node)
    ring.post(host.store, run_id, f"servers|{node}", reply, ttl_s=lifetime_s)
    return reply


def iperf_clients(
    host: NodeHost, *, run_id: str, node: str, phase: int, jobs: Sequence[Mapping[str, Any]], duration_s: int
) -> list[dict[str, Any]]:
    ctx = host.context(node)
    if ctx is None:
        why = iperf.Measure(Status.ERROR, None, f"worker does not host node {node}")
        pairs = [iperf.pair(j["source"], j["target"], j["interface"], j["address"], why) for j in jobs]
    else:
        pairs = ring.run_clients(ctx.commands, jobs, int(duration_s))
    ring.post(host.store, run_id, f"clients|{phase}|{node}", {"pairs": pairs})
    return pairs


def iperf_stop(host: NodeHost, *, run_id: str, node: str) -> int:
    stopped = ring.SERVERS.stop(run_id, node)
    ring.post(host.store, run_id, f"stopped|{node}", {"stopped": stopped})
    return stopped
