"""Both fakes refuse what a real kube-apiserver refuses, and what Autopilot writes passes them.

Run on both backends (``fake``: ``FakeCluster``; ``kube``: ``KubeClusterClient`` over HTTP to the
stand-in API server), each time with the rule of ``autopilot.apivalidation`` that a real server
applies: ObjectMeta (names, ``generateName``, labels, the 256 KiB annotation budget), batch/v1
Job, Pod, PersistentVolumeClaim, Node taints, label selectors. A 422 is a ``ClusterError`` that
names the field, is not retried, and leaves nothing behind.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from autopilot import errors, invasive
from autopilot.checks import pvc
from autopilot.cluster import NODE_EVENT_NAMESPACE, NodeTaint
from autopilot.config import Settings
from tests.unit.cluster_standin import Backend, make_backend

NS = "autopilot"
SETTINGS = Settings(node_name="gpu-1", image="quay.io/autopilot/autopilot:v1")


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


def refused(backend: Backend, call: Any, *fields: str) -> str:
    """``call()`` fails as a 422/400 that is neither retried nor mistaken for another kind of error."""
    with pytest.raises(errors.ClusterError) as caught:
        call()
    assert not isinstance(caught.value, errors.Transient | errors.NotFound | errors.Conflict)
    assert backend.sleeps == []  # no retry
    message = str(caught.value)
    for field in fields:
        assert field in message
    return message


# ---------------------------------------------------------------- labels and annotations


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("autopilot.ibm.com/gpu health", "PASS"),  # space in the name
        ("autopilot.ibm.com/" + "x" * 64, "PASS"),  # name part over 63
        ("Autopilot.IBM.com/gpuhealth", "PASS"),  # prefix not lower case
        ("autopilot.ibm.com/gpuhealth", "x" * 64),  # value over 63
        ("autopilot.ibm.com/gpuhealth", "PASS:2024"),  # ':' in a value
        ("autopilot.ibm.com/gpuhealth", "-PASS"),  # value must start alphanumeric
    ],
)
def test_invalid_labels_are_refused_and_not_written(backend: Backend, key: str, value: str) -> None:
    backend.control.add_node("gpu-1")
    refused(backend, lambda: backend.client.patch_node_labels("gpu-1", {key: value}), "metadata.labels")
    assert key not in backend.client.get_node("gpu-1").labels


def test_an_empty_label_value_and_a_63_character_one_are_valid(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    backend.client.patch_node_labels("gpu-1", {"autopilot.ibm.com/a": "", "autopilot.ibm.com/b": "v" * 63})
    assert backend.client.get_node("gpu-1").labels["autopilot.ibm.com/b"] == "v" * 63


def test_annotations_past_256_kib_in_all_are_refused(backend: Backend) -> None:
    backend.control.add_node("gpu-1", annotations={"other.example.com/big": "x" * (200 * 1024)})
    big = {"autopilot.ibm.com/dcgm.level.3.output": "y" * (60 * 1024)}
    refused(backend, lambda: backend.client.patch_node_labels("gpu-1", {}, big), "262144")
    backend.client.patch_node_labels("gpu-1", {}, {"autopilot.ibm.com/dcgm.level.3.output": "y" * 1024})


def test_a_taint_with_an_invalid_key_is_refused(backend: Backend) -> None:
    backend.control.add_node("gpu-1")
    taint = NodeTaint("autopilot.ibm.com/gpu health", "NoSchedule", "EVICT")
    refused(backend, lambda: backend.client.set_node_taint("gpu-1", taint, True), "spec.taints[0].key")
    assert backend.client.get_node("gpu-1").taints == ()


@pytest.mark.parametrize("selector", ["pool=a b", "pool=x/y", "=a100", "po ol=a"])
def test_a_label_selector_the_server_cannot_parse_is_refused(backend: Backend, selector: str) -> None:
    backend.control.add_node("gpu-1", {"pool": "a100"})
    refused(backend, lambda: backend.client.list_nodes(selector), "400")


def test_valid_label_selectors_of_every_form_are_accepted(backend: Backend) -> None:
    backend.control.add_node("gpu-1", {"pool": "a100"})
    for selector in ("pool=a100", "pool==a100", "pool!=h100", "pool", "!other", "pool, !other"):
        assert [n.name for n in backend.client.list_nodes(selector)] == ["gpu-1"], selector


# ---------------------------------------------------------------- Jobs


def level3_job(node: str = "gpu-1") -> dict[str, Any]:
    return invasive.job_spec(node, 8, SETTINGS)


def test_our_level3_job_is_accepted_as_it_is(backend: Backend) -> None:
    node = "node-" + "x" * 200 + ".cluster.example.com"  # a 225-character node name
    assert backend.client.create_job(NS, level3_job(node)) == invasive.job_name(node)


def mutate(change: Any) -> dict[str, Any]:
    job = copy.deepcopy(level3_job())
    change(job)
    return job


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def _gpu(job: dict[str, Any], requests: str, limits: str | None) -> None:
    resources = _pod(job)["containers"][0]["resources"]
    resources["requests"]["nvidia.com/gpu"] = requests
    if limits is None:
        del resources["limits"]
    else:
        resources["limits"]["nvidia.com/gpu"] = limits


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda j: _pod(j).update(restartPolicy="Always"), "spec.template.spec.restartPolicy"),
        (lambda j: _pod(j).pop("restartPolicy"), "spec.template.spec.restartPolicy"),  # defaults to Always
        (lambda j: j["metadata"].update(name="j" * 64), "metadata.name"),  # the pods' job-name label
        (lambda j: j["metadata"].update(name="Autopilot_Job"), "metadata.name"),
        (lambda j: j["spec"].update(backoffLimit=-1), "spec.backoffLimit"),
        (lambda j: j["spec"].update(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds"),
        (lambda j: j["spec"].update(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished"),
        (lambda j: _gpu(j, "0.5", "0.5"), "must be an integer"),
        (lambda j: _gpu(j, "8", "4"), "must be equal to nvidia.com/gpu limit"),
        (lambda j: _gpu(j, "8", None), "Limit must be set"),
        (lambda j: _pod(j)["containers"][0].update(image=""), "image: Required value"),
        (lambda j: _pod(j)["containers"][0].update(name="Main"), "containers[0].name"),
        (lambda j: _pod(j).update(tolerations=[{"operator": "Exists", "key": "k", "value": "v"}]), "tolerations[0]"),
        (lambda j: _pod(j).update(tolerations=[{"key": "", "operator": "Equal"}]), "tolerations[0].operator"),
        (
            lambda j: _pod(j).update(tolerations=[{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]),
            "tolerations[0].effect",
        ),
        (
            lambda j: _pod(j)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchFields"][0].update(values=["a", "b"]),
            "matchFields[0].values",
        ),
    ],
)
def test_an_invalid_job_is_refused_naming_the_field_and_nothing_is_created(
    backend: Backend, change: Any, field: str
) -> None:
    job = mutate(change)
    refused(backend, lambda: backend.client.create_job(NS, job), "422", field)
    assert backend.control.pods() == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda j: _pod(j).update(
                tolerations=[{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "300"}]
            ),
            "spec.template.spec.tolerations[0].tolerationSeconds: cannot unmarshal string",
        ),
        (lambda j: j["spec"].update(activeDeadlineSeconds=3600.0), "spec.activeDeadlineSeconds: cannot unmarshal"),
        (lambda j: j["spec"].update(backoffLimit=True), "spec.backoffLimit: cannot unmarshal bool"),
    ],
)
def test_a_job_field_of_a_type_the_server_cannot_decode_is_a_400_and_nothing_is_created(
    backend: Backend, change: Any, field: str
) -> None:
    # before: both fakes took these; a real server answers 400 ("json: cannot unmarshal ...") to the whole Job
    job = mutate(change)
    message = refused(backend, lambda: backend.client.create_job(NS, job), "400", field)
    assert "cannot be handled as a Job" in message
    assert backend.control.pods() == []


# ---------------------------------------------------------------- pods, claims, events


def test_our_pvc_check_objects_are_accepted(backend: Backend) -> None:
    name = pvc.claim_name("node-" + "x" * 200)
    claim = pvc.claim_manifest(name, NS, "fast-ssd", "ReadWriteOnce", "gpu-1")
    assert backend.client.create_pvc(NS, claim) == name
    pod = pvc.consumer_pod_manifest(name, NS, "gpu-1", SETTINGS.image, SETTINGS.invasive_tolerations)
    assert backend.client.create_pod(NS, pod) == name


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c["spec"].update(accessModes=["ReadWriteSometimes"]), "spec.accessModes"),
        (lambda c: c["spec"].update(accessModes=[]), "spec.accessModes"),
        (lambda c: c["spec"]["resources"]["requests"].update(storage="lots"), "spec.resources"),
        (lambda c: c["spec"].update(storageClassName="Fast_SSD"), "spec.storageClassName"),
    ],
)
def test_an_invalid_claim_is_refused(backend: Backend, change: Any, field: str) -> None:
    claim = pvc.claim_manifest("c-1", NS, "fast-ssd", "ReadWriteOnce", "gpu-1")
    change(claim)
    refused(backend, lambda: backend.client.create_pvc(NS, claim), field)


def test_a_pod_whose_mount_names_no_volume_or_whose_request_exceeds_its_limit_is_refused(backend: Backend) -> None:
    pod = pvc.consumer_pod_manifest("c-1", NS, "gpu-1", SETTINGS.image, ())
    pod["spec"]["containers"][0]["volumeMounts"][0]["name"] = "other"
    refused(backend, lambda: backend.client.create_pod(NS, pod), "volumeMounts[0].name")
    pod = pvc.consumer_pod_manifest("c-1", NS, "gpu-1", SETTINGS.image, ())
    pod["spec"]["containers"][0]["resources"]["requests"]["memory"] = "1Gi"
    refused(backend, lambda: backend.client.create_pod(NS, pod), "must be less than or equal to memory limit")


def test_node_events_get_unique_names(backend: Backend) -> None:
    node = "n" * 63 + ".cluster.example.com"
    backend.control.add_node(node)
    for _ in range(3):
        backend.client.create_node_event(
            node, reason="GpuHealthChanged", message="m", type_="Normal", namespace=NODE_EVENT_NAMESPACE
        )
    assert len(backend.control.events_for("Node", node)) == 3
    if backend.standin is not None:
        names = [k[2] for k in backend.standin.objects if k[0] == "Event"]
        assert len(set(names)) == 3 and all(n.startswith(node + ".") for n in names)


def test_an_event_whose_answer_was_lost_is_posted_once(backend: Backend) -> None:
    # before: its name came from generateName, so the retry after a lost answer (a 504 after the server
    # made it) posted a second Event; now the retry meets 409 AlreadyExists for the same name, which is done
    backend.control.add_node("gpu-1")
    backend.control.fail_next("create_node_event", 504, applied=True)
    backend.client.create_node_event(
        "gpu-1", reason="GpuHealthChanged", message="m", type_="Warning", namespace=NODE_EVENT_NAMESPACE
    )
    assert len(backend.control.events_for("Node", "gpu-1")) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.gpu_pods_on_node("gpu-1,status.phase=Running"),
        lambda c: c.gpu_pods_on_node("gpu-1\n"),
        lambda c: c.job_pods(NS, "j,app.kubernetes.io/name=autopilot"),
        lambda c: c.job_events(NS, "j,involvedObject.kind=Pod"),
    ],
)
def test_a_name_that_would_add_a_selector_requirement_is_refused_before_it_is_sent(backend: Backend, call: Any) -> None:
    # before: sent as is, and the server read the text after the comma as a requirement of its own
    sent = len(backend.standin.requests) if backend.standin is not None else 0
    with pytest.raises(errors.BadParameter):
        call(backend.client)
    assert (len(backend.standin.requests) if backend.standin is not None else 0) == sent


def test_a_misspelled_field_is_refused_naming_it_not_dropped(backend: Backend) -> None:
    # before: both backends took the Job and the field was dropped; a real server under the client's
    # fieldValidation=Strict answers 400
    manifest = copy.deepcopy(level3_job())
    manifest["spec"]["backofLimit"] = 0
    manifest["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(errors.ClusterError) as caught:
        backend.client.create_job(NS, manifest)
    text = str(caught.value)
    assert "400 strict decoding error: " in text and 'unknown field "spec.backofLimit"' in text
    assert 'unknown field "spec.template.spec.containers[0].resource"' in text
    with pytest.raises(errors.NotFound):
        backend.client.get_job(NS, manifest["metadata"]["name"])


@pytest.mark.parametrize(
    ("stamp", "micro", "refused"),
    [
        ("2026-11-29T22:00:00Z", False, False),
        ("2026-11-29T22:00:00.123+05:30", False, False),
        ("2026-11-29T22:00:00", False, True),  # no zone
        ("2026-11-29T24:00:00Z", False, True),  # hour out of range
        ("", False, True),  # an empty string is no zero time: only null is
        ("2026-11-29T22:00:00.123456Z", True, False),
        ("2026-11-29T22:00:00Z", True, True),  # events.k8s.io eventTime: MicroTime wants six fractional digits
        ("2026-11-29T22:00:00.123Z", True, True),
    ],
)
def test_times_are_read_as_go_reads_metav1_time_and_micro_time(stamp: str, micro: bool, refused: bool) -> None:
    from autopilot import apivalidation

    field = "eventTime" if micro else "lastTimestamp"
    wrong = apivalidation.wrong_types("Event", {field: stamp})
    assert bool(wrong) is refused, wrong
    assert apivalidation.wrong_types("Event", {field: None}) == []  # null decodes: the zero time
