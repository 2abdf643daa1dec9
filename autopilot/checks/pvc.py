"""``pvc``: can the cluster provision storage? Create a claim, wait for ``Bound``, always delete it.

The claim is of ``PVC_TEST_STORAGE_CLASS`` (``Settings.pvc_storage_class``), 100Mi, access mode
``Settings.pvc_access_mode`` (upstream hard-coded ReadWriteMany, which most block storage cannot
offer), in ``Settings.pvc_namespace`` (default: ``Settings.namespace``), named
``autopilot-pvc-<node>-<random>`` so that concurrent runs on many nodes never collide and a
leftover from a crashed run is never mistaken for this run's claim.

Judgement (upstream semantics, without its fixed sleeps: we poll until a deadline on the clock):

- ``ok``: Bound within ``Settings.pvc_deadline_s`` (default 120 s); ``data.bound_after_s`` says when.
- ``fail``: not Bound in time, or the claim was ``Lost``: provisioning is broken.
- ``error``: the API refused the claim (quota, RBAC, admission), the storage class does not
  exist, or the claim could not be deleted afterwards (a leak every run is worth an alarm); or a
  ``WaitForFirstConsumer`` claim stayed Pending because the scheduler would not place its consumer
  pod on this node for a reason of the node (cordoned, tainted, full): provisioning was never asked
  for. A scheduler message about the volume itself stays ``fail``.
- ``skipped``: no storage class configured, or not running in a cluster.

``WaitForFirstConsumer`` classes (most CSI block drivers, local volumes) never bind a claim that
no pod uses; upstream therefore always failed on them. We create a short-lived consumer pod pinned
to this node (required affinity on its ``metadata.name``, the configured tolerations, the
Autopilot image running ``autopilot checks``; it asks for no GPU), which also tests that the
class can provision where this node is. Without ``AUTOPILOT_IMAGE`` such a class is ``skipped``
with the reason. The pod and the claim are deleted in ``finally``, whatever happened.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from autopilot import errors, registry
from autopilot.cluster import ClusterClient, pinned_to
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status

NAME = "pvc"
SIZE = "100Mi"
POLL_S = 2.0
TIMEOUT_S = 600.0
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
# A scheduler message about the claim itself (volume binding or provisioning failed): storage is at fault.
_STORAGE_WORDS = re.compile(r"(?i)volume|persistentvolumeclaim|storage|provision")
# Leave the engine's watchdog time to see the deletes through after the wait gives up.
_CLEANUP_MARGIN_S = 30.0
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def claim_name(node: str, suffix: str | None = None) -> str:
    """``autopilot-pvc-<node prefix>-<8 hex>``: a valid DNS-1123 label of at most 63 characters."""
    tail = suffix or uuid.uuid4().hex[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", node.lower())[:40].strip("-") or "node"
    name = f"autopilot-pvc-{stem}-{tail}"
    if not _NAME_RE.match(name):
        raise errors.BadParameter("pvc", f"generated an invalid claim name: {name!r}")
    return name


def claim_manifest(name: str, namespace: str, storage_class: str, access_mode: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "autopilot", "app.kubernetes.io/component": "pvc-check"},
            "annotations": {"autopilot.ibm.com/node": node},
        },
        "spec": {
            "storageClassName": storage_class,
            "accessModes": [access_mode],
            "resources": {"requests": {"storage": SIZE}},
        },
    }


def consumer_pod_manifest(claim: str, namespace: str, node: str, image: str, tolerations: Any) -> dict[str, Any]:
    """A pod on ``node`` that mounts the claim, so that a WaitForFirstConsumer class provisions it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": claim,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "autopilot", "app.kubernetes.io/component": "pvc-check"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "affinity": pinned_to(node),
            "tolerations": [dict(t) for t in tolerations],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "consumer",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["autopilot"],
                    "args": ["checks"],
                    "volumeMounts": [{"name": "claim", "mountPath": "/claim"}],
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


@registry.check(
    NAME,
    description="storage provisioning: create a PVC of PVC_TEST_STORAGE_CLASS, wait for Bound, delete it",
    timeout_s=TIMEOUT_S,
    health="pvc",
    tag="PVC",
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    settings = ctx.settings
    storage_class = settings.pvc_storage_class
    if not storage_class:
        return CheckResult(NAME, Status.SKIPPED, "no storage class configured (PVC_TEST_STORAGE_CLASS)")
    cluster = ctx.cluster
    if cluster is None:
        return CheckResult(NAME, Status.SKIPPED, "not running in a Kubernetes cluster")
    namespace = settings.pvc_namespace or settings.namespace
    data: dict[str, Any] = {"storage_class": storage_class, "namespace": namespace}
    try:
        mode = cluster.storage_class_binding_mode(storage_class)
    except errors.NotFound:
        return CheckResult(NAME, Status.ERROR, f"storage class {storage_class!r} does not exist", data=data)
    except errors.ClusterError as exc:
        return CheckResult(NAME, Status.ERROR, f"cannot read storage class {storage_class!r}: {exc}", data=data)
    data["binding_mode"] = mode
    consumer = mode == WAIT_FOR_FIRST_CONSUMER
    if consumer and not settings.image:
        return CheckResult(
            NAME,
            Status.SKIPPED,
            f"storage class {storage_class!r} binds only for a pod (WaitForFirstConsumer) "
            "and no AUTOPILOT_IMAGE is set for a consumer pod",
            data=data,
        )
    deadline_s = max(1.0, min(settings.pvc_deadline_s, ctx.timeout_for(NAME, TIMEOUT_S) - _CLEANUP_MARGIN_S))
    name = claim_name(ctx.node)
    data.update(claim=name, deadline_s=deadline_s)
    made_pod = False
    refused = "the test claim"
    try:
        try:
            _create_ours(
                lambda: cluster.create_pvc(
                    namespace, claim_manifest(name, namespace, storage_class, settings.pvc_access_mode, ctx.node)
                )
            )
            if consumer:
                # A refusal from here on is the pod's (Pod Security, a quota, an admission webhook), not the claim's.
                refused = "the test claim's consumer pod"
                # Marked before the call: a create that timed out may still have made the pod.
                made_pod = True
                pod = consumer_pod_manifest(name, namespace, ctx.node, settings.image, settings.invasive_tolerations)
                _create_ours(lambda: cluster.create_pod(namespace, pod))
        except errors.ClusterError as exc:
            result = CheckResult(NAME, Status.ERROR, f"the API refused {refused}: {exc}", data=data)
        else:
            result = _wait_bound(ctx, cluster, namespace, name, deadline_s, data)
    finally:
        # Always: even a refused or timed-out create may have left an object behind.
        cleanup = _cleanup(cluster, namespace, name, made_pod)
    data["deleted"] = not cleanup
    if cleanup and result.status is not Status.ERROR:
        return CheckResult(NAME, Status.ERROR, f"{result.summary}; but cleanup failed: {cleanup}", data=data)
    return result


def _create_ours(create: Callable[[], object]) -> None:
    """Create an object whose name only this run uses. A 409 AlreadyExists can then only be our own
    earlier attempt, made by the server although its answer was lost (a 504, a timeout) and retried."""
    try:
        create()
    except errors.Conflict:
        pass


def _wait_bound(
    ctx: CheckContext, cluster: ClusterClient, namespace: str, name: str, deadline_s: float, data: dict[str, Any]
) -> CheckResult:
    start = ctx.clock.monotonic()
    phase = "Pending"
    while True:
        try:
            phase = cluster.pvc_phase(namespace, name)
        except errors.Transient as exc:
            # The API server away longer than the seam's retries: asked again until the deadline, as a claim that
            # bound meanwhile is no storage failure; at the deadline the run is an error naming it.
            waited = ctx.clock.monotonic() - start
            if waited >= deadline_s:
                return CheckResult(NAME, Status.ERROR, f"cannot read the test claim: {exc}", data=data)
            ctx.clock.sleep(min(POLL_S, deadline_s - waited))
            continue
        except errors.ClusterError as exc:
            return CheckResult(NAME, Status.ERROR, f"cannot read the test claim: {exc}", data=data)
        waited = ctx.clock.monotonic() - start
        data.update(phase=phase, waited_s=round(waited, 1))
        if phase == "Bound":
            data["bound_after_s"] = round(waited, 1)
            return CheckResult(
                NAME, Status.OK, f"claim of class {data['storage_class']} bound in {waited:.0f} s", data=data
            )
        if phase == "Lost":
            return CheckResult(NAME, Status.FAIL, "the test claim was Lost (its volume is gone)", data=data)
        if waited >= deadline_s:
            summary = f"claim of class {data['storage_class']} still {phase} after {deadline_s:.0f} s"
            unplaced = (
                _consumer_unplaced(cluster, namespace, name)
                if data.get("binding_mode") == WAIT_FOR_FIRST_CONSUMER
                else ""
            )
            if unplaced and not _STORAGE_WORDS.search(unplaced):
                # The claim waits for a pod the scheduler would not put on this node for reasons of the node
                # (cordoned, tainted, full): provisioning was never asked for, so it is not found broken.
                data["consumer_unschedulable"] = unplaced
                return CheckResult(
                    NAME,
                    Status.ERROR,
                    f"{summary}: its consumer pod could not be scheduled on this node ({unplaced}), "
                    "so provisioning was not tested",
                    data=data,
                )
            if unplaced:
                data["consumer_unschedulable"] = unplaced
                summary = f"{summary}: {unplaced}"
            return CheckResult(NAME, Status.FAIL, summary, data=data)
        ctx.clock.sleep(min(POLL_S, max(deadline_s - waited, 0.0)))


def _consumer_unplaced(cluster: ClusterClient, namespace: str, name: str) -> str:
    """The scheduler's message when it left the consumer pod Pending ('' when it placed it, or it cannot be read)."""
    try:
        return cluster.get_pod(namespace, name).unschedulable
    except errors.ClusterError:
        return ""


def _cleanup(cluster: ClusterClient, namespace: str, name: str, pod: bool) -> str:
    """Delete the claim (and the consumer pod); the problems as text ('' when all is gone)."""
    problems: list[str] = []
    if pod:
        try:
            cluster.delete_pod(namespace, name)
        except errors.ClusterError as exc:
            problems.append(f"pod {namespace}/{name}: {exc}")
    try:
        cluster.delete_pvc(namespace, name)  # False (already gone) is fine
    except errors.ClusterError as exc:
        problems.append(f"claim {namespace}/{name}: {exc}")
    return "; ".join(problems)
