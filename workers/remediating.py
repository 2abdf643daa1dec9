"""Beat's glue of remediation (``autopilot.remediation``): read the fleet, plan, act, report.

Runs once per reconcile tick, after the verdicts are recomputed, in the one process that claimed
the tick, so two passes never race for the budget. The summary of the pass (budget, nodes held,
nodes deferred) goes to the results store, where ``/metrics`` reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from autopilot import config, errors, remediation, results, verdict
from autopilot.cluster import ClusterClient
from autopilot.remediation import Health, Plan
from autopilot.results import CheckResult
from workers.store import NodeState, ResultsStore

log = logging.getLogger(__name__)


def policy(settings: config.Settings) -> remediation.Policy:
    return remediation.Policy(
        cordon=settings.remediate_cordon,
        taint=settings.remediate_taint,
        max_unavailable=settings.remediate_max_unavailable,
        dry_run=settings.remediate_dry_run,
    )


def _validated_at(found: Sequence[CheckResult]) -> str:
    """Start of the newest passing DCGM run of level 3 or more among ``found`` ("" if none)."""
    passes = [r.started_at for r in found if r.started_at and verdict.clears_evict(r, None)]
    return max(passes, default="")


def health(store: ResultsStore, names: Sequence[str], settings: config.Settings) -> dict[str, Health]:
    states = store.states(names)
    latest = store.latest_many(names)
    out: dict[str, Health] = {}
    for name in names:
        state = states.get(name, NodeState())
        validated = _validated_at(list(latest.get(name, {}).values()))
        if not validated and state.cleared_at:
            # Only a node an operator cleared can pass the gate: then a level-3 pass that a later
            # level-1 run replaced as the latest dcgm result is looked for in the history.
            validated = _validated_at(store.history(name, limit=settings.history_len))
        out[name] = Health(
            verdict=state.verdict or "",
            evicted_at=state.evicted_at or "",
            cleared_at=state.cleared_at or "",
            validated_at=validated,
        )
    return out


def _clocks(store: ResultsStore, names: Sequence[str]) -> tuple[datetime, dict[str, str]]:
    """The store's clock now, and for each of ``names`` that time on its worker's clock (``results.on_node_clock``, its
    last measured offset). The ownership a cordon records is compared by the gate with the node's clear and DCGM
    level-3 pass, which are stamped on the node's clock: stamped on this host's, a node whose clock runs 10 min
    behind stayed cordoned after a clear and a pass in those 10 min, and one 10 min ahead was released by a pass
    that began before the cordon. Read only when a pass writes something (two reads, once per tick)."""
    shared = datetime.fromtimestamp(store.server_time(), UTC)
    offsets = {r.name: r.clock_offset for r in store.nodes(names)}
    return shared, {n: results.utc_now_iso(results.on_node_clock(shared, offsets.get(n))) for n in names}


def run(store: ResultsStore, cluster: ClusterClient, settings: config.Settings) -> Plan | None:
    """One remediation pass over the fleet; None when remediation is off or the cluster could not be read."""
    pol = policy(settings)
    if not pol.enabled:
        return None
    try:
        nodes = cluster.list_nodes()
    except errors.ClusterError as exc:
        log.warning("remediation: listing nodes failed, nothing done this tick: %s", exc)
        return None
    the_plan = remediation.plan(pol, nodes, health(store, [n.name for n in nodes], settings))
    # Nothing to write (or a dry run, which only logs): no clock to read.
    writes = bool(the_plan.actions) and not pol.dry_run
    now, stamps = _clocks(store, [a.node for a in the_plan.actions]) if writes else (None, None)
    remediation.apply(cluster, pol, the_plan, now=now, stamps=stamps)
    if the_plan.deferred:
        log.warning(
            "remediation budget exhausted: %d evicted nodes labelled only (%d of %d held)",
            the_plan.deferred, the_plan.held, the_plan.budget,
        )  # fmt: skip
    store.set_remediation_summary(
        {
            "budget": the_plan.budget,
            "held": the_plan.held,
            "deferred": the_plan.deferred,
            "dry_run": float(pol.dry_run),
        }
    )
    return the_plan
