"""History per GPU (issue 15 item 4) and the per-GPU half of a node's reconcile (labels, annotation, taints)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from autopilot import config, devicetaints, errors, gpuhistory, gpuverdict
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.verdict import Verdict
from tests.unit.cluster_standin import Backend, make_backend
from workers import gpustore, reconcile
from workers.store import ResultsStore

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
PERIODIC = ("remapped", "pciebw")


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def result(
    check: str, node: str, bad: dict[int, Status], at: datetime, *, fatal: bool = False, n: int = 4
) -> CheckResult:
    devices = tuple(
        DeviceResult(
            str(i),
            bad.get(i, Status.OK),
            detail="finding",
            uuid=uuid(i),
            bus_id=f"0000:{i:02x}:00.0",
            serial=f"165000000{i}",
        )
        for i in range(n)
    )
    status = Status.FAIL if Status.FAIL in bad.values() else (Status.WARN if bad else Status.OK)
    return CheckResult(
        check,
        status,
        "s",
        node=node,
        fatal=fatal and status is Status.FAIL,
        devices=devices,
        started_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def settings(**overrides: object) -> config.Settings:
    return dataclasses.replace(config.Settings(node_name="x", periodic_checks=PERIODIC), **overrides)  # type: ignore[arg-type]


def state(i: int, v: Verdict, evicted_at: str = "") -> gpuverdict.GpuState:
    return gpuverdict.GpuState(uuid(i), v, "2026-11-30T08:00:00Z", uuid(i), str(i), evicted_at=evicted_at)


# ---------------------------------------------------------------- incidents (pure)


def test_incidents_are_verdict_changes_clears_and_events() -> None:
    before = {
        uuid(0): state(0, Verdict.PASS),
        uuid(1): state(1, Verdict.EVICT, "2026-11-30T07:00:00Z"),
        uuid(2): state(2, Verdict.PASS),
    }
    after = {uuid(0): state(0, Verdict.WARN), uuid(1): state(1, Verdict.PASS), uuid(2): state(2, Verdict.UNKNOWN)}
    event = result("xid", "n1", {3: Status.FAIL}, NOW)
    found = gpuhistory.incidents("n1", before, after, now=NOW, new_results=[event], periodic=PERIODIC)
    assert sorted((i.uuid, i.kind, i.before, i.verdict) for i in found) == [
        (uuid(0), "verdict", "PASS", "WARN"),
        (uuid(1), "clear", "EVICT", "PASS"),
        (uuid(3), "event", "", "fail"),
    ]
    assert next(i for i in found if i.kind == "event").serial == "1650000003"


def test_periodic_findings_are_not_events_and_first_sightings_of_healthy_gpus_are_not_incidents() -> None:
    after = {uuid(0): state(0, Verdict.PASS)}
    periodic = result("remapped", "n1", {0: Status.WARN}, NOW)
    assert gpuhistory.incidents("n1", {}, after, now=NOW, new_results=[periodic], periodic=PERIODIC) == []


def test_repeat_offender_counts_faults_within_the_window() -> None:
    def fault(days_ago: float) -> gpuhistory.Incident:
        at = (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return gpuhistory.Incident(at, uuid(0), "n1", "verdict", "WARN", "PASS")

    recovery = gpuhistory.Incident("2026-11-30T07:00:00Z", uuid(0), "n1", "verdict", "PASS", "WARN")
    two = [fault(1), fault(2), recovery, fault(9)]
    assert gpuhistory.offender_reason(two, now=NOW, count=3, window_s=7 * 86400) == ""
    three = [fault(0.5), *two]
    assert gpuhistory.offender_reason(three, now=NOW, count=3, window_s=7 * 86400) == (
        "repeat offender: 3 incidents in the last 7 days"
    )
    assert gpuhistory.offender_reason(three, now=NOW, count=0, window_s=7 * 86400) == ""


# ---------------------------------------------------------------- the store


def test_store_bounds_history_by_count_and_age_and_validates_uuids() -> None:
    client = fakeredis.FakeRedis()
    old = gpuhistory.Incident("2026-01-01T00:00:00Z", uuid(0), "n1", "verdict", "WARN", "PASS")
    new = [gpuhistory.Incident(f"2026-11-30T0{i}:00:00Z", uuid(0), "n1", "event", "fail") for i in range(5)]
    gpustore.record(client, "n1", {}, [old, *new], now=NOW, history_len=3, retention_s=30 * 86400)
    got = gpustore.incidents_many(client, [uuid(0), "ap:*"], now=NOW, retention_s=30 * 86400)
    assert list(got) == [uuid(0)]
    assert [i.at for i in got[uuid(0)]] == ["2026-11-30T04:00:00Z", "2026-11-30T03:00:00Z", "2026-11-30T02:00:00Z"]
    assert 0 < client.ttl(f"ap:gpu:{uuid(0)}") <= 30 * 86400
    with pytest.raises(errors.BadParameter):
        gpustore.gpu(client, "GPU-x*", now=NOW, retention_s=86400)


# ---------------------------------------------------------------- through reconcile


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


def test_reconcile_publishes_gpu_counts_and_annotation(backend: Backend) -> None:
    backend.control.add_node("n1", gpus=4)
    store = ResultsStore(fakeredis.FakeRedis())
    store.save_result(result("remapped", "n1", {2: Status.FAIL}, NOW, fatal=True))
    store.save_result(result("pciebw", "n1", {1: Status.FAIL}, NOW))
    decision = reconcile.reconcile_node(store, "n1", settings(), NOW, cluster=backend.client, checks=shipped_checks())
    assert decision.verdict is Verdict.EVICT
    node = backend.client.get_node("n1")
    assert node.labels["autopilot.ibm.com/gpuhealth"] == "EVICT"
    assert (node.labels["autopilot.ibm.com/gpus-evict"], node.labels["autopilot.ibm.com/gpus-warn"]) == ("1", "1")
    assert node.labels["autopilot.ibm.com/gpus-healthy"] == "2"
    shown = json.loads(node.annotations["autopilot.ibm.com/gpus"])
    assert [(g["index"], g["verdict"]) for g in shown["gpus"]] == [
        ("0", "PASS"),
        ("1", "WARN"),
        ("2", "EVICT"),
        ("3", "PASS"),
    ]
    assert shown["gpus"][2]["uuid"] == uuid(2) and shown["gpus"][2]["since"] == "2026-11-30T08:00:00Z"
    # The local label store carries the same (what the API and `autopilot up` read).
    assert store.labels("n1")["autopilot.ibm.com/gpus-evict"] == "1"


def test_reconcile_writes_device_taint_rules_only_when_enabled(backend: Backend) -> None:
    backend.control.add_node("n1", gpus=4)
    backend.control.serve_device_taints("v1beta2")
    store = ResultsStore(fakeredis.FakeRedis())
    store.save_result(result("remapped", "n1", {2: Status.FAIL}, NOW, fatal=True))
    reconcile.reconcile_node(store, "n1", settings(), NOW, cluster=backend.client, checks=shipped_checks())
    assert backend.client.list_device_taint_rules(devicetaints.selector("n1")) == []
    reconcile.reconcile_node(
        store, "n1", settings(device_taints="dry-run"), NOW, cluster=backend.client, checks=shipped_checks()
    )
    assert backend.client.list_device_taint_rules(devicetaints.selector("n1")) == []
    reconcile.reconcile_node(
        store, "n1", settings(device_taints="on"), NOW, cluster=backend.client, checks=shipped_checks()
    )
    found = backend.client.list_device_taint_rules(devicetaints.selector("n1"))
    assert [(r.device, r.value, r.effect) for r in found] == [("gpu-2", "EVICT", "NoSchedule")]
    # Steady state: nothing changed, so no further list or write.
    if backend.standin is not None:
        before = len(backend.standin.requests)
        reconcile.reconcile_node(
            store, "n1", settings(device_taints="on"), NOW, cluster=backend.client, checks=shipped_checks()
        )
        assert not [r for r in backend.standin.requests[before:] if "devicetaintrules" in r.path]


def test_history_follows_the_gpu_across_a_renamed_node_and_flags_a_repeat_offender() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    conf = settings(gpu_repeat_count=3)
    moment = NOW
    # Three WARN/PASS flaps of GPU 1: on node "old", then (renamed or re-imaged) on node "new".
    for node in ("old", "old", "new"):
        store.save_result(result("pciebw", node, {1: Status.FAIL}, moment))
        reconcile.reconcile_node(store, node, conf, moment, checks=shipped_checks())
        flagged = any("repeat offender" in r for r in gpuverdict.loads(store.state(node).gpus)[uuid(1)].reasons)
        assert flagged == (node == "new")  # flagged in the reconcile that records the third fault
        moment += timedelta(hours=1)
        store.save_result(result("pciebw", node, {}, moment))
        reconcile.reconcile_node(store, node, conf, moment, checks=shipped_checks())
        moment += timedelta(hours=1)
    store.save_result(result("pciebw", "new", {}, moment))
    reconcile.reconcile_node(store, "new", conf, moment, checks=shipped_checks())
    steady = store.state("new").gpus
    reconcile.reconcile_node(store, "new", conf, moment, checks=shipped_checks())
    assert store.state("new").gpus == steady  # the flag stands without re-reading the history
    info = store.gpu_history().gpu(uuid(1), now=moment, retention_s=conf.gpu_history_retention_s)
    assert info is not None and info["node"] == "new" and info["serial"] == "1650000001"
    faults = [(i["node"], i["verdict"]) for i in info["incidents"] if i["verdict"] == "WARN"]
    assert faults == [("new", "WARN"), ("old", "WARN"), ("old", "WARN")]
    gpus = gpuverdict.loads(store.state("new").gpus)
    assert "repeat offender: 3 incidents in the last 7 days" in gpus[uuid(1)].reasons
    assert not any("repeat offender" in r for r in gpus[uuid(0)].reasons)
