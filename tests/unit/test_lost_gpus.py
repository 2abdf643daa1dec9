"""A lost node's GPUs are UNKNOWN as the node is (no heartbeat: its results say nothing of its GPUs now),
but a GPU's sticky EVICT stays; the count labels and the annotation say so, and the GPUs come back with
the node's heartbeat."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import fakeredis

from autopilot import config, gpuverdict, results
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from workers import reconcile
from workers.store import NodeRecord, ResultsStore

NODE = "gpu-1"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def setup() -> tuple[ResultsStore, config.Settings]:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    devices = tuple(
        DeviceResult(str(i), Status.FAIL if i == 3 else Status.OK, uuid=uuid(i), bus_id=f"0000:{i:02x}:00.0")
        for i in range(4)
    )
    store.save_result(CheckResult("remapped", Status.FAIL, "GPU 3: row remap failed", node=NODE, fatal=True,
                                  started_at=results.utc_now_iso(T0), devices=devices))  # fmt: skip
    store.heartbeat(NodeRecord(NODE, last_seen=T0.timestamp()))
    return store, settings


def gpus(store: ResultsStore) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {s.index: (s.verdict.value, s.reasons) for s in gpuverdict.loads(store.state(NODE).gpus).values()}


def test_a_lost_nodes_gpus_are_unknown_but_a_sticky_evict_stays() -> None:
    store, settings = setup()
    reconcile.reconcile_node(store, NODE, settings, T0 + timedelta(seconds=30), checks=shipped_checks())
    assert {i: v for i, (v, _) in gpus(store).items()} == {"0": "PASS", "1": "PASS", "2": "PASS", "3": "EVICT"}
    lost_at = T0 + timedelta(seconds=settings.live_after_s + 60)
    decision = reconcile.reconcile_node(store, NODE, settings, lost_at, checks=shipped_checks())
    assert decision.verdict.value == "EVICT"  # the node's sticky EVICT stays too
    found = gpus(store)
    assert {i: v for i, (v, _) in found.items()} == {"0": "UNKNOWN", "1": "UNKNOWN", "2": "UNKNOWN", "3": "EVICT"}
    assert found["0"][1] == ("no heartbeat since 2026-11-30T08:00:00Z",)
    labels = store.labels(NODE)
    assert (labels[gpuverdict.GPUS_HEALTHY], labels[gpuverdict.GPUS_EVICT]) == ("0", "1")
    shown = {g["index"]: g["verdict"] for g in json.loads(labels[gpuverdict.ANNOTATION])["gpus"]}
    assert shown["0"] == "UNKNOWN"


def test_the_gpus_come_back_with_the_heartbeat() -> None:
    store, settings = setup()
    lost_at = T0 + timedelta(seconds=settings.live_after_s + 60)
    reconcile.reconcile_node(store, NODE, settings, lost_at, checks=shipped_checks())
    store.heartbeat(NodeRecord(NODE, last_seen=lost_at.timestamp()))
    reconcile.reconcile_node(store, NODE, settings, lost_at + timedelta(seconds=1), checks=shipped_checks())
    assert {i: v for i, (v, _) in gpus(store).items()} == {"0": "PASS", "1": "PASS", "2": "PASS", "3": "EVICT"}


def test_the_api_shows_a_lost_nodes_gpus_unknown_before_beat_reconciles() -> None:
    from tests.unit.api_helpers import make_api
    from tests.unit.test_api_gpus import judged

    api = make_api()
    judged(api, "node-a", bad=2)  # GPU 2 EVICT, the others PASS, stored by the worker's reconcile
    seen = time.time() - api.settings.live_after_s - 60
    api.store.heartbeat(NodeRecord("node-a", gpu_model="H100", gpu_count=8, last_seen=seen))
    body = api.client.get("/api/v1/nodes/node-a").get_json()
    assert body["verdict"] == "EVICT"
    assert [(g["index"], g["verdict"]) for g in body["gpus"]] == [
        ("0", "UNKNOWN"), ("1", "UNKNOWN"), ("2", "EVICT"), ("3", "UNKNOWN"),
    ]  # fmt: skip
    assert body["gpus"][0]["reasons"][0].startswith("no heartbeat since")
    (listed,) = [n for n in api.client.get("/api/v1/nodes?gpus=true").get_json()["nodes"] if n["name"] == "node-a"]
    assert [g["verdict"] for g in listed["gpus"]] == ["UNKNOWN", "UNKNOWN", "EVICT", "UNKNOWN"]
