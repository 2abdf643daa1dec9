"""The per-GPU half of a node's reconcile: GPU verdicts, their history, labels and device taints.

Called by ``reconcile.reconcile_node`` with the node's latest results and state. It judges each
GPU (``gpuverdict``), flags repeat offenders from their history (``gpuhistory``, ``gpustore``),
records what changed as incidents, and returns what the node should carry next to its verdict:
the node-state fields (``gpus``: every GPU's state as JSON, ``gpus_at``: the newest result
judged, ``gpus_day``: the day the GPUs' sightings were last written), the count labels and the
annotation. With ``AUTOPILOT_DEVICE_TAINTS`` on (or ``dry-run``) and a cluster, it also keeps
one DeviceTaintRule per bad GPU, re-syncing only when the set of wanted rules changed since the
last successful sync (``gpu_taints`` in the node state).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from datetime import datetime

from autopilot import config, devicetaints, errors, gpuhistory, gpuverdict, results
from autopilot.cluster import ClusterClient
from autopilot.gpuverdict import GpuState
from autopilot.results import CheckResult
from workers import gpustore
from workers.store import ResultsStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GpuOutcome:
    states: dict[str, GpuState]
    state: dict[str, str | None]
    labels: dict[str, str]
    annotations: dict[str, str]


def reconcile_gpus(
    store: ResultsStore,
    node: str,
    settings: config.Settings,
    latest: Mapping[str, CheckResult],
    state: Mapping[str, str],
    now: datetime,
    cluster: ClusterClient | None = None,
) -> GpuOutcome:
    previous = gpuverdict.loads(state.get("gpus"))
    cleared_at = results.parse_iso(state["cleared_at"]) if state.get("cleared_at") else None
    uuids = {s.uuid for s in previous.values()} | {d.uuid for r in latest.values() for d in r.devices}
    # One pipelined read per reconcile, skipped when the repeat-offender rule is off.
    history = (
        gpustore.incidents_many(store.r, uuids, now=now, retention_s=settings.gpu_history_retention_s)
        if settings.gpu_repeat_count > 0
        else {}
    )
    flags = {
        uuid: reason
        for uuid, found in history.items()
        if (
            reason := gpuhistory.offender_reason(
                found, now=now, count=settings.gpu_repeat_count, window_s=settings.gpu_repeat_window_s
            )
        )
    }
    states = gpuverdict.decide(
        latest, previous, now=now, max_age_s=settings.stale_after_s, cleared_at=cleared_at, flags=flags
    )
    judged_until = state.get("gpus_at", "")
    new_results = [r for r in latest.values() if r.started_at and r.started_at > judged_until]
    found = gpuhistory.incidents(
        node, previous, states, now=now, new_results=new_results, periodic=settings.periodic_checks
    )
    text = gpuverdict.dumps(states)
    day = results.utc_now_iso(now)[:10]
    fields: dict[str, str | None] = {"gpus": text}
    # Incidents are written when they happen; the sightings (and the keys' expiry) when the GPUs
    # changed, and once a day: a steady-state reconcile writes nothing.
    if found or text != state.get("gpus") or state.get("gpus_day") != day:
        gpustore.record(
            store.r,
            node,
            states,
            found,
            now=now,
            history_len=settings.gpu_history_len,
            retention_s=settings.gpu_history_retention_s,
        )
        fields["gpus_day"] = day
    newest = max((r.started_at for r in latest.values() if r.started_at), default=judged_until)
    fields["gpus_at"] = max(newest, judged_until) or None
    if cluster is not None and settings.device_taints != "off":
        fields.update(_taints(cluster, node, settings, states, state.get("gpu_taints")))
    labels, annotations = gpuverdict.publication(states)
    return GpuOutcome(states, fields, labels, annotations)


def _taints(
    cluster: ClusterClient, node: str, settings: config.Settings, states: Mapping[str, GpuState], synced: str | None
) -> dict[str, str | None]:
    wanted = devicetaints.desired(
        node, states, driver=settings.device_taint_driver, device_template=settings.device_taint_device
    )
    dry_run = settings.device_taints == "dry-run"
    mark = json.dumps({"dry_run": dry_run, "rules": {n: r.effect for n, r in sorted(wanted.items())}}, sort_keys=True)
    if mark == synced:
        return {}
    try:
        outcome = devicetaints.sync(cluster, node, wanted, dry_run=dry_run)
    except errors.ClusterError as exc:
        log.warning("device taint rules of %s not synced (the next reconcile retries): %s", node, exc)
        return {}
    return {"gpu_taints": mark} if outcome.served else {}
