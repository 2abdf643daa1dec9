"""Remediation (opt-in): cordon and/or taint evicted nodes, within a budget, and undo only our own.

One pass over the fleet (beat runs it after each reconcile tick; one beat, one pass at a time):

1. *Release.* A node Autopilot holds (its ownership annotation ``autopilot.ibm.com/remediation``
   is on the Node) is given back only after the validation gate: an operator's clear **and** a
   passing DCGM level-3 run on that node, both after Autopilot took it, and a verdict that is no
   longer ``EVICT``. Only what the annotation says Autopilot did is undone: a node an operator had
   cordoned before stays cordoned.
2. *Apply.* Each ``EVICT`` node not held yet, oldest eviction first, is cordoned and/or tainted
   ``autopilot.ibm.com/gpuhealth=EVICT:NoSchedule`` while fewer than the budget's nodes are held.
   The budget is ``max_unavailable``: a number of nodes, or a percent of the GPU nodes rounded
   down, so remediation never takes more than that share of the fleet away, whatever fails at once.
3. *Defer.* Past the budget the node keeps its ``EVICT`` label (schedulers that read it still
   avoid it), gets the label ``autopilot.ibm.com/remediation=deferred`` and an Event, and the
   pass reports it (``autopilot_remediation_deferred_nodes``, alert
   ``AutopilotRemediationBudgetExhausted``).

``plan`` is pure (nodes, health, policy -> actions); ``apply`` carries the actions out through the
cluster seam, or only logs them in dry-run mode.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from autopilot import errors, results
from autopilot.cluster import ClusterClient, NodeInfo, NodeTaint
from autopilot.config import MaxUnavailable

log = logging.getLogger(__name__)

OWNER = "autopilot.ibm.com/remediation"
"""Annotation (ownership: what Autopilot did and when, JSON) and label (``applied`` or ``deferred``)."""
TAINT = NodeTaint("autopilot.ibm.com/gpuhealth", "NoSchedule", "EVICT")
APPLIED, DEFERRED = "applied", "deferred"
EVENT_APPLIED = "AutopilotRemediated"
EVENT_DEFERRED = "AutopilotRemediationDeferred"
EVENT_RELEASED = "AutopilotRemediationReleased"
EVENT_NAMESPACE = "default"
"""Where its Node Events go: the API server accepts an Event about a cluster-scoped object (a Node) only
in ``default`` (event validation: an involvedObject without a namespace needs event namespace default)."""


@dataclasses.dataclass(frozen=True)
class Policy:
    cordon: bool = False
    taint: bool = False
    max_unavailable: MaxUnavailable = MaxUnavailable(1)  # parsed once, with the settings
    dry_run: bool = False

    @property
    def enabled(self) -> bool:
        return self.cordon or self.taint

    def budget(self, gpu_nodes: int) -> int:
        """Most nodes held at once: ``max_unavailable`` nodes, or its percent of ``gpu_nodes`` rounded down."""
        return self.max_unavailable.budget(gpu_nodes)


@dataclasses.dataclass(frozen=True)
class Health:
    """What the results store says of a node: its verdict and the times the gate compares."""

    verdict: str
    evicted_at: str = ""
    cleared_at: str = ""  # the operator's last clear
    validated_at: str = ""  # start of the newest passing DCGM level >= 3 run


@dataclasses.dataclass(frozen=True)
class Ownership:
    """What Autopilot did to a Node (so that it undoes exactly that, and nothing an operator did)."""

    cordoned: bool
    tainted: bool
    at: str

    def to_json(self) -> str:
        return json.dumps({"cordoned": self.cordoned, "tainted": self.tainted, "at": self.at}, sort_keys=True)

    @classmethod
    def of(cls, node: NodeInfo) -> Ownership | None:
        raw = node.annotations.get(OWNER)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(bool(data["cordoned"]), bool(data["tainted"]), str(data["at"]))
        except (ValueError, KeyError, TypeError):
            # Someone edited it: hold the node (it counts against the budget) and never undo a guess.
            log.warning("node %s: unreadable %s annotation %r; holding the node", node.name, OWNER, raw[:200])
            return cls(False, False, "")


class Kind(enum.StrEnum):
    APPLY = "apply"
    DEFER = "defer"
    RELEASE = "release"
    UNDEFER = "undefer"  # a deferred node that is no longer evicted: drop the deferred label


@dataclasses.dataclass(frozen=True)
class Action:
    node: str
    kind: Kind
    cordon: bool = False
    taint: bool = False
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    budget: int
    held: int  # nodes held once the plan is carried out
    deferred: int


def gate_passed(health: Health, own: Ownership) -> tuple[bool, str]:
    """The validation gate: an operator's clear and a DCGM level-3 pass, both after Autopilot took the node."""
    if health.verdict == "EVICT":
        return False, "still EVICT"
    since = _time(own.at)
    if not health.cleared_at or _time(health.cleared_at) <= since:
        return False, "no operator clear since remediation"
    if not health.validated_at or _time(health.validated_at) <= since:
        return False, "no passing DCGM level 3 since remediation"
    return True, f"cleared {health.cleared_at}, DCGM level 3 passed {health.validated_at}"


def _time(text: str) -> float:
    try:
        return results.parse_iso(text).timestamp()
    except ValueError:
        return 0.0


def plan(policy: Policy, nodes: Sequence[NodeInfo], health: Mapping[str, Health]) -> Plan:
    """What one pass does: releases first (a released node frees its slot), then applies within the budget."""
    gpu_nodes = [n for n in nodes if n.allocatable_gpus > 0 or n.name in health]
    budget = policy.budget(len(gpu_nodes))
    actions: list[Action] = []
    held = 0
    for node in nodes:
        own = Ownership.of(node)
        if own is None:
            continue
        passed, why = gate_passed(health.get(node.name, Health("UNKNOWN")), own)
        if passed:
            actions.append(Action(node.name, Kind.RELEASE, own.cordoned, own.tainted, why))
        else:
            held += 1
    deferred = 0
    evicted = sorted(
        (n for n in nodes if Ownership.of(n) is None and health.get(n.name, Health("")).verdict == "EVICT"),
        key=lambda n: (health[n.name].evicted_at, n.name),
    )
    for node in evicted:
        cordon = policy.cordon and not node.unschedulable  # already cordoned by someone else: not ours
        taint = policy.taint and not any((t.key, t.effect) == (TAINT.key, TAINT.effect) for t in node.taints)
        if not (cordon or taint):
            continue  # unavailable already, and not by us: nothing to do, nothing to own
        if held < budget:
            actions.append(Action(node.name, Kind.APPLY, cordon, taint, health[node.name].evicted_at))
            held += 1
        else:
            deferred += 1
            if node.labels.get(OWNER) != DEFERRED:
                actions.append(Action(node.name, Kind.DEFER, reason=f"{held} of {budget} nodes held"))
    for node in nodes:
        if node.labels.get(OWNER) == DEFERRED and health.get(node.name, Health("")).verdict != "EVICT":
            actions.append(Action(node.name, Kind.UNDEFER))
    return Plan(tuple(actions), budget, held, deferred)


def apply(
    cluster: ClusterClient,
    policy: Policy,
    the_plan: Plan,
    *,
    namespace: str = EVENT_NAMESPACE,
    now: datetime | None = None,
    stamps: Mapping[str, str] | None = None,
) -> list[Action]:
    """Carry out ``the_plan`` (dry run: log it); returns the actions done. A refused node is logged and
    skipped: the next pass tries again.

    ``now``: the store's clock, which the Events are stamped with (None: this host's). ``stamps``: per node, ``now``
    on that node's clock, which the ownership records: the gate compares it with the node's clear and its DCGM
    pass, both stamped on the node's clock (a node missing here gets ``now``)."""
    moment = now or datetime.now(UTC)
    done: list[Action] = []
    for action in the_plan.actions:
        if policy.dry_run:
            log.info("remediation dry run: would %s node %s (cordon=%s taint=%s) %s", action.kind.value,
                     action.node, action.cordon, action.taint, action.reason)  # fmt: skip
            done.append(action)
            continue
        try:
            stamp = (stamps or {}).get(action.node) or results.utc_now_iso(moment)
            _one(cluster, action, the_plan, namespace, stamp, moment)
        except errors.ClusterError as exc:
            log.warning("remediation: %s of node %s failed: %s", action.kind.value, action.node, exc)
            continue
        done.append(action)
    return done


def _one(cluster: ClusterClient, action: Action, the_plan: Plan, namespace: str, stamp: str, now: datetime) -> None:
    node = action.node
    if action.kind is Kind.APPLY:
        # Ownership first: if the cordon or taint is written and the process dies, the Node still says
        # Autopilot did it (and the budget counts it); the reverse would leave a cordon nobody owns.
        own = Ownership(action.cordon, action.taint, stamp)
        cluster.patch_node_labels(node, {OWNER: APPLIED}, {OWNER: own.to_json()})
        if action.cordon:
            cluster.set_node_unschedulable(node, True)
        if action.taint:
            cluster.set_node_taint(node, TAINT, True)
        what = " and ".join(w for w, on in (("cordoned", action.cordon), ("tainted", action.taint)) if on)
        _event(cluster, node, EVENT_APPLIED, f"EVICT: {what} by Autopilot", "Warning", namespace, now)
    elif action.kind is Kind.RELEASE:
        if action.cordon:
            cluster.set_node_unschedulable(node, False)
        if action.taint:
            cluster.set_node_taint(node, TAINT, False)
        cluster.patch_node_labels(node, {OWNER: None}, {OWNER: None})
        _event(cluster, node, EVENT_RELEASED, f"validation gate passed: {action.reason}", "Normal", namespace, now)
    elif action.kind is Kind.DEFER:
        cluster.patch_node_labels(node, {OWNER: DEFERRED})
        message = (
            f"EVICT: not cordoned, remediation budget exhausted ({the_plan.budget} nodes at most; "
            f"{action.reason}); labelled only"
        )
        _event(cluster, node, EVENT_DEFERRED, message, "Warning", namespace, now)
    else:
        cluster.patch_node_labels(node, {OWNER: None})


def _event(
    cluster: ClusterClient, node: str, reason: str, message: str, type_: str, namespace: str, now: datetime
) -> None:
    try:
        cluster.create_node_event(node, reason=reason, message=message, type_=type_, namespace=namespace, now=now)
    except errors.ClusterError as exc:
        # Events are best effort: the Node already carries the change.
        log.warning("remediation event for node %s not created: %s", node, exc)
