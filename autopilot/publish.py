"""Publish a node's verdict into the cluster: labels, annotations, our NodeCondition, an Event.

Two steps. ``desired`` is pure: from the verdict decision and the latest DCGM results it computes
what the Node should carry (labels and annotations from ``labeling``, the condition below).
``apply`` reads the Node once and writes only what differs, through the cluster seam, so that
calling it every reconcile tick costs one GET and no write when nothing changed (but for the
condition's heartbeat, written again every ``HEARTBEAT_S``).

The condition (type ``autopilot.ibm.com/GpuHealth``) reads like the kubelet's own conditions,
``True`` meaning healthy:

=========  ===========  ================================================
verdict    status       reason
=========  ===========  ================================================
PASS       ``True``     ``AutopilotPass``
WARN       ``False``    ``AutopilotWarn``
EVICT      ``False``    ``AutopilotEvict``
TESTING    ``Unknown``  ``AutopilotTesting``
UNKNOWN    ``Unknown``  ``AutopilotUnknown``
=========  ===========  ================================================

Its message names the failing checks and their GPUs (the decision's reasons). The seam keeps
``lastTransitionTime`` while the status stays the same. An Event (``GpuHealthChanged``, type
``Warning`` for WARN/EVICT) is emitted only when the verdict changes, in namespace ``default``
(``cluster.NODE_EVENT_NAMESPACE``: the only one where the API server accepts an Event about a
Node). A refused Event never undoes or blocks the labels: ``apply`` reports it in its outcome
(``event_error``), and the caller keeps the change unannounced so the next reconcile tries again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from autopilot import errors, labeling, results
from autopilot.cluster import CONDITION_TYPE, NODE_EVENT_NAMESPACE, ClusterClient, NodeCondition
from autopilot.results import CheckResult
from autopilot.verdict import Decision, Verdict

log = logging.getLogger(__name__)

EVENT_REASON = "GpuHealthChanged"
MESSAGE_LIMIT = 1024
# An unchanged condition is written again once its lastHeartbeatTime is this old, as node-problem-detector
# does (its heartbeat period, 5 min): lastHeartbeatTime says when its writer last stood by it, so a reader
# can tell a verdict still held from one whose writer has stopped. One PATCH per node per period.
HEARTBEAT_S = 300

_STATUS = {
    Verdict.PASS: "True",
    Verdict.WARN: "False",
    Verdict.EVICT: "False",
    Verdict.TESTING: "Unknown",
    Verdict.UNKNOWN: "Unknown",
}


@dataclasses.dataclass(frozen=True)
class NodePublication:
    """What a Node should carry for its verdict. Keys not named here are never touched."""

    verdict: Verdict
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    condition: NodeCondition


def condition_for(decision: Decision) -> NodeCondition:
    verdict = decision.verdict
    if decision.reasons:
        message = "; ".join(decision.reasons)
    elif verdict is Verdict.PASS:
        message = "all periodic checks pass"
    else:
        message = verdict.value
    if decision.notes:  # after the reasons: what the verdict is comes first
        message = "; ".join((message, *decision.notes))
    # The reasons quote results' summaries, which may be older writers' raw tool words: kubectl prints them.
    message = results.printable(message)
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 3] + "..."
    return NodeCondition(
        type=CONDITION_TYPE,
        status=_STATUS[verdict],
        reason=f"Autopilot{verdict.value.title()}",
        message=message,
    )


def desired(
    decision: Decision,
    dcgm: CheckResult | Iterable[CheckResult] | None = None,
    *,
    offset: float | None = None,
    now: datetime | None = None,
) -> NodePublication:
    """Labels, annotations and condition for ``decision`` and the latest DCGM result(s) of any level.

    ``offset`` (the node's worker's clock minus the store's) and ``now`` (the store's clock) put the ``dcgm.level``
    labels' times on the store's clock, in UTC (``labeling.dcgm_labels``).

    Of several DCGM results of one level the most recent (``started_at``) wins; an ``error`` or
    ``skipped`` DCGM result writes no ``dcgm.level`` label (``labeling.dcgm_labels``).
    """
    found = [dcgm] if isinstance(dcgm, CheckResult) else list(dcgm or ())
    labels: dict[str, str] = dict(labeling.verdict_labels(decision.verdict))
    annotations: dict[str, str] = {}
    for result in sorted(found, key=_started):
        dcgm_labels, dcgm_annotations = labeling.dcgm_labels(result, offset=offset, now=now)
        labels.update(dcgm_labels)
        annotations.update(dcgm_annotations)
    return NodePublication(decision.verdict, labels, annotations, condition_for(decision))


def _started(result: CheckResult) -> float:
    return results.parse_iso(result.started_at).timestamp() if result.started_at else 0.0


@dataclasses.dataclass(frozen=True)
class Applied:
    """What ``apply`` did: ``wrote`` anything; ``before``, the verdict the Event announced a change
    from (None: no Event was due); ``event_error``, why a due Event was not created (None: it was,
    or none was due)."""

    wrote: bool
    before: str | None = None
    event_error: str | None = None


def apply(
    cluster: ClusterClient,
    node: str,
    publication: NodePublication,
    previous_verdict: Verdict | str | None = None,
    *,
    now: datetime | None = None,
) -> Applied:
    """Make the Node carry ``publication`` and announce a verdict change with an Event.

    ``previous_verdict`` is the verdict last announced (from the results store); None means
    "not known", and the Node's current ``gpuhealth`` label stands in for it. Labels and the
    condition errors raise (``ClusterError``); a refused Event does not, it is in the outcome.
    """
    info = cluster.get_node(node)
    wrote = False
    label_changes: dict[str, str | None] = {k: v for k, v in publication.labels.items() if info.labels.get(k) != v}
    annotation_changes: dict[str, str | None] = {
        k: v for k, v in publication.annotations.items() if info.annotations.get(k) != v
    }
    if label_changes or annotation_changes:
        _patch(cluster, node, label_changes, annotation_changes)
        wrote = True
    stored = info.condition(publication.condition.type)
    if not publication.condition.same_state(stored) or _heartbeat_due(stored, now):
        # Stamped on the clock the heartbeat's age is judged by (``now``: the store's, from the reconcile), not this
        # host's: a host 10 min behind wrote a heartbeat that was due again at every reconcile.
        cluster.set_node_condition(node, publication.condition, now)
        wrote = True
    before = str(previous_verdict) if previous_verdict is not None else info.labels.get(labeling.GPUHEALTH)
    if before == publication.verdict.value:
        return Applied(wrote)
    error = _event(cluster, node, before, publication, now)
    return Applied(wrote or error is None, before or "", error)


def _heartbeat_due(stored: NodeCondition | None, now: datetime | None) -> bool:
    """Whether ``stored``'s lastHeartbeatTime is ``HEARTBEAT_S`` old (or missing, or not a time)."""
    if stored is None:
        return True
    try:
        beat = results.parse_iso(stored.last_heartbeat_time)
    except ValueError:
        return True
    return (now or datetime.now(UTC)) - beat >= timedelta(seconds=HEARTBEAT_S)


def _patch(
    cluster: ClusterClient, node: str, labels: dict[str, str | None], annotations: dict[str, str | None]
) -> None:
    """Patch the Node's labels and annotations; when the API server refuses the patch as a whole (a 422:
    annotations past 256 KiB, a label it will not take), the labels go without the annotations, and if
    they are refused too the verdict label goes alone, logged, so that what a scheduler or a user reads
    is never lost to what came with it. Refused annotations alone are logged, not raised: the condition
    and Event still follow. Other errors (transient, no such Node, a conflict) raise, as the refusal of
    the verdict label alone does."""
    try:
        cluster.patch_node_labels(node, labels, annotations)
        return
    except (errors.Transient, errors.NotFound, errors.Conflict):
        raise
    except errors.ClusterError as exc:
        if not annotations:
            verdict = labels.get(labeling.GPUHEALTH)
            if verdict is None or len(labels) == 1:
                raise
            log.warning("node %s: labels refused (%s); the verdict label goes alone", node, exc)
            cluster.patch_node_labels(node, {labeling.GPUHEALTH: verdict}, {})
            return
        # The dcgm.level label (a user's node selector) must not go stale with the annotation beside it.
        log.warning("node %s: annotations refused (%s); the labels go without them", node, exc)
    if labels:
        _patch(cluster, node, labels, {})


def _event(
    cluster: ClusterClient, node: str, before: str | None, pub: NodePublication, now: datetime | None
) -> str | None:
    """Create the verdict-change Event; None when created, else why not (the seam already retried
    what a retry can fix). Stamped ``now`` (the reconcile's: the store's clock), as the condition is: a Kubernetes
    reader sees the change at the same time on the Event and the condition, whichever host wrote them."""
    kind = "Warning" if pub.verdict in (Verdict.WARN, Verdict.EVICT) else "Normal"
    message = f"{labeling.GPUHEALTH} {before or '(none)'} -> {pub.verdict.value}: {pub.condition.message}"
    try:
        cluster.create_node_event(
            node, reason=EVENT_REASON, message=message, type_=kind, namespace=NODE_EVENT_NAMESPACE, now=now
        )
    except errors.ClusterError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
