"""The per-GPU half of a node's reconcile: GPU verdicts, their history, labels and device taints.

Called by ``reconcile.reconcile_node`` with the node's latest results and state. It judges each
GPU (``gpuverdict``), flags repeat offenders from their history (``gpuhistory``, ``gpustore``),
records what changed as incidents, and returns what the node should carry next to its verdict:
the node-state fields (``gpus``: every GPU's state as JSON, with when its ``pciebw``/``gpumem``
figure was last measured; ``gpus_at``: the newest result judged, ``gpus_day``: the day the GPUs'
sightings were last written), the count labels and the annotation. With ``AUTOPILOT_DEVICE_TAINTS``
on (or ``dry-run``) and a cluster, it also keeps one DeviceTaintRule per bad GPU, re-syncing only
when the set of wanted rules changed since the last successful sync (``gpu_taints`` in the node state).

Each node's last GPU judgement is remembered in this process (``_Memo``): in steady state a reconcile
reads back the ``gpus`` text it wrote and judges the same states again, so parsing that text, writing
it out and building the GPUs' labels and annotation are taken from the memo instead of done again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime

from autopilot import config, devicetaints, errors, gpuhistory, gpuverdict, results, verdict
from autopilot.cluster import ClusterClient
from autopilot.gpuverdict import GpuState
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.verdict import Verdict
from workers.store import NodeState, ResultsStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Memo:
    """One node's last GPU judgement in this process. Safe to reuse because each part is a pure function
    of what it is looked up by, compared whole: ``previous`` is ``gpuverdict.loads(read)`` (reused only
    for that exact text), ``text`` and ``publication`` are ``gpuverdict.dumps`` and
    ``gpuverdict.publication`` of ``states`` (reused only for states equal to it, field by field)."""

    read: str | None
    previous: Mapping[str, GpuState]
    states: Mapping[str, GpuState]
    text: str
    publication: tuple[Mapping[str, str], Mapping[str, str]]


# Nodes remembered per process (about 8 KiB each with 8 GPUs): a worker hosts one, a simulator a few hundred
# (``autopilot up``: 250 per process; at most 8 processes, so 2,048 each covers 16,000 nodes). Past it the
# oldest is forgotten: beat's tick over a larger fleet then parses as before, nothing wrong, only slower.
_MEMO_MOST = 2048
_memo: dict[str, _Memo] = {}
_memo_lock = threading.Lock()


def _remember(node: str, memo: _Memo) -> None:
    with _memo_lock:
        _memo.pop(node, None)
        if len(_memo) >= _MEMO_MOST:
            del _memo[next(iter(_memo))]
        _memo[node] = memo


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
    state: NodeState,
    now: datetime,
    cluster: ClusterClient | None = None,
    *,
    checks: CheckRegistry,
    lost_since: datetime | None = None,
    measured: Mapping[str, CheckResult] | None = None,
) -> GpuOutcome:
    """``lost_since``: the last heartbeat of a lost node. Its results say nothing of its GPUs now, so each
    GPU is ``UNKNOWN`` ("no heartbeat since"), as the node is, except a sticky ``EVICT``. ``measured``: the
    node's latest results as stored, when ``latest`` is what confirmation lets count of them: a device held
    from an older sample (``confirmation.judge_devices``) is no new finding, so no incident."""
    if lost_since is not None:
        latest = {}
    memo = _memo.get(node)
    previous = previous_states(node, state)
    cleared_at = state.cleared_since
    states = gpuverdict.decide(
        latest,
        previous,
        now=now,
        max_age_s=settings.stale_after_s,
        cleared_at=cleared_at,
        checks=checks,
        unmeasured_after_s=settings.unmeasured_after_s,
    )
    # A stamp further ahead than a result stays fresh (a clock gone wrong) would make every later result old.
    judged_until = state.gpus_at if state.gpus_at and _in_time(state.gpus_at, now, settings) else ""
    # A carried eviction is recorded as the GPU's change into EVICT, not as an event besides.
    new_results = [
        _as_measured(r, measured)
        for r in latest.values()
        if r.started_at and r.started_at > judged_until and r.check != CARRIED
    ]
    found = gpuhistory.incidents(
        node, previous, states, now=now, new_results=new_results, periodic=settings.periodic_checks
    )
    day = results.utc_now_iso(now)[:10]
    flags = _offenders(store, settings, previous, states, found, now=now, fresh_day=state.gpus_day != day)
    if flags:
        states = gpuverdict.decide(
            latest,
            previous,
            now=now,
            max_age_s=settings.stale_after_s,
            cleared_at=cleared_at,
            flags=flags,
            checks=checks,
            unmeasured_after_s=settings.unmeasured_after_s,
        )
    if lost_since is not None:
        states = lost(states, verdict.lost_reason(lost_since))
    if memo is not None and memo.states == states:
        text, (labels, annotations) = memo.text, memo.publication
    else:
        text, (labels, annotations) = gpuverdict.dumps(states), gpuverdict.publication(states)
    # In steady state the text read is the text written and the states judged equal those read: each is
    # kept once (a simulator remembers a thousand nodes).
    read = text if text == state.gpus else state.gpus
    judged = dict(states)
    _remember(node, _Memo(read, judged if previous == states else dict(previous), judged, text, (labels, annotations)))
    fields: dict[str, str | None] = {"gpus": text}
    # Incidents are written when they happen; the sightings (and the keys' expiry) when the GPUs
    # changed, and once a day: a steady-state reconcile writes nothing. A GPU measured again changes only
    # its measured times, which ride in ``gpus`` (the same write as ``gpus_at``): no sighting for that.
    moved = text != state.gpus and not gpuverdict.coverage_changed_only(previous, states)
    if found or moved or state.gpus_day != day:
        store.gpu_history().record(
            node,
            states,
            found,
            now=now,
            history_len=settings.gpu_history_len,
            retention_s=settings.gpu_history_retention_s,
        )
        fields["gpus_day"] = day
    newest = max(
        (r.started_at for r in latest.values() if r.started_at and _in_time(r.started_at, now, settings)),
        default=judged_until,
    )
    fields["gpus_at"] = max(newest, judged_until) or None
    if cluster is not None and settings.device_taints != "off":
        fields.update(_taints(cluster, node, settings, states, state.gpu_taints))
    return GpuOutcome(dict(states), fields, dict(labels), dict(annotations))


def previous_states(node: str, state: NodeState) -> dict[str, GpuState]:
    """``node``'s GPU states as ``state`` stores them (``gpus``): from this process's memo when it read that text."""
    memo = _memo.get(node)
    # GpuStates are frozen; the mapping is copied so no caller can change what the memo holds.
    return dict(memo.previous) if memo is not None and memo.read == state.gpus else gpuverdict.loads(state.gpus)


CARRIED = "gpuhistory"
"""The check name of ``carried``'s result: no check of the registry, so it is never scheduled nor confirmed."""


def carried(
    store: ResultsStore,
    node: str,
    settings: config.Settings,
    state: NodeState,
    latest: Mapping[str, CheckResult],
    now: datetime,
) -> CheckResult | None:
    """A fatal result naming each GPU of ``latest`` new to ``node`` (no state of it here) whose history holds an
    eviction nothing cleared (``gpuhistory.standing_eviction``), or None. Its history follows the GPU by UUID,
    but its sticky ``EVICT`` was the node's: a node renamed, re-imaged under another name or forgotten and back,
    or a board moved to another node, came back ``PASS`` on the GPU evicted for a fault no periodic check sees
    again (an Xid, a level-3 failure). Judged with the node's results, the eviction is the node's and the GPU's
    again, sticky as any, until a level-3 pass or an operator's clear. The history is read (one pipeline) only
    when a GPU is new to the node: a steady node reads nothing more."""
    known = {s.uuid for s in previous_states(node, state).values() if s.uuid}
    new: dict[str, DeviceResult] = {}
    for result in latest.values():
        for device in result.devices:
            if device.uuid and device.uuid not in known:
                new.setdefault(device.uuid, device)
    if not new:
        return None
    history = store.gpu_history().incidents_many(new, now=now, retention_s=settings.gpu_history_retention_s)
    devices = []
    for uuid, device in new.items():
        standing = gpuhistory.standing_eviction(history.get(uuid, []))
        if standing is not None:
            why = f"evicted on {standing.node} since {standing.at} and never cleared"
            devices.append(
                DeviceResult(device.id, Status.FAIL, detail=why, uuid=uuid, bus_id=device.bus_id, serial=device.serial)
            )
    if not devices:
        return None
    summary = "; ".join(f"GPU {d.id}: {d.detail}" for d in devices)
    return CheckResult(
        CARRIED,
        Status.FAIL,
        summary,
        node=node,
        fatal=True,
        devices=tuple(devices),
        started_at=results.utc_now_iso(now),
    )


def _in_time(stamp: str, now: datetime, settings: config.Settings) -> bool:
    """``stamp`` no further ahead of ``now`` than a result stays fresh (``verdict.is_ahead``), and readable."""
    try:
        return (results.parse_iso(stamp) - now).total_seconds() <= settings.stale_after_s
    except ValueError:
        return False


def _as_measured(result: CheckResult, measured: Mapping[str, CheckResult] | None) -> CheckResult:
    """``result`` with only the devices its stored result (in ``measured``) has as they are."""
    stored = measured.get(result.check) if measured is not None else None
    if stored is None or stored is result:
        return result
    return dataclasses.replace(result, devices=tuple(d for d in result.devices if d in stored.devices))


def lost(states: Mapping[str, GpuState], why: str) -> dict[str, GpuState]:
    """The GPUs of a lost node: each ``UNKNOWN`` saying ``why`` (a repeat-offender flag stays), but a sticky
    ``EVICT``. Also what the API shows before beat's next reconcile has stored it (``reconcile.shown_gpus``)."""
    return {
        k: dataclasses.replace(
            s,
            verdict=Verdict.UNKNOWN,
            reasons=(why, *(r for r in s.reasons if r.startswith(gpuhistory.OFFENDER))),
        )
        if s.verdict is not Verdict.EVICT
        else s
        for k, s in states.items()
    }


def _offenders(
    store: ResultsStore,
    settings: config.Settings,
    previous: Mapping[str, GpuState],
    states: Mapping[str, GpuState],
    found: list[gpuhistory.Incident],
    *,
    now: datetime,
    fresh_day: bool,
) -> dict[str, str]:
    """UUID -> repeat-offender reason. The history is read (one pipeline) only when this reconcile
    found incidents, or once a day (the window slides); otherwise the flags stand as last judged,
    so a steady-state reconcile reads nothing more."""
    if settings.gpu_repeat_count <= 0:
        return {}
    if not found and not fresh_day:
        return {
            s.uuid: reason
            for s in previous.values()
            for reason in s.reasons
            if reason.startswith(gpuhistory.OFFENDER) and s.key in states
        }
    uuids = [s.uuid for s in states.values() if s.uuid]
    history = store.gpu_history().incidents_many(uuids, now=now, retention_s=settings.gpu_history_retention_s)
    flags: dict[str, str] = {}
    for uuid in uuids:
        known = [*history.get(uuid, []), *(i for i in found if i.uuid == uuid)]
        reason = gpuhistory.offender_reason(
            known, now=now, count=settings.gpu_repeat_count, window_s=settings.gpu_repeat_window_s
        )
        if reason:
            flags[uuid] = reason
    return flags


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
