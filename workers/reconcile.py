"""Verdict reconciliation: from a node's latest results to its stored verdict and its labels.

Runs after every result a worker saves and on beat's reconcile tick (which is also the stale
sweep: a node whose results aged out becomes ``UNKNOWN`` there). ``EVICT`` is sticky: the time it
was first decided is kept in the node's state until a level-3 DCGM pass or an operator clears it.
The verdict is published to the Node (labels, condition, event) when a cluster is configured,
and always to the local label store in Redis, which the API and ``autopilot up`` read.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from autopilot import config, errors, publish, registry, results, verdict
from autopilot.cluster import ClusterClient
from workers import confirming
from workers.store import NodeView, ResultsStore

log = logging.getLogger(__name__)


def periodic_checks(settings: config.Settings) -> list[str]:
    """The configured periodic checks that exist in this build (others cannot produce results)."""
    return [c for c in settings.periodic_checks if c in registry.REGISTRY]


def reconcile_node(
    store: ResultsStore,
    node: str,
    settings: config.Settings,
    now: datetime | None = None,
    *,
    cluster: ClusterClient | None = None,
    view: NodeView | None = None,
) -> verdict.Decision:
    """Recompute ``node``'s verdict and store it with its labels (one MULTI).

    ``view`` is the node's latest results and state when the caller has just read them (a task
    reads them in the same MULTI that saves its last result); otherwise they are read here.
    """
    moment = now or datetime.now(UTC)
    if view is None:
        view = store.view(node)
    latest, state = view.latest, view.state
    evicted_at = results.parse_iso(state["evicted_at"]) if state.get("evicted_at") else None
    decision = verdict.decide(
        # What confirmation lets count: pending failures wait, recovering checks keep their failure.
        confirming.effective_latest(store, node, latest, state, settings),
        periodic=periodic_checks(settings),
        now=moment,
        max_age_s=settings.stale_after_s,
        evicted_at=evicted_at,
        testing=bool(state.get("testing_since")),
    )
    new_state: dict[str, str | None] = {"verdict": decision.verdict.value, "reasons": json.dumps(decision.reasons)}
    if decision.verdict is verdict.Verdict.EVICT and evicted_at is None:
        new_state["evicted_at"] = results.utc_now_iso(moment)
    elif decision.verdict is not verdict.Verdict.EVICT and evicted_at is not None:
        new_state["evicted_at"] = None
    if state.get("verdict") != decision.verdict.value:
        new_state["changed_at"] = results.utc_now_iso(moment)
    dcgm = [r for r in latest.values() if r.check == "dcgm"]
    publication = publish.desired(decision, dcgm)
    if cluster is not None:
        try:
            publish.apply(cluster, node, publication, state.get("published_verdict"), namespace=settings.namespace)
            new_state["published_verdict"] = decision.verdict.value
        except errors.ClusterError as exc:
            # The next reconcile (after the next result, or beat's tick) tries again.
            log.warning("publishing the verdict of %s failed: %s", node, exc)
    labels: dict[str, str | None] = {**publication.labels, **publication.annotations}
    # The local label store keeps annotations beside labels. Only what differs from the view is
    # written: in steady state (most reconciles) nothing is, which saves a MULTI per task.
    state_changes = _changes(state, new_state)
    label_changes = labels if view.labels is None else _changes(view.labels, labels)
    if state_changes or label_changes:
        store.set_state_and_labels(node, state_changes, label_changes)
    return decision


def _changes(current: dict[str, str], wanted: dict[str, str | None]) -> dict[str, str | None]:
    """The entries of ``wanted`` that ``current`` does not already have (None: delete, if present)."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def clear_evict(
    store: ResultsStore, node: str, settings: config.Settings, *, by: str, cluster: ClusterClient | None = None
) -> verdict.Decision:
    """An operator's clear: forget the eviction, then recompute from the fresh results."""
    store.set_state(node, {"evicted_at": None, "cleared_by": by, "cleared_at": results.utc_now_iso()})
    return reconcile_node(store, node, settings, cluster=cluster)
