"""Verdict reconciliation: from a node's latest results to its stored verdict and labels.

Runs after every result a worker saves and on beat's reconcile tick (which is also the stale
sweep: a node whose results aged out becomes ``UNKNOWN`` there). ``EVICT`` is sticky: the time it
was first decided is kept in the node's state until a level-3 DCGM pass or an operator clears it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from autopilot import config, labeling, registry, results, verdict
from workers.store import ResultsStore


def periodic_checks(settings: config.Settings) -> list[str]:
    """The configured periodic checks that exist in this build (others cannot produce results)."""
    return [c for c in settings.periodic_checks if c in registry.REGISTRY]


def reconcile_node(
    store: ResultsStore, node: str, settings: config.Settings, now: datetime | None = None
) -> verdict.Decision:
    moment = now or datetime.now(UTC)
    latest = store.latest(node)
    state = store.state(node)
    evicted_at = results.parse_iso(state["evicted_at"]) if state.get("evicted_at") else None
    decision = verdict.decide(
        latest,
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
    store.set_state(node, new_state)
    labels: dict[str, str | None] = dict(labeling.verdict_labels(decision.verdict))
    dcgm = latest.get("dcgm")
    if dcgm is not None:
        dcgm_labels, annotations = labeling.dcgm_labels(dcgm)
        labels.update(dcgm_labels)
        labels.update(annotations)  # the local label store keeps annotations beside labels
    store.set_labels(node, labels)
    return decision


def clear_evict(store: ResultsStore, node: str, settings: config.Settings, *, by: str) -> verdict.Decision:
    """An operator's clear: forget the eviction, then recompute from the fresh results."""
    store.set_state(node, {"evicted_at": None, "cleared_by": by, "cleared_at": results.utc_now_iso()})
    return reconcile_node(store, node, settings)
