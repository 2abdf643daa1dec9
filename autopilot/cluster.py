"""The cluster seam: what Autopilot reads from and writes to Kubernetes, behind a Protocol.

Only this module imports ``kubernetes``. The in-memory ``FakeCluster`` in ``autopilot.testing``
implements the same Protocol; the real client, ``KubeClusterClient``, translates ``ApiException``
by status code into ``NotFound`` (404), ``Conflict`` (409), ``ListExpired`` (410) and ``Transient`` (429,
5xx, connection errors), retries ``Transient`` and ``Conflict`` a bounded number of times with backoff,
gives every call a ``_request_timeout`` (and the server the same deadline), reads every list in pages,
and asks for strict field validation on every write.

Writes carry only what they mean to change: label patches name only our keys (a JSON merge patch
in which ``null`` removes a key), the condition patch names only our condition type (a strategic
merge patch on ``nodes/<n>/status``, whose merge key for ``conditions`` is ``type``). Objects are
exchanged as plain Kubernetes JSON (``dict``), never as the client's generated models, so what we
send is exactly what the API documentation shows and what the stand-in server of the tests checks.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from autopilot import errors, names

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
CONDITION_TYPE = "autopilot.ibm.com/GpuHealth"
# The API server accepts an Event about a cluster-scoped object (a Node) only in this namespace
# (legacyValidateEvent, k8s.io/kubernetes pkg/apis/core/validation/events.go); anywhere else it
# answers 422. The kubelet and node-problem-detector post their Node events here too.
NODE_EVENT_NAMESPACE = "default"
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
# Enough for a JSON result of a few hundred DCGM tests; a runaway log is cut, not loaded whole.
LOG_LIMIT_BYTES = 1 << 20
# Lists are read in pages of this many items (kubectl's --chunk-size): every pod of a large cluster, or
# a 5,000-node NodeList, in one answer is hundreds of MB for the server to build and for us to hold, and
# can outlast the request timeout.
LIST_PAGE = 500
# A list whose continue token expired (410 Expired: etcd compacted past its revision) starts again from
# its first page, at most this many times; a server that keeps paging is cut off after LIST_PAGES_MAX pages.
LIST_RESTARTS = 3
LIST_PAGES_MAX = 2000

T = TypeVar("T")


# ---------------------------------------------------------------- value types


@dataclasses.dataclass(frozen=True)
class NodeCondition:
    """One entry of ``node.status.conditions``; times are RFC 3339 (``2026-11-29T22:00:00Z``)."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""
    last_heartbeat_time: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}
        if self.last_transition_time:
            out["lastTransitionTime"] = self.last_transition_time
        if self.last_heartbeat_time:
            out["lastHeartbeatTime"] = self.last_heartbeat_time
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> NodeCondition:
        return cls(
            type=str(raw.get("type") or ""),
            status=str(raw.get("status") or "Unknown"),
            reason=str(raw.get("reason") or ""),
            message=str(raw.get("message") or ""),
            last_transition_time=str(raw.get("lastTransitionTime") or ""),
            last_heartbeat_time=str(raw.get("lastHeartbeatTime") or ""),
        )

    def same_state(self, other: NodeCondition | None) -> bool:
        """Same status, reason and message: writing this again would change nothing that matters."""
        return other is not None and (self.status, self.reason, self.message) == (
            other.status,
            other.reason,
            other.message,
        )


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The taint a cordoned node (spec.unschedulable) carries; the scheduler's NodeUnschedulable filter lets through
# only pods that tolerate it (with effect NoSchedule), as DaemonSet pods do.
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


@dataclasses.dataclass(frozen=True)
class NodeTaint:
    """One entry of ``node.spec.taints``; a Node holds at most one taint per (key, effect)."""

    key: str
    effect: str
    value: str = ""
    # Written by whoever adds a NoExecute taint (the node lifecycle controller for node.kubernetes.io/*);
    # kept as read, because spec.taints is written back whole and pods' tolerationSeconds count from it.
    time_added: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"key": self.key, "effect": self.effect}
        if self.value:
            out["value"] = self.value
        if self.time_added:
            out["timeAdded"] = self.time_added
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> NodeTaint:
        return cls(
            str(raw.get("key") or ""),
            str(raw.get("effect") or ""),
            str(raw.get("value") or ""),
            str(raw.get("timeAdded") or ""),
        )


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    allocatable_gpus: int = 0
    conditions: tuple[NodeCondition, ...] = ()
    uid: str = ""
    unschedulable: bool = False  # spec.unschedulable: cordoned
    taints: tuple[NodeTaint, ...] = ()

    def condition(self, type_: str = CONDITION_TYPE) -> NodeCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclasses.dataclass(frozen=True)
class PodInfo:
    """What the seam tells about a pod: enough to judge GPU use and a Job pod's fate."""

    name: str
    namespace: str
    node: str = ""
    phase: str = "Pending"
    gpus: int = 0  # largest nvidia.com/gpu request or limit of any (init) container
    reason: str = ""  # status.reason, e.g. UnexpectedAdmissionError, OutOfnvidia.com/gpu
    message: str = ""
    unschedulable: str = ""  # the scheduler's message when PodScheduled is False/Unschedulable
    waiting: tuple[str, ...] = ()  # waiting reasons of its containers (ImagePullBackOff, ...)
    exit_codes: tuple[int, ...] = ()  # exit codes of terminated containers
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    owner_uid: str = ""  # uid of the controller that owns it (its Job), from metadata.ownerReferences
    # ``reason: message`` of its DisruptionTarget=True condition (1.26+: PreemptionByScheduler, TerminationByKubelet
    # for a node-pressure eviction, DeletionByTaintManager, EvictionByEvictionAPI, DeletionByPodGC): the cluster, not
    # the pod's own program, ended it
    disruption: str = ""
    # ``reason[: message]`` of terminated containers (OOMKilled, Error, ContainerStatusUnknown, StartError: ...)
    terminated: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """A Job's identity and status, reduced to what deciding its outcome needs."""

    name: str
    namespace: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False  # condition Complete=True (or SuccessCriteriaMet=True, which precedes it)
    failed_reason: str = ""  # reason of Failed=True or FailureTarget=True (DeadlineExceeded, BackoffLimitExceeded)
    message: str = ""
    created_at: str = ""
    uid: str = ""  # a Job made again under the same name has another uid; its pods and events name it
    # The API server's clock when it answered this read (its ``Date`` header), RFC 3339; '' when it said none.
    # ``created_at`` is stamped on that clock, so the Job's age is judged on it, not on the reader's own.
    server_time: str = ""
    # spec.suspend (the controller then writes Suspended=True, reason JobSuspended, and keeps no pod): a queueing
    # controller such as Kueue suspends a Job at creation (its webhook) until it admits it, and may never.
    suspended: bool = False

    @property
    def finished(self) -> bool:
        return self.complete or bool(self.failed_reason)


@dataclasses.dataclass(frozen=True)
class EventInfo:
    """A core/v1 Event as read back: whom it is about, why, what it says."""

    namespace: str
    kind: str
    name: str
    reason: str
    message: str
    type: str = "Normal"
    count: int = 1
    uid: str = ""  # involvedObject.uid


@dataclasses.dataclass(frozen=True)
class DeviceTaintRuleInfo:
    """A ``resource.k8s.io`` DeviceTaintRule (cluster-scoped): one taint on the devices its selector names.

    Autopilot selects one device exactly (``driver``, ``pool`` and ``device``); ``effect`` is
    ``NoSchedule``, ``NoExecute`` or ``None`` (informational, Kubernetes 1.35 and later).
    """

    name: str
    driver: str
    pool: str
    device: str
    key: str
    value: str
    effect: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self, version: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{DRA_GROUP}/{version}",
            "kind": "DeviceTaintRule",
            "metadata": {"name": self.name, "labels": dict(self.labels), "annotations": dict(self.annotations)},
            "spec": {
                "deviceSelector": {"driver": self.driver, "pool": self.pool, "device": self.device},
                "taint": {"key": self.key, "value": self.value, "effect": self.effect},
            },
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DeviceTaintRuleInfo:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        selector = spec.get("deviceSelector") or {}
        taint = spec.get("taint") or {}
        return cls(
            name=str(meta.get("name") or ""),
            driver=str(selector.get("driver") or ""),
            pool=str(selector.get("pool") or ""),
            device=str(selector.get("device") or ""),
            key=str(taint.get("key") or ""),
            value=str(taint.get("value") or ""),
            effect=str(taint.get("effect") or ""),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )


DRA_GROUP = "resource.k8s.io"
# Taint effects of a DeviceTaint ("None", informational, from Kubernetes 1.35 on).
DEVICE_TAINT_EFFECTS = ("None", "NoSchedule", "NoExecute")


# ---------------------------------------------------------------- the Protocol


class ClusterClient(Protocol):
    """Everything Autopilot does with a cluster. Implemented by ``KubeClusterClient`` and ``FakeCluster``.

    Errors: ``errors.NotFound`` (no such object), ``errors.Conflict`` (exists already, or changed
    underneath us after the retries), ``errors.Transient`` (the API is unavailable after the
    retries), ``errors.ClusterError`` (anything else the API refused, e.g. 403, 422).
    """

    # nodes ----------------------------------------------------------------
    def list_nodes(self, label_selector: str | None = None) -> list[NodeInfo]: ...

    def get_node(self, name: str) -> NodeInfo: ...

    def patch_node_labels(
        self, name: str, labels: Mapping[str, str | None], annotations: Mapping[str, str | None] | None = None
    ) -> None:
        """Set (value) or remove (None) only the given keys; others are left alone."""
        ...

    def set_node_condition(self, name: str, condition: NodeCondition, now: datetime | None = None) -> NodeCondition:
        """Write one condition on ``nodes/<name>/status``; other conditions are left alone.

        ``lastTransitionTime`` is kept from the stored condition when the status is unchanged and
        set to ``condition.last_transition_time`` (or ``now``) when it changes; ``lastHeartbeatTime`` is ``now``.
        ``now``: the store's clock, which every writer shares (None: this host's). Returns what is stored.
        """
        ...

    def create_node_event(
        self, node: str, *, reason: str, message: str, type_: str, namespace: str, now: datetime | None = None
    ) -> None:
        """A core/v1 Event about Node ``node`` (``kubectl describe node`` shows it).

        ``namespace`` must be ``NODE_EVENT_NAMESPACE``: the API server refuses a Node event
        anywhere else (``ClusterError``, 422), and so does ``FakeCluster``. ``now``: its
        ``firstTimestamp``/``lastTimestamp``, the store's clock that every writer shares (None: this host's).
        """
        ...

    def set_node_unschedulable(self, name: str, unschedulable: bool) -> None:
        """Cordon (True) or uncordon (False) the node: ``spec.unschedulable``, nothing else."""
        ...

    def set_node_taint(self, name: str, taint: NodeTaint, present: bool) -> bool:
        """Add (``present``) or remove the taint of ``taint.key`` and ``taint.effect``; other taints are left
        alone. True when the Node changed."""
        ...

    def nodes_running(self, namespace: str, label_selector: str) -> list[str]:
        """Names of nodes with a running pod in ``namespace`` matching ``label_selector``."""
        ...

    def gpu_pods_on_node(self, node: str) -> list[PodInfo]:
        """Pods on ``node``, in every namespace, not finished, that request or limit ``nvidia.com/gpu``."""
        ...

    # jobs -----------------------------------------------------------------
    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        """Create a batch/v1 Job; returns its name. ``Conflict`` when one of that name exists."""
        ...

    def get_job(self, namespace: str, name: str) -> JobInfo: ...

    def delete_job(self, namespace: str, name: str) -> bool:
        """Delete the Job and (in the background) its pods; False when it was already gone."""
        ...

    def job_pods(self, namespace: str, job_name: str, job_uid: str = "") -> list[PodInfo]:
        """The Job's pods; with ``job_uid``, only those that Job controls: the pods of an earlier Job of the same
        name (deleted in the background, its pods not yet collected) carry its ``job-name`` label too."""
        ...

    def job_events(self, namespace: str, job_name: str, job_uid: str = "") -> list[EventInfo]:
        """Events about the Job itself (``FailedCreate`` when its pod was refused); with ``job_uid``, only
        about that Job, not an earlier one of the same name (Events outlive their object by an hour)."""
        ...

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str: ...

    # pods and volumes -------------------------------------------------------
    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> str: ...

    def get_pod(self, namespace: str, name: str) -> PodInfo:
        """The pod (``NotFound`` when there is none): whether the scheduler placed it, and why not."""
        ...

    def delete_pod(self, namespace: str, name: str) -> bool: ...

    def create_pvc(self, namespace: str, manifest: Mapping[str, Any]) -> str: ...

    def pvc_phase(self, namespace: str, name: str) -> str:
        """``Pending``, ``Bound`` or ``Lost``."""
        ...

    def delete_pvc(self, namespace: str, name: str) -> bool: ...

    def storage_class_binding_mode(self, name: str) -> str:
        """``Immediate`` or ``WaitForFirstConsumer`` (``NotFound`` when the class does not exist)."""
        ...

    # DRA device taints --------------------------------------------------------
    def device_taint_api(self) -> str | None:
        """The ``resource.k8s.io`` version that serves ``devicetaintrules`` (``v1beta2``, ``v1alpha3``, ...), or
        None where the cluster serves none (older Kubernetes, or the DRADeviceTaints feature off)."""
        ...

    def list_device_taint_rules(self, label_selector: str) -> list[DeviceTaintRuleInfo]: ...

    def create_device_taint_rule(self, rule: DeviceTaintRuleInfo) -> str:
        """Create ``rule``; ``Conflict`` when one of that name exists. ``NotFound`` when none is served."""
        ...

    def delete_device_taint_rule(self, name: str) -> bool:
        """Delete the rule; False when it was already gone."""
        ...


# ---------------------------------------------------------------- JSON -> value types (shared with the fake)


def parse_quantity_int(value: object) -> int:
    """An integer resource quantity (``"8"``, ``8``); extended resources such as GPUs are whole numbers."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        try:
            return int(float(str(value).strip()))
        except ValueError:
            return 0


def node_from_json(raw: Mapping[str, Any]) -> NodeInfo:
    meta = raw.get("metadata") or {}
    status = raw.get("status") or {}
    return NodeInfo(
        name=str(meta.get("name") or ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        allocatable_gpus=parse_quantity_int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0)),
        conditions=tuple(NodeCondition.from_json(c) for c in status.get("conditions") or ()),
        uid=str(meta.get("uid") or ""),
        unschedulable=bool((raw.get("spec") or {}).get("unschedulable")),
        taints=tuple(NodeTaint.from_json(t) for t in (raw.get("spec") or {}).get("taints") or ()),
    )


def with_taint(taints: Sequence[NodeTaint], taint: NodeTaint, present: bool) -> tuple[NodeTaint, ...] | None:
    """``taints`` with ``taint`` added or removed (matched on key and effect); None when nothing changes."""
    others = tuple(t for t in taints if (t.key, t.effect) != (taint.key, taint.effect))
    wanted = (*others, taint) if present else others
    return None if wanted == tuple(taints) else wanted


def pod_gpus(spec: Mapping[str, Any]) -> int:
    """The largest ``nvidia.com/gpu`` request or limit of any container, init container included."""
    most = 0
    for container in [*(spec.get("containers") or ()), *(spec.get("initContainers") or ())]:
        resources = container.get("resources") or {}
        for part in ("requests", "limits"):
            most = max(most, parse_quantity_int((resources.get(part) or {}).get(GPU_RESOURCE, 0)))
    return most


def pod_from_json(raw: Mapping[str, Any]) -> PodInfo:
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    unschedulable = ""
    disruption = ""
    for cond in status.get("conditions") or ():
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            if cond.get("reason") == "Unschedulable":
                unschedulable = str(cond.get("message") or "Unschedulable")
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disruption = f"{cond.get('reason') or ''}: {cond.get('message') or ''}".strip(": ")
    waiting: list[str] = []
    exit_codes: list[int] = []
    terminated: list[str] = []
    for cs in [*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())]:
        state = cs.get("state") or {}
        if "waiting" in state and (state["waiting"] or {}).get("reason"):
            waiting.append(str(state["waiting"]["reason"]))
        if "terminated" in state and state["terminated"] is not None:
            exit_codes.append(int(state["terminated"].get("exitCode", 0)))
            said = str(state["terminated"].get("message") or "").strip()[:300]
            terminated.append(str(state["terminated"].get("reason") or "") + (f": {said}" if said else ""))
    return PodInfo(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        node=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or "Pending"),
        gpus=pod_gpus(spec),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
        unschedulable=unschedulable,
        waiting=tuple(waiting),
        exit_codes=tuple(exit_codes),
        labels=dict(meta.get("labels") or {}),
        owner_uid=next((str(o.get("uid") or "") for o in meta.get("ownerReferences") or () if o.get("controller")), ""),
        disruption=disruption,
        terminated=tuple(terminated),
    )


def job_from_json(raw: Mapping[str, Any]) -> JobInfo:
    meta = raw.get("metadata") or {}
    status = raw.get("status") or {}
    complete = False
    failed_reason = ""
    message = ""
    # From Kubernetes 1.31 the controller first writes SuccessCriteriaMet or FailureTarget and adds
    # Complete or Failed only once every pod has terminated (which a sick node can delay for long);
    # the first already settles the outcome, with the same reason.
    for cond in status.get("conditions") or ():
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            complete = True
        elif cond.get("type") in ("Failed", "FailureTarget") and not failed_reason:
            failed_reason = str(cond.get("reason") or cond.get("type"))
            message = str(cond.get("message") or "")
    return JobInfo(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        complete=complete,
        failed_reason=failed_reason,
        message=message,
        created_at=str(meta.get("creationTimestamp") or ""),
        uid=str(meta.get("uid") or ""),
        suspended=(raw.get("spec") or {}).get("suspend") is True
        or any(c.get("type") == "Suspended" and c.get("status") == "True" for c in status.get("conditions") or ()),
    )


def event_from_json(raw: Mapping[str, Any]) -> EventInfo:
    meta = raw.get("metadata") or {}
    involved = raw.get("involvedObject") or {}
    return EventInfo(
        namespace=str(meta.get("namespace") or ""),
        kind=str(involved.get("kind") or ""),
        name=str(involved.get("name") or ""),
        reason=str(raw.get("reason") or ""),
        message=str(raw.get("message") or ""),
        type=str(raw.get("type") or "Normal"),
        count=int(raw.get("count") or 1),
        uid=str(involved.get("uid") or ""),
    )


def selector_safe(node: str = "", job: str = "", uid: str = "") -> None:
    """Refuse a node or Job name (or an object's uid) that is not one before it goes into a label or field
    selector, where a ``,`` or ``=`` in it would add a requirement of its own (``BadParameter``)."""
    if node:
        names.node_name(node, field="node")
    if job and not names.is_dns1123_label(job):
        raise errors.BadParameter("job", f"not a valid Job name (DNS-1123 label): {job[:80]!r}")
    if uid and not names.is_label_value(uid):
        raise errors.BadParameter("uid", f"not an object uid: {uid[:80]!r}")


def rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pinned_to(node: str) -> dict[str, Any]:
    """A pod's ``affinity`` that schedules it on ``node`` only (by name, so no label is needed)."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
            }
        }
    }


def event_manifest(
    node: NodeInfo, *, reason: str, message: str, type_: str, namespace: str, now: datetime | None = None
) -> dict[str, Any]:
    """A core/v1 Event about a Node, as the kubelet and node-problem-detector write them."""
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # A unique name of our own, as client-go's recorder makes them (<object>.<time in hex>): a retry after a
        # lost answer then meets 409 AlreadyExists instead of posting the Event twice (a generateName would
        # get a new name on every attempt).
        "metadata": {"name": event_name(node.name), "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid or node.name},
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": "autopilot", "host": node.name},
        "reportingComponent": "autopilot.ibm.com/autopilot",
        "reportingInstance": node.name[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def event_name(node: str) -> str:
    """``<node>.<ns since the epoch, hex><4 random hex>``: unique per call, the same for its retries."""
    return f"{node[:200]}.{time.time_ns():x}{random.getrandbits(16):04x}"


def merge_condition(
    existing: NodeCondition | None, wanted: NodeCondition, now: datetime | None = None
) -> NodeCondition:
    """The condition to store: ``lastTransitionTime`` kept unless the status changes."""
    if existing is not None and existing.status == wanted.status and existing.last_transition_time:
        transition = existing.last_transition_time
    else:
        transition = wanted.last_transition_time or rfc3339(now)
    return dataclasses.replace(wanted, last_transition_time=transition, last_heartbeat_time=rfc3339(now))


# ---------------------------------------------------------------- retries


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter; ``Retry-After`` of a 429 is honoured (capped)."""

    attempts: int = 4
    base_s: float = 0.2
    max_s: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        backoff: float = min(self.base_s * 2.0**attempt, self.max_s)
        # Jitter spreads the retries of many workers hit by one API hiccup.
        return backoff * (0.5 + random.random() / 2)


def with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    what: str,
    retry_conflict: bool = True,
) -> T:
    """Call ``fn``; on ``Transient`` (and ``Conflict`` when ``retry_conflict``) retry after a backoff."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except (errors.Transient, errors.Conflict) as exc:
            if isinstance(exc, errors.Conflict) and not retry_conflict:
                raise
            if attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt, getattr(exc, "retry_after", None))
            log.info("%s: %s; retry %d/%d in %.2f s", what, exc, attempt + 1, policy.attempts - 1, pause)
            sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# ---------------------------------------------------------------- the real client


class ListExpired(errors.ClusterError):
    """410 Gone: a list's ``continue`` token is too old (reason ``Expired``). Not retried as it is: the list
    restarts from its first page."""


class _RetryableTransient(errors.Transient):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KubeClusterClient:
    """``ClusterClient`` over the official ``kubernetes`` client (raw JSON through ``ApiClient.call_api``).

    Build it with ``from_config()`` (in-cluster service account, else a kubeconfig), or pass an
    ``ApiClient`` (the tests point one at a stand-in API server).
    """

    def __init__(
        self,
        api_client: Any,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._api = api_client
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._dra_version: str | None = None  # "" once discovery found no DeviceTaintRule
        self.page_size = LIST_PAGE

    @classmethod
    def from_config(
        cls, kubeconfig: str | None = None, *, context: str | None = None, **kwargs: Any
    ) -> KubeClusterClient:
        """In-cluster configuration when running in a pod (and no ``kubeconfig`` is given), else the kubeconfig."""
        from kubernetes import client, config

        cfg = client.Configuration()
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(context=context, client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        # Our own loop retries (with backoff and error mapping); urllib3's silent retries would multiply it.
        cfg.retries = 0
        return cls(client.ApiClient(cfg), **kwargs)

    @classmethod
    def for_host(cls, host: str, **kwargs: Any) -> KubeClusterClient:
        """A client for an unauthenticated API URL (tests, ``kubectl proxy``)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = host
        cfg.retries = 0
        return cls(client.ApiClient(cfg), **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._api.close()

    # ---------------------------------------------------------- transport

    def _once(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        raw: bool = False,
        date_out: list[str] | None = None,
    ) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        what = f"{method} {path}"
        params = list(query)
        if not raw:
            # The server's own deadline for the request (client-go sends the same): it stops working on a
            # request we have given up on. A log stream is long-running and takes no such parameter.
            params.append(("timeout", f"{max(1, int(self.timeout_s))}s"))
        if method in ("POST", "PATCH"):
            # A field the server does not know is a 400 naming it, not dropped in silence (the server's default,
            # Warn): a dropped deviceSelector field would widen a DeviceTaintRule to more devices.
            params.append(("fieldValidation", "Strict"))
        try:
            resp = self._api.call_api(
                path,
                method,
                query_params=params,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=self.timeout_s,
            )
        except ApiException as exc:
            raise _translate(exc, what) from exc
        except (HTTPError, OSError) as exc:
            raise _RetryableTransient(f"{what}: {type(exc).__name__}: {exc}") from exc
        data: bytes = resp.data
        if date_out is not None:
            date_out.append(server_date(getattr(resp, "headers", None)))
        if raw:
            return data.decode("utf-8", errors="replace")
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise errors.ClusterError(f"{what}: the API answered something that is not JSON") from exc

    def _list(self, path: str, query: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """Every item of the list at ``path``, read page by page (``limit``/``continue``).

        A 410 Expired on a continue token restarts the list (the pages read so far may be of another
        revision), at most ``LIST_RESTARTS`` times, then ``Transient``; a server that repeats a token or
        pages past ``LIST_PAGES_MAX`` ends in ``ClusterError``, never a loop.
        """
        for restart in range(LIST_RESTARTS + 1):
            items: list[dict[str, Any]] = []
            token = ""
            seen: set[str] = set()
            for _ in range(LIST_PAGES_MAX):
                page = [*query, ("limit", str(self.page_size)), ("timeoutSeconds", str(max(1, int(self.timeout_s))))]
                if token:
                    page.append(("continue", token))
                try:
                    data = self._call("GET", path, query=page)
                except ListExpired:
                    if not token:
                        raise  # not an expired page: nothing a restart changes
                    log.info("GET %s: continue token expired; list restarted (%d/%d)", path, restart + 1, LIST_RESTARTS)
                    break
                items.extend(i for i in data.get("items") or () if isinstance(i, dict))
                token = str((data.get("metadata") or {}).get("continue") or "")
                if not token:
                    return items
                if token in seen:
                    raise errors.ClusterError(f"GET {path}: the server repeated a continue token")
                seen.add(token)
            else:
                raise errors.ClusterError(f"GET {path}: still paging after {LIST_PAGES_MAX} pages")
        raise errors.Transient(f"GET {path}: the list's continue token expired {LIST_RESTARTS + 1} times")

    def _call(self, method: str, path: str, *, retry_conflict: bool = True, **kwargs: Any) -> Any:
        return with_retries(
            lambda: self._once(method, path, **kwargs),
            policy=self.retry,
            sleep=self._sleep,
            what=f"{method} {path}",
            retry_conflict=retry_conflict,
        )

    # ---------------------------------------------------------- nodes

    def list_nodes(self, label_selector: str | None = None) -> list[NodeInfo]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return [node_from_json(item) for item in self._list("/api/v1/nodes", query)]

    def get_node(self, name: str) -> NodeInfo:
        return node_from_json(self._call("GET", f"/api/v1/nodes/{_seg(name)}"))

    def patch_node_labels(
        self, name: str, labels: Mapping[str, str | None], annotations: Mapping[str, str | None] | None = None
    ) -> None:
        meta: dict[str, Any] = {}
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        if not meta:
            return
        # A JSON merge patch names only our keys (null removes one); no resourceVersion, so it
        # cannot conflict with the kubelet or other controllers writing other keys.
        self._call(
            "PATCH",
            f"/api/v1/nodes/{_seg(name)}",
            body={"metadata": meta},
            content_type="application/merge-patch+json",
        )

    def set_node_condition(self, name: str, condition: NodeCondition, now: datetime | None = None) -> NodeCondition:
        def attempt() -> NodeCondition:
            raw = self._once("GET", f"/api/v1/nodes/{_seg(name)}")
            node = node_from_json(raw)
            stored = merge_condition(node.condition(condition.type), condition, now)
            version = str((raw.get("metadata") or {}).get("resourceVersion") or "")
            body: dict[str, Any] = {"status": {"conditions": [stored.to_json()]}}
            if version:
                # Optimistic concurrency: the kept lastTransitionTime was read at this version;
                # if the node changed since, the API answers 409 and we read again.
                body["metadata"] = {"resourceVersion": version}
            self._once(
                "PATCH",
                f"/api/v1/nodes/{_seg(name)}/status",
                body=body,
                content_type="application/strategic-merge-patch+json",
            )
            return stored

        return with_retries(attempt, policy=self.retry, sleep=self._sleep, what=f"condition of node {name}")

    def create_node_event(
        self, node: str, *, reason: str, message: str, type_: str, namespace: str, now: datetime | None = None
    ) -> None:
        info = self.get_node(node)
        body = event_manifest(info, reason=reason, message=message, type_=type_, namespace=namespace, now=now)
        try:
            self._call("POST", f"/api/v1/namespaces/{_seg(namespace)}/events", body=body, retry_conflict=False)
        except errors.Conflict:
            pass  # AlreadyExists: an earlier attempt of this call made it, and only its answer was lost

    def set_node_unschedulable(self, name: str, unschedulable: bool) -> None:
        # What ``kubectl cordon``/``uncordon`` send: only spec.unschedulable (null removes it, as false would).
        self._call(
            "PATCH",
            f"/api/v1/nodes/{_seg(name)}",
            body={"spec": {"unschedulable": True if unschedulable else None}},
            content_type="application/strategic-merge-patch+json",
        )

    def set_node_taint(self, name: str, taint: NodeTaint, present: bool) -> bool:
        if taint.effect not in TAINT_EFFECTS:
            raise errors.BadParameter("effect", f"not a taint effect: {taint.effect!r}")

        def attempt() -> bool:
            raw = self._once("GET", f"/api/v1/nodes/{_seg(name)}")
            wanted = with_taint(node_from_json(raw).taints, taint, present)
            if wanted is None:
                return False
            # spec.taints has no patch merge key: any patch replaces the whole list, so it is sent with
            # the resourceVersion it was read at, and a taint another controller added meanwhile is a 409
            # (read again) instead of being lost.
            version = str((raw.get("metadata") or {}).get("resourceVersion") or "")
            body: dict[str, Any] = {"spec": {"taints": [t.to_json() for t in wanted]}}
            if version:
                body["metadata"] = {"resourceVersion": version}
            self._once("PATCH", f"/api/v1/nodes/{_seg(name)}", body=body, content_type="application/merge-patch+json")
            return True

        return with_retries(attempt, policy=self.retry, sleep=self._sleep, what=f"taints of node {name}")

    def nodes_running(self, namespace: str, label_selector: str) -> list[str]:
        items = self._list(
            f"/api/v1/namespaces/{_seg(namespace)}/pods",
            [("labelSelector", label_selector), ("fieldSelector", "status.phase=Running")],
        )
        return sorted({p.node for p in (pod_from_json(i) for i in items) if p.node})

    def gpu_pods_on_node(self, node: str) -> list[PodInfo]:
        selector_safe(node=node)
        # Pending, Running and Unknown pods count: a pod admitted to the node holds its GPUs.
        selector = f"spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"
        pods = [pod_from_json(i) for i in self._list("/api/v1/pods", [("fieldSelector", selector)])]
        return [p for p in pods if p.gpus > 0 and p.phase not in FINISHED_PHASES]

    # ---------------------------------------------------------- jobs

    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        # A 409 means the Job exists: not retried, the caller decides what that means.
        data = self._call(
            "POST", f"/apis/batch/v1/namespaces/{_seg(namespace)}/jobs", body=dict(manifest), retry_conflict=False
        )
        return str((data.get("metadata") or {}).get("name") or manifest["metadata"]["name"])

    def get_job(self, namespace: str, name: str) -> JobInfo:
        said: list[str] = []
        raw = self._call("GET", f"/apis/batch/v1/namespaces/{_seg(namespace)}/jobs/{_seg(name)}", date_out=said)
        return dataclasses.replace(job_from_json(raw), server_time=said[-1] if said else "")

    def delete_job(self, namespace: str, name: str) -> bool:
        return self._delete(f"/apis/batch/v1/namespaces/{_seg(namespace)}/jobs/{_seg(name)}", propagation="Background")

    def job_pods(self, namespace: str, job_name: str, job_uid: str = "") -> list[PodInfo]:
        selector_safe(job=job_name)
        items = self._list(f"/api/v1/namespaces/{_seg(namespace)}/pods", [("labelSelector", f"job-name={job_name}")])
        # The owner, not a label, tells this Job's pods from an earlier one's: every version sets it.
        return [p for p in map(pod_from_json, items) if not job_uid or p.owner_uid == job_uid]

    def job_events(self, namespace: str, job_name: str, job_uid: str = "") -> list[EventInfo]:
        selector_safe(job=job_name, uid=job_uid)
        selector = f"involvedObject.kind=Job,involvedObject.name={job_name}"
        if job_uid:
            selector += f",involvedObject.uid={job_uid}"
        items = self._list(f"/api/v1/namespaces/{_seg(namespace)}/events", [("fieldSelector", selector)])
        return [event_from_json(i) for i in items]

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        query = [("limitBytes", str(LOG_LIMIT_BYTES))]
        if container:
            query.append(("container", container))
        text: str = self._call(
            "GET", f"/api/v1/namespaces/{_seg(namespace)}/pods/{_seg(pod)}/log", query=query, raw=True
        )
        return text

    # ---------------------------------------------------------- pods and volumes

    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        data = self._call(
            "POST", f"/api/v1/namespaces/{_seg(namespace)}/pods", body=dict(manifest), retry_conflict=False
        )
        return str((data.get("metadata") or {}).get("name") or "")

    def get_pod(self, namespace: str, name: str) -> PodInfo:
        # A list by name, not a GET: reading pods is the cluster-wide list the worker is already granted.
        if not names.is_dns1123_subdomain(name):
            raise errors.BadParameter("pod", f"not a valid pod name: {name[:80]!r}")
        items = self._list(f"/api/v1/namespaces/{_seg(namespace)}/pods", [("fieldSelector", f"metadata.name={name}")])
        if not items:
            raise errors.NotFound(f"pods {name!r} not found in {namespace}")
        return pod_from_json(items[0])

    def delete_pod(self, namespace: str, name: str) -> bool:
        # 1 s, as kubectl turns --grace-period=0 into: the API server takes 0 as a force deletion, the pod gone from
        # the API before the kubelet has stopped it and unmounted its volumes, and then pvc-protection lets the claim
        # and its volume go while still mounted. A pod that never ran or has ended is deleted at once either way.
        return self._delete(f"/api/v1/namespaces/{_seg(namespace)}/pods/{_seg(name)}", grace_s=1)

    def create_pvc(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        data = self._call(
            "POST",
            f"/api/v1/namespaces/{_seg(namespace)}/persistentvolumeclaims",
            body=dict(manifest),
            retry_conflict=False,
        )
        return str((data.get("metadata") or {}).get("name") or "")

    def pvc_phase(self, namespace: str, name: str) -> str:
        data = self._call("GET", f"/api/v1/namespaces/{_seg(namespace)}/persistentvolumeclaims/{_seg(name)}")
        return str((data.get("status") or {}).get("phase") or "Pending")

    def delete_pvc(self, namespace: str, name: str) -> bool:
        return self._delete(f"/api/v1/namespaces/{_seg(namespace)}/persistentvolumeclaims/{_seg(name)}")

    def storage_class_binding_mode(self, name: str) -> str:
        data = self._call("GET", f"/apis/storage.k8s.io/v1/storageclasses/{_seg(name)}")
        return str(data.get("volumeBindingMode") or "Immediate")

    # ---------------------------------------------------------- DRA device taints

    def device_taint_api(self) -> str | None:
        if self._dra_version is not None:
            return self._dra_version or None
        try:
            group = self._call("GET", f"/apis/{DRA_GROUP}")
        except errors.NotFound:
            self._dra_version = ""
            return None
        versions = [str(v.get("version") or "") for v in group.get("versions") or ()]
        preferred = str((group.get("preferredVersion") or {}).get("version") or "")
        for version in sorted(filter(None, versions), key=lambda v: v != preferred):
            try:
                listing = self._call("GET", f"/apis/{DRA_GROUP}/{_seg(version)}")
            except errors.NotFound:
                continue
            if any(r.get("name") == "devicetaintrules" for r in listing.get("resources") or ()):
                self._dra_version = version
                return version
        self._dra_version = ""
        return None

    def _dra_path(self) -> str:
        version = self.device_taint_api()
        if version is None:
            raise errors.NotFound(f"this cluster serves no {DRA_GROUP} DeviceTaintRule")
        return f"/apis/{DRA_GROUP}/{version}/devicetaintrules"

    def _rediscover_on_404(self, fn: Callable[[], T]) -> T:
        """A 404 on the rules' collection: the version discovered is no longer served (the control plane was
        upgraded past an alpha, or the feature turned off). Discovery runs again on the next call instead of
        every later call failing on a version that is gone."""
        try:
            return fn()
        except errors.NotFound:
            self._dra_version = None
            raise

    def list_device_taint_rules(self, label_selector: str) -> list[DeviceTaintRuleInfo]:
        items = self._rediscover_on_404(lambda: self._list(self._dra_path(), [("labelSelector", label_selector)]))
        return [DeviceTaintRuleInfo.from_json(i) for i in items]

    def create_device_taint_rule(self, rule: DeviceTaintRuleInfo) -> str:
        path = self._dra_path()
        body = rule.to_json(path.split("/")[3])
        data = self._rediscover_on_404(lambda: self._call("POST", path, body=body, retry_conflict=False))
        return str((data.get("metadata") or {}).get("name") or rule.name)

    def delete_device_taint_rule(self, name: str) -> bool:
        return self._delete(f"{self._dra_path()}/{_seg(name)}")

    def _delete(self, path: str, *, propagation: str | None = None, grace_s: int | None = None) -> bool:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation:
            body["propagationPolicy"] = propagation
        if grace_s is not None:
            body["gracePeriodSeconds"] = grace_s
        try:
            self._call("DELETE", path, body=body)
        except errors.NotFound:
            return False
        return True


def _seg(name: str) -> str:
    """A path segment: names reaching the API were validated, but never let one add a path element."""
    if not name or "/" in name or name in (".", "..") or "?" in name or "#" in name or "%" in name:
        raise errors.BadParameter("name", f"not a valid object name: {name[:80]!r}")
    return name


def _translate(exc: Any, what: str) -> errors.ClusterError:
    """``ApiException`` -> our errors, by HTTP status (0/None: no answer at all)."""
    status = int(getattr(exc, "status", 0) or 0)
    detail = _api_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", "") or "")
    message = f"{what}: {status} {detail}".strip()
    if status == 404:
        return errors.NotFound(message)
    if status == 409:
        return errors.Conflict(message)
    if status == 410:
        return ListExpired(message)
    if status in (0, 429) or status >= 500:
        return _RetryableTransient(message, _retry_after(getattr(exc, "headers", None)))
    return errors.ClusterError(message)


def _api_message(body: object) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, when there is one, with the causes of a 422 it does
    not already name (``details.causes``: field and message of each invalid value; admission webhooks
    may give them there only)."""
    if not body:
        return ""
    try:
        parsed = json.loads(body if isinstance(body, str | bytes) else str(body))
    except ValueError:
        return _not_json(body)
    if not isinstance(parsed, dict):
        return ""
    message = str(parsed.get("message") or "")
    causes = (parsed.get("details") or {}).get("causes") if isinstance(parsed.get("details"), dict) else None
    extra = [
        f"{c.get('field') or ''}: {c.get('message') or ''}".strip(": ")
        for c in (causes if isinstance(causes, list) else ())
        if isinstance(c, dict) and (c.get("field") or c.get("message")) and str(c.get("field") or "") not in message
    ]
    if extra:
        message = f"{message} ({'; '.join(extra)})" if message else "; ".join(extra)
    return message[:1000]


def _not_json(body: object) -> str:
    """What a body that is no ``Status`` says, as one short line: a load balancer or proxy in front of the
    API server answers with an HTML page (its ``<title>``, else its text without tags)."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    title = re.search(r"(?is)<title[^>]*>(.*?)</title>", text)
    if title:
        text = title[1]
    text = " ".join(re.sub(r"(?s)<[^>]*>", " ", text).split())
    return f"not a Kubernetes Status (a proxy in front of the API server?): {text[:200]}"


def server_date(headers: object) -> str:
    """The ``Date`` header of an answer (RFC 7231, ``Tue, 01 Dec 2026 03:00:00 GMT``: every Go net/http server,
    the API server included, sends it) as RFC 3339; '' when there is none or it does not parse."""
    if not isinstance(headers, Mapping):
        return ""
    for key, value in headers.items():
        if str(key).lower() == "date":
            try:
                return rfc3339(email.utils.parsedate_to_datetime(str(value)))
            except (TypeError, ValueError, IndexError):
                return ""
    return ""


def _retry_after(headers: object) -> float | None:
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c==d,e!=f``, bare ``key`` for existence) over ``labels``."""
    for part in filter(None, (p.strip() for p in selector.split(","))):
        if "!=" in part:
            key, _, value = part.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in part:
            key, _, value = part.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif part.startswith("!"):
            if part[1:].strip() in labels:
                return False
        elif part not in labels:
            return False
    return True


def from_settings(settings: Any) -> ClusterClient | None:
    """The cluster client a process should use, or None to keep the local label store.

    ``settings`` is ``config.Settings`` (typed loosely to keep this seam free of the config module).
    """
    if not settings.uses_cluster:
        return None
    try:
        return KubeClusterClient.from_config(settings.kubeconfig or None)
    except Exception as exc:  # noqa: BLE001 - kubernetes raises several unrelated types here
        raise errors.ConfigError(f"cannot configure the Kubernetes client: {exc}") from exc
