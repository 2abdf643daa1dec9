"""DRA DeviceTaintRules per bad GPU (issue 15 item 1), on FakeCluster and over HTTP to the stand-in API server."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from autopilot import devicetaints, errors
from autopilot.cluster import DeviceTaintRuleInfo
from autopilot.gpuverdict import GpuState
from autopilot.verdict import Verdict
from tests.unit.cluster_standin import Backend, make_backend

NODE = "gpu-node-1"


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def states(verdicts: dict[int, Verdict]) -> dict[str, GpuState]:
    return {uuid(i): GpuState(uuid(i), v, "2026-11-30T08:00:00Z", uuid(i), str(i)) for i, v in verdicts.items()}


def wanted(verdicts: dict[int, Verdict], node: str = NODE) -> dict[str, DeviceTaintRuleInfo]:
    return devicetaints.desired(node, states(verdicts), driver="gpu.nvidia.com", device_template="gpu-{index}")


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


def rules(backend: Backend) -> dict[str, tuple[str, str, str]]:
    return {
        r.name: (r.device, r.value, r.effect)
        for r in backend.client.list_device_taint_rules(devicetaints.selector(NODE))
    }


def test_desired_rules_select_one_device_each() -> None:
    found = wanted({0: Verdict.PASS, 3: Verdict.EVICT, 5: Verdict.WARN, 6: Verdict.UNKNOWN})
    assert sorted((r.device, r.value, r.effect) for r in found.values()) == [
        ("gpu-3", "EVICT", "NoSchedule"),
        ("gpu-5", "WARN", "None"),
    ]
    rule = found[devicetaints.rule_name(uuid(3))]
    assert (rule.driver, rule.pool, rule.key) == ("gpu.nvidia.com", NODE, "autopilot.ibm.com/gpuhealth")
    assert rule.to_json("v1beta2")["spec"] == {
        "deviceSelector": {"driver": "gpu.nvidia.com", "pool": NODE, "device": "gpu-3"},
        "taint": {"key": "autopilot.ibm.com/gpuhealth", "value": "EVICT", "effect": "NoSchedule"},
    }


def test_sync_creates_then_deletes_rules_as_gpus_change(backend: Backend) -> None:
    backend.control.serve_device_taints("v1beta2")
    outcome = devicetaints.sync(backend.client, NODE, wanted({3: Verdict.EVICT, 5: Verdict.WARN}), dry_run=False)
    assert len(outcome.created) == 2 and outcome.deleted == ()
    assert sorted(rules(backend).values()) == [("gpu-3", "EVICT", "NoSchedule"), ("gpu-5", "WARN", "None")]
    # GPU 5 recovers, GPU 3 stays bad: only GPU 5's rule goes.
    outcome = devicetaints.sync(backend.client, NODE, wanted({3: Verdict.EVICT, 5: Verdict.PASS}), dry_run=False)
    assert outcome.created == () and outcome.deleted == (devicetaints.rule_name(uuid(5)),)
    assert list(rules(backend).values()) == [("gpu-3", "EVICT", "NoSchedule")]
    # GPU 3 goes from EVICT to WARN: its rule is replaced with the informational effect.
    devicetaints.sync(backend.client, NODE, wanted({3: Verdict.WARN}), dry_run=False)
    assert list(rules(backend).values()) == [("gpu-3", "WARN", "None")]


def test_sync_leaves_other_nodes_rules_alone(backend: Backend) -> None:
    backend.control.serve_device_taints("v1beta2")
    devicetaints.sync(backend.client, "other-node", wanted({1: Verdict.EVICT}, "other-node"), dry_run=False)
    devicetaints.sync(backend.client, NODE, {}, dry_run=False)
    others = backend.client.list_device_taint_rules(devicetaints.selector("other-node"))
    assert [r.name for r in others] == [devicetaints.rule_name(uuid(1))]


def test_a_gpu_moved_to_another_node_gets_its_rule_rewritten(backend: Backend) -> None:
    backend.control.serve_device_taints("v1beta2")
    devicetaints.sync(backend.client, "old-node", wanted({1: Verdict.EVICT}, "old-node"), dry_run=False)
    devicetaints.sync(backend.client, NODE, wanted({1: Verdict.EVICT}), dry_run=False)
    assert list(rules(backend).values()) == [("gpu-1", "EVICT", "NoSchedule")]
    assert backend.client.list_device_taint_rules(devicetaints.selector("old-node")) == []


def test_dry_run_only_logs(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    backend.control.serve_device_taints("v1beta2")
    with caplog.at_level(logging.INFO, logger="autopilot.devicetaints"):
        outcome = devicetaints.sync(backend.client, NODE, wanted({3: Verdict.EVICT}), dry_run=True)
    assert outcome.dry_run and outcome.created == (devicetaints.rule_name(uuid(3)),)
    assert rules(backend) == {}
    assert "dry-run: would create DeviceTaintRule autopilot-gpu-00000003" in caplog.text
    if backend.standin is not None:
        assert [r for r in backend.standin.writes() if "devicetaintrules" in r.path] == []


def test_a_cluster_without_device_taint_rules_gets_no_write(backend: Backend) -> None:
    outcome = devicetaints.sync(backend.client, NODE, wanted({3: Verdict.EVICT}), dry_run=False)
    assert outcome.served is False
    assert backend.client.device_taint_api() is None
    if backend.standin is not None:
        assert backend.standin.writes() == []


def test_a_cluster_without_rules_is_told_once_not_per_node(
    backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: every node's reconcile logged the same warning (1,000 a tick on a 1,000-node cluster)
    monkeypatch.setattr(devicetaints, "_unserved_told", False)
    with caplog.at_level(logging.WARNING, logger="autopilot.devicetaints"):
        for node in ("gpu-1", "gpu-2", "gpu-3"):
            assert (
                devicetaints.sync(backend.client, node, wanted({3: Verdict.EVICT}, node), dry_run=False).served is False
            )
    assert caplog.text.count("serves no resource.k8s.io DeviceTaintRule") == 1


def test_a_version_no_longer_served_is_discovered_again_not_failed_on_for_ever() -> None:
    # before: the version found first was kept for the life of the process, so once the control plane was
    # upgraded past it (v1alpha3 gone, v1beta2 served) every sync was a 404
    for kube in make_backend("kube"):
        standin = kube.standin
        assert standin is not None
        standin.serve_device_taints("v1alpha3")
        devicetaints.sync(kube.client, NODE, wanted({2: Verdict.EVICT}), dry_run=False)
        standin.serve_device_taints("v1beta2")
        with pytest.raises(errors.NotFound):
            devicetaints.sync(kube.client, NODE, wanted({2: Verdict.EVICT, 3: Verdict.EVICT}), dry_run=False)
        outcome = devicetaints.sync(kube.client, NODE, wanted({2: Verdict.EVICT, 3: Verdict.EVICT}), dry_run=False)
        assert outcome.served and kube.client.device_taint_api() == "v1beta2"
        assert {r.split("/")[3] for r in (q.path for q in standin.writes())} == {"v1alpha3", "v1beta2"}


def test_discovery_finds_the_served_version(backend: Backend) -> None:
    backend.control.serve_device_taints("v1alpha3")
    assert backend.client.device_taint_api() == "v1alpha3"
    devicetaints.sync(backend.client, NODE, wanted({2: Verdict.EVICT}), dry_run=False)
    if backend.standin is not None:
        posted = [r for r in backend.standin.writes() if r.method == "POST"]
        assert [r.path for r in posted] == ["/apis/resource.k8s.io/v1alpha3/devicetaintrules"]
        assert posted[0].body["apiVersion"] == "resource.k8s.io/v1alpha3"


def test_discovery_finds_the_rules_beside_versions_that_serve_none() -> None:
    # a 1.36 server with alpha APIs on: v1 (preferred) and v1beta1 serve no rules, v1beta2 and v1alpha3 do
    for kube in make_backend("kube"):
        assert kube.standin is not None
        kube.standin.serve_device_taints("v1beta2", others={"v1": False, "v1beta1": False, "v1alpha3": True})
        assert kube.client.device_taint_api() == "v1beta2"
        devicetaints.sync(kube.client, NODE, wanted({2: Verdict.EVICT}), dry_run=False)
        [post] = [r for r in kube.standin.writes() if r.method == "POST"]
        assert post.path == "/apis/resource.k8s.io/v1beta2/devicetaintrules"


def test_a_server_that_knows_no_none_effect_leaves_out_the_warn_rule_not_the_evict_ones(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # Kubernetes 1.33/1.34 validate effect as NoSchedule or NoExecute only. Before: the WARN rule's 422 ended the
    # sync, so an EVICT rule created after it (in name order) was never written, and every reconcile tried again
    backend.control.serve_device_taints("v1alpha3", effects=("NoSchedule", "NoExecute"))
    with caplog.at_level(logging.WARNING, logger="autopilot.devicetaints"):
        outcome = devicetaints.sync(backend.client, NODE, wanted({1: Verdict.WARN, 3: Verdict.EVICT}), dry_run=False)
    assert outcome.served and outcome.created == (devicetaints.rule_name(uuid(3)),)
    assert rules(backend) == {devicetaints.rule_name(uuid(3)): ("gpu-3", "EVICT", "NoSchedule")}
    assert "knows no effect None" in caplog.text


def test_the_server_validates_names_and_keys(backend: Backend) -> None:
    backend.control.serve_device_taints("v1beta2")
    bad = DeviceTaintRuleInfo("Bad_Name", "gpu.nvidia.com", NODE, "gpu-0", "not a key!", "EVICT", "NoSchedule")
    with pytest.raises(errors.ClusterError, match="metadata.name"):
        backend.client.create_device_taint_rule(bad)
    good = wanted({0: Verdict.EVICT})[devicetaints.rule_name(uuid(0))]
    backend.client.create_device_taint_rule(good)
    with pytest.raises(errors.Conflict):
        backend.client.create_device_taint_rule(good)
    assert backend.client.delete_device_taint_rule(good.name) is True
    assert backend.client.delete_device_taint_rule(good.name) is False
