"""Every body Autopilot sends to the API server, held to the published OpenAPI schemas of Kubernetes 1.27 to 1.32.

``autopilot/apivalidation.py`` restates, by hand, what the server refuses, and both fakes hold our code to it. This
file holds both to the schemas the real servers publish (``kubernetes-validate``, offline, strict: no unknown field,
every value of its JSON type): the writes of every scenario that reaches the API (the worker's publication, level-3
Job, pvc check, beat's remediation, device taints) are recorded by the stand-in API server and each POST and PATCH
body is validated against the oldest and newest versions we support, so a field a 1.27 server does not know yet (a
400 under ``fieldValidation=Strict``) or a value of the wrong type cannot slip past hand-written rules that allow it.
And where the published schema refuses a mutation of our Job, the fakes refuse it too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from autopilot import apivalidation, invasive
from autopilot.config import Settings
from autopilot.context import CheckContext
from tests.unit import test_cluster_rbac as scenarios
from tests.unit.cluster_standin import Backend, Request, make_backend
from tests.unit.test_remediation import evict, pass_the_gate
from tests.unit.test_remediation import settings as remediation_settings
from workers import remediating
from workers.store import ResultsStore

kubernetes_validate = pytest.importorskip("kubernetes_validate")

# The versions the project supports (README): the oldest and the newest. DeviceTaintRules exist only from 1.33
# (v1alpha3) and 1.36 (v1beta2): each version of theirs is held to the release that serves it.
SUPPORTED = ("1.27.0", "1.32.0")
DRA_RELEASE = {"v1alpha3": "1.33.0", "v1beta2": "1.36.0"}
SETTINGS = Settings(node_name="gpu-1", image="quay.io/autopilot/autopilot:v1")


@pytest.fixture
def kube() -> Iterator[Backend]:
    yield from make_backend("kube")


def _without_nulls(value: Any) -> Any:
    """A merge patch's ``null`` removes a key; what is left is what the object then holds."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _as_object(request: Request) -> tuple[dict[str, Any], str]:
    """The object a POST or PATCH body stands for (a patch: a Node holding only what it sets), and its group version."""
    parts = request.path.strip("/").split("/")
    group_version = parts[1] if parts[0] == "api" else f"{parts[1]}/{parts[2]}"
    body = _without_nulls(request.body)
    if request.method == "PATCH":
        body = {"apiVersion": "v1", "kind": "Node", **body}
    return body, group_version


def _written(kube: Backend, make_ctx: Callable[..., CheckContext]) -> list[Request]:
    """Every scenario that writes, through ``KubeClusterClient`` to the stand-in, and the writes it recorded."""
    api = kube.standin
    assert api is not None
    api.add_node("gpu-1", {"pool": "a"}, gpus=8)
    api.add_storage_class("local", "WaitForFirstConsumer")
    scenarios.worker_scenario(kube, make_ctx)  # publication, level-3 Jobs, the pvc check's claim and pod
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, "gpu-1")
    remediating.run(store, kube.client, remediation_settings())  # cordon, taint, ownership, Event
    pass_the_gate(store, "gpu-1")
    remediating.run(store, kube.client, remediation_settings())  # uncordon, the taint removed
    scenarios.devicetaint_scenario(kube)
    return [r for r in api.requests if r.method in ("POST", "PATCH")]


def test_every_body_we_send_is_valid_by_the_published_schemas(
    kube: Backend, make_ctx: Callable[..., CheckContext]
) -> None:
    writes = _written(kube, make_ctx)
    kinds = {_as_object(r)[0].get("kind") for r in writes}
    assert kinds >= {"Node", "Event", "Job", "PersistentVolumeClaim", "Pod", "DeviceTaintRule"}
    refused: list[str] = []
    for request in writes:
        body, group_version = _as_object(request)
        versions = [DRA_RELEASE[group_version.split("/")[1]]] if body["kind"] == "DeviceTaintRule" else SUPPORTED
        for version in versions:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                refused.append(f"{request.method} {request.path} on {version}: {exc}")
    assert refused == []


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    "change",
    [
        lambda j: _pod(j)["tolerations"].append(
            {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "300"}
        ),
        lambda j: _pod(j)["tolerations"].append({"key": 5, "operator": "Exists"}),
        lambda j: j["spec"].update(backoffLimit=True),
        lambda j: j["spec"].update(ttlSecondsAfterFinished="30"),
        lambda j: j["spec"].update(activeDeadlineSeconds=3600.5),
        lambda j: j["spec"].update(backoffLimits=0),  # misspelt
        lambda j: _pod(j)["containers"][0].update(imagePullPolicyy="IfNotPresent"),
        lambda j: _pod(j)["affinity"]["nodeAffinity"].update(required={}),
    ],
)
def test_what_the_published_schema_refuses_in_our_job_the_fakes_refuse(change: Callable[[Any], None]) -> None:
    job = copy.deepcopy(invasive.job_spec("gpu-1", 8, SETTINGS))
    kubernetes_validate.validate(job, SUPPORTED[0], strict=True)  # as built, it is valid
    change(job)
    for version in SUPPORTED:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(job, version, strict=True)
    assert apivalidation.unknown_fields("Job", job) or apivalidation.wrong_types("Job", job)
