"""A stand-in Kubernetes API server, in the test process, for ``KubeClusterClient``.

It serves the real JSON shapes (NodeList, Node, Pod, Job, PersistentVolumeClaim, Event,
StorageClass, Status) for the paths the cluster seam uses, applies merge and strategic-merge
patches the way the API server does for the fields we touch (labels, annotations, conditions
merged by ``type``, ``spec.unschedulable``, ``spec.taints`` replaced whole,
``metadata.resourceVersion`` precondition -> 409), validates a patched Node as the API server
does for those fields (422 ``Invalid``: taint effects, keys and values, duplicate taints), pages lists
(``limit``/``continue``, 410 Expired on demand), refuses unknown fields under ``fieldValidation=Strict``,
values of a JSON type its decoder cannot read (400), and field selectors on fields a resource cannot
select, plays the parts of the Job controller (pods owned
by the Job's uid), scheduler (cordons and taints keep a pod Pending), garbage collector and provisioner
that our code can observe, admits pods as Pod Security Admission and ResourceQuota's "must specify" rule
do (403 to a pod's create, ``FailedCreate`` for a Job's pod), refuses what RBAC does not grant (``authorize``: 403
worded as the authorizer words it), and records every request (verb, path,
query, content type, body).

Its test controls have the same names and meaning as ``FakeCluster``'s (``add_node``,
``add_pod``, ``add_storage_class``, ``fail_next``, ``finish_job``, ...), so one behaviour test
drives either backend.
"""

from __future__ import annotations

import copy
import dataclasses
import email.utils
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from autopilot import apivalidation, results
from autopilot.cluster import (
    EventInfo,
    KubeClusterClient,
    PodInfo,
    RetryPolicy,
    event_from_json,
    job_from_json,
    node_from_json,
    pod_from_json,
    rfc3339,
    selector_matches,
)
from autopilot.testing import (
    DEVICE_TAINT_EFFECTS,
    FakeCluster,
    admission_refusal,
    device_taint_rule_problems,
    event_refusal,
    invalid_message,
    job_pod_refusal,
    log_refusal,
    pod_node,
    unschedulable_reason,
)

# The first HTTP request each Protocol method makes: where ``fail_next(op, ...)`` strikes.
OP_ROUTES: dict[str, tuple[str, str]] = {
    "list_nodes": ("GET", r"^/api/v1/nodes$"),
    "get_node": ("GET", r"^/api/v1/nodes/[^/]+$"),
    "patch_node_labels": ("PATCH", r"^/api/v1/nodes/[^/]+$"),
    "set_node_condition": ("PATCH", r"^/api/v1/nodes/[^/]+/status$"),
    "create_node_event": ("POST", r"/events$"),
    "set_node_unschedulable": ("PATCH", r"^/api/v1/nodes/[^/]+$"),
    "set_node_taint": ("GET", r"^/api/v1/nodes/[^/]+$"),
    "nodes_running": ("GET", r"^/api/v1/namespaces/[^/]+/pods$"),
    "gpu_pods_on_node": ("GET", r"^/api/v1/pods$"),
    "create_job": ("POST", r"/jobs$"),
    "get_job": ("GET", r"/jobs/[^/]+$"),
    "delete_job": ("DELETE", r"/jobs/[^/]+$"),
    "job_pods": ("GET", r"^/api/v1/namespaces/[^/]+/pods$"),
    "job_events": ("GET", r"/events$"),
    "pod_log": ("GET", r"/log$"),
    "create_pod": ("POST", r"/pods$"),
    "get_pod": ("GET", r"^/api/v1/namespaces/[^/]+/pods$"),
    "delete_pod": ("DELETE", r"/pods/[^/]+$"),
    "create_pvc": ("POST", r"/persistentvolumeclaims$"),
    "pvc_phase": ("GET", r"/persistentvolumeclaims/[^/]+$"),
    "delete_pvc": ("DELETE", r"/persistentvolumeclaims/[^/]+$"),
    "storage_class_binding_mode": ("GET", r"/storageclasses/[^/]+$"),
    "list_device_taint_rules": ("GET", r"/devicetaintrules$"),
    "create_device_taint_rule": ("POST", r"/devicetaintrules$"),
    "delete_device_taint_rule": ("DELETE", r"/devicetaintrules/[^/]+$"),
}
STAMP = "2026-11-29T22:00:00Z"
# What a load balancer in front of the API server answers with when the server is away.
HTML_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n<center><h1>{code} {phrase}"
    "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
EXPIRED_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter, or use the continue token in this response to retrieve the "
    "remainder of the results."
)
GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
# The fields each resource's field selector may name (the registries' field label conversion funcs and
# ToSelectableFields: pkg/apis/core/v1/conversion.go, pkg/registry/*); any other is a 400.
SELECTABLE_FIELDS: dict[str, frozenset[str]] = {
    "Pod": frozenset({
        "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
        "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs",
        "status.nominatedNodeName",
    }),
    "Event": frozenset({
        "metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.namespace",
        "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
    }),
    "Node": frozenset({"metadata.name", "spec.unschedulable"}),
    "Job": frozenset({"metadata.name", "metadata.namespace", "status.successful"}),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


Permission = tuple[str, str, str, str | None]  # (apiGroup, resource[/subresource], verb, namespace; None: cluster-wide)


def permission(method: str, path: str) -> Permission | None:
    """What RBAC asks of a request to ``path`` (the API server's RequestInfo): its group, resource (with its
    subresource), verb and namespace; None for API discovery (``/apis/<group>[/<version>]``), which every
    authenticated client may read (``system:discovery``)."""
    parts = path.strip("/").split("/")
    if method == "GET" and parts[0] == "apis" and len(parts) <= 3:
        return None
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = None
    if rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}.get(method)
    if verb is None:
        verb = "get" if len(rest) > 1 else "list"
    return group, resource, verb, namespace


def forbidden(user: str, method: str, path: str, want: Permission) -> tuple[int, Any]:
    """The authorizer's 403 (apiserver's ``forbiddenMessage`` and ``NewForbidden``), worded as the server does."""
    group, resource, verb, namespace = want
    parts = path.strip("/").split("/")
    plural, _, _ = resource.partition("/")
    name = parts[parts.index(plural) + 1] if method != "POST" and len(parts) > parts.index(plural) + 1 else ""
    what = f'{plural} "{name}"' if name else plural
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}" {scope}'
    body = status_body(403, "Forbidden", message)
    body["details"] = {"name": name, "group": group, "kind": plural} if name else {"group": group, "kind": plural}
    return 403, body


def status_body(code: int, reason: str, message: str, causes: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if causes:
        # What the server's 422 carries besides its message: one cause per field error.
        split = [c.partition(": ") for c in causes]
        body["details"] = {"causes": [{"field": f, "message": m, "reason": "FieldValueInvalid"} for f, _, m in split]}
    return body


def invalid(kind: str, name: str, problems: list[str]) -> tuple[int, Any]:
    return 422, status_body(422, "Invalid", invalid_message(kind, name, problems), problems)


def bad_selector(query: Mapping[str, str]) -> tuple[int, Any] | None:
    """The 400 of a label selector ``labels.Parse`` refuses; None when it parses."""
    problems = apivalidation.label_selector_problems(query.get("labelSelector", ""))
    return (
        (400, status_body(400, "BadRequest", "unable to parse requirement: " + "; ".join(problems)))
        if problems
        else None
    )


_REASONS = {
    404: "NotFound",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    403: "Forbidden",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class StandInApi:
    """State of the stand-in cluster plus its HTTP server (``url``); ``close()`` stops it."""

    def __init__(self, clock: Any = None) -> None:
        # The server's own clock (``now()``): it stamps a Job's creationTimestamp and every answer's Date header on
        # it, as the API server does on its host's. None: a server whose clock stands at STAMP.
        self.clock = clock
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name)
        self.logs: dict[tuple[str, str], str] = {}
        self.storage_classes: dict[str, tuple[str, int | None]] = {}
        self.pvc_reads: dict[tuple[str, str], int] = {}
        self.hooks: list[Callable[[str, str], None]] = []
        self._faults: list[tuple[str, str, int]] = []
        self.device_taint_version: str | None = None
        self.device_taint_effects: tuple[str, ...] = DEVICE_TAINT_EFFECTS
        self.dra_versions: dict[str, bool] = {}
        self._seq = itertools.count(1)
        self._rv = itertools.count(100)
        self._continues: dict[str, tuple[str, str]] = {}  # continue token -> the key of the page's last item
        self._expire = 0
        self.pages = 0  # list pages served
        self.gc_paused = False
        self.force_deleted: list[str] = []  # pods deleted with gracePeriodSeconds 0 while on a node and not finished
        self.html_faults = 0  # test control: the next injected faults come as a proxy's HTML page
        self.retry_after = "1"  # test control: the Retry-After of an injected 429 (APF sends 1 s)
        self.broken_continue = False  # test control: a broken server, whose every token restarts the list
        self.namespace_labels: dict[str, dict[str, str]] = {}  # pod-security.kubernetes.io/enforce, ...
        self.quotas: dict[str, dict[str, list[str]]] = {}  # namespace -> ResourceQuota name -> resources tracked
        self.limit_ranges: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> LimitRange -> default limits
        # test control: who is asking and what RBAC grants it (``authorize``); None: everything is allowed
        self.rbac: tuple[str, frozenset[Permission]] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="standin-api", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def now_stamp(self) -> str:
        return rfc3339(self.clock.now()) if self.clock is not None else STAMP

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # ---------------------------------------------------------- test controls (as FakeCluster's)

    def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        gpus: int = 0,
        annotations: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] = (),
    ) -> None:
        allocatable = {"cpu": "96", "memory": "2113389860Ki", "pods": "110"}
        if gpus:
            allocatable["nvidia.com/gpu"] = str(gpus)
        with self.lock:
            self.nodes[name] = {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "uid": f"uid-{name}",
                    "resourceVersion": str(next(self._rv)),
                    "creationTimestamp": STAMP,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0", **(annotations or {})},
                },
                "spec": {"podCIDR": "10.244.1.0/24", **({"taints": [dict(t) for t in taints]} if taints else {})},
                "status": {
                    "capacity": dict(allocatable),
                    "allocatable": allocatable,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": STAMP,
                            "lastTransitionTime": STAMP,
                        }
                    ],
                    "nodeInfo": {"kubeletVersion": "v1.31.2"},
                },
            }

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        phase: str = "Running",
        gpus: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        resources: dict[str, Any] = {"requests": {"cpu": "1"}}
        if gpus:
            resources = {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}}
        spec = {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "resources": resources}]}
        with self.lock:
            self.objects[("Pod", namespace, name)] = self._pod(namespace, name, spec, dict(labels or {}), phase)

    def label_namespace(self, namespace: str, labels: Mapping[str, str]) -> None:
        """A namespace's labels; ``pod-security.kubernetes.io/enforce`` makes the PodSecurity admission plugin
        refuse a pod that violates its level: 403 Forbidden to a pod's create, and for a Job (admitted: the
        plugin only warns on workloads) no pod and a ``FailedCreate`` Event from the Job controller."""
        with self.lock:
            self.namespace_labels[namespace] = dict(labels)

    def set_resource_quota(self, namespace: str, name: str, hard: Sequence[str]) -> None:
        """A ResourceQuota ``name`` in ``namespace`` tracking the resources ``hard`` names (``requests.cpu``,
        ``limits.memory``, ...): a pod whose containers do not say them is refused (403 ``failed quota``)."""
        with self.lock:
            self.quotas.setdefault(namespace, {})[name] = list(hard)

    def set_limit_range(self, namespace: str, name: str, default: Mapping[str, str]) -> None:
        """As ``FakeCluster.set_limit_range``: a Job's pod whose request is above a default limit is invalid."""
        with self.lock:
            self.limit_ranges.setdefault(namespace, {})[name] = dict(default)

    def _admission(self, namespace: str, spec: Mapping[str, Any]) -> str:
        return admission_refusal(self.namespace_labels.get(namespace, {}), self.quotas.get(namespace, {}), spec)

    def _job_pod_refusal(self, namespace: str, spec: Mapping[str, Any], pod: str) -> str:
        labels, quotas = self.namespace_labels.get(namespace, {}), self.quotas.get(namespace, {})
        return job_pod_refusal(pod, labels, quotas, self.limit_ranges.get(namespace, {}), spec)

    def authorize(self, user: str, grants: set[Permission] | frozenset[Permission]) -> None:
        """Answer as the API server's RBAC authorizer for ``user`` bound to ``grants`` (a grant with namespace None
        holds everywhere, as a ClusterRole bound by a ClusterRoleBinding): any other request is a 403 Forbidden,
        before it is decoded or validated."""
        with self.lock:
            self.rbac = (user, frozenset(grants))

    def add_storage_class(self, name: str, mode: str = "Immediate", *, binds_after: int | None = 1) -> None:
        with self.lock:
            self.storage_classes[name] = (mode, binds_after)

    def fail_next(self, op: str, status: int, times: int = 1, *, applied: bool = False) -> None:
        """As ``FakeCluster.fail_next``; ``applied``: the request is served, then answered with ``status``."""
        method, pattern = OP_ROUTES[op]
        with self.lock:
            self._faults.extend([(method, pattern, -status if applied else status)] * times)

    def finish_job(
        self, namespace: str, name: str, *, succeeded: bool, log: str = "", exit_code: int = 0, interim: bool = False
    ) -> None:
        """``interim``: as a 1.31+ Job controller first writes it, ``SuccessCriteriaMet`` or ``FailureTarget``
        alone, before its pods are gone and ``Complete`` or ``Failed`` follows."""
        with self.lock:
            job = self.objects[("Job", namespace, name)]
            for pod in self._job_pods(namespace, name):
                pod["status"] = {
                    "phase": "Succeeded" if succeeded else "Failed",
                    "containerStatuses": [
                        {
                            "name": "main",
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": 0 if succeeded else exit_code,
                                    "reason": "Completed" if succeeded else "Error",
                                }
                            },
                        }
                    ],
                }
                self.logs[(namespace, pod["metadata"]["name"])] = log
            if succeeded:
                conditions = [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": STAMP},
                    {"type": "Complete", "status": "True", "lastTransitionTime": STAMP},
                ]
                job["status"] = {"succeeded": 1, "conditions": conditions[:1] if interim else conditions}
                if not interim:
                    job["status"]["completionTime"] = STAMP
            else:
                conditions = [
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    },
                ]
                job["status"] = {"failed": 1, "conditions": conditions[:1] if interim else conditions}

    def expire_finished_jobs(self, elapsed_s: float) -> list[str]:
        """As ``FakeCluster.expire_finished_jobs``: the TTL-after-finished controller deletes each finished Job whose
        ``ttlSecondsAfterFinished`` is at most ``elapsed_s``, its pods first (Foreground)."""
        gone: list[str] = []
        with self.lock:
            for (kind, ns, name), job in list(self.objects.items()):
                ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
                if kind != "Job" or ttl is None or ttl > elapsed_s or not job_from_json(job).finished:
                    continue
                for pod in self._job_pods(ns, name, job["metadata"]["uid"]):
                    del self.objects[("Pod", ns, pod["metadata"]["name"])]
                    self.logs.pop((ns, pod["metadata"]["name"]), None)
                del self.objects[(kind, ns, name)]
                gone.append(name)
        return gone

    def refuse_job_pod(self, namespace: str, name: str, message: str) -> None:
        with self.lock:
            for pod in self._job_pods(namespace, name):
                del self.objects[("Pod", namespace, pod["metadata"]["name"])]
            self.objects[("Job", namespace, name)]["status"] = {"active": 0}
            self._event(namespace, "Job", name, "FailedCreate", message, "Warning")

    def admit_job_pod(self, namespace: str, name: str) -> None:
        """As ``FakeCluster.admit_job_pod``: the refusal cleared, the controller's next try makes the pod."""
        with self.lock:
            job = self.objects[("Job", namespace, name)]
            self._start_job_pod(namespace, job, f"{name[:57]}-{next(self._seq):05x}")
            job["status"] = {"active": 1, "startTime": STAMP}

    def suspend_job(self, namespace: str, name: str) -> None:
        """As ``FakeCluster.suspend_job``: ``spec.suspend`` true, no pod, ``Suspended=True`` (the Job controller's
        words: reason ``JobSuspended``, message ``Job suspended``), ``status.startTime`` cleared."""
        with self.lock:
            for pod in self._job_pods(namespace, name):
                del self.objects[("Pod", namespace, pod["metadata"]["name"])]
            job = self.objects[("Job", namespace, name)]
            job["spec"]["suspend"] = True
            job["status"] = {
                "active": 0,
                "ready": 0,
                "conditions": [
                    {
                        "type": "Suspended",
                        "status": "True",
                        "reason": "JobSuspended",
                        "message": "Job suspended",
                        "lastProbeTime": self.now_stamp(),
                        "lastTransitionTime": self.now_stamp(),
                    }
                ],
            }

    def resume_job(self, namespace: str, name: str) -> None:
        """As ``FakeCluster.resume_job``: ``spec.suspend`` false, ``Suspended=False`` (``JobResumed``), a pod."""
        with self.lock:
            job = self.objects[("Job", namespace, name)]
            job["spec"]["suspend"] = False
            self._start_job_pod(namespace, job, f"{name[:57]}-{next(self._seq):05x}")
            resumed = {"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed"}
            job["status"] = {"active": 1, "startTime": self.now_stamp(), "conditions": [resumed]}

    def kill_job_pod(
        self,
        namespace: str,
        name: str,
        *,
        exit_code: int = 137,
        terminated: str = "Error",
        reason: str = "",
        message: str = "",
        disruption: tuple[str, str] | None = None,
        log: str = "",
        phase: str = "Failed",
        terminated_message: str = "",
    ) -> None:
        """As ``FakeCluster.kill_job_pod``, in the kubelet's and Job controller's JSON: the pod Failed with its
        DisruptionTarget condition (1.26+) and its container terminated; the Job FailureTarget and Failed."""
        with self.lock:
            for pod in self._job_pods(namespace, name):
                conditions = [{"type": "Ready", "status": "False", "reason": "PodFailed"}]
                if disruption:
                    conditions.append(
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": disruption[0],
                            "message": disruption[1],
                        }
                    )
                state: dict[str, Any] = {
                    "terminated": {"exitCode": exit_code, "reason": terminated, "finishedAt": self.now_stamp()}
                }
                if terminated_message:
                    state["terminated"]["message"] = terminated_message
                if phase != "Failed":  # a lost node: its kubelet's last word was that the container ran (or waited)
                    before = (pod.get("status") or {}).get("containerStatuses") or [{}]
                    state = before[0].get("state") or {} if phase == "Pending" else {}
                    state = state or {"running": {"startedAt": self.now_stamp()}}
                    pod["metadata"]["deletionTimestamp"] = self.now_stamp()
                pod["status"] = {
                    "phase": phase,
                    **({"reason": reason} if reason else {}),
                    **({"message": message} if message else {}),
                    "conditions": conditions,
                    "containerStatuses": [{"name": "main", "ready": False, "restartCount": 0, "state": state}],
                }
                self.logs[(namespace, pod["metadata"]["name"])] = log
            failed = {"status": "True", "reason": "BackoffLimitExceeded"}
            self.objects[("Job", namespace, name)]["status"] = {
                "failed": 1,
                "conditions": [
                    {"type": "FailureTarget", **failed, "message": "Job has reached the specified backoff limit"},
                    {"type": "Failed", **failed, "message": "Job has reached the specified backoff limit"},
                ],
            }

    def hold_job_pod(self, namespace: str, name: str, reason: str, message: str = "") -> None:
        """As ``FakeCluster.hold_job_pod``: Pending, its container ``waiting`` with the kubelet's reason and message."""
        with self.lock:
            for pod in self._job_pods(namespace, name):
                waiting = {"reason": reason, **({"message": message} if message else {})}
                pod["status"] = {
                    "phase": "Pending",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [
                        {"name": "main", "ready": False, "restartCount": 0, "state": {"waiting": waiting}}
                    ],
                }

    def reject_job_pod(self, namespace: str, name: str, reason: str, message: str) -> None:
        with self.lock:
            for pod in self._job_pods(namespace, name):
                pod["status"] = {"phase": "Failed", "reason": reason, "message": message}

    def unschedulable_job_pod(self, namespace: str, name: str, message: str) -> None:
        with self.lock:
            for pod in self._job_pods(namespace, name):
                pod["status"] = {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
                    ],
                }

    def job_past_deadline(self, namespace: str, name: str, *, interim: bool = False) -> None:
        with self.lock:
            for pod in self._job_pods(namespace, name):
                pod["status"] = {"phase": "Failed", "reason": "DeadlineExceeded"}
            self.objects[("Job", namespace, name)]["status"] = {
                "failed": 1,
                "conditions": [
                    {
                        "type": "FailureTarget" if interim else "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ],
            }

    def pods(self, namespace: str | None = None) -> list[PodInfo]:
        with self.lock:
            return [
                pod_from_json(o)
                for (kind, ns, _), o in self.objects.items()
                if kind == "Pod" and (namespace is None or ns == namespace)
            ]

    def events_for(self, kind: str, name: str) -> list[EventInfo]:
        with self.lock:
            found = [event_from_json(o) for (k, _, _), o in self.objects.items() if k == "Event"]
        return [e for e in found if e.kind == kind and e.name == name]

    def serve_device_taints(
        self,
        version: str = "v1beta2",
        effects: tuple[str, ...] = DEVICE_TAINT_EFFECTS,
        *,
        others: Mapping[str, bool] | None = None,
    ) -> None:
        """Serve ``resource.k8s.io/<version>`` DeviceTaintRule (off by default, as on clusters before 1.33).

        ``others``: further versions of the group, each with whether it serves ``devicetaintrules`` too (a
        1.36 server with alpha APIs on: ``{"v1": False, "v1beta1": False, "v1alpha3": True}`` beside
        ``v1beta2``). The group lists them as the server does, most stable first, the first preferred."""
        self.device_taint_version = version
        self.device_taint_effects = effects
        served = {**(others or {}), version: True}
        self.dra_versions = {v: served[v] for v in sorted(served, key=_version_rank)}

    @property
    def device_taint_rules(self) -> dict[str, Any]:
        with self.lock:
            return {name: o for (k, _, name), o in self.objects.items() if k == "DeviceTaintRule"}

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    # ---------------------------------------------------------- controllers

    def _pod(
        self, namespace: str, name: str, spec: dict[str, Any], labels: dict[str, str], phase: str
    ) -> dict[str, Any]:
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "resourceVersion": str(next(self._rv)),
                "labels": labels,
                "creationTimestamp": STAMP,
            },
            "spec": spec,
            "status": {"phase": phase, "qosClass": "BestEffort"},
        }

    def _job_pods(self, namespace: str, job: str, uid: str | None = None) -> list[dict[str, Any]]:
        """The pods Job ``job`` (of ``uid``; None: the Job of that name now) controls."""
        if uid is None:
            uid = self.objects.get(("Job", namespace, job), {}).get("metadata", {}).get("uid", "")
        return [
            o
            for (kind, ns, _), o in self.objects.items()
            if kind == "Pod"
            and ns == namespace
            and o["metadata"]["labels"].get("job-name") == job
            and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or ())
        ]

    def pause_gc(self) -> None:
        """As ``FakeCluster.pause_gc``: the pods of a Job deleted in the background stay until ``collect_garbage``."""
        with self.lock:
            self.gc_paused = True

    def collect_garbage(self) -> None:
        with self.lock:
            live = {o["metadata"]["uid"] for (k, _, _), o in self.objects.items() if k == "Job"}
            for key, obj in list(self.objects.items()):
                owners = [r.get("uid") for r in obj["metadata"].get("ownerReferences") or ()]
                if key[0] == "Pod" and owners and not set(owners) & live:
                    del self.objects[key]

    def _event(self, namespace: str, kind: str, name: str, reason: str, message: str, type_: str) -> None:
        event_name = f"{name}.{next(self._seq):016x}"
        uid = self.objects.get((kind, namespace, name), {}).get("metadata", {}).get("uid", "")
        self.objects[("Event", namespace, event_name)] = {
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace, "uid": uid},
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "source": {"component": "job-controller"},
        }

    # ---------------------------------------------------------- HTTP

    def handle(self, method: str, path: str, query: dict[str, str], ctype: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(Request(method, path, query, ctype, body))
            for hook in list(self.hooks):
                hook(method, path)
            if self.rbac is not None and (want := permission(method, path)) is not None:
                user, grants = self.rbac
                if (*want[:3], None) not in grants and (want[3] is None or want not in grants):
                    return forbidden(user, method, path, want)
            for i, (fmethod, pattern, status) in enumerate(self._faults):
                if fmethod == method and re.search(pattern, path):
                    del self._faults[i]
                    if status < 0:  # applied, then the answer was lost
                        status = -status
                        try:
                            self._route(method, path, query, ctype, body)
                        except KeyError:
                            pass
                    if self.html_faults:
                        self.html_faults -= 1
                        return status, HTML_PAGE.format(code=status, phrase=HTTPStatus(status).phrase)
                    # An injected 422 names its invalid field only in details.causes, as some webhooks do.
                    causes = ["spec.injected: Invalid value: injected"] if status == 422 else None
                    return status, status_body(status, _REASONS.get(status, "Unknown"), f"injected {status}", causes)
            if "timeout" in query and not GO_DURATION.fullmatch(query["timeout"]):
                # WithRequestDeadline: a timeout that time.ParseDuration refuses is a 400
                return 400, status_body(
                    400, "BadRequest", f"invalid timeout specified in the request URL: {query['timeout']}"
                )
            if method in ("POST", "PATCH") and (wrong := apivalidation.wrong_types(_kind_of(path), body)):
                # The decoder's refusal, before validation and whatever fieldValidation says.
                parts = path.strip("/").split("/")
                kind, version = _kind_of(path), parts[1] if parts[0] == "api" else parts[2]
                message = f'{kind} in version "{version}" cannot be handled as a {kind}: json: ' + "; ".join(wrong)
                return 400, status_body(400, "BadRequest", message)
            if method in ("POST", "PATCH") and query.get("fieldValidation") == "Strict":
                unknown = apivalidation.unknown_fields(_kind_of(path), body, path.split("/")[3])
                if unknown:
                    message = "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in unknown)
                    return 400, status_body(400, "BadRequest", message)
            try:
                return self._route(method, path, query, ctype, body)
            except KeyError as exc:
                return 404, status_body(404, "NotFound", f"{exc.args[0]} not found")

    def _route(self, method: str, path: str, query: dict[str, str], ctype: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "nodes"]:
            return self._nodes(method, parts[3:], query, ctype, body)
        if path == "/api/v1/pods" and method == "GET":
            return self._list("Pod", None, query)
        if parts[:4] == ["apis", "storage.k8s.io", "v1", "storageclasses"] and len(parts) == 5 and method == "GET":
            mode, _ = self._sc(parts[4])
            return 200, {
                "kind": "StorageClass",
                "apiVersion": "storage.k8s.io/v1",
                "metadata": {"name": parts[4]},
                "provisioner": "csi.example.com",
                "reclaimPolicy": "Delete",
                "volumeBindingMode": mode,
            }
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5:
            kind = {"pods": "Pod", "events": "Event", "persistentvolumeclaims": "PersistentVolumeClaim"}[parts[4]]
            return self._namespaced(kind, "v1", method, parts[3], parts[5:], query, body)
        if parts[:4] == ["apis", "batch", "v1", "namespaces"] and len(parts) >= 6 and parts[5] == "jobs":
            return self._namespaced("Job", "batch/v1", method, parts[4], parts[6:], query, body)
        if parts[:2] == ["apis", "resource.k8s.io"] and self.device_taint_version is not None:
            return self._dra(method, parts[2:], query, body)
        return 404, status_body(404, "NotFound", f"the server could not find the requested resource ({path})")

    def _dra(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        """Discovery of ``resource.k8s.io`` and its cluster-scoped DeviceTaintRules."""
        if not rest and method == "GET":
            entries = [{"groupVersion": f"resource.k8s.io/{v}", "version": v} for v in self.dra_versions]
            return 200, {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": "resource.k8s.io",
                "versions": entries,
                "preferredVersion": entries[0],
            }
        version = rest[0]
        group_version = f"resource.k8s.io/{version}"
        if version not in self.dra_versions:
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        if len(rest) == 1 and method == "GET":
            names = ["deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices"]
            names += ["devicetaintrules"] if self.dra_versions[version] else []
            resources = [{"name": n, "namespaced": n.startswith("resourceclaim"), "kind": n} for n in names]
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": resources,
            }
        if rest[1] != "devicetaintrules" or not self.dra_versions[version]:
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        if len(rest) == 2 and method == "GET":
            return self._list("DeviceTaintRule", None, query, group_version)
        if len(rest) == 2 and method == "POST":
            problems = device_taint_rule_problems(body, str(version), self.device_taint_effects)
            if problems:
                name = str(((body or {}).get("metadata") or {}).get("name") or "")
                return 422, status_body(
                    422, "Invalid", f'DeviceTaintRule.resource.k8s.io "{name}" is invalid: ' + "; ".join(problems)
                )
            return self._create("DeviceTaintRule", group_version, "", body, "devicetaintrules.resource.k8s.io")
        key = ("DeviceTaintRule", "", rest[2])
        if key not in self.objects:
            raise KeyError(f'devicetaintrules.resource.k8s.io "{rest[2]}"')
        if method == "GET":
            return 200, self.objects[key]
        if method == "DELETE":
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": rest[2]}}
        return 405, status_body(405, "MethodNotAllowed", method)

    def _sc(self, name: str) -> tuple[str, int | None]:
        if name not in self.storage_classes:
            raise KeyError(f'storageclasses.storage.k8s.io "{name}"')
        return self.storage_classes[name]

    def _nodes(self, method: str, rest: list[str], query: dict[str, str], ctype: str, body: Any) -> tuple[int, Any]:
        if not rest and method == "GET":
            return self._list("Node", None, query)
        name = rest[0]
        if name not in self.nodes:
            raise KeyError(f'nodes "{name}"')
        node = self.nodes[name]
        if method == "GET" and len(rest) == 1:
            return 200, node
        if method == "PATCH":
            if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                return 415, status_body(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
            wanted_rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != node["metadata"]["resourceVersion"]:
                return 409, status_body(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            patch = copy.deepcopy(body)
            patch.get("metadata", {}).pop("resourceVersion", None)
            if len(rest) == 2 and rest[1] == "status":
                patch = {"status": patch.get("status", {}), "metadata": {}}  # /status ignores everything else
                conditions = patch["status"].pop("conditions", None)
                if conditions is not None and ctype == "application/strategic-merge-patch+json":
                    merged = {c["type"]: c for c in node["status"].get("conditions", [])}
                    for cond in conditions:
                        merged[cond["type"]] = merge_patch(merged.get(cond["type"], {}), cond)
                    node["status"]["conditions"] = list(merged.values())
                elif conditions is not None:
                    node["status"]["conditions"] = conditions  # a merge patch replaces the list
            else:
                patch.pop("status", None)  # the main resource ignores status
            updated = merge_patch(node, patch)
            problems = apivalidation.node_problems(updated)
            if problems:
                return invalid("Node", name, problems)
            updated["metadata"]["resourceVersion"] = str(next(self._rv))
            self.nodes[name] = updated
            return 200, updated
        return 405, status_body(405, "MethodNotAllowed", method)

    def bump_node(self, name: str) -> None:
        """Another writer (the kubelet) updated the node: a new resourceVersion and heartbeat."""
        with self.lock:
            node = self.nodes[name]
            node["metadata"]["resourceVersion"] = str(next(self._rv))
            for cond in node["status"]["conditions"]:
                if cond["type"] == "Ready":
                    cond["lastHeartbeatTime"] = "2026-11-29T22:00:10Z"

    def _list(self, kind: str, namespace: str | None, query: dict[str, str], api: str = "v1") -> tuple[int, Any]:
        objects = (
            self.nodes.values()
            if kind == "Node"
            else [o for (k, ns, _), o in self.objects.items() if k == kind and (namespace is None or ns == namespace)]
        )
        refused = bad_selector(query) or bad_fields(kind, query.get("fieldSelector", ""))
        if refused:
            return refused
        items = [
            o
            for o in objects
            if selector_matches(query.get("labelSelector", ""), o["metadata"].get("labels") or {})
            and _fields_match(query.get("fieldSelector", ""), o)
        ]
        return self._page(kind, api, items, query)

    def expire_continue(self, times: int = 1) -> None:
        """The next ``times`` list requests that carry a ``continue`` token answer 410 Expired, as the real
        server does once etcd has compacted past the revision the token was issued at."""
        with self.lock:
            self._expire += times

    def _page(self, kind: str, api: str, items: list[dict[str, Any]], query: dict[str, str]) -> tuple[int, Any]:
        """``limit``/``continue`` as the API server pages a list: items in key order, at most ``limit`` of them,
        and an opaque ``metadata.continue`` while more remain (none when ``limit`` is absent or 0)."""
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            return 400, status_body(400, "BadRequest", f"invalid limit {query['limit']!r}")
        items = sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        token = query.get("continue", "")
        if token:
            if self._expire > 0 or token not in self._continues:
                self._expire = max(0, self._expire - 1)
                return 410, status_body(410, "Expired", EXPIRED_MESSAGE)
            after = ("", "") if self.broken_continue else self._continues[token]
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        meta: dict[str, Any] = {"resourceVersion": "1"}
        if limit > 0 and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            token = "same" if self.broken_continue else f"c{next(self._seq):x}"
            self._continues[token] = (last.get("namespace", ""), last["name"])
            meta["continue"] = token
        self.pages += 1
        return 200, {"kind": f"{kind}List", "apiVersion": api, "metadata": meta, "items": items}

    def _namespaced(
        self, kind: str, api: str, method: str, ns: str, rest: list[str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        plural = {
            "Pod": "pods",
            "Event": "events",
            "PersistentVolumeClaim": "persistentvolumeclaims",
            "Job": "jobs.batch",
        }
        if not rest:
            if method == "GET":
                return self._list(kind, ns, query)
            if method == "POST":
                return self._create(kind, api, ns, body, plural[kind])
        name = rest[0]
        key = (kind, ns, name)
        if key not in self.objects:
            raise KeyError(f'{plural[kind]} "{name}"')
        obj = self.objects[key]
        if len(rest) == 2 and rest[1] == "log" and method == "GET":
            info = pod_from_json(obj)
            refusal = log_refusal(name, info.node, info.phase, info.waiting, query.get("container") or "main")
            if refusal:
                return 400, status_body(400, "BadRequest", refusal)
            return 200, self.logs.get((ns, name), "")
        if method == "GET":
            if kind == "PersistentVolumeClaim":
                self._provision(ns, name, obj)
            return 200, obj
        if method == "DELETE":
            grace = (body or {}).get("gracePeriodSeconds")
            if kind == "Pod" and grace == 0 and obj["spec"].get("nodeName") and not _finished(obj):
                # The server's force deletion: gone from the API without the kubelet's word that it stopped.
                self.force_deleted.append(name)
            del self.objects[key]
            propagation = (body or {}).get("propagationPolicy")
            if kind == "Job" and propagation in ("Background", "Foreground") and not self.gc_paused:
                # The garbage collector's part, done at once unless the test holds it back (pause_gc).
                for pod in self._job_pods(ns, name, obj["metadata"]["uid"]):
                    del self.objects[("Pod", ns, pod["metadata"]["name"])]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        return 405, status_body(405, "MethodNotAllowed", method)

    def _create(self, kind: str, api: str, ns: str, body: Any, plural: str) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("kind") != kind or body.get("apiVersion") != api:
            return 400, status_body(400, "BadRequest", f"expected a {api} {kind}")
        body = copy.deepcopy(body)  # the recorded request stays as it was sent
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") and meta["namespace"] != ns:
            return 400, status_body(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if kind == "Event":
            refusal = event_refusal({**body, "metadata": {**meta, "namespace": ns}})
            if refusal is not None:
                return 422, status_body(422, "Invalid", refusal)
        name = meta.get("name") or apivalidation.generated_name(str(meta.get("generateName") or ""))
        problems = apivalidation.create_problems(kind, {**body, "metadata": {**meta, "name": name}})
        if problems:
            return invalid(kind, name, problems)
        if (kind, ns, name) in self.objects:
            return 409, status_body(409, "AlreadyExists", f'{plural} "{name}" already exists')
        if kind == "Pod" and (refusal := self._admission(ns, body.get("spec") or {})):
            return 403, status_body(403, "Forbidden", f'pods "{name}" is forbidden: {refusal}')
        # A uid of its own each time a name is made again, as the server's.
        uid = f"uid-{name[:40]}-{next(self._seq):05x}"
        meta.update(name=name, namespace=ns, uid=uid, resourceVersion=str(next(self._rv)))
        if not ns:
            del meta["namespace"]  # a cluster-scoped object has none
        meta["creationTimestamp"] = self.now_stamp()
        obj = copy.deepcopy(body)
        if kind == "Job":
            obj["status"] = {"active": 1, "startTime": self.now_stamp()}
            pod_name = f"{name[:57]}-{next(self._seq):05x}"
            message = self._job_pod_refusal(ns, obj["spec"]["template"]["spec"], pod_name)
            if message:  # the Job is admitted, its controller's pod is not (the Job controller keeps trying)
                obj["status"] = {"active": 0, "startTime": STAMP}
                self.objects[(kind, ns, name)] = obj
                self._event(ns, "Job", name, "FailedCreate", message, "Warning")
                return 201, obj
            self._start_job_pod(ns, obj, pod_name)
        elif kind == "PersistentVolumeClaim":
            obj["status"] = {"phase": "Pending"}
        elif kind == "Pod":
            why = self._schedule(obj["spec"])
            obj["status"] = {"phase": "Pending", **({"conditions": [_unschedulable(why)]} if why else {})}
        self.objects[(kind, ns, name)] = obj
        return 201, obj

    def _start_job_pod(self, ns: str, job: dict[str, Any], pod_name: str) -> None:
        """The Job controller's pod of ``job``, admitted: Pending on its node, or unschedulable saying why."""
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        template = job["spec"]["template"]
        spec = copy.deepcopy(template["spec"])
        why = self._schedule(spec)
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": name}
        labels.update({"batch.kubernetes.io/job-name": name, "controller-uid": uid})
        labels["batch.kubernetes.io/controller-uid"] = uid
        pod = self._pod(ns, pod_name, spec, labels, "Pending")
        if why:
            pod["status"]["conditions"] = [_unschedulable(why)]
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": True}
        pod["metadata"]["ownerReferences"] = [{**owner, "blockOwnerDeletion": True}]
        self.objects[("Pod", ns, pod_name)] = pod

    def _schedule(self, spec: dict[str, Any]) -> str:
        """The scheduler's part: bind the pod (``spec.nodeName``) to the node its affinity names, or say why not."""
        wanted = pod_node(spec)
        if not wanted or spec.get("nodeName"):
            return ""
        raw = self.nodes.get(wanted)
        why = unschedulable_reason(node_from_json(raw) if raw else None, spec)
        if not why:
            spec["nodeName"] = wanted
        return why

    def _provision(self, ns: str, name: str, pvc: dict[str, Any]) -> None:
        reads = self.pvc_reads[(ns, name)] = self.pvc_reads.get((ns, name), 0) + 1
        mode, binds_after = self.storage_classes.get(pvc["spec"].get("storageClassName", ""), ("Immediate", None))
        consumed = any(
            (v.get("persistentVolumeClaim") or {}).get("claimName") == name
            for (k, pns, _), o in self.objects.items()
            if k == "Pod" and pns == ns and o["spec"].get("nodeName")  # scheduled: the provisioner acts
            for v in o["spec"].get("volumes") or ()
        )
        if binds_after is not None and reads >= binds_after and (mode != "WaitForFirstConsumer" or consumed):
            pvc["status"] = {"phase": "Bound", "accessModes": pvc["spec"]["accessModes"]}
            pvc["spec"]["volumeName"] = f"pvc-{name}"


def _version_rank(version: str) -> tuple[int, int, int, str]:
    """The order the API server lists a group's versions in (apimachinery's CompareKubeAwareVersionStrings):
    GA before beta before alpha, higher numbers first."""
    found = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if found is None:
        return (3, 0, 0, version)
    return ({None: 0, "beta": 1, "alpha": 2}[found[2]], -int(found[1]), -int(found[3] or 0), version)


def _kind_of(path: str) -> str:
    """The kind a write to ``path`` carries (a Node's patch, on the object or its status, is a Node's)."""
    parts = path.strip("/").split("/")
    collections = {
        "nodes": "Node",
        "pods": "Pod",
        "jobs": "Job",
        "persistentvolumeclaims": "PersistentVolumeClaim",
        "events": "Event",
        "devicetaintrules": "DeviceTaintRule",
    }
    return next(collections[p] for p in reversed(parts) if p in collections)


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _unschedulable(message: str) -> dict[str, str]:
    """The PodScheduled condition the scheduler writes on a pod it cannot place."""
    return {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}


def bad_fields(kind: str, selector: str) -> tuple[int, Any] | None:
    """The 400 of a field selector naming a field the resource cannot be selected by; None when it can."""
    allowed = SELECTABLE_FIELDS.get(kind, frozenset({"metadata.name", "metadata.namespace"}))
    for part in filter(None, selector.split(",")):
        field = part.partition("!=" if "!=" in part else "=")[0].strip()
        if field not in allowed:
            return 400, status_body(400, "BadRequest", f"field label not supported: {field}")
    return None


def _fields_match(selector: str, obj: Mapping[str, Any]) -> bool:
    for part in filter(None, selector.split(",")):
        negate = "!=" in part
        path, _, value = part.partition("!=" if negate else "=")
        current: Any = obj
        for key in path.split("."):
            current = current.get(key) if isinstance(current, dict) else None
        if (str(current or "") == value) == negate:
            return False
    return True


def _handler(api: StandInApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The Date header on the server's clock (Go's net/http sends it on every answer), not this host's.
            return email.utils.format_datetime(results.parse_iso(api.now_stamp()), usegmt=True)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            body = json.loads(raw) if raw else None
            status, answer = api.handle(self.command, url.path, query, ctype, body)
            if isinstance(answer, str):
                data, out_type = answer.encode(), "text/html" if answer.startswith("<html>") else "text/plain"
            else:
                data, out_type = json.dumps(answer).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", out_type)
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                # As API Priority and Fairness answers a request it rejected (apiserver's flowcontrol filter):
                # Retry-After in seconds and the flow schema and priority level that decided it.
                self.send_header("Retry-After", api.retry_after)
                self.send_header("X-Kubernetes-PF-FlowSchema-UID", "fs-uid-service-accounts")
                self.send_header("X-Kubernetes-PF-PriorityLevel-UID", "pl-uid-workload-low")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

    return Handler


@dataclasses.dataclass
class Backend:
    """One implementation of the seam under test and the controls of the cluster behind it."""

    name: str
    client: Any  # ClusterClient
    control: Any  # FakeCluster or StandInApi: add_node, add_pod, fail_next, finish_job, ...
    sleeps: list[float]
    clock: Any = None  # the cluster's clock, when the test gave one: the API server stamps and dates on it

    @property
    def standin(self) -> StandInApi | None:
        return self.control if isinstance(self.control, StandInApi) else None


def make_backend(name: str, clock: Any = None) -> Iterator[Backend]:
    """``fake``: a ``FakeCluster``; ``kube``: ``KubeClusterClient`` over HTTP to a ``StandInApi``."""
    if name == "fake":
        fake = FakeCluster(clock=clock)
        yield Backend("fake", fake, fake, [], clock)
        return
    api = StandInApi(clock)
    sleeps: list[float] = []
    client = KubeClusterClient.for_host(api.url, retry=RetryPolicy(attempts=4, base_s=0.0), sleep=sleeps.append)
    try:
        yield Backend("kube", client, api, sleeps, clock)
    finally:
        client.close()
        api.close()
