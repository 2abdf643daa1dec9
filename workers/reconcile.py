"""Verdict reconciliation: from a node's latest results to its stored verdict and its labels.

Runs after every result a worker saves and on beat's reconcile tick (``reconcile_all``), which is
also the sweep for what no worker can report itself: a node whose results aged out becomes
``UNKNOWN``, a node whose worker stopped heartbeating is lost (``UNKNOWN``, "no heartbeat since
<time>", written to its labels by this tick since its own worker cannot), and a lost node whose
Node object is gone (without a cluster: any lost node) is forgotten after
``AUTOPILOT_NODE_RETENTION``. ``EVICT`` is sticky: the time and causes (check, GPUs, summary,
time of the result) of an eviction are kept in the node's state until a level-3 DCGM pass or an
operator clears it; who cleared it, when, and what was cleared stay after that. The verdict is
published to the Node (labels, condition, event) when a cluster is configured, and always to
the local label store in Redis, which the API and ``autopilot up`` read. A verdict change whose
Event the API server refused stays unannounced (``event_error`` in the state) and is announced
again at the next reconcile, at most ``EVENT_ATTEMPTS`` times.

A node's failed pings to a node the fleet's latest ping results blame (``network.fleet_suspects``,
the localisation of the API's report) are that suspect's finding, not the pinging node's: the
verdict judges the ``ping`` result without them (``network.attribute``). The fleet's pings are
read once per tick in ``reconcile_all``, which keeps the suspects it found, and by a reconcile
after a task only when the node's own ``ping`` is bad in a way the kept suspects do not explain.
Such a reconcile that names a suspect the kept ones lacked reconciles at once the other nodes whose
fresh ``ping`` failed to it and whose stored verdict may hold that failure (``WARN``): those
confirmed bad before it could be named would otherwise stay ``WARN`` for its fault until beat's
next tick.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from autopilot import config, confirmation, errors, gpuverdict, network, publish, results, verdict
from autopilot.cluster import ClusterClient
from autopilot.gpuverdict import GpuState
from autopilot.registry import CheckRegistry
from workers import confirming, gpureconcile
from workers.store import NodeState, NodeView, ResultsStore

log = logging.getLogger(__name__)

# Announcing one verdict change is given up after this many refused Events (a refusal that
# outlasts the seam's retries is mostly RBAC or validation, which the next tick will not fix).
EVENT_ATTEMPTS = 5
# State fields that describe one eviction, and those that describe the last clear.
_EVICTION = ("evicted_at", "evict_cause")
_CLEAR = ("cleared_by", "cleared_at", "cleared_cause")
# How long the fleet's ping suspects are kept for the reconciles after tasks (beat's tick renews
# them; past this a failed ping reads the fleet's pings again).
_SUSPECTS_TTL_S = 600.0
# Beyond the longest a level-3 run holds its node: the API calls around its Job and a worker's restart.
_TESTING_SLACK_S = 600.0


def lost_since(last_seen: float | None, now: datetime, settings: config.Settings) -> datetime | None:
    """The last heartbeat of a lost node (not heard from for ``settings.live_after_s``); None while it is
    heard from, and for a node that never heartbeated (results saved by ``autopilot run``, tests)."""
    if last_seen is None or now.timestamp() - last_seen <= settings.live_after_s:
        return None
    return datetime.fromtimestamp(last_seen, UTC)


def shared_now(store: ResultsStore) -> datetime:
    """The store's clock (Redis ``TIME``): every reconcile judges by it, wherever it runs (a worker after its
    task, beat's tick, the API's clear), so a worker whose clock is wrong cannot make them disagree."""
    return datetime.fromtimestamp(store.server_time(), UTC)


def _judged_at(store: ResultsStore, view: NodeView, now: datetime | None) -> datetime:
    """``now`` when the caller gives it; else the store's clock as ``view`` read it in its own round trip; else (a view
    built without one) read here (``shared_now``)."""
    if now is not None:
        return now
    return datetime.fromtimestamp(view.now, UTC) if view.now is not None else shared_now(store)


def lost_at(
    last_seen: float | None, heard_ahead: str | None, now: datetime, settings: config.Settings
) -> datetime | None:
    """Since when a node is lost at ``now`` (the store's clock), by the reconcile's rule: its last heartbeat
    (``lost_since``), or a heartbeat stamped ahead that has stood still (``heard_ahead``, ``_silent_ahead``);
    None while it is live."""
    return lost_since(last_seen, now, settings) or _silent_ahead(last_seen, heard_ahead, now, settings)[0]


def is_live(last_seen: float | None, heard_ahead: str | None, now: float, settings: config.Settings) -> bool:
    """Whether a node that heartbeated is live at ``now`` (the API's ``live``): the reconcile's rule (``lost_at``)."""
    return last_seen is not None and lost_at(last_seen, heard_ahead, datetime.fromtimestamp(now, UTC), settings) is None


def shown(
    stored: str | None,
    reasons: Sequence[str],
    last_seen: float | None,
    now: float,
    settings: config.Settings,
    heard_ahead: str | None = None,
) -> tuple[str | None, list[str]]:
    """The verdict and reasons to show for a node at ``now`` (API answers, metrics): the stored ones (None: none
    stored), except that a lost node (``lost_at``) is ``UNKNOWN`` (or its sticky ``EVICT``) with "no heartbeat
    since" even before beat's next reconcile has stored that (a reconcile interval of 0 never does)."""
    said = list(reasons)
    since = lost_at(last_seen, heard_ahead, datetime.fromtimestamp(now, UTC), settings)
    if since is None:
        return stored, said
    why = verdict.lost_reason(since)
    if stored == verdict.Verdict.EVICT.value:
        return stored, said if why in said else [*said, why]
    return verdict.Verdict.UNKNOWN.value, [why]


def shown_gpus(
    text: str | None, last_seen: float | None, now: float, settings: config.Settings, heard_ahead: str | None = None
) -> list[GpuState]:
    """A node's GPUs to show at ``now`` (API answers), from its stored ``gpus`` field: as stored, except that a
    lost node's (``lost_at``) are ``UNKNOWN`` (or their sticky ``EVICT``) even before beat's next reconcile has
    stored that."""
    states = gpuverdict.loads(text)
    since = lost_at(last_seen, heard_ahead, datetime.fromtimestamp(now, UTC), settings)
    if since is not None:
        states = gpureconcile.lost(states, verdict.lost_reason(since))
    return gpuverdict.ordered(states)


def reconcile_node(
    store: ResultsStore,
    node: str,
    settings: config.Settings,
    now: datetime | None = None,
    *,
    cluster: ClusterClient | None = None,
    view: NodeView | None = None,
    suspects: frozenset[str] | None = None,
    checks: CheckRegistry,
) -> verdict.Decision:
    """Recompute ``node``'s verdict and store it with its labels (one MULTI).

    ``view`` is the node's latest results, state and last heartbeat when the caller has just
    read them (a task reads them in the same MULTI that saves its last result); otherwise they
    are read here. ``suspects``: the fleet's ping suspects when the caller has them (else read
    here if the node's ping is bad). ``now``: the store's clock (default: the view's ``now``, read with it; else
    read here, ``shared_now``); the node's results are judged by it as their worker's clock reads it
    (``results.on_node_clock``).
    """
    if view is None:
        view = store.view(node)
    # The view's own reading of the store's clock when it has one (read with it, in its round trip): a task's
    # reconcile asks for no TIME of its own.
    shared = _judged_at(store, view, now)
    # The node's stamps (its results, and what its reconciles stamped: an eviction, a change) are on its worker's
    # clock; its heartbeat and the fleet's pings are judged on the shared clock.
    moment = results.on_node_clock(shared, view.clock_offset)
    latest, state = view.latest, view.state
    # What confirmation lets count: pending failures wait, recovering checks keep their failure. The
    # node's verdict and its GPUs' verdicts judge the same view, so a noise sample moves neither.
    # Read once, judged once or twice; a failed ping's kept suspects come with it when this call must look.
    found = confirming.samples(store, node, latest, state, settings, kept=suspects is None)
    confirmed = confirming.effective_latest(latest, found, settings)
    pings = [r for r in (confirmed.get("ping"), latest.get("ping")) if r is not None and r.is_bad]
    peers: list[str] = []
    blamed: frozenset[str] = frozenset()
    if pings:
        # Failed pings to the fleet's suspects are set aside in every sample before confirmation
        # judges them (``confirming.excuse``), then in what it lets count (``network.attribute``).
        blamed, peers = _ping_suspects(store, settings, shared, node, pings, suspects, found)
        if blamed:
            confirmed = confirming.effective_latest(latest, found, settings, suspects=blamed)
            confirmed = network.attribute(confirmed, blamed)
    evicted_at = state.evicted_since
    lost = lost_since(view.last_seen, shared, settings)
    silent, heard = _silent_ahead(view.last_seen, state.heard_ahead, shared, settings)
    lost = lost or silent
    unfinished = _unfinished_level3(node, state.testing_since, moment, settings)
    # A GPU new here whose eviction elsewhere (or before this node was forgotten) was never cleared.
    carried = gpureconcile.carried(store, node, settings, state, latest, moment)
    held = [carried] if carried is not None else []
    decision = verdict.decide(
        [*confirmed.values(), *unfinished, *held],
        # Validated against the process's checks when the settings were loaded (config._known_checks).
        periodic=settings.periodic_checks,
        now=moment,
        max_age_s=settings.stale_after_s,
        evicted_at=evicted_at,
        testing=bool(state.testing_since) and not unfinished,
        lost_since=lost,
        evict_causes=state.causes,
    )
    if silent is not None and view.last_seen is not None:
        ahead = f"its clock runs ahead: its last heartbeat is stamped {_epoch_text(view.last_seen)}"
        decision = dataclasses.replace(decision, notes=(*decision.notes, ahead))
    skew = skew_note(view.clock_offset, settings)
    if skew:
        decision = dataclasses.replace(decision, notes=(*decision.notes, skew))
    new_state: dict[str, str | None] = {"verdict": decision.verdict.value, "heard_ahead": heard}
    if decision.verdict is verdict.Verdict.EVICT and evicted_at is None:
        # A new eviction: its causes are kept until it is cleared; an older clear is history.
        new_state.update(dict.fromkeys(_CLEAR))
        new_state["evicted_at"] = results.utc_now_iso(moment)
        new_state["evict_cause"] = verdict.causes_to_json(decision.causes)
    elif decision.verdict is not verdict.Verdict.EVICT and evicted_at is not None:
        # Only a level-3 DCGM pass gets here (an operator's clear removed ``evicted_at`` already).
        new_state.update(_cleared(state, by="a passing DCGM level-3 run", at=_clearing_pass(latest, evicted_at)))
    if decision.verdict is not verdict.Verdict.EVICT:
        decision = _with_clear_note(decision, state.updated(new_state))
    new_state["reasons"] = json.dumps([*decision.reasons, *decision.notes])
    if state.verdict != decision.verdict.value:
        new_state["changed_at"] = results.utc_now_iso(moment)
    dcgm = [r for r in latest.values() if r.check == "dcgm"]
    # The dcgm.level labels' times on the store's clock: the results' stamps are on the node's (its offset off).
    publication = publish.desired(decision, dcgm, offset=view.clock_offset, now=shared)
    # Per-GPU verdicts, history and device taints (issue 15): their labels ride with the node's.
    # Each GPU's device confirmed by its own samples: a GPU that heals while another still fails is held
    # until its own passes, and a new failure of one GPU is pending while another recovers.
    per_gpu = confirming.effective_devices(latest, found, settings, suspects=blamed)
    if carried is not None:
        per_gpu[carried.check] = carried
    gpu = gpureconcile.reconcile_gpus(
        store, node, settings, per_gpu, state, moment, cluster, checks=checks, lost_since=lost, measured=latest
    )
    new_state.update(gpu.state)
    publication = dataclasses.replace(
        publication,
        labels={**publication.labels, **gpu.labels},
        annotations={**publication.annotations, **gpu.annotations},
    )
    if cluster is not None:
        new_state.update(_publish(cluster, node, publication, state, shared))
    labels: dict[str, str | None] = {**publication.labels, **publication.annotations}
    # The local label store keeps annotations beside labels. Only what differs from the view is
    # written: in steady state (most reconciles) nothing is, which saves a MULTI per task.
    state_changes = state.changes_to(new_state)
    label_changes = labels if view.labels is None else _changes(view.labels, labels)
    if state_changes or label_changes:
        store.set_state_and_labels(node, state_changes, label_changes)
    for peer in peers:
        # Given the suspects, a peer's reconcile reads no fleet pings and reconciles no one else.
        try:
            reconcile_node(store, peer, settings, shared, cluster=cluster, suspects=blamed, checks=checks)
        except errors.StoreUnavailable:
            raise
        except Exception:  # another node's bad data must not fail this node's reconcile
            log.exception("reconcile of node %s (a new ping suspect named) failed", peer)
    return decision


def skew_note(offset: float | None, settings: config.Settings) -> str:
    """A note naming the node's clock offset when it is larger than ``settings.clock_skew_warn_s`` ("" otherwise,
    and with the warning off). It does not move the verdict: the offset is taken off the node's stamps, so its
    results are judged as any node's; the note tells an operator its clock (and its logs' times) is wrong."""
    limit = settings.clock_skew_warn_s
    if offset is None or limit <= 0 or abs(offset) <= limit:
        return ""
    way = "ahead of" if offset > 0 else "behind"
    said = f"its clock runs {abs(offset):.0f} s {way} the store's (more than {limit:g} s)"
    return f"{said}; its results are judged with that taken off"


def _silent_ahead(
    last_seen: float | None, mark: str | None, moment: datetime, settings: config.Settings
) -> tuple[datetime | None, str | None]:
    """(when a node whose heartbeat is stamped ahead of ``moment`` was first heard so, if it is lost; the
    ``heard_ahead`` mark to keep). By its stamp a worker whose clock runs hours ahead is heard from "just now"
    for hours after it stopped, its results fresh: the node read ``PASS``. So a stamp more than
    ``settings.live_after_s`` ahead is remembered with this clock's time, and the node is lost once that same
    stamp has stood for ``live_after_s`` of this clock (a live worker's next heartbeat replaces it)."""
    if last_seen is None or last_seen - moment.timestamp() <= settings.live_after_s:
        return None, None
    now = moment.timestamp()
    stamp, _, since = (mark or "").partition(" ")
    try:
        same, first = float(stamp) == last_seen, float(since)
    except ValueError:
        same, first = False, now
    if (
        not same or not 0 < first <= now
    ):  # a new stamp; or a mark of another writer, or of this clock before a step back
        return None, f"{last_seen!r} {now!r}"
    if now - first <= settings.live_after_s:
        return None, mark
    return datetime.fromtimestamp(first, UTC), mark


def _epoch_text(seconds: float) -> str:
    """``seconds`` (epoch) as a result's time; as written when no date can hold it (another writer's figure)."""
    try:
        return results.utc_now_iso(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):
        return f"{seconds!r} (epoch seconds)"


def _unfinished_level3(
    node: str, testing_since: str | None, moment: datetime, settings: config.Settings
) -> list[results.CheckResult]:
    """A ``dcgm`` error for a level-3 run that holds the node ``TESTING`` longer than any run may (its Job's
    deadline and grace, and ``_TESTING_SLACK_S``); none while it may still run, or when none holds the node.

    The worker ends ``TESTING`` when it stores the run's outcome; a write that failed then (Redis away at that
    moment) left the mark for as long as the worker lived, and the node ``TESTING`` for ever, its results unjudged.
    A run that never reported is a check that could not complete: an error, never a pass."""
    if not testing_since:
        return []
    from workers import invasive_flow  # it imports this module

    limit_s = invasive_flow.longest_wait_s(settings) + _TESTING_SLACK_S
    try:
        age_s: float | None = (moment - results.parse_iso(testing_since)).total_seconds()
    except ValueError:
        age_s = None  # another writer's stamp: no run can be placed by it
    if age_s is not None and age_s <= limit_s:
        return []
    summary = (
        f"the level-3 run that holds the node TESTING since {testing_since[:40]} never reported "
        f"(longer than {limit_s:g} s); restarting the node's worker collects its Job's outcome"
    )
    return [
        results.CheckResult(
            "dcgm", results.Status.ERROR, summary, node=node, params={"r": 3}, started_at=results.utc_now_iso(moment)
        )
    ]


def _publish(
    cluster: ClusterClient, node: str, publication: publish.NodePublication, state: NodeState, moment: datetime
) -> dict[str, str | None]:
    """Publish to the Node; the state fields that record how it went."""
    out: dict[str, str | None] = {}
    try:
        applied = publish.apply(cluster, node, publication, state.published_verdict, now=moment)
    except errors.NotFound as exc:
        # The Node object is gone (the node left the cluster): remembered for the retention sweep,
        # and said once (beat's tick meets it again every interval until the node is forgotten).
        if not state.node_gone_at:
            log.warning("publishing the verdict of %s: no such Node (%s); kept until the retention", node, exc)
            out["node_gone_at"] = results.utc_now_iso(moment)
        return out
    except errors.ClusterError as exc:
        # The next reconcile (after the next result, or beat's tick) tries again.
        log.warning("publishing the verdict of %s failed: %s", node, exc)
        return out
    out.update(node_gone_at=None, published_verdict=publication.verdict.value)
    if applied.before is None:  # no change to announce: a given-up Event's error stays on record
        return out
    if applied.event_error is None:
        out.update(event_error=None, event_failures=None)
        return out
    failures = int(state.event_failures or 0) + 1
    out["event_error"] = f"{results.utc_now_iso(moment)}: {applied.event_error}"[:1024]
    change = f"{applied.before or '(none)'} -> {publication.verdict.value}"
    if failures >= EVENT_ATTEMPTS:
        log.error("node %s: Event %s refused %d times, given up: %s", node, change, failures, applied.event_error)
        out["event_failures"] = None
    else:
        log.warning(
            "node %s: Event %s refused (attempt %d of %d; again at the next reconcile): %s",
            node,
            change,
            failures,
            EVENT_ATTEMPTS,
            applied.event_error,
        )
        # Announced from the verdict it was refused for, so the retry says the same thing.
        out.update(published_verdict=applied.before or "", event_failures=str(failures))
    return out


def _clearing_pass(latest: Mapping[str, results.CheckResult], evicted_at: datetime) -> str:
    found = [r.started_at for r in latest.values() if verdict.clears_evict(r, evicted_at)]
    return max(found, default="")


def _cleared(state: NodeState, *, by: str, at: str) -> dict[str, str | None]:
    """State changes that lift the eviction in ``state``, recording who cleared it, when, and what it was."""
    what = "; ".join(c.text() for c in state.causes) or f"evicted since {state.evicted_at or 'an unknown time'}"
    return {**dict.fromkeys(_EVICTION), "cleared_by": by, "cleared_at": at, "cleared_cause": what}


def _with_clear_note(decision: verdict.Decision, state: NodeState) -> verdict.Decision:
    if not state.cleared_by:
        return decision
    note = f"eviction ({state.cleared_cause or 'cause not recorded'}) cleared by {state.cleared_by}"
    note += f" at {state.cleared_at or 'an unknown time'}"
    return verdict.Decision(decision.verdict, decision.reasons, decision.causes, (*decision.notes, note))


def _changes(current: Mapping[str, str], wanted: Mapping[str, str | None]) -> dict[str, str | None]:
    """The entries of ``wanted`` that ``current`` does not already have (None: delete, if present)."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def _ping_suspects(
    store: ResultsStore,
    settings: config.Settings,
    moment: datetime,
    node: str,
    pings: Sequence[results.CheckResult],
    suspects: frozenset[str] | None,
    samples: confirming.Samples | None = None,
) -> tuple[frozenset[str], list[str]]:
    """The fleet's ping suspects to judge ``node``'s failed ``pings`` (its latest and what
    confirmation lets count) without (``network.excuse_ping``), and the other nodes to reconcile now:
    those whose fresh ``ping`` failed to a suspect this call named that the kept suspects lacked.

    Without ``suspects`` from the caller, the suspects kept by the last reconcile that looked (read with
    the node's ``samples`` when those hold them) are taken when they explain every failure; only a
    failure they do not explain makes this reconcile read the fleet's pings (one pipeline, every
    node's ping result: the expensive path, taken by the first few nodes that meet a new suspect, not
    by every node that pings it).
    """
    if suspects is not None:
        return suspects, []
    # The kept suspects come with the node's samples when those were read for a failed latest ping.
    kept = samples.kept if samples is not None and samples.read_kept else store.ping_suspects()
    if kept is not None and not any(network.excuse_ping(p, kept).is_bad for p in pings):
        return kept, []
    fresh = fleet_pings(store, settings, moment)
    found = network.fleet_suspects(fresh)
    store.set_ping_suspects(found, _SUSPECTS_TTL_S, now=moment.timestamp(), keep_s=settings.stale_after_s)
    named = found - (kept or frozenset())
    if not named:
        return found, []
    # A node's failed pings to a just-named suspect may have been confirmed before it could be named
    # (its peers' older passing pings to it still counted): that verdict is wrong from now on.
    peers = [
        n
        for n, r in sorted(fresh.items())
        if n != node and n not in found and network.excuse_ping(r, named).data.get("excused")
    ]
    # Only a peer whose stored verdict may hold such a failure (WARN, or one hidden under TESTING or
    # EVICT) can be wrong: in a fleet that pings every node, every node pinged the suspect, and
    # reconciling them all inside this one task would be a beat tick's work for nothing.
    states = store.states(peers) if peers else {}
    return found, [n for n in peers if states[n].verdict in confirmation.HOLDING_VERDICTS]


def fleet_pings(
    store: ResultsStore, settings: config.Settings, now: datetime, nodes: Sequence[str] | None = None
) -> dict[str, results.CheckResult]:
    """Node -> its fresh ``ping`` result (one pipeline over every known node, or over ``nodes``).

    A result older than ``settings.stale_after_s`` (a lost node's last word), or stamped further ahead (a clock
    gone wrong: ``verdict.is_fresh``), takes no part. ``now`` is the store's clock; each result is judged on its
    node's clock (``results.on_node_clock``, its worker's offset from its record), as that node's own verdict is."""
    names = list(nodes) if nodes is not None else sorted(store.last_seen())
    found = store.latest_of("ping", names)
    offsets = {r.name: r.clock_offset for r in store.nodes(list(found))} if found else {}
    return {
        node: r
        for node, r in found.items()
        if verdict.is_fresh(r, results.on_node_clock(now, offsets.get(node)), settings.stale_after_s)
    }


def fleet_suspects(
    store: ResultsStore, settings: config.Settings, now: datetime, nodes: Sequence[str] | None = None
) -> frozenset[str]:
    """The nodes the fleet's fresh ``ping`` results blame (``fleet_pings``, then ``network.fleet_suspects``)."""
    return network.fleet_suspects(fleet_pings(store, settings, now, nodes))


def reconcile_all(
    store: ResultsStore,
    settings: config.Settings,
    cluster: ClusterClient | None = None,
    now: datetime | None = None,
    *,
    checks: CheckRegistry,
) -> dict[str, str]:
    """Beat's tick: reconcile every known node, then forget the lost nodes past their retention.

    Returns node -> verdict for the nodes kept. ``now``: the store's clock (default: read from it once).
    """
    moment = now or shared_now(store)
    out: dict[str, str] = {}
    known = sorted(store.last_seen().items())
    suspects = fleet_suspects(store, settings, moment, [node for node, _ in known])
    store.set_ping_suspects(suspects, _SUSPECTS_TTL_S, now=moment.timestamp(), keep_s=settings.stale_after_s)
    for node, seen in known:
        try:
            view = store.view(node)
            decision = reconcile_node(
                store, node, settings, moment, cluster=cluster, view=view, suspects=suspects, checks=checks
            )
        except errors.StoreUnavailable:
            raise
        except Exception:  # one node's bad data (another writer's) must not stop the fleet's reconcile
            log.exception("reconcile of node %s failed; the other nodes go on", node)
            continue
        out[node] = decision.verdict.value
        if _expired(store, node, seen, moment, settings, cluster is not None):
            last = results.utc_now_iso(datetime.fromtimestamp(seen, UTC))
            log.warning("forgetting node %s: lost past its retention (no heartbeat since %s)", node, last)
            store.forget_node(node)
            del out[node]
    return out


def _expired(
    store: ResultsStore, node: str, seen: float, moment: datetime, settings: config.Settings, with_cluster: bool
) -> bool:
    """A lost node to forget: its Node object has been gone (with a cluster), or it has been lost (without one),
    for ``settings.node_retention_s``."""
    if lost_since(seen, moment, settings) is None:
        return False
    if with_cluster:
        gone = store.state(node).node_gone_at
        try:
            since = results.parse_iso(gone).timestamp() if gone else None
        except ValueError:  # another writer's stamp: forget nothing on it, nor stop the fleet's tick
            log.warning("node %s: node_gone_at %r does not parse; not forgotten", node, str(gone)[:80])
            since = None
    else:
        since = seen
    return since is not None and moment.timestamp() - since >= settings.node_retention_s


def clear_evict(
    store: ResultsStore,
    node: str,
    settings: config.Settings,
    *,
    by: str,
    cluster: ClusterClient | None = None,
    checks: CheckRegistry,
    now: datetime | None = None,
) -> verdict.Decision:
    """An operator's clear: forget the eviction (keeping who cleared what, and when), then recompute.

    ``now``: the moment of the clear on the store's clock (default: read from it), for the recompute; the clear is
    recorded on the node's clock, as the eviction it lifts was (``results.on_node_clock``)."""
    view = store.view(node)
    shared = _judged_at(store, view, now)
    state = view.state
    if state.evicted_at:
        store.set_state(
            node, _cleared(state, by=by, at=_clear_time(state, results.on_node_clock(shared, view.clock_offset)))
        )
    return reconcile_node(store, node, settings, shared, cluster=cluster, checks=checks)


def _clear_time(state: NodeState, now: datetime) -> str:
    """When a clear at ``now`` counts from: ``now``, or the latest eviction it lifts when that is later. A GPU's
    eviction is lifted by a clear later than it (``gpuverdict``), and one the node's own reconcile stamped on a
    clock that runs ahead of this one was later than the operator's clear: the node's eviction was lifted, the
    GPU's stayed (its taint, its count label)."""
    at = now
    for stamp in (state.evicted_at, *(s.evicted_at for s in gpuverdict.loads(state.gpus).values())):
        try:
            # A second later: the stamps have whole seconds, and a clear lifts what began before it.
            at = max(at, results.parse_iso(stamp) + timedelta(seconds=1)) if stamp else at
        except ValueError:
            continue  # another writer's stamp: it lifts by the other rules or not at all
    return results.utc_now_iso(at)
