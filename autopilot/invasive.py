"""The invasive DCGM level-3 run: a Kubernetes Job that takes every GPU of one node.

Functions over the cluster seam, for the worker (which sets ``TESTING`` and stores results) to
call:

- ``gpus_free(cluster, node)``: the node has allocatable GPUs and no unfinished pod requests or
  limits ``nvidia.com/gpu`` (upstream's rule, which also counts pending pods: they hold GPUs
  once admitted).
- ``start(cluster, node, settings)``: busy -> no Job; free -> the Job of ``job_spec``; refused ->
  an outcome carrying an ``error`` result, so the node's verdict moves on.
- ``poll(cluster, job_name, namespace=...)``: running, or a terminal outcome that always carries
  a ``CheckResult`` (the Job's own result read from its pod log, or an ``error`` saying why there
  is none; a failed Job never gives a pass: a log that reads ok then is an ``error`` naming the
  failure). Terminal Jobs are deleted, so a node never stays ``TESTING`` and the next run can start:
  creation refused, pod refused by admission or the scheduler, deadline, a Job deleted underneath us
  (``GONE``) all end in a result.

At most one invasive Job per node, whoever asks: its name is a function of the node
(``job_name``), so a second create is a 409 and means "already running".

Differences from upstream (reference 6.4, 13): pinned with a required node affinity on the
node's ``metadata.name`` (what the DaemonSet controller uses; the scheduler, taints, quotas and
admission apply, unlike ``nodeName``), requests the node's allocatable GPU count instead of 8,
has a deadline, configurable tolerations and image, runs as non-root with no service-account
token (its result goes to stdout, not to the API), and the worker reads its result instead of
the Job labelling the node itself.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from autopilot import apivalidation, errors, names, remediation, results
from autopilot.cluster import (
    FINISHED_PHASES,
    GPU_RESOURCE,
    UNSCHEDULABLE_TAINT,
    ClusterClient,
    JobInfo,
    NodeInfo,
    PodInfo,
    pinned_to,
)
from autopilot.config import Settings
from autopilot.results import CheckResult, Status

log = logging.getLogger(__name__)

LEVEL = 3
JOB_PREFIX = "autopilot-dcgm3-"
CONTAINER = "main"
NODE_ANNOTATION = "autopilot.ibm.com/node"
LABELS = {"app.kubernetes.io/name": "autopilot", "app.kubernetes.io/component": "dcgm-level3"}
COMMAND = ("autopilot", "run", "dcgm", "--param", f"r={LEVEL}", "--json")
# Non-root user of the Autopilot image; DCGM diagnostics talk to the host engine and need no root.
RUN_AS_USER = 1000
# CPU and memory the Job's container asks for. A namespace whose ResourceQuota tracks cpu or memory refuses a pod
# that does not say them (403 "failed quota: ...: must specify ..."); requests alone reserve, never throttle or
# OOM-kill, so the diagnostics keep what they need. The worker process that waits on the Job asks for the same.
JOB_REQUESTS = {"cpu": "100m", "memory": "512Mi"}
# The least ``ttlSecondsAfterFinished`` the Job gets, whatever ``INVASIVE_JOB_TTLSEC`` says. The TTL-after-finished
# controller deletes a finished Job that much later, with its pods (Foreground), and with them the log that holds the
# result; the worker reads it at its next poll (every 10 s) and then deletes the Job itself. Upstream's Job labelled
# the node itself, so a TTL of 0 or 30 s cost it nothing; here a TTL shorter than the worker's polls, or than an API
# outage that makes it skip a few, loses the hour-long run's result (``GONE``). The TTL is only the safety net for a
# worker that is gone.
MIN_JOB_TTL_S = 300
# Kubelet admission rejections and pod states that never recover on their own.
_STUCK_WAITING = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"})
# The kubelet's retries of a container it could not create (``CreateContainerError``: the runtime failed, a name in
# use, a timeout): it may clear, and it may not (a runtime hook that fails every time); the pod stays Pending and
# the Job's deadline would be the only end. Waited for as a refusal that can clear.
_RETRIED_WAITING = frozenset({"CreateContainerError"})
# Reasons of a terminated container that say its program did not end by itself: killed (OOM), lost, or never
# started (``StartError``: the runtime's hook failed, e.g. nvidia-container-cli's ``nvml error: driver/library
# version mismatch``; ``ContainerCannotRun`` from dockershim-era runtimes).
_NOT_ITS_PROGRAM = frozenset({"OOMKilled", "ContainerStatusUnknown", "StartError", "ContainerCannotRun"})
# ResourceQuota's refusal on usage (plugin/pkg/admission/resourcequota: ``exceeded quota: <quota>, requested: <r>,
# used: <u>, limited: <l>``, "Exceeded" before Kubernetes 1.9): it clears as other pods of the namespace end, and
# the Job controller keeps retrying the pod with backoff. Every other refusal (PodSecurity, a quota's ``must
# specify``, a webhook's denial, LimitRange) stays until someone changes the namespace.
# A namespace LimitRange's refusals of the Job's pod. LimitRanger sets a default limit on each resource a container
# leaves without one (the Job sets no cpu or memory limit; a LimitRange without ``default`` defaults to its
# ``max``); when that limit is below the container's request the pod fails validation: 422 ``spec.containers[0]
# .resources.requests: Invalid value: "512Mi": must be less than or equal to memory limit of 256Mi`` (`` of <limit>``
# since Kubernetes 1.2x; before 1.8 ``resources.limits: ...: must be greater than or equal to memory request``). Its
# own min/max checks say ``minimum memory usage per Container is 1Gi, but request is 512Mi``.
_LIMIT_BELOW_REQUEST = re.compile(
    r"resources\.requests: Invalid value: \"[^\"]*\": must be less than or equal to (?P<resource>cpu|memory) limit"
    r"|resources\.limits: Invalid value: \"[^\"]*\": must be greater than or equal to (?P<older>cpu|memory) request"
)
_LIMIT_RANGE_BOUND = re.compile(r"(?:minimum|maximum) (?P<resource>cpu|memory) usage per (?:Container|Pod) is ")
_EXCEEDED_QUOTA = re.compile(
    r"exceeded quota: [^,]*(?:, requested: (?P<requested>.*?), used: .*?, limited: (?P<limited>.*))?$", re.IGNORECASE
)
# The API server's own trouble, not a rule that refuses the pod, clears too: a 500 ``Internal error occurred: ...``
# (a webhook that did not answer under failurePolicy Fail, ``failed calling webhook``; quota evaluation timed out),
# and a 409 on the quota's usage when pods are charged to it at once (``Operation cannot be fulfilled on
# resourcequotas``). A webhook's denial is a 403 ``denied the request`` and stays.
_SERVER_TROUBLE = re.compile(r"Internal error occurred: |Operation cannot be fulfilled on resourcequotas ")


def job_name(node: str) -> str:
    """``autopilot-dcgm3-<node>``; a node name that does not fit a 63-character label is cut and hashed."""
    plain = JOB_PREFIX + node
    if names.is_dns1123_label(plain):
        return plain
    return JOB_PREFIX + names.shortened(node, 63 - len(JOB_PREFIX), label=True)


# ---------------------------------------------------------------- GPU availability


def gpus_free(cluster: ClusterClient, node: str, info: NodeInfo | None = None) -> tuple[bool, str]:
    """(free, why): free when the node has allocatable GPUs and no unfinished pod uses any."""
    info = info or cluster.get_node(node)
    if info.allocatable_gpus <= 0:
        return False, f"node {node} has no allocatable {GPU_RESOURCE}"
    busy = cluster.gpu_pods_on_node(node)
    if busy:
        return False, _busy_reason(busy)
    return True, f"{info.allocatable_gpus} GPUs free"


def _busy_reason(busy: Sequence[PodInfo]) -> str:
    listed = ", ".join(f"{p.namespace}/{p.name} ({p.gpus} GPU, {p.phase})" for p in busy[:5])
    more = f" and {len(busy) - 5} more" if len(busy) > 5 else ""
    return f"GPUs in use by {listed}{more}"


# ---------------------------------------------------------------- the Job


def job_spec(
    node: str,
    gpu_count: int,
    settings: Settings,
    *,
    image: str | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    ttl_s: int | None = None,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs ``autopilot run dcgm --param r=3 --json`` on ``node`` with all its GPUs."""
    if gpu_count <= 0:
        raise errors.BadParameter("gpu_count", f"must be at least 1, got {gpu_count}")
    gpus = str(int(gpu_count))
    name = job_name(node)
    env = [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        # The Job judges with the fatal categories this deployment uses.
        {"name": "AUTOPILOT_DCGM_FATAL_ERRORS", "value": ",".join(settings.dcgm_fatal_errors)},
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "affinity": pinned_to(node),
        "tolerations": [dict(t) for t in (settings.invasive_tolerations if tolerations is None else tolerations)],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": image if image is not None else settings.image,
                "imagePullPolicy": "IfNotPresent",
                "command": [COMMAND[0]],
                "args": list(COMMAND[1:]),
                "env": env,
                "resources": {"requests": {**JOB_REQUESTS, GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": dict(LABELS),
            "annotations": {NODE_ANNOTATION: node},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(settings.invasive_deadline_s if deadline_s is None else deadline_s)),
            "ttlSecondsAfterFinished": max(MIN_JOB_TTL_S, int(settings.invasive_job_ttl_s if ttl_s is None else ttl_s)),
            "template": {
                "metadata": {"labels": dict(LABELS), "annotations": {NODE_ANNOTATION: node}},
                "spec": pod_spec,
            },
        },
    }


# ---------------------------------------------------------------- start


class StartState(enum.StrEnum):
    STARTED = "started"  # the Job was created: the node is TESTING
    ALREADY_RUNNING = "already_running"  # our Job of this node exists: poll it
    BUSY = "busy"  # GPUs in use: no Job, nothing changes
    NO_GPUS = "no_gpus"  # the node has no allocatable GPU: nothing to test
    REFUSED = "refused"  # could not create the Job: ``result`` is the error to store


@dataclasses.dataclass(frozen=True)
class StartOutcome:
    state: StartState
    node: str
    job_name: str
    namespace: str
    reason: str
    result: CheckResult | None = None

    @property
    def testing(self) -> bool:
        """True while the node is held by the Job: the worker keeps ``TESTING`` and polls."""
        return self.state in (StartState.STARTED, StartState.ALREADY_RUNNING)


def start(
    cluster: ClusterClient,
    node: str,
    settings: Settings,
    *,
    before_create: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> StartOutcome:
    """Create the node's level-3 Job if its GPUs are free.

    ``before_create`` runs after the GPUs were found free and before the Job is created: the
    worker sets ``TESTING`` there, so the label is up before the Job can take the GPUs.
    """
    name = job_name(node)
    namespace = settings.namespace

    def outcome(state: StartState, reason: str, *, error: bool = False) -> StartOutcome:
        result = error_result(node, reason, job=name, now=now) if error else None
        return StartOutcome(state, node, name, namespace, reason, result)

    if not settings.image:
        return outcome(StartState.REFUSED, "no image for the invasive Job (set AUTOPILOT_IMAGE)", error=True)
    try:
        info = cluster.get_node(node)
        if info.allocatable_gpus <= 0:
            return outcome(StartState.NO_GPUS, f"node {node} has no allocatable {GPU_RESOURCE}")
        busy = cluster.gpu_pods_on_node(node)
    except errors.ClusterError as exc:
        return outcome(StartState.REFUSED, f"cannot read node {node}: {exc}", error=True)
    ours = [p for p in busy if _job_of(p) == name]
    if ours:
        if _live(cluster, namespace, name, ours):
            return outcome(StartState.ALREADY_RUNNING, f"Job {namespace}/{name} holds the GPUs")
        # The pod of an earlier run, its Job deleted and the pod not yet gone (terminating on a sick node):
        # the GPUs are held, but there is no Job to poll.
        return outcome(StartState.BUSY, f"{_busy_reason(busy)}; its Job {namespace}/{name} is gone")
    if busy:
        return outcome(StartState.BUSY, _busy_reason(busy))
    if before_create is not None:
        before_create()
    manifest = job_spec(node, info.allocatable_gpus, settings, tolerations=tolerations_for(info, settings))
    try:
        cluster.create_job(namespace, manifest)
    except errors.Conflict:
        return outcome(StartState.ALREADY_RUNNING, f"Job {namespace}/{name} exists")
    except errors.Transient as exc:
        # Unanswered is not refused: the server may have made the Job (a 504) while no retry reached it. The run
        # ends here, so a Job it made must not hold the GPUs, unwatched, until its own deadline.
        try:
            cluster.delete_job(namespace, name)
        except errors.ClusterError as gone:
            log.warning("invasive Job %s/%s, if it was made, not deleted: %s", namespace, name, gone)
        return outcome(
            StartState.REFUSED, f"the API did not answer the create of Job {namespace}/{name}: {exc}", error=True
        )
    except errors.ClusterError as exc:
        return outcome(StartState.REFUSED, f"the API refused Job {namespace}/{name}: {exc}", error=True)
    log.info(
        "invasive DCGM level %d on %s: Job %s/%s with %d GPUs", LEVEL, node, namespace, name, info.allocatable_gpus
    )
    return outcome(StartState.STARTED, f"Job {namespace}/{name} created with {info.allocatable_gpus} GPUs")


def tolerations_for(info: NodeInfo, settings: Settings) -> list[dict[str, Any]]:
    """The Job's tolerations on this node: the configured ones, and, while remediation holds the node, its cordon
    (``node.kubernetes.io/unschedulable``, which the scheduler puts on a cordoned node) and its taint.

    The level-3 run is the validation gate's own test: without these the scheduler keeps the Job's pod off the
    node remediation took, the run never passes, and the node is never given back. A node cordoned by someone
    else (no ownership annotation) stays off limits: the run then ends as an admission failure."""
    configured = [dict(t) for t in settings.invasive_tolerations]
    if remediation.OWNER not in info.annotations:
        return configured
    held = [
        {"key": UNSCHEDULABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
        {"key": remediation.TAINT.key, "operator": "Exists", "effect": remediation.TAINT.effect},
    ]
    return configured + [t for t in held if t not in configured]


def _live(cluster: ClusterClient, namespace: str, name: str, pods: Sequence[PodInfo]) -> bool:
    """Whether the Job ``name`` exists and owns one of ``pods`` (an unreadable Job counts as live: poll decides)."""
    try:
        job = cluster.get_job(namespace, name)
    except errors.NotFound:
        return False
    except errors.ClusterError:
        return True
    return any(not p.owner_uid or p.owner_uid == job.uid for p in pods)


def _job_of(pod: PodInfo) -> str:
    return str(pod.labels.get("job-name") or pod.labels.get("batch.kubernetes.io/job-name") or "")


# ---------------------------------------------------------------- poll


class JobState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the Job completed; ``result`` is what it found
    FAILED = "failed"  # the Job failed; ``result`` is its finding (a failing DCGM exits non-zero) or an error
    ADMISSION_FAILED = "admission_failed"  # pod refused: quota/webhook, kubelet admission, unschedulable, no image
    DEADLINE_EXCEEDED = "deadline_exceeded"
    GONE = "gone"  # the Job no longer exists (deleted, TTL) and its result was never read


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    state: JobState
    job_name: str
    node: str
    reason: str
    result: CheckResult | None = None  # set for every state but RUNNING

    @property
    def finished(self) -> bool:
        return self.state is not JobState.RUNNING


def poll(
    cluster: ClusterClient,
    job_name: str,
    *,
    namespace: str,
    node: str = "",
    deadline_s: float | None = None,
    now: datetime | None = None,
    cleanup: bool = True,
    admission_wait_s: float = 0.0,
) -> JobOutcome:
    """Where the Job stands. A terminal outcome carries a result; with ``cleanup`` the Job is then deleted.
    ``Transient`` (the API server away past the seam's retries, also while reading the log) is raised before
    anything is deleted, so the caller can ask again.

    ``deadline_s`` (the Job's ``activeDeadlineSeconds``) lets a Job the controller has not yet
    failed count as past its deadline 60 s after it (a stuck controller must not hold the node).
    ``admission_wait_s``: how long after its creation a Job whose pod admission refuses with a refusal that can
    clear (``refusal_clears``) still counts as running (never past ``deadline_s``); then, or at once for any other
    refusal, it ends ``ADMISSION_FAILED`` naming the last refusal.
    """
    moment = now or datetime.now(UTC)
    try:
        job = cluster.get_job(namespace, job_name)
    except errors.NotFound:
        reason = (
            f"invasive Job {namespace}/{job_name} is gone (deleted, or removed by its TTL) before its result was read"
        )
        return JobOutcome(JobState.GONE, job_name, node, reason, error_result(node, reason, job=job_name, now=now))
    node = job.annotations.get(NODE_ANNOTATION) or node
    pods = cluster.job_pods(namespace, job_name, job.uid)
    outcome = _judge(cluster, job, pods, node, deadline_s, moment, admission_wait_s)
    if outcome.finished and cleanup:
        try:
            cluster.delete_job(namespace, job_name)
        except errors.ClusterError as exc:
            # The TTL removes it later; the outcome stands either way.
            log.warning("invasive Job %s/%s not deleted: %s", namespace, job_name, exc)
    return outcome


def _judge(
    cluster: ClusterClient,
    job: JobInfo,
    pods: list[PodInfo],
    node: str,
    deadline_s: float | None,
    moment: datetime,
    admission_wait_s: float = 0.0,
) -> JobOutcome:
    name, namespace = job.name, job.namespace
    age = job_age_s(job, moment)

    def done(state: JobState, reason: str, result: CheckResult | None = None) -> JobOutcome:
        return JobOutcome(state, name, node, reason, result or error_result(node, reason, job=name, now=moment))

    def failed(state: JobState, what: str, read: tuple[CheckResult | None, str, tuple[int, ...]]) -> JobOutcome:
        """A Job the controller marked failed (its pod exited non-zero, or its deadline passed) gives no pass: a
        finding its log shows (``fail``, or ``warn``, which also makes ``autopilot run`` exit 1) stands; otherwise
        (the log reads ok, or holds no result) an ``error`` naming the failure, with the pod's exit code."""
        found, why, codes = read
        exited = f" (exit code {', '.join(str(c) for c in codes)})" if any(codes) else ""
        exited += pod_fate(pods)
        if found is not None and found.status in (Status.FAIL, Status.WARN):
            return done(state, f"{what}{exited}: {found.status.value}: {found.summary}", found)
        said = f"its log reads {found.status.value}: {found.summary}" if found is not None else why
        return done(state, f"{what}{exited}, and {said}")

    if job.complete:
        found, why, _ = _result_from_pods(cluster, namespace, pods, node)
        if found is None:
            return done(JobState.FAILED, f"Job {name} completed but {why}")
        return done(JobState.SUCCEEDED, f"Job {name} completed: {found.status.value}", found)
    if job.failed_reason == "DeadlineExceeded":
        what = f"Job {name} did not finish before its deadline: {job.message}".strip()
        return failed(JobState.DEADLINE_EXCEEDED, what, _result_from_pods(cluster, namespace, pods, node))
    refused, clears = _admission_failure(cluster, namespace, job, pods)
    if refused:
        bound = admission_wait_s if deadline_s is None else min(admission_wait_s, deadline_s)
        if clears and age is not None and age < bound:
            # The node stays TESTING (and held) while the controller retries: a bounded wait, not until the deadline.
            return JobOutcome(JobState.RUNNING, name, node, f"Job {name} waiting for its pod ({age:.0f} s): {refused}")
        if clears and age is not None and bound > 0:
            refused += f" (still refused {age:.0f} s after the Job was made; the wait is {bound:g} s)"
        return done(JobState.ADMISSION_FAILED, f"the pod of Job {name} could not run: {refused}")
    if job.suspended and not any(p.phase in ("Running", "Succeeded", "Failed") for p in pods):
        # Suspended (by a queueing controller such as Kueue) the Job has no pod, and its activeDeadlineSeconds does
        # not run: it would hold the node TESTING until our own deadline. Waited for as a refusal that can clear.
        why = (
            f"Job {name} is suspended (spec.suspend: a queueing controller such as Kueue holds it until it admits"
            f" it; exempt namespace {namespace} from it, or give the Job a queue)"
        )
        bound = admission_wait_s if deadline_s is None else min(admission_wait_s, deadline_s)
        if age is not None and age < bound:
            return JobOutcome(JobState.RUNNING, name, node, f"{why}, {age:.0f} s")
        if age is not None and bound > 0:
            why += f" still {age:.0f} s after the Job was made; the wait is {bound:g} s"
        return done(JobState.ADMISSION_FAILED, why)
    if job.failed_reason:
        detail = f"{job.failed_reason}: {job.message}" if job.message else job.failed_reason
        return failed(
            JobState.FAILED, f"Job {name} failed ({detail})", _result_from_pods(cluster, namespace, pods, node)
        )
    if deadline_s is not None and age is not None:
        if age > deadline_s + 60:
            return done(JobState.DEADLINE_EXCEEDED, f"Job {name} still not finished {age:.0f} s after creation")
    return JobOutcome(JobState.RUNNING, name, node, f"Job {name} running ({len(pods)} pod(s))")


def job_age_s(job: JobInfo, moment: datetime) -> float | None:
    """Seconds since the Job was made, on the API server's clock: ``creationTimestamp`` is the server's stamp, and
    ``server_time`` (the ``Date`` of the answer that read the Job) its clock at the read. A worker whose clock runs
    10 min ahead would otherwise call a Job past its deadline (or past the admission wait) 10 min early, and one
    behind hold the node that much longer. ``moment`` (the worker's clock) only where the server said no time."""
    if not job.created_at:
        return None
    try:
        created = results.parse_iso(job.created_at)
        reference = results.parse_iso(job.server_time) if job.server_time else moment
    except ValueError:
        return None
    return (reference - created).total_seconds()


def pod_fate(pods: Sequence[PodInfo]) -> str:
    """What ended the Job's pod when it was not its own program: its DisruptionTarget condition (preempted,
    evicted), its ``Evicted`` reason, a container ``OOMKilled``; '' otherwise. A run the cluster cut short is an
    ``error`` either way (its log holds no result); this says it was the cluster, not the GPUs."""
    ran = [p for p in pods if p.phase in ("Succeeded", "Failed")] or list(pods)
    if not ran:
        return ""
    pod = ran[-1]
    words = []
    if pod.disruption:
        words.append(f"disrupted ({pod.disruption})")
    if pod.reason and pod.reason not in pod.disruption:
        words.append(f"{pod.reason}: {pod.message}".strip(": "))
    killed = sorted({t for t in pod.terminated if t.partition(":")[0] in _NOT_ITS_PROGRAM})
    if killed:
        words.append(f"container {'; '.join(killed)}")
    return f" (its pod {pod.name}: {'; '.join(words)})" if words else ""


def _admission_failure(cluster: ClusterClient, namespace: str, job: JobInfo, pods: list[PodInfo]) -> tuple[str, bool]:
    """Why the Job's pod cannot run ('' while nothing says so), and whether that can clear by itself."""
    for pod in pods:
        if pod.phase == "Failed" and pod.reason and not pod.exit_codes:
            return f"{pod.reason}: {pod.message}".rstrip(": "), False
        if pod.unschedulable:
            return f"unschedulable: {pod.unschedulable}", False
        stuck = [w for w in pod.waiting if w in _STUCK_WAITING]
        if stuck:
            return f"{stuck[0]} ({pod.name})", False
        retried = [w for w in pod.waiting if w in _RETRIED_WAITING]
        if retried:
            return f"{retried[0]} ({pod.name}: the container runtime could not create its container)", True
    if not pods:
        refused = [e for e in cluster.job_events(namespace, job.name, job.uid) if e.reason == "FailedCreate"]
        if refused:
            message = refused[-1].message
            hint = limit_range_hint(message, namespace)
            return f"FailedCreate: {message}" + (f"; {hint}" if hint else ""), refusal_clears(message)
    return "", False


def limit_range_hint(message: str, namespace: str) -> str:
    """What to change when a namespace LimitRange refused the Job's pod (``message``, its FailedCreate); '' for
    any other refusal. The Job sets requests only (``JOB_REQUESTS``): the limit that refused it is LimitRange's."""
    below = _LIMIT_BELOW_REQUEST.search(message)
    if below is not None:
        resource = below["resource"] or below["older"]
        need = JOB_REQUESTS[resource]
        what = f"gives its container a default {resource} limit below its {resource} request ({need})"
        fix = f"set the LimitRange's Container default {resource} limit (and max) to at least {need}"
    else:
        bound = _LIMIT_RANGE_BOUND.search(message)
        if bound is None:
            return ""
        resource = bound["resource"]
        need = JOB_REQUESTS[resource]
        what = f"bounds the {resource} of its container, which requests {need} and sets no {resource} limit"
        fix = f"let its Container min/max {resource} admit {need} (default limit at least {need})"
    return (
        f"a LimitRange in namespace {namespace} {what}: {fix}, or run Autopilot in a namespace without it "
        "(the Job sets no CPU or memory limit on purpose)"
    )


def refusal_clears(message: str) -> bool:
    """Whether a ``FailedCreate`` refusal can clear by itself: a ResourceQuota's usage (``exceeded quota``), unless
    the pod alone asks for more than the quota's limit of some resource, which no other pod's end frees; the API
    server's own trouble (``_SERVER_TROUBLE``: a webhook that did not answer, a quota update conflict)."""
    if _SERVER_TROUBLE.search(message):
        return True
    found = _EXCEEDED_QUOTA.search(message.strip())
    if found is None:
        return False
    requested, limited = _resource_list(found.group("requested")), _resource_list(found.group("limited"))
    for resource, asked in requested.items():
        want, cap = apivalidation.quantity(asked), apivalidation.quantity(limited.get(resource))
        if want is not None and cap is not None and want > cap:
            return False
    return True


def _resource_list(text: str | None) -> dict[str, str]:
    """``requests.nvidia.com/gpu=8,requests.memory=512Mi`` (the quota plugin's prettyPrint) as a mapping."""
    pairs = (part.partition("=") for part in (text or "").split(","))
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}


def _result_from_pods(
    cluster: ClusterClient, namespace: str, pods: list[PodInfo], node: str
) -> tuple[CheckResult | None, str, tuple[int, ...]]:
    """(the result in the log of the Job's pod or None, why there is none, the pod's exit codes)."""
    ran = [p for p in pods if p.phase in ("Succeeded", "Failed")] or pods
    if not ran:
        return None, "its pod is gone", ()
    pod = ran[-1]
    try:
        text = cluster.pod_log(namespace, pod.name, CONTAINER)
    except errors.Transient as exc:
        if pod.phase in FINISHED_PHASES:
            raise  # the API server away: the caller asks again, before the Job and its result are deleted
        # The Job is over (a failed Job's pod is read as it is) but its pod never ended as far as the API knows: its
        # node is lost, and the API server's 500 ("Get https://<node>:10250/containerLogs/...: dial tcp ...: i/o
        # timeout") comes at every poll. Asked again, it held the node TESTING until the Job's deadline.
        return None, f"its log could not be read: {exc} (its pod {pod.name} is still {pod.phase}: lost node?)", ()
    except errors.ClusterError as exc:
        return None, f"its log could not be read: {exc}", pod.exit_codes
    found = parse_result_log(text, node)
    return found, "" if found is not None else "its log holds no DCGM result JSON", pod.exit_codes


# ---------------------------------------------------------------- results


def parse_result_log(text: str, node: str = "") -> CheckResult | None:
    """The ``dcgm`` result in the log of ``autopilot run dcgm --json`` (stderr lines may surround it)."""
    decoder = json.JSONDecoder()
    found: CheckResult | None = None
    for match in re.finditer(r"(?m)^\{", text):
        try:
            doc, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        candidates = doc.get("results") if isinstance(doc, dict) and "results" in doc else [doc]
        for raw in candidates if isinstance(candidates, list) else ():
            if isinstance(raw, dict) and raw.get("check") == "dcgm":
                try:
                    found = CheckResult.from_dict(raw)
                except (KeyError, ValueError):
                    continue
    if found is None:
        return None
    params = {**found.params, "r": int(found.params.get("r") or LEVEL)}
    return dataclasses.replace(found, node=found.node or node, params=params)


def error_result(node: str, reason: str, *, job: str = "", now: datetime | None = None) -> CheckResult:
    """The ``dcgm`` level-3 ``error`` stored when the invasive run could not produce a result."""
    return CheckResult(
        "dcgm",
        Status.ERROR,
        reason,
        node=node,
        params={"r": LEVEL},
        data={"invasive": True, "job": job, "level": LEVEL},
        started_at=results.utc_now_iso(now),
    )
