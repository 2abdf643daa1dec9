"""Per-GPU verdicts and history through the API, the CLI and /metrics (issue 15 items 1 and 4)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import client
from autopilot import gpuhistory
from autopilot.gpuhistory import Incident
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from tests.unit.api_helpers import Api, make_api
from tests.unit.test_api_client import Served
from workers import reconcile
from workers.store import NodeRecord


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def remapped(node: str, bad: int | None, at: datetime) -> CheckResult:
    devices = tuple(
        DeviceResult(
            str(i),
            Status.FAIL if i == bad else Status.OK,
            detail="row remap failed" if i == bad else "ok",
            uuid=uuid(i),
            bus_id=f"0000:{i:02x}:00.0",
        )
        for i in range(4)
    )
    status = Status.FAIL if bad is not None else Status.OK
    return CheckResult(
        "remapped",
        status,
        "s",
        node=node,
        fatal=bad is not None,
        devices=devices,
        started_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def judged(api: Api, node: str = "node-a", bad: int | None = 2) -> None:
    now = datetime.fromtimestamp(time.time(), UTC)
    api.store.save_result(remapped(node, bad, now))
    reconcile.reconcile_node(api.store, node, api.settings, now, checks=shipped_checks())


@pytest.fixture
def api() -> Api:
    return make_api()


def test_node_answer_has_the_per_gpu_table(api: Api) -> None:
    judged(api)
    body = api.client.get("/api/v1/nodes/node-a").get_json()
    assert [(g["index"], g["verdict"]) for g in body["gpus"]] == [
        ("0", "PASS"),
        ("1", "PASS"),
        ("2", "EVICT"),
        ("3", "PASS"),
    ]
    assert body["gpus"][2]["uuid"] == uuid(2) and "row remap failed" in body["gpus"][2]["reasons"][0]
    assert "gpus" not in body["state"]
    assert body["labels"]["autopilot.ibm.com/gpus-evict"] == "1"


def test_node_list_adds_gpus_only_when_asked(api: Api) -> None:
    judged(api)
    plain = api.client.get("/api/v1/nodes").get_json()
    assert all("gpus" not in n for n in plain["nodes"])
    full = api.client.get("/api/v1/nodes?gpus=true").get_json()
    by_name = {n["name"]: n for n in full["nodes"]}
    assert len(by_name["node-a"]["gpus"]) == 4 and by_name["node-b"]["gpus"] == []
    bad = api.client.get("/api/v1/nodes?gpus=maybe")
    assert bad.status_code == 400 and bad.get_json()["field"] == "gpus"


def test_gpu_history_route(api: Api) -> None:
    judged(api)
    body = api.client.get(f"/api/v1/gpus/{uuid(2)}").get_json()
    assert body["uuid"] == uuid(2) and body["node"] == "node-a"
    assert [(i["kind"], i["verdict"]) for i in body["incidents"]] == [("verdict", "EVICT")]
    assert body["verdict"]["verdict"] == "EVICT"
    assert api.client.get(f"/api/v1/gpus/{uuid(9)}").status_code == 404


@pytest.mark.parametrize(("skew_s", "shown"), [(-600.0, True), (600.0, False)])
def test_gpu_history_retention_is_judged_on_the_clock_that_stamped_each_incident(
    api: Api, skew_s: float, shown: bool
) -> None:
    # node-a's worker clock runs 10 min behind (ahead of) the store's, which this host shares here; its reconcile
    # stamped an incident that is, on that clock, 5 min short of (past) retention: that reconcile keeps (drops) it,
    # and so must the API. Before, the API judged it on its own host's clock: 5 min past (short of) retention.
    keep = api.settings.gpu_history_retention_s
    api.store.heartbeat(NodeRecord("node-a", gpu_count=8, last_seen=time.time() + skew_s, clock_offset=skew_s))
    age = keep - 300 if shown else keep + 300
    at = datetime.fromtimestamp(time.time() + skew_s - age, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    incident = Incident(at, uuid(2), "node-a", gpuhistory.VERDICT, "EVICT", "PASS")
    api.store.gpu_history().record("node-a", {}, [incident], now=datetime.now(UTC), history_len=10, retention_s=keep)
    answer = api.client.get(f"/api/v1/gpus/{uuid(2)}")
    if shown:
        assert [i["at"] for i in answer.get_json()["incidents"]] == [at]
    else:
        assert answer.status_code == 404  # nothing retained and never sighted: unknown, as to its reconcile


@pytest.mark.parametrize("bad", ["GPU-x", "ap:*", "GPU-00000002-0000-4000-8000-00000000000g", "gpu-00000002"])
def test_gpu_route_validates_the_uuid_before_redis(api: Api, bad: str) -> None:
    before = sorted(api.store.r.keys("*"))
    answer = api.client.get(f"/api/v1/gpus/{bad}")
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "uuid"
    assert sorted(api.store.r.keys("*")) == before


def test_metrics_carry_each_gpu(api: Api) -> None:
    judged(api)
    text = api.client.get("/metrics").get_data(as_text=True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    gpus = {(s.labels["gpu"], s.labels["verdict"]) for s in families["autopilot_gpu_verdict"].samples}
    assert gpus == {("0", "PASS"), ("1", "PASS"), ("2", "EVICT"), ("3", "PASS")}
    totals = {s.labels["verdict"]: s.value for s in families["autopilot_gpus"].samples}
    assert totals == {"PASS": 3.0, "WARN": 0.0, "EVICT": 1.0, "UNKNOWN": 0.0}


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(make_api(deadline_s=1))
    yield s
    s.close()


def test_cli_nodes_gpus_table(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    judged(served.api)
    assert client.nodes_main(["--url", served.url, "--gpus"]) == 0
    out = capsys.readouterr().out
    assert "4 GPU(s) on 3 node(s)" in out
    assert uuid(2) in out and "EVICT" in out and "row remap failed" in out
