"""deploy/rbac: valid (kubernetes-validate --strict, offline), no wildcards, and enough.

"Enough" is measured, not listed: the worker's and the API's scenarios run through
``KubeClusterClient`` against the stand-in API server, and every request it records must be
allowed by the rules bound to that process's ServiceAccount. ``deploy/rbac/optional/`` holds what
an opt-in feature adds (DRA device taints), measured the same way with the feature's scenario.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import yaml

from autopilot import config, devicetaints, execution, invasive, publish, results
from autopilot.checks import pvc
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.verdict import Decision, Verdict
from tests.conftest import ROOT
from tests.unit import deploy_helpers as dh
from tests.unit.cluster_standin import Backend, Request, make_backend, permission
from workers import reconcile
from workers.store import ResultsStore

RBAC = ROOT / "deploy" / "rbac"
OPTIONAL = RBAC / "optional"
NS = "autopilot"
Permission = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, namespace or None)


def docs(*, optional: bool = False) -> list[dict[str, Any]]:
    """deploy/rbac's objects; with ``optional``, also those of deploy/rbac/optional (opt-in features)."""
    paths = [*sorted(RBAC.glob("*.yaml")), *(sorted(OPTIONAL.glob("*.yaml")) if optional else [])]
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def allowed(account: str, *, optional: bool = False) -> set[Permission]:
    everything = docs(optional=optional)
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in everything if "rules" in d}
    out: set[Permission] = set()
    for binding in (d for d in everything if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace")  # None for a ClusterRoleBinding
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb, scope))
    return out


def is_discovery(request: Request) -> bool:
    """``GET /apis/<group>[/<version>]``: API discovery, a non-resource URL every authenticated
    client may read (the ``system:discovery`` ClusterRole), no grant of ours."""
    parts = request.path.strip("/").split("/")
    return request.method == "GET" and parts[0] == "apis" and len(parts) <= 3


def needed(request: Request) -> Permission:
    want = permission(request.method, request.path)  # the stand-in's authorizer reads a request the same way
    assert want is not None, f"discovery needs no grant: {request.path}"
    return want


def permits(rules: set[Permission], want: Permission) -> bool:
    group, resource, verb, namespace = want
    return (group, resource, verb, None) in rules or (namespace is not None and want in rules)


@pytest.fixture
def kube() -> Iterator[Backend]:
    yield from make_backend("kube")


def publish_scenario(kube: Backend) -> None:
    decision = Decision(Verdict.EVICT, ("dcgm: pcie failed on GPU 3",))
    applied = publish.apply(kube.client, "gpu-1", publish.desired(decision))
    assert applied.event_error is None  # the Event is accepted where it is posted


def devicetaint_scenario(kube: Backend) -> None:
    """A reconcile with ``AUTOPILOT_DEVICE_TAINTS=on`` (as worker, api and beat run it) taints a failed
    GPU; the rule goes again when the GPU is good."""
    api = kube.standin
    assert api is not None
    api.serve_device_taints()
    store = ResultsStore(fakeredis.FakeRedis())
    gpu = DeviceResult("3", Status.FAIL, uuid="GPU-00000003-0000-4000-8000-000000000003", bus_id="0000:1b:00.0")
    store.save_result(CheckResult("remapped", Status.FAIL, "row remap failed", node="gpu-1", fatal=True,
                                  started_at=results.utc_now_iso(), devices=(gpu,)))  # fmt: skip
    settings = config.Settings(node_name="gpu-1", periodic_checks=("remapped",), device_taints="on")
    reconcile.reconcile_node(store, "gpu-1", settings, cluster=kube.client, checks=shipped_checks())
    assert len(api.device_taint_rules) == 1
    devicetaints.sync(kube.client, "gpu-1", {}, dry_run=False)
    assert api.device_taint_rules == {}


def worker_scenario(kube: Backend, make_ctx: Callable[..., CheckContext]) -> None:
    api = kube.standin
    assert api is not None
    settings = config.Settings(node_name="gpu-1", image="autopilot:test", pvc_storage_class="local")
    publish_scenario(kube)
    invasive.start(kube.client, "gpu-1", settings)
    name = invasive.job_name("gpu-1")
    result = CheckResult("dcgm", Status.OK, "", params={"r": 3})
    api.finish_job(NS, name, succeeded=True, log=json.dumps({"results": [result.to_dict()]}))
    invasive.poll(kube.client, name, namespace=NS)
    invasive.start(kube.client, "gpu-1", settings)
    api.refuse_job_pod(NS, name, "quota")
    invasive.poll(kube.client, name, namespace=NS)
    ctx = make_ctx(settings=settings, cluster=kube.client, node="gpu-1")
    assert execution.run_check(pvc.NAME, ctx).status is Status.OK


def test_the_worker_may_do_what_it_does(kube: Backend, make_ctx: Callable[..., CheckContext]) -> None:
    api = kube.standin
    assert api is not None
    api.add_node("gpu-1", gpus=8)
    api.add_storage_class("local", "WaitForFirstConsumer")
    worker_scenario(kube, make_ctx)
    rules = allowed("autopilot-worker")
    missing = sorted({needed(r) for r in api.requests if not permits(rules, needed(r))}, key=str)
    assert missing == []
    assert {needed(r)[1] for r in api.requests} >= {"jobs", "pods/log", "persistentvolumeclaims", "pods", "events"}


def test_the_api_and_beat_may_publish_and_select(kube: Backend) -> None:
    api = kube.standin
    assert api is not None
    api.add_node("gpu-1", {"pool": "a"}, gpus=8)
    publish_scenario(kube)
    for account in ("autopilot-api", "autopilot-beat"):
        rules = allowed(account)
        assert [needed(r) for r in api.requests if not permits(rules, needed(r))] == []
    api.requests.clear()
    kube.client.list_nodes("pool=a")
    kube.client.nodes_running("train", "job=llm")
    rules = allowed("autopilot-api")
    assert [needed(r) for r in api.requests if not permits(rules, needed(r))] == []


def test_events_are_granted_in_default_only_to_create() -> None:
    """Node events live in ``default`` (the only namespace the API server accepts them in): the three
    processes may create events there (each verdict change is a new one), and nothing else there."""
    for account in ("autopilot-worker", "autopilot-api", "autopilot-beat"):
        in_default = {p for p in allowed(account) if p[3] == "default"}
        assert in_default == {("", "events", "create", "default")}
        assert ("", "events", "create", NS) not in allowed(account)


def test_device_taints_are_granted_only_by_the_optional_file(kube: Backend) -> None:
    api = kube.standin
    assert api is not None
    api.add_node("gpu-1", gpus=8)
    api.requests.clear()
    devicetaint_scenario(kube)
    wanted = {needed(r) for r in api.requests if not is_discovery(r)}
    assert {w for w in wanted if w[1] == "devicetaintrules"} == {
        ("resource.k8s.io", "devicetaintrules", v, None) for v in ("list", "create", "delete")
    }
    for account in ("autopilot-worker", "autopilot-api", "autopilot-beat"):
        assert [w for w in wanted if not permits(allowed(account, optional=True), w)] == []
        refused = [w for w in wanted if not permits(allowed(account), w)]
        assert refused and {w[1] for w in refused} == {"devicetaintrules"}, "off by default: not in the base files"


def test_beat_and_api_cannot_run_jobs() -> None:
    for account in ("autopilot-api", "autopilot-beat"):
        assert not any(p[1] in ("jobs", "persistentvolumeclaims", "pods/log") for p in allowed(account))


def test_no_wildcards_and_no_secrets() -> None:
    for doc in docs(optional=True):
        for rule in doc.get("rules", ()):
            assert "*" not in [*rule["apiGroups"], *rule["resources"], *rule["verbs"]]
            assert "secrets" not in rule["resources"]


def test_the_manifests_validate_strictly() -> None:
    validate = dh.tool("kubernetes-validate")
    paths: list[Path] = [*sorted(RBAC.glob("*.yaml")), *sorted(OPTIONAL.glob("*.yaml"))]
    done = subprocess.run(
        [validate, "--strict", "--quiet", *map(str, paths)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_permission_mapping_reads_paths_as_rbac_does() -> None:
    def req(method: str, path: str) -> Request:
        return Request(method, path, {}, "", None)

    assert needed(req("PATCH", "/api/v1/nodes/n/status")) == ("", "nodes/status", "patch", None)
    assert needed(req("GET", "/api/v1/pods")) == ("", "pods", "list", None)
    assert needed(req("GET", "/api/v1/namespaces/a/pods/p/log")) == ("", "pods/log", "get", "a")
    assert needed(req("DELETE", "/apis/batch/v1/namespaces/a/jobs/j")) == ("batch", "jobs", "delete", "a")
    assert dataclasses.is_dataclass(Request)
