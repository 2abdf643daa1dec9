"""The ``pvc`` check on both cluster backends: bound, never bound, WaitForFirstConsumer, refusals, cleanup."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from autopilot import config, execution
from autopilot.checks import pvc
from autopilot.cluster import PodInfo
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeClock, FakeCluster
from tests.unit.cluster_standin import Backend, make_backend

NS = "autopilot"


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


def run(
    make_ctx: Callable[..., CheckContext], backend: Backend | None, **settings: Any
) -> tuple[CheckResult, FakeClock]:
    clock = FakeClock()
    if backend is not None and "gpu-1" not in backend.control.nodes:
        backend.control.add_node("gpu-1")  # where the scheduler puts the consumer pod
    base = {"node_name": "gpu-1", "pvc_storage_class": "fast", **settings}
    ctx = make_ctx(
        settings=config.Settings(**base), cluster=backend.client if backend else None, clock=clock, node="gpu-1"
    )
    return execution.run_check("pvc", ctx), clock


def leftovers(backend: Backend) -> list[str]:
    if backend.standin is not None:
        return [name for (kind, _, name) in backend.standin.objects if kind in ("PersistentVolumeClaim", "Pod")]
    return [name for (_, name) in backend.control.pvcs] + [p.name for p in backend.control.pods()]


def test_claim_names_are_unique_and_valid() -> None:
    names = {pvc.claim_name("gpu-1.example.com") for _ in range(20)}
    assert len(names) == 20
    assert all(len(n) <= 63 and n.startswith("autopilot-pvc-gpu-1-example-com-") for n in names)


def test_skipped_without_a_storage_class(make_ctx: Callable[..., CheckContext], backend: Backend) -> None:
    result, _ = run(make_ctx, backend, pvc_storage_class="")
    assert result.status is Status.SKIPPED and "PVC_TEST_STORAGE_CLASS" in result.summary


def test_skipped_without_a_cluster(make_ctx: Callable[..., CheckContext]) -> None:
    result, _ = run(make_ctx, None)
    assert result.status is Status.SKIPPED and "cluster" in result.summary


def test_bound_claim_passes_and_is_deleted(make_ctx: Callable[..., CheckContext], backend: Backend) -> None:
    backend.control.add_storage_class("fast", binds_after=3)
    result, clock = run(make_ctx, backend)
    assert result.status is Status.OK, result.summary
    assert result.data["bound_after_s"] == 4.0 and clock.sleeps == [2.0, 2.0]
    assert result.data["deleted"] is True and leftovers(backend) == []


def test_a_claim_that_never_binds_fails_at_the_deadline(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", binds_after=None)
    result, clock = run(make_ctx, backend, pvc_deadline_s=10.0)
    assert result.status is Status.FAIL and "still Pending after 10 s" in result.summary
    assert sum(clock.sleeps) == 10.0
    assert leftovers(backend) == []


def test_wait_for_first_consumer_uses_a_pod_on_this_node(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
    pods_seen: list[str] = []
    original = backend.client.pvc_phase

    def spy(namespace: str, name: str) -> str:
        pods_seen.extend(p.node for p in backend.control.pods(namespace))
        return original(namespace, name)

    backend.client.pvc_phase = spy  # type: ignore[method-assign]
    result, _ = run(make_ctx, backend, image="autopilot:test")
    assert result.status is Status.OK, result.summary
    assert result.data["binding_mode"] == "WaitForFirstConsumer"
    assert pods_seen == ["gpu-1"]
    assert leftovers(backend) == []


def test_the_consumer_pod_is_deleted_gracefully_never_forced(make_ctx: Callable[..., CheckContext]) -> None:
    # before: gracePeriodSeconds 0, which the API server takes as a force deletion: the pod (scheduled, mounting the
    # claim) left the API before the kubelet had unmounted the volume, and pvc-protection let the claim go with it
    for backend in make_backend("kube"):
        api = backend.standin
        assert api is not None
        api.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
        result, _ = run(make_ctx, backend, image="autopilot:test")
        assert result.status is Status.OK, result.summary
        deletes = [r for r in api.requests if r.method == "DELETE" and "/pods/" in r.path]
        assert len(deletes) == 1 and deletes[0].body["gracePeriodSeconds"] > 0
        assert api.force_deleted == [] and leftovers(backend) == []


def test_wait_for_first_consumer_without_an_image_is_skipped(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", "WaitForFirstConsumer")
    result, _ = run(make_ctx, backend)
    assert result.status is Status.SKIPPED and "WaitForFirstConsumer" in result.summary
    assert leftovers(backend) == []


def test_a_missing_storage_class_is_an_error(make_ctx: Callable[..., CheckContext], backend: Backend) -> None:
    result, _ = run(make_ctx, backend)
    assert result.status is Status.ERROR and "does not exist" in result.summary


def test_a_refused_claim_is_an_error(make_ctx: Callable[..., CheckContext], backend: Backend) -> None:
    backend.control.add_storage_class("fast")
    backend.control.fail_next("create_pvc", 403)
    result, _ = run(make_ctx, backend)
    assert result.status is Status.ERROR and "refused" in result.summary
    assert leftovers(backend) == []


def test_the_consumer_pod_meets_a_namespace_enforcing_pod_security_restricted(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
    backend.control.label_namespace(NS, {"pod-security.kubernetes.io/enforce": "restricted"})
    result, _ = run(make_ctx, backend, image="quay.io/autopilot/autopilot:v1")
    assert result.status is Status.OK, result.summary


def test_a_refused_consumer_pod_is_an_error_that_names_the_pod(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    # A 403 on the pod (Pod Security, a quota, a webhook) is the pod's, not the claim's: the claim was made.
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
    backend.control.fail_next("create_pod", 403)
    result, _ = run(make_ctx, backend, image="quay.io/autopilot/autopilot:v1")
    assert result.status is Status.ERROR and "the API refused the test claim's consumer pod: " in result.summary
    assert leftovers(backend) == []


def test_an_api_server_away_longer_than_the_retries_is_waited_out_up_to_the_deadline(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", binds_after=1)
    backend.control.fail_next("pvc_phase", 503, times=4)  # every attempt of one read: Transient
    result, _ = run(make_ctx, backend)
    assert result.status is Status.OK, result.summary
    assert leftovers(backend) == []


def test_an_api_server_away_past_the_deadline_is_an_error(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", binds_after=1)
    backend.control.fail_next("pvc_phase", 503, times=10_000)
    result, _ = run(make_ctx, backend)
    assert result.status is Status.ERROR and "cannot read the test claim" in result.summary


def test_the_consumer_pod_meets_a_quota_on_requests_and_a_quota_it_does_not_meet_is_named(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
    backend.control.set_resource_quota(NS, "compute", ["requests.cpu", "requests.memory", "limits.memory"])
    result, _ = run(make_ctx, backend, image="quay.io/autopilot/autopilot:v1")
    assert result.status is Status.OK, result.summary
    backend.control.set_resource_quota(NS, "cpu-limits", ["limits.cpu"])
    result, _ = run(make_ctx, backend, image="quay.io/autopilot/autopilot:v1")
    assert result.status is Status.ERROR and "consumer pod" in result.summary
    assert "failed quota: cpu-limits: must specify limits.cpu for: consumer" in result.summary
    assert leftovers(backend) == []


def test_a_failed_delete_is_an_error(make_ctx: Callable[..., CheckContext], backend: Backend) -> None:
    backend.control.add_storage_class("fast")
    backend.control.fail_next("delete_pvc", 403)
    result, _ = run(make_ctx, backend)
    assert result.status is Status.ERROR and "cleanup failed" in result.summary
    assert result.data["deleted"] is False


def test_the_claim_asks_for_the_configured_class_and_mode(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast")
    run(make_ctx, backend, pvc_access_mode="ReadWriteMany", pvc_namespace="storage-test")
    if backend.standin is not None:
        [post] = [r for r in backend.standin.requests if r.method == "POST"]
        assert post.path == "/api/v1/namespaces/storage-test/persistentvolumeclaims"
        body = post.body
    else:
        [(_, target, body)] = [w for w in backend.control.writes if w[0] == "create_pvc"]
        assert target.startswith("storage-test/")
    assert body["spec"] == {
        "storageClassName": "fast",
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "100Mi"}},
    }


@pytest.mark.parametrize("op", ["create_pvc", "create_pod"])
def test_a_create_whose_answer_was_lost_is_not_a_refusal(
    make_ctx: Callable[..., CheckContext], backend: Backend, op: str
) -> None:
    # The server made the claim (or pod) but its answer was a 504; the retry meets 409 AlreadyExists for a name
    # only this run uses. Before: "the API refused the test claim", an error every API hiccup.
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
    backend.control.fail_next(op, 504, applied=True)
    result, _ = run(make_ctx, backend, image="quay.io/autopilot/autopilot:v1")
    assert result.status is Status.OK, result.summary
    assert leftovers(backend) == []


def test_a_consumer_pod_the_scheduler_keeps_off_a_cordoned_node_is_an_error_not_a_storage_failure(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    # before: the claim stayed Pending because its consumer pod was never scheduled (the node is cordoned, as
    # remediation or maintenance leaves it), and the check reported the storage class broken
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=1)
    backend.control.add_node("gpu-1")
    backend.client.set_node_unschedulable("gpu-1", True)
    result, _ = run(make_ctx, backend, image="autopilot:test", pvc_deadline_s=10.0)
    assert result.status is Status.ERROR, result.summary
    assert "could not be scheduled" in result.summary and "were unschedulable" in result.summary
    assert leftovers(backend) == []


def test_a_scheduled_consumer_whose_claim_never_binds_is_a_storage_failure(
    make_ctx: Callable[..., CheckContext], backend: Backend
) -> None:
    backend.control.add_storage_class("fast", "WaitForFirstConsumer", binds_after=None)  # the provisioner is broken
    result, _ = run(make_ctx, backend, image="autopilot:test", pvc_deadline_s=10.0)
    assert result.status is Status.FAIL and "still Pending after 10 s" in result.summary
    assert "consumer_unschedulable" not in result.data


def test_a_scheduler_message_about_the_volume_stays_a_storage_failure(make_ctx: Callable[..., CheckContext]) -> None:
    message = "0/1 nodes are available: 1 node(s) did not find available persistent volumes to bind."

    class VolumeBlocked(FakeCluster):
        def get_pod(self, namespace: str, name: str) -> PodInfo:
            return dataclasses.replace(super().get_pod(namespace, name), node="", unschedulable=message)

    cluster = VolumeBlocked()
    cluster.add_storage_class("fast", "WaitForFirstConsumer", binds_after=None)
    result, _ = run(make_ctx, Backend("fake", cluster, cluster, []), image="autopilot:test", pvc_deadline_s=10.0)
    assert result.status is Status.FAIL and result.summary.endswith(message)
