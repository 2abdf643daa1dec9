"""What a buggy or older worker leaves in Redis: a heartbeat record that is not a record, a result that
is not JSON, of the wrong shape, of another node, or 20 MB, a node name that is not DNS-1123, bytes that
are not UTF-8. Every reader (the node list and view, /status, /metrics) answers for the rest of the
fleet, leaves the bad value out or reports it as an ``error``, and never lends it to another node."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from autopilot import invasive
from autopilot.results import CheckResult, DeviceResult, Status, StoredResult, utc_now_iso
from autopilot.store import NodeRecord, Run
from autopilot.testing import FakeCluster
from tests.unit.api_helpers import Api, make_api, stand_in_checks
from workers import peers, reconcile, runs
from workers import store as store_mod
from workers.dispatch import Envelope


def _result(check: str = "pciebw", node: str = "node-a", status: str = "ok", **extra: Any) -> bytes:
    return json.dumps({"check": check, "node": node, "status": status, **extra}).encode()


NOT_A_RECORD = {
    "not JSON": b"not json{",
    "a JSON list": b"[1, 2]",
    "no name": json.dumps({"last_seen": 1.0}).encode(),
    "last_seen null": json.dumps({"name": "node-a", "last_seen": None}).encode(),
    "wrong types": json.dumps({"name": "node-a", "gpu_count": "eight", "addresses": "x", "labels": [1]}).encode(),
    "another node's": json.dumps({"name": "node-b", "last_seen": 1.0}).encode(),
}

NOT_A_RESULT = {
    "not JSON": b"garbage",
    "a JSON list": b"[1]",
    "an unknown status": _result(status="PASS"),
    "devices that are not objects": _result(devices=[1, 2]),
    "bytes that are not UTF-8": b'{"check":"pciebw","node":"node-a","status":"ok","summary":"\xff"}',
    "another node's": _result(node="node-b", status="fail", fatal=True),
    "another check's": _result(check="remapped", status="fail", fatal=True),
}


@pytest.mark.parametrize("raw", NOT_A_RECORD.values(), ids=NOT_A_RECORD.keys())
def test_a_heartbeat_record_that_is_not_one_leaves_the_node_list_to_the_others(raw: bytes) -> None:
    api = make_api()
    api.store.r.set("ap:node:node-a", raw)
    listed = api.client.get("/api/v1/nodes")
    assert listed.status_code == 200
    assert [n["name"] for n in listed.get_json()["nodes"]] == ["node-b", "node-c"]
    assert api.client.get("/api/v1/nodes/node-a").status_code == 404  # no record and no result: not known
    metrics = api.client.get("/metrics").get_data(as_text=True)
    assert 'autopilot_node_verdict{node="node-b"' in metrics


@pytest.mark.parametrize("raw", NOT_A_RESULT.values(), ids=NOT_A_RESULT.keys())
def test_a_latest_result_that_is_not_that_nodes_is_left_out_of_its_view_and_metrics(raw: bytes) -> None:
    api = make_api()
    api.store.save_result(CheckResult("ping", Status.OK, "fine", node="node-a"))
    api.store.r.hset("ap:latest:node-a", "pciebw", raw)
    api.store.r.lpush("ap:history:node-a", raw)
    view = api.client.get("/api/v1/nodes/node-a")
    assert view.status_code == 200
    assert list(view.get_json()["latest"]) == ["ping"]
    # A history holds every check: there, only another node's result is out of place.
    kept = ["remapped", "ping"] if raw == NOT_A_RESULT["another check's"] else ["ping"]
    assert [r["check"] for r in view.get_json()["history"]] == kept
    assert set(api.store.latest_many(["node-a"])["node-a"]) == {"ping"}
    metrics = api.client.get("/metrics").get_data(as_text=True)
    assert 'check="ping",node="node-a"' in metrics
    assert 'check="pciebw",node="node-a"' not in metrics


def test_a_result_larger_than_the_limit_is_left_out() -> None:
    api = make_api()
    huge = _result(summary="x" * (store_mod.MAX_RESULT_BYTES + 1))
    api.store.r.hset("ap:latest:node-a", "pciebw", huge)
    view = api.client.get("/api/v1/nodes/node-a")
    assert view.status_code == 200
    assert view.get_json()["latest"] == {}
    assert len(view.get_data()) < 100_000


def test_a_valid_ping_result_of_a_large_fleet_is_read_back() -> None:
    # ping keeps a pair per peer address: 10,000 nodes on two interfaces is about 5 MB, written by our own
    # worker; refused where read, every node's ping was missing (its verdict unknown) fleet-wide.
    api = make_api()
    pairs = [
        {"target": f"gpu-node-{i:05d}", "interface": f"net{k}", "address": f"10.{k}.{i // 256}.{i % 256}",
         "status": "ok", "loss_pct": 0.0, "detail": "rtt 0.052 ms", "rtt_avg_ms": 0.052, "rtt_max_ms": 0.063}
        for i in range(10_000) for k in range(2)
    ]  # fmt: skip
    devices = tuple(DeviceResult(f"{p['target']}/{p['interface']}", Status.OK, 0.0, "%", "rtt 0.052 ms") for p in pairs)
    summary = "all 10000 peers reachable"
    big = CheckResult("ping", Status.OK, summary, node="node-a", devices=devices, data={"pairs": pairs})
    assert len(big.to_json_bytes()) > 4 * 1024 * 1024
    api.store.save_result(big)
    assert api.store.latest("node-a")["ping"].summary == summary
    assert [r.check for r in api.store.history("node-a")] == ["ping"]


def _answer_with(api: Api, blob: bytes) -> None:
    def answer(env: Envelope) -> None:
        api.store.r.hset(f"ap:run:{env.run_id}", f"{env.node}|pciebw", blob)
        api.store.r.rpush(f"ap:runlog:{env.run_id}", f"{env.node}|pciebw")

    api.workers.answer = answer  # type: ignore[method-assign]


@pytest.mark.parametrize("raw", NOT_A_RESULT.values(), ids=NOT_A_RESULT.keys())
def test_a_run_answer_that_is_not_that_nodes_result_is_an_error_never_a_500_nor_a_pass(raw: bytes) -> None:
    api = make_api(nodes=("node-a",))
    _answer_with(api, raw)
    answer = api.client.get("/status?host=node-a&check=pciebw&format=json")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "error"
    (result,) = body["nodes"]["node-a"]["results"]
    assert (result["check"], result["node"], result["status"], result["fatal"]) == ("pciebw", "node-a", "error", False)
    assert "unreadable" in result["summary"]
    text = api.client.get("/status?host=node-a&check=pciebw")
    assert text.status_code == 200
    assert "[[ PCIEBW ]] ABORT: the result stored for this check is unreadable" in text.get_data(as_text=True)
    run_id = body["id"]
    assert api.client.get(f"/api/v1/runs/{run_id}").get_json()["nodes"]["node-a"]["status"] == "error"


def test_a_node_name_that_is_not_dns1123_is_left_out_of_every_node_list() -> None:
    api = make_api()
    now = time.time()
    for bad in ("bad name|x:*", "evil\x1b[31m", "UPPER"):
        api.store.r.zadd("ap:nodes", {bad: now})
        api.store.r.set(f"ap:node:{bad}", json.dumps({"name": bad, "last_seen": now}))
    assert api.store.node_names() == ["node-a", "node-b", "node-c"]
    assert set(api.store.last_seen()) == {"node-a", "node-b", "node-c"}
    listed = api.client.get("/api/v1/nodes").get_json()
    assert [n["name"] for n in listed["nodes"]] == ["node-a", "node-b", "node-c"]
    assert "\x1b" not in api.client.get("/metrics").get_data(as_text=True)


def test_state_and_labels_that_are_not_utf8_are_read_with_replacement_characters() -> None:
    api = make_api()
    api.store.r.hset("ap:state:node-a", mapping={"verdict": b"\xff", "reasons": b"{{"})
    api.store.r.hset("ap:labels:node-a", b"\xfe", b"\xff")
    assert api.client.get("/api/v1/nodes").status_code == 200
    view = api.client.get("/api/v1/nodes/node-a")
    assert view.status_code == 200
    assert view.get_json()["labels"] == {"\ufffd": "\ufffd"}
    assert api.client.get("/status?host=node-a&format=json").status_code == 200


def test_check_result_and_node_record_refuse_other_shapes_with_value_error() -> None:
    for raw in ([1], {"status": "ok"}, {"check": "x", "status": "ok", "devices": [1]}, {"check": "x", "status": []}):
        with pytest.raises(ValueError):
            CheckResult.from_dict(raw)  # type: ignore[arg-type]
    for record in ([], {"last_seen": 1}, {"name": "n", "gpu_count": True}, {"name": "n", "last_seen": float("nan")}):
        with pytest.raises(ValueError):
            NodeRecord.from_dict(record)  # type: ignore[arg-type]
    kept = NodeRecord("n", {"eth0": ["10.0.0.1"]}, "cpu", "H100", 8, "535", {"a": "b"}, "1", 5.0, True)
    assert NodeRecord.from_dict(json.loads(json.dumps(kept.to_dict())) | {"newer_field": 1}) == kept


def test_a_stored_result_names_the_node_and_check_it_was_stored_under() -> None:
    blob = CheckResult("pciebw", Status.FAIL, "slow", node="node-b", fatal=True).to_json_bytes()
    assert StoredResult.of(blob, node="node-b", check="pciebw").status == "fail"
    with pytest.raises(ValueError):
        StoredResult.of(blob, node="node-a", check="pciebw")
    with pytest.raises(ValueError):
        StoredResult.of(blob, node="node-b", check="remapped")
    assert store_mod.stored_result(blob, "node-a", "pciebw").status == "error"


def test_an_invasive_log_with_a_result_of_the_wrong_shape_is_no_result() -> None:
    log = '{"check": "dcgm", "node": "n", "status": "ok", "devices": [1, 2]}\n'
    assert invasive.parse_result_log(log, "n") is None


def _fresh(check: str, status: Status = Status.OK, **extra: Any) -> CheckResult:
    return CheckResult(check, status, "fine", node=extra.pop("node", "node-a"), started_at=utc_now_iso(), **extra)


def test_an_eviction_stamp_that_does_not_parse_keeps_the_node_evicted_and_the_loop_going() -> None:
    api = make_api()
    api.store.r.hset("ap:state:node-a", mapping={"evicted_at": "not a time", "evict_cause": "[[["})
    api.store.r.hset("ap:state:node-b", mapping={"cleared_at": "not a time", "cleared_by": "someone"})
    verdicts = reconcile.reconcile_all(api.store, api.settings, checks=stand_in_checks())
    assert verdicts == {"node-a": "EVICT", "node-b": "UNKNOWN", "node-c": "UNKNOWN"}


def test_a_result_whose_start_time_does_not_parse_is_no_fresh_result() -> None:
    api = make_api()
    for check in api.settings.periodic_checks:
        api.store.save_result(_fresh(check))
    api.store.r.hset("ap:latest:node-a", "ping", _result(check="ping", started_at="yesterday"))
    assert reconcile.reconcile_all(api.store, api.settings, checks=stand_in_checks())["node-a"] == "UNKNOWN"
    assert set(api.store.latest("node-a")) == set(api.settings.periodic_checks) - {"ping"}


def test_one_node_that_cannot_be_reconciled_leaves_the_others_reconciled(caplog: pytest.LogCaptureFixture) -> None:
    api = make_api()
    for node in ("node-a", "node-b"):
        for check in api.settings.periodic_checks:
            api.store.save_result(_fresh(check, node=node))
    # A level-3 pass whose level is not a number, on an evicted node: judging whether it clears fails.
    api.store.save_result(_fresh("dcgm", node="node-a", params={"r": "three"}))
    api.store.set_state("node-a", {"evicted_at": utc_now_iso(), "verdict": "EVICT"})
    verdicts = reconcile.reconcile_all(api.store, api.settings, checks=stand_in_checks())
    assert verdicts == {"node-b": "PASS", "node-c": "UNKNOWN"}
    assert "reconcile of node node-a failed" in caplog.text


def test_a_gone_stamp_that_does_not_parse_keeps_the_node_and_the_loop_going() -> None:
    # node-a is lost (no heartbeat for long) and its Node object is gone; its node_gone_at was written by
    # another writer. Deciding whether to forget it raised outside the per-node guard: every later node of
    # every tick went unreconciled.
    cluster = FakeCluster()
    for node in ("node-b", "node-c"):
        cluster.add_node(node, gpus=8)
    api = make_api(cluster=cluster)
    long_ago = time.time() - api.settings.live_after_s - api.settings.node_retention_s - 60
    api.store.heartbeat_many([NodeRecord("node-a", gpu_model="H100", gpu_count=8, last_seen=long_ago)])
    api.store.r.hset("ap:state:node-a", mapping={"node_gone_at": "not a time"})
    verdicts = reconcile.reconcile_all(api.store, api.settings, cluster, checks=stand_in_checks())
    assert set(verdicts) == {"node-a", "node-b", "node-c"}  # kept: a stamp that does not parse forgets nothing
    assert api.store.node("node-a") is not None


def test_counters_that_are_not_integers_leave_the_rest_of_the_scrape() -> None:
    api = make_api()
    api.store.r.hset("ap:busy:node-a", mapping={"pciebw": "many", "gpumem": "2"})
    api.store.r.hset("ap:confirm:node-a", mapping={"runs|ping": "NaN", "runs|pciebw": "3", "pending": "x"})
    assert api.store.busy_counts(["node-a"]) == {"node-a": {"gpumem": 2}}
    assert api.store.confirmation_counts(["node-a"]) == {"node-a": {"runs|pciebw": 3}}
    metrics = api.client.get("/metrics").get_data(as_text=True)
    assert 'autopilot_checks_busy_total{check="gpumem",node="node-a"} 2.0' in metrics
    assert 'autopilot_node_verdict{node="node-b"' in metrics


BAD_PAIRS = {
    "not a list": "x",
    "not objects": [1, "a"],
    "no target": [{"interface": "eth0", "status": "fail"}],
    "a target that is no name": [{"target": ["node-b"], "interface": "eth0", "status": "fail"}],
    "names with escapes": [{"target": "node-b\x1b[31m", "interface": "eth0\x1b]0;x\x07", "status": "fail"}],
}


@pytest.mark.parametrize("pairs", BAD_PAIRS.values(), ids=BAD_PAIRS.keys())
def test_network_pairs_of_another_shape_are_left_out_of_the_network_summary(pairs: Any) -> None:
    api = make_api(nodes=("node-a", "node-b"))
    good = [{"target": "node-a", "interface": "eth0", "status": "ok"}]

    def answer(env: Envelope) -> None:
        data = {"pairs": pairs if env.node == "node-a" else good}
        api.store.save_result(CheckResult("ping", Status.FAIL, "bad", node=env.node, data=data), env.run_id)

    api.workers.answer = answer  # type: ignore[method-assign]
    body = api.client.get("/status?check=ping&format=json")
    assert body.status_code == 200
    assert body.get_json()["network"]["ping"]["pairs"] == 1  # node-b's good pair alone
    text = api.client.get("/status?check=ping")
    assert text.status_code == 200 and "\x1b" not in text.get_data(as_text=True)


def test_iperf_pairs_of_another_shape_are_left_out_of_the_interface_summary() -> None:
    ok = {"source": "node-a", "target": "node-b", "interface": "eth0", "status": "ok", "gbps": 90.0}
    bad = [1, {**ok, "gbps": "fast"}, {**ok, "gbps": True}, {**ok, "source": "A|B"}, {**ok, "status": None}]
    run = Run.new(["iperf"], ["node-a", "node-b"], {}, 5.0)
    found = {
        (node, "iperf"): StoredResult.from_result(CheckResult("iperf", Status.OK, "ring", node=node, data=data))
        for node, data in (("node-a", {"pairs": [ok, *bad]}), ("node-b", {"pairs": "x"}))
    }
    net = runs.network_report(run, found, late=())
    assert net["iperf"]["pairs"] == 1
    assert net["iperf"]["interfaces"]["eth0"]["mean_gbps"] == 90.0


def test_a_heartbeat_address_that_is_no_ip_literal_never_reaches_a_ping_command_line() -> None:
    addresses = {"eth0": ["10.0.0.2", "-V", "evil.example.com", "cafe.be"], "ib0": ["fe80::1%ib0", "1.2.3.4 -f"]}
    record = NodeRecord("node-b", addresses=addresses, last_seen=time.time())
    assert [(p.interface, p.address) for p in peers.record_peers([record])] == [
        ("eth0", "10.0.0.2"),
        ("ib0", "fe80::1%ib0"),
    ]
