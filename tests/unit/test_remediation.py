"""Remediation (issue 15 item 3): cordon and taint within a budget, ownership, the validation gate, dry run.

The acceptance tests drive ``KubeClusterClient`` over HTTP against the stand-in API server; the
seam tests run on both backends (``FakeCluster`` must behave as the real client does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from api.metrics import snapshot_from_store
from autopilot import config, errors, remediation, results
from autopilot.cluster import NodeTaint
from autopilot.registry import shipped as shipped_checks
from autopilot.remediation import OWNER, TAINT
from autopilot.results import CheckResult, Status
from tests.unit.cluster_standin import Backend, StandInApi, make_backend
from tests.unit.test_cluster_rbac import allowed, needed, permits
from tests.unit.test_metrics import scrape
from workers import remediating, tasks
from workers.store import NodeRecord, ResultsStore

NS = "autopilot"
GPU_TAINT = NodeTaint("nvidia.com/gpu", "NoSchedule", "present")


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


@pytest.fixture
def kube() -> Iterator[Backend]:
    yield from make_backend("kube")


def standin(kube: Backend) -> StandInApi:
    assert kube.standin is not None
    return kube.standin


def settings(**overrides: object) -> config.Settings:
    base: dict[str, object] = {"node_name": "beat", "remediate_cordon": True, "remediate_taint": True}
    base.update(overrides)
    if isinstance(base.get("remediate_max_unavailable"), str):  # as the variable spells it
        base["remediate_max_unavailable"] = config.MaxUnavailable.parse(str(base["remediate_max_unavailable"]))
    return config.Settings(**base)  # type: ignore[arg-type]


def later(minutes: float) -> str:
    return results.utc_now_iso(datetime.now(UTC) + timedelta(minutes=minutes))


def evict(store: ResultsStore, *nodes: str) -> None:
    for i, node in enumerate(nodes):
        store.set_state(node, {"verdict": "EVICT", "evicted_at": f"2026-11-29T10:{i:02d}:00Z"})


# ---------------------------------------------------------------- the seam


def test_cordon_and_uncordon(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    backend.client.set_node_unschedulable("gpu-1", True)
    assert backend.client.get_node("gpu-1").unschedulable
    backend.client.set_node_unschedulable("gpu-1", False)
    assert not backend.client.get_node("gpu-1").unschedulable


def test_taint_is_added_and_removed_and_other_taints_stay(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    assert backend.client.set_node_taint("gpu-1", GPU_TAINT, True)
    assert backend.client.set_node_taint("gpu-1", TAINT, True)
    assert not backend.client.set_node_taint("gpu-1", TAINT, True)  # already there: no write
    assert backend.client.get_node("gpu-1").taints == (GPU_TAINT, TAINT)
    assert backend.client.set_node_taint("gpu-1", TAINT, False)
    assert backend.client.get_node("gpu-1").taints == (GPU_TAINT,)


def test_others_noexecute_taints_keep_their_time_added(backend: Backend) -> None:
    # before: the taint list was written back from (key, effect, value) alone, so the node lifecycle
    # controller's unreachable:NoExecute taint lost its timeAdded, from which tolerationSeconds count
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-11-29T21:00:00Z"}
    backend.control.add_node("gpu-1", gpus=8, taints=[unreachable])
    assert backend.client.set_node_taint("gpu-1", TAINT, True)
    assert backend.client.get_node("gpu-1").taints[0].to_json() == unreachable
    assert backend.client.set_node_taint("gpu-1", TAINT, False)
    assert [t.to_json() for t in backend.client.get_node("gpu-1").taints] == [unreachable]
    if backend.standin is not None:
        assert backend.standin.nodes["gpu-1"]["spec"]["taints"] == [unreachable]


def test_a_taint_effect_kubernetes_does_not_know_is_refused_before_any_request(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    with pytest.raises(errors.BadParameter):
        backend.client.set_node_taint("gpu-1", NodeTaint("a", "NoWay"), True)


def test_the_standin_validates_taints_and_cordons_as_the_api_server_does(kube: Backend) -> None:
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    patch = "application/merge-patch+json"
    bad_effect = {"spec": {"taints": [{"key": "a", "effect": "NoWay"}]}}
    code, body = api.handle("PATCH", "/api/v1/nodes/gpu-1", {}, patch, bad_effect)
    assert code == 422 and body["reason"] == "Invalid" and "spec.taints[0].effect" in body["message"]
    twice = {"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}]}}
    assert api.handle("PATCH", "/api/v1/nodes/gpu-1", {}, patch, twice)[0] == 422
    assert api.handle("PATCH", "/api/v1/nodes/gpu-1", {}, patch, {"spec": {"unschedulable": "yes"}})[0] == 422
    assert api.handle("PATCH", "/api/v1/nodes/gpu-1", {}, patch, {"metadata": {"labels": {"a": "b c"}}})[0] == 422
    assert "taints" not in api.nodes["gpu-1"]["spec"]


def test_a_taint_written_meanwhile_by_another_controller_is_kept(kube: Backend) -> None:
    """spec.taints is replaced whole by a patch: the client patches at the version it read, and reads again on 409."""
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    calls = []

    def other_controller(method: str, path: str) -> None:
        # Between our read and our patch (the hook runs before the server answers the PATCH).
        if method == "PATCH" and path == "/api/v1/nodes/gpu-1" and not calls:
            calls.append(path)
            node = api.nodes["gpu-1"]
            node["spec"]["taints"] = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
            node["metadata"]["resourceVersion"] = "999"

    api.hooks.append(other_controller)
    assert kube.client.set_node_taint("gpu-1", TAINT, True)
    keys = [t["key"] for t in api.nodes["gpu-1"]["spec"]["taints"]]
    assert keys == ["node.kubernetes.io/unreachable", TAINT.key]
    assert sum(1 for r in api.requests if r.method == "PATCH") == 2  # the first got 409


def test_cordon_sends_only_spec_unschedulable(kube: Backend) -> None:
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    kube.client.set_node_unschedulable("gpu-1", True)
    [patch] = [r for r in api.requests if r.method == "PATCH"]
    assert patch.body == {"spec": {"unschedulable": True}}
    assert api.nodes["gpu-1"]["spec"]["unschedulable"] is True


# ---------------------------------------------------------------- acceptance: the pass over a fleet


def fleet(kube: Backend, count: int) -> list[str]:
    api = standin(kube)
    names = [f"gpu-{i:02d}" for i in range(count)]
    for name in names:
        api.add_node(name, gpus=8)
    api.add_node("cpu-0")  # no GPUs: not part of the percent
    return names


def test_budget_holds_when_30_percent_of_20_nodes_fail_at_once(kube: Backend) -> None:
    api = standin(kube)
    names = fleet(kube, 20)
    store = ResultsStore(fakeredis.FakeRedis())
    failing = names[:6]
    evict(store, *failing)
    s = settings(remediate_max_unavailable="10%")
    for _ in range(3):  # later passes change nothing: never more than the budget, no repeated Events
        the_plan = remediating.run(store, kube.client, s)
        assert the_plan is not None and the_plan.budget == 2
        cordoned = [n for n in names if api.nodes[n]["spec"].get("unschedulable")]
        assert cordoned == failing[:2]  # the oldest evictions first
        assert all(api.nodes[n]["spec"]["taints"][0]["key"] == TAINT.key for n in cordoned)
    deferred = [n for n in names if api.nodes[n]["metadata"]["labels"].get(OWNER) == remediation.DEFERRED]
    assert deferred == failing[2:]
    assert not any(api.nodes[n]["spec"].get("taints") for n in deferred)
    events = [e for n in failing for e in api.events_for("Node", n)]
    assert {e.namespace for e in events} == {"default"}  # the only namespace that takes a Node's Events
    assert sorted(e.name for e in events if e.reason == remediation.EVENT_DEFERRED) == failing[2:]
    assert sorted(e.name for e in events if e.reason == remediation.EVENT_APPLIED) == failing[:2]
    assert store.remediation_summary() == {"budget": 2.0, "held": 2.0, "deferred": 4.0, "dry_run": 0.0}
    series = scrape(snapshot_from_store(store, config.Settings(node_name="api")))
    # What AutopilotRemediationBudgetExhausted reads (alerts/tests.yaml tests the rule itself).
    assert series["autopilot_remediation_deferred_nodes"] == {(): 4.0}
    assert series["autopilot_remediation_held_nodes"] == {(): 2.0}
    assert series["autopilot_remediation_budget_nodes"] == {(): 2.0}


def test_a_number_budget_and_taint_only(kube: Backend) -> None:
    api = standin(kube)
    names = fleet(kube, 20)
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, *names[:6])
    remediating.run(store, kube.client, settings(remediate_cordon=False, remediate_max_unavailable="3"))
    assert [n for n in names if api.nodes[n]["spec"].get("taints")] == names[:3]
    assert not any(api.nodes[n]["spec"].get("unschedulable") for n in names)


def test_only_what_autopilot_cordoned_is_uncordoned(kube: Backend) -> None:
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    api.add_node("gpu-2", gpus=8)
    kube.client.set_node_unschedulable("gpu-2", True)  # an operator cordoned it before
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, "gpu-1", "gpu-2")
    s = settings(remediate_max_unavailable="2")
    remediating.run(store, kube.client, s)
    own = {n: json.loads(api.nodes[n]["metadata"]["annotations"][OWNER]) for n in ("gpu-1", "gpu-2")}
    assert own["gpu-1"]["cordoned"] and own["gpu-1"]["tainted"]
    assert not own["gpu-2"]["cordoned"] and own["gpu-2"]["tainted"]
    for node in ("gpu-1", "gpu-2"):
        pass_the_gate(store, node)
    remediating.run(store, kube.client, s)
    assert not api.nodes["gpu-1"]["spec"].get("unschedulable")
    assert api.nodes["gpu-2"]["spec"]["unschedulable"] is True  # the operator's cordon stays
    for node in ("gpu-1", "gpu-2"):
        assert not api.nodes[node]["spec"].get("taints")
        assert OWNER not in api.nodes[node]["metadata"]["annotations"]
        assert OWNER not in api.nodes[node]["metadata"]["labels"]
        assert [e.reason for e in api.events_for("Node", node)][-1] == remediation.EVENT_RELEASED


def pass_the_gate(store: ResultsStore, node: str, *, clear: bool = True, dcgm: bool = True) -> None:
    if dcgm:
        store.save_result(CheckResult("dcgm", Status.OK, "level 3", node=node, started_at=later(1), params={"r": 3}))
    store.set_state(node, {"verdict": "PASS", "evicted_at": None})
    if clear:
        store.set_state(node, {"cleared_at": later(2), "cleared_by": "ops"})


@pytest.mark.parametrize(("clear", "dcgm"), [(True, False), (False, True)])
def test_the_validation_gate_needs_both_a_clear_and_a_dcgm_level_3_pass(kube: Backend, clear: bool, dcgm: bool) -> None:
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, "gpu-1")
    s = settings()
    remediating.run(store, kube.client, s)
    pass_the_gate(store, "gpu-1", clear=clear, dcgm=dcgm)
    remediating.run(store, kube.client, s)
    assert api.nodes["gpu-1"]["spec"]["unschedulable"] is True
    assert OWNER in api.nodes["gpu-1"]["metadata"]["annotations"]


@pytest.mark.parametrize(
    ("skew_s", "dcgm_after_s", "released"),
    [
        (-600.0, 60.0, True),  # its clock 10 min behind: a clear and a pass 1 and 2 min after the cordon release it
        (600.0, -60.0, False),  # 10 min ahead: a pass that began 1 min before the cordon does not
    ],
)
def test_the_gate_compares_the_cordon_with_the_clear_and_the_pass_on_the_nodes_clock(
    kube: Backend, skew_s: float, dcgm_after_s: float, released: bool
) -> None:
    # Beat's host and the store agree (``at``); the node's worker measured its clock ``skew_s`` off the store's, and
    # its DCGM pass and the operator's clear are stamped on that clock (``reconcile.clear_evict``). Before, the
    # ownership was stamped with beat's host clock: the node behind stayed cordoned after a clear and a pass that
    # both came after the cordon, and the node ahead was released by a pass that began before it.
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    at = datetime.now(UTC).replace(microsecond=0).timestamp()
    store = ResultsStore(fakeredis.FakeRedis(), server_clock=lambda: at)

    def on_node(store_s: float) -> str:
        return results.utc_now_iso(datetime.fromtimestamp(at + store_s + skew_s, UTC))

    store.heartbeat(NodeRecord("gpu-1", gpu_count=8, last_seen=at + skew_s, clock_offset=skew_s))
    evict(store, "gpu-1")
    remediating.run(store, kube.client, settings())
    assert api.nodes["gpu-1"]["spec"]["unschedulable"] is True
    level3 = CheckResult("dcgm", Status.OK, "level 3", node="gpu-1", started_at=on_node(dcgm_after_s), params={"r": 3})
    store.save_result(level3)
    store.set_state("gpu-1", {"verdict": "PASS", "evicted_at": None, "cleared_at": on_node(120), "cleared_by": "ops"})
    remediating.run(store, kube.client, settings())
    assert bool(api.nodes["gpu-1"]["spec"].get("unschedulable")) is not released


def test_a_level_1_run_after_the_level_3_pass_does_not_hide_it(kube: Backend) -> None:
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, "gpu-1")
    remediating.run(store, kube.client, settings())
    pass_the_gate(store, "gpu-1")
    store.save_result(CheckResult("dcgm", Status.OK, "level 1", node="gpu-1", started_at=later(3), params={"r": 1}))
    remediating.run(store, kube.client, settings())
    assert not api.nodes["gpu-1"]["spec"].get("unschedulable")


def test_a_released_node_frees_its_slot_for_a_deferred_one(kube: Backend) -> None:
    api = standin(kube)
    names = fleet(kube, 2)
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, *names)
    s = settings(remediate_max_unavailable="1")
    remediating.run(store, kube.client, s)
    assert api.nodes[names[1]]["metadata"]["labels"][OWNER] == remediation.DEFERRED
    pass_the_gate(store, names[0])
    remediating.run(store, kube.client, s)
    assert not api.nodes[names[0]]["spec"].get("unschedulable")
    assert api.nodes[names[1]]["spec"]["unschedulable"] is True
    assert api.nodes[names[1]]["metadata"]["labels"][OWNER] == remediation.APPLIED


def test_dry_run_writes_nothing_and_reports_what_it_would_do(kube: Backend, caplog: pytest.LogCaptureFixture) -> None:
    api = standin(kube)
    names = fleet(kube, 20)
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, *names[:6])
    caplog.set_level("INFO", logger="autopilot.remediation")
    remediating.run(store, kube.client, settings(remediate_max_unavailable="10%", remediate_dry_run=True))
    assert [r for r in api.requests if r.method != "GET"] == []
    assert sum("would apply node" in m for m in caplog.messages) == 2
    assert sum("would defer node" in m for m in caplog.messages) == 4
    assert store.remediation_summary()["dry_run"] == 1.0


@pytest.mark.parametrize("text, nodes, budget", [("10%", 25, 2), ("100%", 7, 7), ("0%", 50, 0), ("3", 1, 3)])
def test_max_unavailable_is_read_once_into_settings_as_a_count_or_a_percent(text: str, nodes: int, budget: int) -> None:
    read = config.Settings.from_env({"NODE_NAME": "beat", "AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE": text})
    assert isinstance(read.remediate_max_unavailable, config.MaxUnavailable)
    assert str(read.remediate_max_unavailable) == text
    assert remediating.policy(read).budget(nodes) == budget


@pytest.mark.parametrize("text", ["101%", "-1", "1.5", "ten", "5 %"])
def test_a_max_unavailable_that_is_no_count_or_percent_stops_the_start(text: str) -> None:
    with pytest.raises(errors.ConfigError, match="AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE"):
        config.Settings.from_env({"NODE_NAME": "beat", "AUTOPILOT_REMEDIATE_MAX_UNAVAILABLE": text})


def test_off_by_default() -> None:
    s = config.Settings.from_env({})
    assert not s.remediate_cordon and not s.remediate_taint and not s.remediate_dry_run
    store = ResultsStore(fakeredis.FakeRedis())
    assert remediating.run(store, _unusable_cluster(), s) is None


def _unusable_cluster() -> object:
    class Nothing:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"remediation off must not call the cluster ({name})")

    return Nothing()


def test_beats_reconcile_tick_runs_the_pass(kube: Backend) -> None:
    api = standin(kube)
    api.add_node("gpu-1", gpus=8)
    store = ResultsStore(fakeredis.FakeRedis())
    when = results.utc_now_iso()
    store.save_result(
        CheckResult("remapped", Status.FAIL, "row remap failed", node="gpu-1", fatal=True, started_at=when)
    )
    store.heartbeat(NodeRecord("gpu-1", last_seen=datetime.now(UTC).timestamp()))
    verdicts = tasks.reconcile_and_remediate(
        store, settings(periodic_checks=("remapped",)), kube.client, checks=shipped_checks()
    )
    assert verdicts == {"gpu-1": "EVICT"}
    assert api.nodes["gpu-1"]["spec"]["unschedulable"] is True


def test_the_beat_account_may_remediate(kube: Backend) -> None:
    api = standin(kube)
    names = fleet(kube, 3)
    store = ResultsStore(fakeredis.FakeRedis())
    evict(store, *names)
    remediating.run(store, kube.client, settings(remediate_max_unavailable="1"))
    pass_the_gate(store, names[0])
    remediating.run(store, kube.client, settings(remediate_max_unavailable="1"))
    rules = allowed("autopilot-beat")
    wanted = {needed(r) for r in api.requests}
    assert {w for w in wanted if not permits(rules, w)} == set()
    assert ("", "nodes", "patch", None) in wanted
    assert ("", "events", "create", "default") in wanted  # budget exhausted: the Event says so
