"""The cluster seam's scenarios against a real cluster (opt-in; see docs/KUBERNETES.md).

Runs only with ``AUTOPILOT_E2E_KUBECONFIG`` set (marker ``e2e``). Meant for a disposable cluster
(kind, a test namespace of a lab cluster): it writes Autopilot's labels, condition and an Event
on one node and creates Jobs, a PVC and a pod in ``AUTOPILOT_E2E_NAMESPACE``; it removes what it
created and restores the node's Autopilot labels.

Environment:
  AUTOPILOT_E2E_KUBECONFIG      kubeconfig to use (required)
  AUTOPILOT_E2E_NODE            node to test (default: the first node)
  AUTOPILOT_E2E_NAMESPACE       existing namespace for Jobs, Events, the PVC (default: autopilot)
  AUTOPILOT_E2E_STORAGE_CLASS   storage class for the pvc scenario (skipped when unset)
  AUTOPILOT_E2E_IMAGE           Autopilot image for the invasive scenario on a GPU node (skipped when unset)
  AUTOPILOT_E2E_BUSYBOX         small image for the stand-in Job and consumer pod (default busybox:1.36)
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from autopilot import config, errors, execution, invasive, labeling, publish
from autopilot.checks import pvc
from autopilot.cluster import KubeClusterClient
from autopilot.context import CheckContext
from autopilot.invasive import JobState, StartState
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from autopilot.verdict import Decision, Verdict

pytestmark = pytest.mark.e2e

NS = os.environ.get("AUTOPILOT_E2E_NAMESPACE", "autopilot")
BUSYBOX = os.environ.get("AUTOPILOT_E2E_BUSYBOX", "busybox:1.36")
OURS = (labeling.GPUHEALTH, labeling.dcgm_level_key(3))


@pytest.fixture(scope="module")
def client() -> Iterator[KubeClusterClient]:
    kubeconfig = os.environ.get("AUTOPILOT_E2E_KUBECONFIG")
    if not kubeconfig:
        pytest.skip("needs AUTOPILOT_E2E_KUBECONFIG")
    seam = KubeClusterClient.from_config(kubeconfig, timeout_s=20.0)
    yield seam
    seam.close()


@pytest.fixture(scope="module")
def node(client: KubeClusterClient) -> Iterator[str]:
    name = os.environ.get("AUTOPILOT_E2E_NODE") or client.list_nodes()[0].name
    before = client.get_node(name)
    yield name
    # Put the node's Autopilot labels back as they were.
    restore: dict[str, str | None] = {k: before.labels.get(k) for k in OURS}
    client.patch_node_labels(name, restore, {labeling.dcgm_level_key(3) + ".output": None})


def wait(predicate: Any, timeout_s: float = 180.0) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(2)
    raise AssertionError("timed out waiting")


def test_publish_is_idempotent_and_leaves_other_labels(client: KubeClusterClient, node: str) -> None:
    others = {k: v for k, v in client.get_node(node).labels.items() if k not in OURS}
    pub = publish.desired(Decision(Verdict.WARN, ("e2e: a test verdict",)))
    publish.apply(client, node, pub, namespace=NS)
    assert publish.apply(client, node, pub, Verdict.WARN, namespace=NS) is False
    after = client.get_node(node)
    assert after.labels[labeling.GPUHEALTH] == "WARN"
    assert {k: v for k, v in after.labels.items() if k not in OURS} == others
    cond = after.condition()
    assert cond is not None and cond.status == "False" and cond.message == "e2e: a test verdict"


def test_selection_reads(client: KubeClusterClient, node: str) -> None:
    assert node in [n.name for n in client.list_nodes()]
    assert all(isinstance(n, str) for n in client.nodes_running("kube-system", "k8s-app=kube-dns"))
    assert all(p.gpus > 0 for p in client.gpu_pods_on_node(node))


def test_a_job_result_is_read_from_its_log(client: KubeClusterClient, node: str) -> None:
    name = f"autopilot-e2e-{uuid.uuid4().hex[:8]}"
    result = CheckResult("dcgm", Status.OK, "e2e", node=node, params={"r": 3}, started_at="2026-01-01T00:00:00Z")
    doc = json.dumps({"node": node, "results": [result.to_dict()]})
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "annotations": {invasive.NODE_ANNOTATION: node}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 300,
            "ttlSecondsAfterFinished": 300,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [{"operator": "Exists"}],
                    "affinity": invasive.job_spec(node, 1, config.Settings())["spec"]["template"]["spec"]["affinity"],
                    "containers": [{"name": "main", "image": BUSYBOX, "command": ["echo", doc]}],
                }
            },
        },
    }
    client.create_job(NS, manifest)
    try:
        with pytest.raises(errors.Conflict):
            client.create_job(NS, manifest)
        outcome = wait(lambda: (o := invasive.poll(client, name, namespace=NS)).finished and o)
        assert outcome.state is JobState.SUCCEEDED and outcome.result.status is Status.OK
    finally:
        client.delete_job(NS, name)


def test_invasive_start_on_this_node(client: KubeClusterClient, node: str) -> None:
    settings = config.Settings(node_name=node, namespace=NS, image=os.environ.get("AUTOPILOT_E2E_IMAGE", ""))
    if client.get_node(node).allocatable_gpus == 0:
        assert invasive.start(client, node, settings).state in (StartState.NO_GPUS, StartState.REFUSED)
        return
    if not settings.image:
        pytest.skip("GPU node, but no AUTOPILOT_E2E_IMAGE for a real level-3 run")
    outcome = invasive.start(client, node, settings)
    if outcome.state is StartState.BUSY:
        pytest.skip(outcome.reason)
    assert outcome.testing
    done = wait(lambda: (o := invasive.poll(client, outcome.job_name, namespace=NS)).finished and o, 3 * 3600)
    assert done.result is not None


def test_pvc_check(client: KubeClusterClient, node: str) -> None:
    storage_class = os.environ.get("AUTOPILOT_E2E_STORAGE_CLASS")
    if not storage_class:
        pytest.skip("needs AUTOPILOT_E2E_STORAGE_CLASS")
    settings = config.Settings(node_name=node, namespace=NS, pvc_storage_class=storage_class, image=BUSYBOX)
    ctx = CheckContext(
        node, settings, FakeRunner(), FakeTelemetry([FakeGpu()]), cluster=client, checks=shipped_checks()
    )
    result = execution.run_check(pvc.NAME, ctx)
    assert result.status is Status.OK, result.summary
    assert result.data["deleted"] is True
