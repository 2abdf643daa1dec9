"""Node state over time: lost nodes, forgotten nodes, the cause of an eviction, and refused Events.

Driven through ``workers.reconcile`` (what beat's reconcile tick and every task run) over a
fakeredis store and ``FakeCluster``, with explicit clocks: each test says what a node's record,
results and state are and reads back what an operator would see (the stored verdict and reasons,
the local labels, the Node's label, condition and Events).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autopilot import config, errors, verdict
from autopilot.cluster import CONDITION_TYPE
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status, utc_now_iso
from autopilot.testing import FakeCluster
from tests.unit.api_helpers import make_api
from workers import reconcile
from workers.store import NodeRecord, ResultsStore

HEALTH = "autopilot.ibm.com/gpuhealth"
NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
CHECKS = ("pciebw", "remapped")


def make_settings(**overrides: object) -> config.Settings:
    base: dict[str, object] = {
        "node_name": "api",
        "periodic_checks": CHECKS,
        "periodic_interval_s": 3600.0,
        "heartbeat_interval_s": 15.0,
    }
    return config.Settings(**{**base, **overrides})  # type: ignore[arg-type]


def make_store() -> ResultsStore:
    return ResultsStore(fakeredis.FakeRedis())


def beat(store: ResultsStore, node: str, at: datetime) -> None:
    store.heartbeat(NodeRecord(node, gpu_count=8, last_seen=at.timestamp()))


def ok(node: str, check: str, at: datetime) -> CheckResult:
    return CheckResult(check, Status.OK, "fine", node=node, started_at=utc_now_iso(at))


def fatal(node: str, at: datetime) -> CheckResult:
    return CheckResult(
        "remapped",
        Status.FAIL,
        "GPU 3 has a row remapping failure",
        node=node,
        fatal=True,
        started_at=utc_now_iso(at),
        devices=(DeviceResult("3", Status.FAIL, 1, None, "remap failure"), DeviceResult("1", Status.OK, 0, None, "")),
    )


def healthy(store: ResultsStore, node: str, at: datetime) -> None:
    for check in CHECKS:
        store.save_result(ok(node, check, at))


def reasons(store: ResultsStore, node: str) -> list[str]:
    return list(json.loads(store.state(node).reasons))


# ---------------------------------------------------------------- lost nodes


def test_a_node_that_stopped_heartbeating_is_unknown_with_its_last_heartbeat() -> None:
    store, settings = make_store(), make_settings()
    healthy(store, "gpu-1", NOW - timedelta(minutes=10))
    beat(store, "gpu-1", NOW - timedelta(seconds=30))
    assert reconcile.reconcile_all(store, settings, now=NOW, checks=shipped_checks()) == {"gpu-1": "PASS"}
    # three heartbeat intervals (45 s) later than its last heartbeat: lost, though its results are fresh
    later = NOW + timedelta(seconds=20)
    assert reconcile.reconcile_all(store, settings, now=later, checks=shipped_checks()) == {"gpu-1": "UNKNOWN"}
    assert reasons(store, "gpu-1") == [f"no heartbeat since {utc_now_iso(NOW - timedelta(seconds=30))}"]
    assert store.labels("gpu-1")[HEALTH] == "UNKNOWN"


def test_lost_is_judged_when_periodic_checks_are_off() -> None:
    """With AUTOPILOT_PERIODIC_INTERVAL=0 results never age out: only the heartbeat can tell."""
    store, settings = make_store(), make_settings(periodic_interval_s=0.0)
    healthy(store, "gpu-1", NOW - timedelta(days=3))
    beat(store, "gpu-1", NOW - timedelta(hours=2))
    assert reconcile.reconcile_all(store, settings, now=NOW, checks=shipped_checks()) == {"gpu-1": "UNKNOWN"}
    assert reasons(store, "gpu-1")[0].startswith("no heartbeat since 2026-11-30T06:00:00")


def test_node_lost_after_is_a_setting() -> None:
    store = make_store()
    healthy(store, "gpu-1", NOW - timedelta(minutes=10))
    beat(store, "gpu-1", NOW - timedelta(seconds=100))
    assert reconcile.reconcile_all(store, make_settings(node_lost_after_s=300.0), now=NOW, checks=shipped_checks()) == {
        "gpu-1": "PASS"
    }
    assert reconcile.reconcile_all(store, make_settings(node_lost_after_s=60.0), now=NOW, checks=shipped_checks()) == {
        "gpu-1": "UNKNOWN"
    }
    assert config.Settings.from_env({"AUTOPILOT_NODE_LOST_AFTER": "2m"}).live_after_s == 120.0
    assert config.Settings.from_env({"AUTOPILOT_HEARTBEAT_INTERVAL": "10s"}).live_after_s == 30.0


def test_the_lost_verdict_reaches_the_node_label_and_condition() -> None:
    store, settings = make_store(), make_settings()
    cluster = FakeCluster()
    cluster.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
    healthy(store, "gpu-1", NOW - timedelta(minutes=10))
    beat(store, "gpu-1", NOW - timedelta(minutes=5))
    reconcile.reconcile_all(store, settings, cluster, now=NOW, checks=shipped_checks())
    node = cluster.get_node("gpu-1")
    assert node.labels[HEALTH] == "UNKNOWN"
    condition = node.condition(CONDITION_TYPE)
    assert condition is not None and condition.status == "Unknown"
    assert condition.message.startswith("no heartbeat since ")


def test_a_lost_evicted_node_stays_evicted_and_says_both() -> None:
    store, settings = make_store(), make_settings()
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=10)))
    store.save_result(ok("gpu-1", "pciebw", NOW - timedelta(minutes=10)))
    beat(store, "gpu-1", NOW - timedelta(seconds=10))
    assert reconcile.reconcile_all(store, settings, now=NOW, checks=shipped_checks()) == {"gpu-1": "EVICT"}
    assert reconcile.reconcile_all(store, settings, now=NOW + timedelta(hours=1), checks=shipped_checks()) == {
        "gpu-1": "EVICT"
    }
    said = reasons(store, "gpu-1")
    assert said[0].startswith("evicted since ") and said[-1].startswith("no heartbeat since ")


def test_a_node_that_comes_back_is_judged_on_its_results_again() -> None:
    store, settings = make_store(), make_settings()
    healthy(store, "gpu-1", NOW - timedelta(minutes=10))
    beat(store, "gpu-1", NOW - timedelta(minutes=5))
    assert reconcile.reconcile_all(store, settings, now=NOW, checks=shipped_checks()) == {"gpu-1": "UNKNOWN"}
    beat(store, "gpu-1", NOW)
    assert reconcile.reconcile_all(store, settings, now=NOW, checks=shipped_checks()) == {"gpu-1": "PASS"}


def test_the_view_carries_the_last_heartbeat() -> None:
    store = make_store()
    beat(store, "gpu-1", NOW)
    assert store.view("gpu-1").last_seen == NOW.timestamp()
    assert store.view("gpu-2").last_seen is None
    view = store.save_many([(ok("gpu-1", "pciebw", NOW), True)], view="gpu-1")
    assert view is not None and view.last_seen == NOW.timestamp()
    assert store.last_seen() == {"gpu-1": NOW.timestamp()}


# ---------------------------------------------------------------- forgetting


def test_a_node_deleted_from_the_cluster_is_forgotten_after_the_retention() -> None:
    store, settings = make_store(), make_settings(node_retention_s=3600.0)
    cluster = FakeCluster()
    cluster.add_node("gpu-2", gpus=8)  # still in the cluster, lost as long: kept
    for node in ("gpu-1", "gpu-2"):
        healthy(store, node, NOW - timedelta(hours=1))
        beat(store, node, NOW - timedelta(minutes=30))
    assert reconcile.reconcile_all(store, settings, cluster, now=NOW, checks=shipped_checks()) == {
        "gpu-1": "UNKNOWN",
        "gpu-2": "UNKNOWN",
    }
    assert store.state("gpu-1").node_gone_at == utc_now_iso(NOW)
    later = NOW + timedelta(minutes=59)
    assert set(reconcile.reconcile_all(store, settings, cluster, now=later, checks=shipped_checks())) == {
        "gpu-1",
        "gpu-2",
    }
    gone = NOW + timedelta(hours=1)
    assert reconcile.reconcile_all(store, settings, cluster, now=gone, checks=shipped_checks()) == {"gpu-2": "UNKNOWN"}
    assert store.node("gpu-1") is None and store.latest("gpu-1") == {} and store.state("gpu-1").empty
    assert store.labels("gpu-1") == {} and "gpu-1" not in store.node_names()
    assert store.node("gpu-2") is not None


def test_a_node_object_that_reappears_is_not_forgotten() -> None:
    store, settings = make_store(), make_settings(node_retention_s=3600.0)
    cluster = FakeCluster()
    healthy(store, "gpu-1", NOW - timedelta(hours=1))
    beat(store, "gpu-1", NOW - timedelta(minutes=30))
    reconcile.reconcile_all(store, settings, cluster, now=NOW, checks=shipped_checks())
    cluster.add_node("gpu-1", gpus=8)
    reconcile.reconcile_all(store, settings, cluster, now=NOW + timedelta(minutes=1), checks=shipped_checks())
    assert store.state("gpu-1").node_gone_at is None
    assert reconcile.reconcile_all(store, settings, cluster, now=NOW + timedelta(hours=2), checks=shipped_checks()) == {
        "gpu-1": "UNKNOWN"
    }


def test_without_a_cluster_a_node_lost_past_the_retention_is_forgotten() -> None:
    store, settings = make_store(), make_settings(node_retention_s=86400.0)
    healthy(store, "gpu-1", NOW - timedelta(days=2))
    beat(store, "gpu-1", NOW - timedelta(hours=23))
    beat(store, "gpu-2", NOW)
    assert set(reconcile.reconcile_all(store, settings, now=NOW, checks=shipped_checks())) == {"gpu-1", "gpu-2"}
    assert set(reconcile.reconcile_all(store, settings, now=NOW + timedelta(hours=1), checks=shipped_checks())) == {
        "gpu-2"
    }
    assert store.node_names() == ["gpu-2"]


# ---------------------------------------------------------------- the cause of an eviction


def test_the_cause_of_an_eviction_is_kept_while_it_holds() -> None:
    store, settings = make_store(), make_settings()
    cluster = FakeCluster()
    cluster.add_node("gpu-1", gpus=8)
    at = NOW - timedelta(minutes=10)
    store.save_result(fatal("gpu-1", at))
    first = reconcile.reconcile_node(store, "gpu-1", settings, NOW, cluster=cluster, checks=shipped_checks())
    assert first.verdict is verdict.Verdict.EVICT
    # the fatal result is replaced by a periodic pass: the eviction holds, and so does its cause
    healthy(store, "gpu-1", NOW)
    held = reconcile.reconcile_node(
        store, "gpu-1", settings, NOW + timedelta(minutes=1), cluster=cluster, checks=shipped_checks()
    )
    assert held.verdict is verdict.Verdict.EVICT
    cause = f"remapped on GPU 3: GPU 3 has a row remapping failure ({utc_now_iso(at)})"
    assert held.reasons == (f"evicted since {utc_now_iso(NOW)} by {cause}; not cleared",)
    assert reasons(store, "gpu-1") == list(held.reasons)
    condition = cluster.get_node("gpu-1").condition(CONDITION_TYPE)
    assert condition is not None and cause in condition.message


def test_an_operators_clear_says_who_cleared_what_and_when() -> None:
    store, settings = make_store(), make_settings()
    cluster = FakeCluster()
    cluster.add_node("gpu-1", gpus=8)
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=10)))
    reconcile.reconcile_node(store, "gpu-1", settings, NOW, cluster=cluster, checks=shipped_checks())
    healthy(store, "gpu-1", datetime.now(UTC))
    after = reconcile.clear_evict(store, "gpu-1", settings, by="api:10.0.0.7", cluster=cluster, checks=shipped_checks())
    assert after.verdict is verdict.Verdict.PASS
    [note] = after.notes
    assert "remapped on GPU 3: GPU 3 has a row remapping failure" in note and "cleared by api:10.0.0.7 at " in note
    assert reasons(store, "gpu-1") == [note]
    state = store.state("gpu-1")
    assert state.cleared_by == "api:10.0.0.7" and state.evicted_at is None and state.evict_cause is None
    condition = cluster.get_node("gpu-1").condition(CONDITION_TYPE)
    assert condition is not None and condition.message == f"all periodic checks pass; {note}"


def test_a_level3_pass_clears_and_is_named_as_the_one_that_cleared() -> None:
    store, settings = make_store(), make_settings()
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=10)))
    reconcile.reconcile_node(store, "gpu-1", settings, NOW, checks=shipped_checks())
    healthy(store, "gpu-1", NOW + timedelta(minutes=5))
    store.save_result(
        CheckResult(
            "dcgm", Status.OK, "", node="gpu-1", params={"r": 3}, started_at=utc_now_iso(NOW + timedelta(minutes=1))
        )
    )
    after = reconcile.reconcile_node(store, "gpu-1", settings, NOW + timedelta(minutes=30), checks=shipped_checks())
    assert after.verdict is verdict.Verdict.PASS
    assert after.notes == (
        "eviction (remapped on GPU 3: GPU 3 has a row remapping failure (2026-11-30T07:50:00Z)) cleared by "
        "a passing DCGM level-3 run at 2026-11-30T08:01:00Z",
    )


def test_a_new_eviction_replaces_the_record_of_the_last_clear() -> None:
    store, settings = make_store(), make_settings()
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=10)))
    reconcile.reconcile_node(store, "gpu-1", settings, NOW, checks=shipped_checks())
    # The fatal result is fresh at the clear (a clear on the test's clock, not the wall's): evicted again.
    reconcile.clear_evict(store, "gpu-1", settings, by="api:10.0.0.7", checks=shipped_checks(), now=NOW)
    state = store.state("gpu-1")
    assert state.verdict == "EVICT" and state.cleared_by is None
    assert verdict.causes_from_json(state.evict_cause)[0].gpus == ("3",)


# ---------------------------------------------------------------- refused Events


def test_a_refused_event_is_recorded_and_announced_again_at_the_next_reconcile() -> None:
    store, settings = make_store(), make_settings()
    cluster = FakeCluster()
    cluster.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
    store.set_state("gpu-1", {"verdict": "PASS", "published_verdict": "PASS"})
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=1)))
    cluster.fail_next("create_node_event", 403)
    reconcile.reconcile_node(store, "gpu-1", settings, NOW, cluster=cluster, checks=shipped_checks())
    assert cluster.get_node("gpu-1").labels[HEALTH] == "EVICT"
    assert cluster.events_for("Node", "gpu-1") == []
    state = store.state("gpu-1")
    assert "403" in state.event_error and state.event_failures == "1"
    assert state.published_verdict == "PASS"
    reconcile.reconcile_node(
        store, "gpu-1", settings, NOW + timedelta(seconds=30), cluster=cluster, checks=shipped_checks()
    )
    [event] = cluster.events_for("Node", "gpu-1")
    assert "PASS -> EVICT" in event.message and event.namespace == "default"
    state = store.state("gpu-1")
    assert state.event_error is None and state.published_verdict == "EVICT"


def test_an_event_refused_every_time_is_given_up_after_a_bounded_number_of_tries() -> None:
    store, settings = make_store(), make_settings()
    cluster = FakeCluster()
    cluster.add_node("gpu-1", gpus=8)
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=1)))
    cluster.fail_next("create_node_event", 422, times=reconcile.EVENT_ATTEMPTS + 1)
    for i in range(reconcile.EVENT_ATTEMPTS + 2):
        reconcile.reconcile_node(
            store, "gpu-1", settings, NOW + timedelta(seconds=30 * i), cluster=cluster, checks=shipped_checks()
        )
    state = store.state("gpu-1")
    assert state.published_verdict == "EVICT" and "422" in state.event_error
    # tried EVENT_ATTEMPTS times, then no more: the one refusal left is still waiting for a caller
    with pytest.raises(errors.ClusterError):
        cluster.create_node_event("gpu-1", reason="r", message="m", type_="Normal", namespace="default")
    cluster.create_node_event("gpu-1", reason="r", message="m", type_="Normal", namespace="default")


@pytest.mark.parametrize("namespace_setting", ["autopilot", "ops"])
def test_node_events_go_to_default_whatever_autopilots_namespace(namespace_setting: str) -> None:
    store, settings = make_store(), make_settings(namespace=namespace_setting)
    cluster = FakeCluster()
    cluster.add_node("gpu-1", gpus=8)
    store.save_result(fatal("gpu-1", NOW - timedelta(minutes=1)))
    reconcile.reconcile_node(store, "gpu-1", settings, NOW, cluster=cluster, checks=shipped_checks())
    [event] = cluster.events_for("Node", "gpu-1")
    assert event.namespace == "default" and store.state("gpu-1").event_error is None


# ---------------------------------------------------------------- what the API shows


def test_the_node_list_shows_a_lost_node_unknown_before_any_reconcile() -> None:
    api = make_api()
    old = time.time() - 3600
    api.store.heartbeat(NodeRecord("node-b", gpu_count=8, last_seen=old))
    api.store.set_state("node-b", {"verdict": "PASS", "reasons": "[]"})
    listed = {n["name"]: n for n in api.client.get("/api/v1/nodes").get_json()["nodes"]}
    since = utc_now_iso(datetime.fromtimestamp(old, UTC))
    assert (listed["node-b"]["verdict"], listed["node-b"]["reasons"]) == ("UNKNOWN", [f"no heartbeat since {since}"])
    assert listed["node-b"]["live"] is False
    one = api.client.get("/api/v1/nodes/node-b").get_json()
    assert (one["verdict"], one["reasons"]) == ("UNKNOWN", [f"no heartbeat since {since}"])


def test_metrics_show_a_lost_node_unknown() -> None:
    api = make_api()
    api.store.heartbeat(NodeRecord("node-b", gpu_count=8, last_seen=time.time() - 3600))
    for node in ("node-a", "node-b"):
        api.store.set_state(node, {"verdict": "PASS"})
    text = api.client.get("/metrics").get_data(as_text=True)
    verdicts = {
        (s.labels["node"], s.labels["verdict"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "autopilot_node_verdict" and s.value == 1.0
    }
    assert ("node-b", "UNKNOWN") in verdicts and ("node-a", "PASS") in verdicts


def test_the_node_view_keeps_the_eviction_and_then_the_clear() -> None:
    api = make_api()
    store, settings = api.store, api.settings
    at = datetime.now(UTC) - timedelta(minutes=5)
    store.save_result(fatal("node-a", at))
    reconcile.reconcile_node(store, "node-a", settings, checks=shipped_checks())
    store.save_result(ok("node-a", "remapped", datetime.now(UTC)))
    reconcile.reconcile_node(store, "node-a", settings, checks=shipped_checks())
    view = api.client.get("/api/v1/nodes/node-a").get_json()
    assert view["verdict"] == "EVICT" and "remapped on GPU 3: GPU 3 has a row remapping failure" in view["reasons"][0]
    assert view["eviction"]["causes"] == [
        {"check": "remapped", "summary": "GPU 3 has a row remapping failure", "at": utc_now_iso(at), "gpus": ["3"]}
    ]
    assert view["cleared"] is None
    listed = {n["name"]: n for n in api.client.get("/api/v1/nodes").get_json()["nodes"]}
    assert "remapped on GPU 3" in listed["node-a"]["reasons"][0]
    assert api.client.post("/api/v1/nodes/node-a/clear").status_code == 200
    view = api.client.get("/api/v1/nodes/node-a").get_json()
    assert view["eviction"] is None and view["cleared"]["by"].startswith("api:")
    assert "remapped on GPU 3" in view["cleared"]["cause"]
    assert any("cleared by api:" in r for r in view["reasons"])


def test_a_stored_run_reports_a_lost_node_unreachable_at_once_and_completes_without_it() -> None:
    api = make_api()
    api.store.heartbeat(NodeRecord("node-b", gpu_count=8, last_seen=time.time() - 3600))
    api.store.forget_node("node-c")
    created = api.client.post("/api/v1/runs", json={"checks": ["pciebw"]}).get_json()  # every node
    assert created["nodes"] == ["node-a", "node-b"]
    report = api.client.get(created["status_url"]).get_json()
    assert report["nodes"]["node-b"]["status"] == "unreachable"
    assert report["nodes"]["node-b"]["detail"].startswith("no heartbeat since ")
    assert report["nodes"]["node-a"]["status"] == "ok" and report["complete"] is True
    assert [e.node for e in api.dispatcher.sent] == ["node-a"]
