"""What ``KubeClusterClient`` sends over HTTP: paths, verbs, content types, patch bodies, retries.

Against the stand-in API server of tests/unit/cluster_standin.py, which records every request.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest

from autopilot import errors
from autopilot.cluster import CONDITION_TYPE, KubeClusterClient, NodeCondition, RetryPolicy
from tests.unit.cluster_standin import Backend, StandInApi, make_backend

OURS = "autopilot.ibm.com/gpuhealth"
# The server-side deadline every request but a log carries, and what a list adds: its page size and
# the list's own timeoutSeconds.
TIMEOUT = {"timeout": "10s"}
LIST_QUERY = {**TIMEOUT, "limit": "500", "timeoutSeconds": "10"}


@pytest.fixture
def kube() -> Iterator[Backend]:
    yield from make_backend("kube")


def api(b: Backend) -> StandInApi:
    assert b.standin is not None
    return b.standin


def test_label_patch_is_a_merge_patch_with_only_our_keys(kube: Backend) -> None:
    api(kube).add_node("gpu-1", {"team": "ml"})
    kube.client.patch_node_labels("gpu-1", {OURS: "WARN", "autopilot.ibm.com/dcgm.level.1": None}, {"x/y": "z"})
    [req] = api(kube).writes()
    assert (req.method, req.path, req.content_type) == ("PATCH", "/api/v1/nodes/gpu-1", "application/merge-patch+json")
    assert req.body == {
        "metadata": {"labels": {OURS: "WARN", "autopilot.ibm.com/dcgm.level.1": None}, "annotations": {"x/y": "z"}}
    }
    assert api(kube).nodes["gpu-1"]["metadata"]["labels"]["team"] == "ml"


def test_an_empty_label_patch_sends_nothing(kube: Backend) -> None:
    api(kube).add_node("gpu-1")
    kube.client.patch_node_labels("gpu-1", {}, {})
    assert api(kube).requests == []


def test_condition_is_a_strategic_merge_patch_on_status(kube: Backend) -> None:
    api(kube).add_node("gpu-1")
    kube.client.set_node_condition(
        "gpu-1", NodeCondition(CONDITION_TYPE, "False", "AutopilotWarn", "gpumem: GPU 1 slow")
    )
    get, patch = api(kube).requests
    assert (get.method, get.path) == ("GET", "/api/v1/nodes/gpu-1")
    assert (patch.method, patch.path) == ("PATCH", "/api/v1/nodes/gpu-1/status")
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert set(patch.body) == {"metadata", "status"}
    assert set(patch.body["metadata"]) == {"resourceVersion"}
    [cond] = patch.body["status"]["conditions"]
    assert cond["type"] == CONDITION_TYPE and cond["status"] == "False" and cond["lastTransitionTime"]
    types = [c["type"] for c in api(kube).nodes["gpu-1"]["status"]["conditions"]]
    assert types == ["Ready", CONDITION_TYPE]  # the kubelet's condition is untouched


def test_condition_write_rereads_after_a_concurrent_node_update(kube: Backend) -> None:
    standin = api(kube)
    standin.add_node("gpu-1")
    bumped: list[str] = []

    def kubelet(method: str, path: str) -> None:
        # The kubelet's heartbeat lands between our read and our patch, once.
        if method == "PATCH" and path.endswith("/status") and not bumped:
            bumped.append(path)
            standin.bump_node("gpu-1")

    standin.hooks.append(kubelet)
    kube.client.set_node_condition("gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "ok"))
    verbs = [(r.method, r.path.rsplit("/", 1)[-1]) for r in standin.requests]
    assert verbs == [("GET", "gpu-1"), ("PATCH", "status"), ("GET", "gpu-1"), ("PATCH", "status")]
    conditions = {c["type"]: c for c in standin.nodes["gpu-1"]["status"]["conditions"]}
    assert conditions["Ready"]["lastHeartbeatTime"] == "2026-11-29T22:00:10Z"
    assert conditions[CONDITION_TYPE]["status"] == "True"


def test_a_node_that_changes_under_every_write_ends_in_conflict_not_a_loop(kube: Backend) -> None:
    standin = api(kube)
    standin.add_node("gpu-1")

    def busy_kubelet(method: str, path: str) -> None:
        if method == "PATCH" and path.endswith("/status"):
            standin.bump_node("gpu-1")  # every write of ours meets a newer resourceVersion

    standin.hooks.append(busy_kubelet)
    with pytest.raises(errors.Conflict):
        kube.client.set_node_condition("gpu-1", NodeCondition(CONDITION_TYPE, "True", "AutopilotPass", "ok"))
    verbs = [(r.method, r.path.rsplit("/", 1)[-1]) for r in standin.requests]
    assert verbs == [("GET", "gpu-1"), ("PATCH", "status")] * 4  # a fresh read before each of the 4 attempts
    assert CONDITION_TYPE not in {c["type"] for c in standin.nodes["gpu-1"]["status"]["conditions"]}


def test_event_names_the_node_it_is_about(kube: Backend) -> None:
    api(kube).add_node("gpu-1")
    kube.client.create_node_event(
        "gpu-1", reason="GpuHealthChanged", message="PASS -> WARN", type_="Warning", namespace="default"
    )
    post = api(kube).writes()[0]
    assert (post.method, post.path) == ("POST", "/api/v1/namespaces/default/events")
    assert post.body["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "gpu-1", "uid": "uid-gpu-1"}
    assert set(post.body["metadata"]) == {"name", "namespace"} and post.body["metadata"]["namespace"] == "default"
    assert re.fullmatch(r"gpu-1\.[0-9a-f]{16,}", post.body["metadata"]["name"])
    assert post.body["type"] == "Warning" and post.body["source"]["component"] == "autopilot"


def test_gpu_pods_query_every_namespace_by_node_and_phase(kube: Backend) -> None:
    kube.client.gpu_pods_on_node("gpu-1")
    [req] = api(kube).requests
    assert req.path == "/api/v1/pods"
    assert req.query == {
        "fieldSelector": "spec.nodeName=gpu-1,status.phase!=Succeeded,status.phase!=Failed",
        **LIST_QUERY,
    }


def test_job_calls(kube: Backend) -> None:
    manifest: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "nodeName": "gpu-1", "containers": [{"name": "main", "image": "i"}]}
            }
        },
    }
    kube.client.create_job("ap", manifest)
    kube.client.get_job("ap", "j")
    pod = kube.client.job_pods("ap", "j")[0].name
    kube.control.finish_job("ap", "j", succeeded=True, log="done")  # a pod not yet started has no log (400)
    kube.client.pod_log("ap", pod, "main")
    kube.client.job_events("ap", "j")
    kube.client.delete_job("ap", "j")
    seen = [(r.method, r.path, r.query) for r in api(kube).requests]
    events = {"fieldSelector": "involvedObject.kind=Job,involvedObject.name=j", **LIST_QUERY}
    assert seen == [
        ("POST", "/apis/batch/v1/namespaces/ap/jobs", {**TIMEOUT, "fieldValidation": "Strict"}),
        ("GET", "/apis/batch/v1/namespaces/ap/jobs/j", TIMEOUT),
        ("GET", "/api/v1/namespaces/ap/pods", {"labelSelector": "job-name=j", **LIST_QUERY}),
        ("GET", f"/api/v1/namespaces/ap/pods/{pod}/log", {"limitBytes": "1048576", "container": "main"}),
        ("GET", "/api/v1/namespaces/ap/events", events),
        ("DELETE", "/apis/batch/v1/namespaces/ap/jobs/j", TIMEOUT),
    ]
    assert api(kube).requests[-1].body["propagationPolicy"] == "Background"


def test_retries_back_off_and_count(kube: Backend) -> None:
    api(kube).add_node("gpu-1")
    api(kube).fail_next("patch_node_labels", 503, times=2)
    kube.client.patch_node_labels("gpu-1", {OURS: "PASS"})
    assert [r.method for r in api(kube).requests] == ["PATCH", "PATCH", "PATCH"]
    assert len(kube.sleeps) == 2


def test_429_honours_retry_after(kube: Backend) -> None:
    api(kube).fail_next("list_nodes", 429)
    kube.client.list_nodes()
    assert kube.sleeps == [1.0]  # APF's Retry-After: 1


def test_a_long_retry_after_is_honoured_up_to_a_bound_and_the_retries_end(kube: Backend) -> None:
    api(kube).retry_after = "120"
    api(kube).fail_next("create_node_event", 429, times=10)
    api(kube).add_node("gpu-1")
    with pytest.raises(errors.Transient, match="429"):
        kube.client.create_node_event("gpu-1", reason="R", message="m", type_="Normal", namespace="default")
    policy = kube.client.retry
    assert kube.sleeps == [policy.max_s] * (policy.attempts - 1)
    assert len([r for r in api(kube).requests if r.method == "POST"]) == policy.attempts


def test_a_create_conflict_is_sent_once(kube: Backend) -> None:
    api(kube).fail_next("create_job", 409)
    with pytest.raises(errors.Conflict):
        kube.client.create_job("ap", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}})
    assert len(api(kube).requests) == 1


def test_connection_refused_is_transient_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    client = KubeClusterClient.for_host(
        f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=3, base_s=0.0), sleep=sleeps.append
    )
    try:
        with pytest.raises(errors.Transient):
            client.list_nodes()
    finally:
        client.close()
    assert len(sleeps) == 2


def test_every_call_has_a_request_timeout(kube: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    api(kube).add_node("gpu-1")
    api(kube).add_storage_class("fast")
    inner = kube.client._api
    timeouts: list[object] = []
    original = inner.call_api

    def spy(*args: Any, **kwargs: Any) -> Any:
        timeouts.append(kwargs.get("_request_timeout"))
        return original(*args, **kwargs)

    monkeypatch.setattr(inner, "call_api", spy)
    kube.client.get_node("gpu-1")
    kube.client.storage_class_binding_mode("fast")
    kube.client.gpu_pods_on_node("gpu-1")
    assert timeouts == [kube.client.timeout_s] * 3


def test_names_cannot_add_path_elements(kube: Backend) -> None:
    with pytest.raises(errors.BadParameter):
        kube.client.get_node("../namespaces")
    assert api(kube).requests == []


def _event(namespace: str, involved: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "x.", "namespace": namespace},
        "involvedObject": involved,
        "reason": "Test",
        "message": "m",
        **extra,
    }


@pytest.mark.parametrize(
    ("namespace", "involved", "extra", "accepted"),
    [
        ("default", {"kind": "Node", "name": "gpu-1"}, {}, True),
        ("autopilot", {"kind": "Node", "name": "gpu-1"}, {}, False),
        ("train", {"kind": "Pod", "name": "p", "namespace": "train"}, {}, True),
        ("autopilot", {"kind": "Pod", "name": "p", "namespace": "train"}, {}, False),
        # a new-style Event (eventTime) about a Node may also be in kube-system, and needs its reporting fields
        ("kube-system", {"kind": "Node", "name": "gpu-1"}, {"eventTime": "2026-11-29T22:00:00.000000Z"}, False),
        (
            "kube-system",
            {"kind": "Node", "name": "gpu-1"},
            {
                "eventTime": "2026-11-29T22:00:00.000000Z",
                "reportingComponent": "autopilot.ibm.com/autopilot",  # core/v1 JSON name of reportingController
                "reportingInstance": "gpu-1",
                "action": "Check",
            },
            True,
        ),
    ],
)
def test_the_standin_validates_events_as_legacy_validate_event_does(
    kube: Backend, namespace: str, involved: dict[str, str], extra: dict[str, Any], accepted: bool
) -> None:
    status, body = api(kube).handle(
        "POST", f"/api/v1/namespaces/{namespace}/events", {}, "application/json", _event(namespace, involved, **extra)
    )
    assert (status == 201) is accepted
    if not accepted:
        assert status == 422 and body["reason"] == "Invalid"


def test_the_standin_refuses_a_body_namespace_that_is_not_the_paths(kube: Backend) -> None:
    status, body = api(kube).handle(
        "POST", "/api/v1/namespaces/default/events", {}, "application/json", _event("autopilot", {"kind": "Node"})
    )
    assert status == 400 and "does not match the namespace" in body["message"]


def test_an_invalid_answer_is_reported_with_its_causes_and_not_retried(kube: Backend) -> None:
    # before: only the Status message ("injected 422") reached the error; the invalid field was lost
    api(kube).add_node("gpu-1")
    api(kube).fail_next("patch_node_labels", 422)
    with pytest.raises(errors.ClusterError) as caught:
        kube.client.patch_node_labels("gpu-1", {OURS: "PASS"})
    assert "spec.injected: Invalid value: injected" in str(caught.value) and "422" in str(caught.value)
    assert [r.method for r in api(kube).requests] == ["PATCH"] and kube.sleeps == []


@pytest.mark.parametrize(("status", "kind"), [(502, errors.Transient), (403, errors.ClusterError)])
def test_a_proxys_html_page_is_reported_in_a_line_not_as_bytes(
    kube: Backend, status: int, kind: type[errors.ClusterError]
) -> None:
    # before: the error carried the raw body, "b'<html>\\r\\n<head><title>..."
    api(kube).add_node("gpu-1")
    api(kube).fail_next("get_node", status, times=4)
    api(kube).html_faults = 4
    with pytest.raises(kind) as caught:
        kube.client.get_node("gpu-1")
    message = str(caught.value)
    assert f"{status} not a Kubernetes Status" in message and f"{status} {HTTPStatus(status).phrase}" in message
    assert "<" not in message and "b'" not in message


# ---------------------------------------------------------------- lists at scale


def _fill(kube: Backend, count: int) -> None:
    """``count`` GPU nodes, each with a running GPU pod of Job ``j``, a Job event and a DeviceTaintRule."""
    standin = api(kube)
    standin.serve_device_taints("v1beta2")
    for i in range(count):
        standin.add_node(f"gpu-{i}", {"pool": "a"}, gpus=8)
        standin.add_pod("ap", f"p-{i}", "gpu-0", gpus=1, labels={"job-name": "j", "app": "w"})
        standin._event("ap", "Job", "j", "FailedCreate", f"quota {i}", "Warning")
        standin.objects[("DeviceTaintRule", "", f"r-{i}")] = {
            "apiVersion": "resource.k8s.io/v1beta2",
            "kind": "DeviceTaintRule",
            "metadata": {"name": f"r-{i}", "labels": {"app.kubernetes.io/managed-by": "autopilot"}},
            "spec": {"deviceSelector": {"device": f"gpu-{i}"}, "taint": {"key": "k", "effect": "None"}},
        }


LISTS = {
    "list_nodes": lambda c: [n.name for n in c.list_nodes("pool=a")],
    "nodes_running": lambda c: c.nodes_running("ap", "app=w"),
    "gpu_pods_on_node": lambda c: [p.name for p in c.gpu_pods_on_node("gpu-0")],
    "job_pods": lambda c: [p.name for p in c.job_pods("ap", "j")],
    "job_events": lambda c: [e.message for e in c.job_events("ap", "j")],
    "list_device_taint_rules": lambda c: [r.name for r in c.list_device_taint_rules("app.kubernetes.io/managed-by")],
}


@pytest.mark.parametrize("call", sorted(LISTS))
def test_every_list_is_read_page_by_page_to_its_end(kube: Backend, call: str) -> None:
    # before: one unbounded GET per list, no limit: a 5,000-node NodeList in one answer
    _fill(kube, 5)
    kube.client.page_size = 2
    found = LISTS[call](kube.client)
    expected = 1 if call == "nodes_running" else 5  # every pod runs on gpu-0
    assert len(found) == len(set(found)) == expected
    pages = [r for r in api(kube).requests if r.method == "GET" and "limit" in r.query]
    assert all(r.query["limit"] == "2" and r.query["timeoutSeconds"] == "10" for r in pages)
    assert len(pages) == 3 and "continue" not in pages[0].query and all("continue" in r.query for r in pages[1:])


def test_a_list_of_thousands_comes_in_pages_of_500(kube: Backend) -> None:
    for i in range(1201):
        api(kube).add_node(f"gpu-{i:04d}")
    names = [n.name for n in kube.client.list_nodes()]
    assert len(names) == len(set(names)) == 1201
    assert api(kube).pages == 3


def test_an_expired_continue_token_restarts_the_list(kube: Backend) -> None:
    _fill(kube, 5)
    kube.client.page_size = 2
    api(kube).expire_continue(1)
    names = [n.name for n in kube.client.list_nodes()]
    assert sorted(names) == [f"gpu-{i}" for i in range(5)]
    tokens = [r.query.get("continue", "") for r in api(kube).requests]
    # page 1, page 2 answered 410 Expired, then from page 1 again to the end; no backoff sleep, no duplicates
    assert len(tokens) == 5 and tokens[0] == tokens[2] == "" and all(tokens[3:]) and kube.sleeps == []


def test_a_list_that_keeps_expiring_ends_in_transient_not_a_loop(kube: Backend) -> None:
    _fill(kube, 5)
    kube.client.page_size = 2
    api(kube).expire_continue(1000)
    with pytest.raises(errors.Transient, match="expired 4 times"):
        kube.client.list_nodes()
    assert len(api(kube).requests) == 8  # (first page + expired second page) x (1 + 3 restarts)


def test_a_server_that_repeats_its_continue_token_is_an_error_not_a_loop(kube: Backend) -> None:
    _fill(kube, 5)
    kube.client.page_size = 2
    api(kube).broken_continue = True
    with pytest.raises(errors.ClusterError, match="repeated a continue token"):
        kube.client.list_nodes()
    assert len(api(kube).requests) == 2


def test_the_standin_refuses_a_field_selector_on_a_field_the_resource_cannot_select(kube: Backend) -> None:
    status, body = api(kube).handle("GET", "/api/v1/pods", {"fieldSelector": "spec.nodeNames=x"}, "", None)
    assert status == 400 and body["message"] == "field label not supported: spec.nodeNames"
    status, _ = api(kube).handle(
        "GET", "/api/v1/namespaces/a/events", {"fieldSelector": "involvedObject.name=j"}, "", None
    )
    assert status == 200


def test_the_standin_refuses_a_timeout_go_cannot_parse(kube: Backend) -> None:
    status, body = api(kube).handle("GET", "/api/v1/nodes", {"timeout": "10"}, "", None)
    assert status == 400 and "invalid timeout" in body["message"]


def test_every_write_asks_for_strict_field_validation(kube: Backend) -> None:
    # before: no fieldValidation, so the server's default (Warn) dropped an unknown field with only a warning
    api(kube).add_node("gpu-1", gpus=8)
    kube.client.patch_node_labels("gpu-1", {OURS: "EVICT"})
    kube.client.set_node_condition("gpu-1", NodeCondition(CONDITION_TYPE, "False", "AutopilotEvict", "x"))
    kube.client.set_node_unschedulable("gpu-1", True)
    kube.client.create_node_event("gpu-1", reason="R", message="m", type_="Warning", namespace="default")
    writes = [r for r in api(kube).writes() if r.method in ("POST", "PATCH")]
    assert len(writes) == 4 and all(r.query.get("fieldValidation") == "Strict" for r in writes)


def test_the_standin_refuses_an_unknown_field_under_strict_validation(kube: Backend) -> None:
    api(kube).add_node("gpu-1")
    patch = {"spec": {"unschedulabel": True}}
    code, body = api(kube).handle(
        "PATCH", "/api/v1/nodes/gpu-1", {"fieldValidation": "Strict"}, "application/merge-patch+json", patch
    )
    assert code == 400 and body["message"] == 'strict decoding error: unknown field "spec.unschedulabel"'
    assert api(kube).handle("PATCH", "/api/v1/nodes/gpu-1", {}, "application/merge-patch+json", patch)[0] == 200
