"""The cluster seam's behaviour, run against both implementations.

``kube``: ``KubeClusterClient`` over HTTP to the stand-in API server (tests/unit/cluster_standin.py);
``fake``: ``FakeCluster``. Whatever one does, the other must do too, so the fake stays honest.
What only the HTTP side can show (paths, verbs, content types, patch bodies) is in
test_cluster_kube.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from autopilot import errors
from autopilot.cluster import CONDITION_TYPE, NODE_EVENT_NAMESPACE, NodeCondition, NodeTaint
from tests.unit.cluster_standin import Backend, make_backend

NS = "autopilot"


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


def job_manifest(name: str, node: str, gpus: int = 4) -> dict[str, object]:
    pod = {
        "restartPolicy": "Never",
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                    ]
                }
            }
        },
        "containers": [
            {
                "name": "main",
                "image": "autopilot:test",
                "resources": {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "autopilot"}},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }


def pvc_manifest(name: str, storage_class: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": storage_class,
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "100Mi"}},
        },
    }


# ---------------------------------------------------------------- nodes and labels


def test_nodes_are_listed_by_label_selector_and_read_with_their_gpus(backend: Backend) -> None:
    backend.control.add_node("gpu-1", {"pool": "a100"}, gpus=8)
    backend.control.add_node("gpu-2", {"pool": "h100"}, gpus=4)
    backend.control.add_node("cpu-1", {"pool": "a100"})
    assert sorted(n.name for n in backend.client.list_nodes("pool=a100")) == ["cpu-1", "gpu-1"]
    assert sorted(n.name for n in backend.client.list_nodes()) == ["cpu-1", "gpu-1", "gpu-2"]
    node = backend.client.get_node("gpu-2")
    assert node.allocatable_gpus == 4 and node.labels["pool"] == "h100" and node.uid
    assert backend.client.get_node("cpu-1").allocatable_gpus == 0


def test_a_missing_node_is_not_found(backend: Backend) -> None:
    with pytest.raises(errors.NotFound):
        backend.client.get_node("nowhere")
    with pytest.raises(errors.NotFound):
        backend.client.patch_node_labels("nowhere", {"autopilot.ibm.com/gpuhealth": "PASS"})


def test_label_patch_sets_and_removes_only_the_given_keys(backend: Backend) -> None:
    backend.control.add_node(
        "gpu-1", {"team": "ml", "autopilot.ibm.com/dcgm.level.1": "PASS_x"}, annotations={"a": "b"}
    )
    backend.client.patch_node_labels(
        "gpu-1",
        {"autopilot.ibm.com/gpuhealth": "EVICT", "autopilot.ibm.com/dcgm.level.1": None},
        {"autopilot.ibm.com/dcgm.level.3.output": "pcie.0"},
    )
    node = backend.client.get_node("gpu-1")
    assert node.labels["team"] == "ml" and node.annotations["a"] == "b"
    assert node.labels["autopilot.ibm.com/gpuhealth"] == "EVICT"
    assert "autopilot.ibm.com/dcgm.level.1" not in node.labels
    assert node.annotations["autopilot.ibm.com/dcgm.level.3.output"] == "pcie.0"


@pytest.mark.parametrize("stamp", ["2026-11-29 22:00:00", "2026-11-29T22:00:00", "2026-02-30T00:00:00Z"])
def test_a_time_go_cannot_parse_is_refused_by_the_decoder(backend: Backend, stamp: str) -> None:
    # metav1.Time takes only what time.Parse(RFC3339) reads: the server answers 400 before validation; the fakes
    # took any string
    backend.control.add_node("gpu-1", gpus=8)
    with pytest.raises(errors.ClusterError, match="400.*parsing time"):
        backend.client.set_node_condition("gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "", stamp))
    with pytest.raises(errors.ClusterError, match="400.*parsing time"):
        backend.client.set_node_taint("gpu-1", NodeTaint("example.com/t", "NoExecute", time_added=stamp), True)
    assert backend.client.get_node("gpu-1").condition() is None and backend.client.get_node("gpu-1").taints == ()
    fine = "2026-11-29T22:00:00.5+01:00"
    backend.client.set_node_condition("gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "", fine))
    assert backend.client.set_node_taint("gpu-1", NodeTaint("example.com/t", "NoExecute", time_added=fine), True)


def test_condition_keeps_its_transition_time_while_the_status_holds(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    first = backend.client.set_node_condition(
        "gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "all pass", "2026-01-01T00:00:00Z")
    )
    assert first.last_transition_time == "2026-01-01T00:00:00Z"
    second = backend.client.set_node_condition(
        "gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "still fine", "2026-06-01T00:00:00Z")
    )
    assert second.last_transition_time == "2026-01-01T00:00:00Z"
    third = backend.client.set_node_condition(
        "gpu-1",
        NodeCondition(CONDITION_TYPE, "False", "AutopilotEvict", "dcgm: pcie failed on GPU 3", "2026-07-01T00:00:00Z"),
    )
    assert third.last_transition_time == "2026-07-01T00:00:00Z"
    stored = backend.client.get_node("gpu-1").condition()
    assert stored is not None
    assert (stored.status, stored.reason, stored.message) == ("False", "AutopilotEvict", "dcgm: pcie failed on GPU 3")
    assert stored.last_transition_time == "2026-07-01T00:00:00Z"
    assert [c.type for c in backend.client.get_node("gpu-1").conditions].count(CONDITION_TYPE) == 1


def test_node_events_are_created_about_the_node(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    backend.client.create_node_event(
        "gpu-1", reason="GpuHealthChanged", message="PASS -> EVICT", type_="Warning", namespace=NODE_EVENT_NAMESPACE
    )
    [event] = backend.control.events_for("Node", "gpu-1")
    assert (event.reason, event.message, event.type, event.namespace) == (
        "GpuHealthChanged",
        "PASS -> EVICT",
        "Warning",
        "default",
    )


@pytest.mark.parametrize("namespace", [NS, "kube-system"])
def test_a_node_event_outside_default_is_refused_as_the_api_server_does(backend: Backend, namespace: str) -> None:
    """legacyValidateEvent: an Event about a cluster-scoped object (no involvedObject.namespace) must be in
    ``default``; elsewhere the API server answers 422 Invalid, which no retry changes."""
    backend.control.add_node("gpu-1", gpus=8)
    with pytest.raises(errors.ClusterError) as refused:
        backend.client.create_node_event(
            "gpu-1", reason="GpuHealthChanged", message="PASS -> EVICT", type_="Warning", namespace=namespace
        )
    assert not isinstance(refused.value, errors.NotFound | errors.Conflict | errors.Transient)
    assert "422" in str(refused.value) and "involvedObject.namespace" in str(refused.value)
    assert backend.control.events_for("Node", "gpu-1") == []
    assert backend.sleeps == []  # not retried


# ---------------------------------------------------------------- pods


def test_nodes_running_matching_pods(backend: Backend) -> None:
    backend.control.add_pod("train", "p1", "gpu-1", labels={"job": "llm"})
    backend.control.add_pod("train", "p2", "gpu-2", labels={"job": "llm"})
    backend.control.add_pod("train", "p3", "gpu-3", labels={"job": "other"})
    backend.control.add_pod("train", "p4", "gpu-4", labels={"job": "llm"}, phase="Pending")
    backend.control.add_pod("other", "p5", "gpu-5", labels={"job": "llm"})
    assert backend.client.nodes_running("train", "job=llm") == ["gpu-1", "gpu-2"]
    assert backend.client.nodes_running("train", "job=none") == []


def test_gpu_pods_on_a_node_are_the_unfinished_ones_that_ask_for_gpus(backend: Backend) -> None:
    backend.control.add_pod("a", "running-gpu", "gpu-1", gpus=2)
    backend.control.add_pod("b", "pending-gpu", "gpu-1", gpus=1, phase="Pending")
    backend.control.add_pod("a", "done-gpu", "gpu-1", gpus=8, phase="Succeeded")
    backend.control.add_pod("a", "failed-gpu", "gpu-1", gpus=8, phase="Failed")
    backend.control.add_pod("a", "cpu-only", "gpu-1")
    backend.control.add_pod("a", "elsewhere", "gpu-2", gpus=8)
    found = {(p.namespace, p.name, p.gpus) for p in backend.client.gpu_pods_on_node("gpu-1")}
    assert found == {("a", "running-gpu", 2), ("b", "pending-gpu", 1)}
    assert backend.client.gpu_pods_on_node("gpu-3") == []


# ---------------------------------------------------------------- jobs


def test_job_lifecycle(backend: Backend) -> None:
    client, control = backend.client, backend.control
    control.add_node("gpu-1", gpus=8)
    assert client.create_job(NS, job_manifest("autopilot-dcgm3-gpu-1", "gpu-1")) == "autopilot-dcgm3-gpu-1"
    job = client.get_job(NS, "autopilot-dcgm3-gpu-1")
    assert job.active == 1 and not job.finished
    [pod] = client.job_pods(NS, "autopilot-dcgm3-gpu-1")
    assert (pod.node, pod.gpus, pod.phase) == ("gpu-1", 4, "Pending")
    assert [p.name for p in client.gpu_pods_on_node("gpu-1")] == [pod.name]
    with pytest.raises(errors.Conflict):
        client.create_job(NS, job_manifest("autopilot-dcgm3-gpu-1", "gpu-1"))
    control.finish_job(NS, "autopilot-dcgm3-gpu-1", succeeded=True, log='{"node": "gpu-1", "results": []}\n')
    job = client.get_job(NS, "autopilot-dcgm3-gpu-1")
    assert job.complete and job.finished and job.succeeded == 1
    [pod] = client.job_pods(NS, "autopilot-dcgm3-gpu-1")
    assert pod.phase == "Succeeded" and pod.exit_codes == (0,)
    assert client.pod_log(NS, pod.name, "main") == '{"node": "gpu-1", "results": []}\n'
    assert client.gpu_pods_on_node("gpu-1") == []
    assert client.delete_job(NS, "autopilot-dcgm3-gpu-1") is True
    assert client.delete_job(NS, "autopilot-dcgm3-gpu-1") is False
    with pytest.raises(errors.NotFound):
        client.get_job(NS, "autopilot-dcgm3-gpu-1")
    assert client.job_pods(NS, "autopilot-dcgm3-gpu-1") == []


def test_job_failures_are_visible(backend: Backend) -> None:
    client, control = backend.client, backend.control
    for name in ("j-deadline", "j-refused", "j-rejected", "j-unsched"):
        client.create_job(NS, job_manifest(name, "gpu-1"))
    control.job_past_deadline(NS, "j-deadline")
    assert client.get_job(NS, "j-deadline").failed_reason == "DeadlineExceeded"
    control.refuse_job_pod(NS, "j-refused", 'pods "x" is forbidden: exceeded quota')
    assert client.job_pods(NS, "j-refused") == []
    [event] = client.job_events(NS, "j-refused")
    assert event.reason == "FailedCreate" and "exceeded quota" in event.message
    control.reject_job_pod(NS, "j-rejected", "UnexpectedAdmissionError", "Allocate failed: requested 8, available 4")
    [pod] = client.job_pods(NS, "j-rejected")
    assert (pod.phase, pod.reason) == ("Failed", "UnexpectedAdmissionError") and pod.exit_codes == ()
    control.unschedulable_job_pod(NS, "j-unsched", "0/3 nodes are available: 1 Insufficient nvidia.com/gpu.")
    [pod] = client.job_pods(NS, "j-unsched")
    assert "Insufficient nvidia.com/gpu" in pod.unschedulable


# ---------------------------------------------------------------- volumes


def test_pvc_lifecycle_binds_after_the_provisioner_acts(backend: Backend) -> None:
    backend.control.add_storage_class("fast", binds_after=2)
    assert backend.client.storage_class_binding_mode("fast") == "Immediate"
    assert backend.client.create_pvc("t", pvc_manifest("claim-1", "fast")) == "claim-1"
    with pytest.raises(errors.Conflict):
        backend.client.create_pvc("t", pvc_manifest("claim-1", "fast"))
    assert backend.client.pvc_phase("t", "claim-1") == "Pending"
    assert backend.client.pvc_phase("t", "claim-1") == "Bound"
    assert backend.client.delete_pvc("t", "claim-1") is True
    assert backend.client.delete_pvc("t", "claim-1") is False
    with pytest.raises(errors.NotFound):
        backend.client.pvc_phase("t", "claim-1")


def test_wait_for_first_consumer_binds_only_with_a_pod(backend: Backend) -> None:
    backend.control.add_storage_class("local", "WaitForFirstConsumer", binds_after=1)
    assert backend.client.storage_class_binding_mode("local") == "WaitForFirstConsumer"
    backend.client.create_pvc("t", pvc_manifest("claim-1", "local"))
    assert backend.client.pvc_phase("t", "claim-1") == "Pending"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "consumer"},
        "spec": {
            "nodeName": "gpu-1",
            "containers": [{"name": "c", "image": "autopilot:test"}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "claim-1"}}],
        },
    }
    assert backend.client.create_pod("t", pod) == "consumer"
    assert backend.client.pvc_phase("t", "claim-1") == "Bound"
    assert backend.client.delete_pod("t", "consumer") is True
    assert backend.client.delete_pod("t", "consumer") is False


def test_a_missing_storage_class_is_not_found(backend: Backend) -> None:
    with pytest.raises(errors.NotFound):
        backend.client.storage_class_binding_mode("nope")


# ---------------------------------------------------------------- API errors and retries


def test_server_errors_are_retried_then_succeed(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    backend.control.fail_next("patch_node_labels", 500, times=2)
    backend.client.patch_node_labels("gpu-1", {"autopilot.ibm.com/gpuhealth": "PASS"})
    assert backend.client.get_node("gpu-1").labels["autopilot.ibm.com/gpuhealth"] == "PASS"


def test_too_many_requests_is_retried(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    backend.control.fail_next("list_nodes", 429)
    assert [n.name for n in backend.client.list_nodes()] == ["gpu-1"]


def test_server_errors_past_the_retries_are_transient(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    backend.control.fail_next("patch_node_labels", 500, times=4)
    with pytest.raises(errors.Transient):
        backend.client.patch_node_labels("gpu-1", {"autopilot.ibm.com/gpuhealth": "PASS"})
    assert "autopilot.ibm.com/gpuhealth" not in backend.client.get_node("gpu-1").labels


def test_a_conflicting_condition_write_is_retried(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    backend.control.fail_next("set_node_condition", 409)
    stored = backend.client.set_node_condition("gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "ok"))
    assert backend.client.get_node("gpu-1").condition() == stored


def test_not_found_is_not_retried(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    backend.control.fail_next("get_node", 404)
    with pytest.raises(errors.NotFound):
        backend.client.get_node("gpu-1")
    assert backend.client.get_node("gpu-1").name == "gpu-1"  # the one injected answer was used once


def test_a_create_conflict_is_an_answer_not_a_race(backend: Backend) -> None:
    backend.control.fail_next("create_job", 409)
    with pytest.raises(errors.Conflict):
        backend.client.create_job(NS, job_manifest("j", "gpu-1"))
    with pytest.raises(errors.NotFound):  # not retried: nothing was created
        backend.client.get_job(NS, "j")


def test_forbidden_is_a_cluster_error_and_not_retried(backend: Backend) -> None:
    backend.control.add_storage_class("fast")
    backend.control.fail_next("create_pvc", 403)
    with pytest.raises(errors.ClusterError) as caught:
        backend.client.create_pvc("t", pvc_manifest("c", "fast"))
    assert not isinstance(caught.value, errors.Transient | errors.NotFound | errors.Conflict)
    assert backend.client.create_pvc("t", pvc_manifest("c", "fast")) == "c"
