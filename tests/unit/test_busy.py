"""GPU-lock contention is no finding (issue 11, item 3).

A GPU check that never started because another GPU check held the node's GPUs until the run's
deadline is answered ``busy`` in the run (API answer, text, CLI), counted in
``autopilot_checks_busy_total{node,check}``, and never stored as the node's latest result, so the
verdict stays what the real results say.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from api import client, text
from api.metrics import snapshot_from_store
from autopilot import config
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from tests.unit.api_helpers import stand_in_checks
from tests.unit.test_metrics import scrape, snap
from workers import runs as gather
from workers import simulate, tasks
from workers.dispatch import FakeDispatcher
from workers.host import NodeHost
from workers.runs import Services
from workers.store import NodeRecord, ResultsStore, Run

NODE = "sim-0"
CHECKS = ("remapped", "ping", "gpupower")
GPU = ("remapped", "gpupower")


@pytest.fixture
def host() -> NodeHost:
    settings = config.Settings(node_name="test", redis_url="", periodic_checks=GPU)
    return NodeHost(
        settings, ResultsStore(fakeredis.FakeRedis()), simulate.contexts(settings, 1, [], checks=shipped_checks())
    )


def run_task(host: NodeHost, deadline_s: float) -> tuple[Run, list[CheckResult]]:
    run = Run.new(CHECKS, [NODE], {}, deadline_s)
    host.store.create_run(run)
    done = tasks.run_checks(host, run_id=run.id, node=NODE, checks=CHECKS, params={}, deadline=run.deadline)
    return run, done


def test_gpu_checks_busy_until_the_deadline_are_busy_in_the_run_only(host: NodeHost) -> None:
    first, _ = run_task(host, 60)
    before = host.store.latest(NODE)
    verdict = host.store.state(NODE).verdict
    history = len(host.store.history(NODE))
    assert verdict == "PASS"
    with host.gpu_lock(NODE):
        run, done = run_task(host, 0.5)
    assert {r.check: r.status for r in done} == {
        "ping": Status.SKIPPED,
        "remapped": Status.BUSY,
        "gpupower": Status.BUSY,
    }
    assert all(r.started_at == "" for r in done if r.status is Status.BUSY)  # it never started
    got = host.store.get_run(run.id)
    assert got is not None and got[1][(NODE, "remapped")].status is Status.BUSY
    latest = host.store.latest(NODE)
    assert {c: latest[c] for c in GPU} == {c: before[c] for c in GPU}  # the real results stay the latest
    assert len(host.store.history(NODE)) == history + 1  # ping only
    assert host.store.state(NODE).verdict == verdict
    assert host.store.busy_counts([NODE]) == {NODE: {"remapped": 1, "gpupower": 1}}


def test_the_store_never_makes_a_busy_answer_the_latest_result() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    store.save_result(CheckResult("dcgm", Status.OK, "fine", node="n1"))
    store.save_result(CheckResult("dcgm", Status.BUSY, "not run", node="n1"), "run-1", latest=True)
    assert store.latest("n1")["dcgm"].status is Status.OK
    assert [r.status for r in store.history("n1")] == [Status.OK]
    assert store.busy_counts(["n1", "n2"]) == {"n1": {"dcgm": 1}, "n2": {}}
    store.forget_node("n1")
    assert store.busy_counts(["n1"]) == {"n1": {}}


def services(store: ResultsStore) -> Services:
    return Services(
        settings=config.Settings(node_name="x"),
        store=store,
        dispatcher=FakeDispatcher(),
        checks=stand_in_checks(),
        clock=lambda: 1_000_000.0,
        sleep=lambda s: None,
    )


def busy_report() -> dict[str, Any]:
    store = ResultsStore(fakeredis.FakeRedis())
    run = Run("r" * 32, ("ping", "gpupower"), ("n1", "n2"), {}, 999_000.0, 1_000_100.0)
    ok = CheckResult("ping", Status.OK, "ok").to_dict()
    found = {
        ("n1", "ping"): {**ok, "node": "n1"},
        ("n1", "gpupower"): CheckResult("gpupower", Status.BUSY, "not run", node="n1").to_dict(),
        ("n2", "ping"): {**ok, "node": "n2"},
        ("n2", "gpupower"): CheckResult("gpupower", Status.OK, "ok", node="n2").to_dict(),
    }
    return gather.report(services(store), run, found)


def test_the_run_report_says_busy_for_the_node_and_the_run() -> None:
    report = busy_report()
    assert report["nodes"]["n1"]["status"] == "busy" and report["nodes"]["n2"]["status"] == "ok"
    assert report["totals"]["busy"] == 1 and report["status"] == "busy"
    assert gather.overall({"busy": 1, "warn": 1}, complete=True) == "warn"
    assert gather.overall({"busy": 1, "error": 1}, complete=True) == "error"


def test_text_and_cli_show_busy() -> None:
    report = busy_report()
    rendered = text.render(report, checks=shipped_checks())
    assert "[[ GPU POWER ]] BUSY: not run" in rendered
    assert "GPU POWER Busy (not run)" in rendered
    assert "1 busy" in client.totals_line(report)
    assert client.report_exit_code(report) == client.EXIT_ERROR  # nothing was looked at there


def test_busy_answers_are_counted_in_a_prometheus_counter() -> None:
    latest = {"n1": {"gpupower": CheckResult("gpupower", Status.OK, node="n1")}}
    series = scrape(snap(latest, busy={"n1": {"gpupower": 3, "dcgm": 1}}))
    assert series["autopilot_checks_busy_total"] == {
        (("check", "dcgm"), ("node", "n1")): 1.0,
        (("check", "gpupower"), ("node", "n1")): 3.0,
    }
    assert {dict(k)["status"] for k in series["autopilot_check_status"]} == {"ok", "warn", "fail", "error", "skipped"}


def test_the_api_scrape_reads_the_busy_counts_from_the_store() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    store.save_result(CheckResult("dcgm", Status.BUSY, "not run", node="n1"), "run-1", latest=False)
    store.heartbeat(NodeRecord("n1", last_seen=1.0))
    assert snapshot_from_store(store, config.Settings(node_name="x")).busy == {"n1": {"dcgm": 1}}


def test_forgetting_a_node_drops_its_confirmation_marks_too() -> None:
    # Every per-node key family is bounded by the nodes the store still knows (PERFORMANCE.md).
    store = ResultsStore(fakeredis.FakeRedis())
    store.record_confirmations("n1", runs=["pciebw"], prevented=["ping"], pending=["pciebw"])
    assert store.confirmation_marks("n1")[1] == frozenset({"pciebw"})
    store.forget_node("n1")
    assert store.confirmation_counts(["n1"]) == {"n1": {}}
    assert store.confirmation_marks("n1")[1] == frozenset()
    assert store.r.keys("ap:*n1*") == []


def test_forgetting_a_node_drops_its_event_counts_and_no_other_nodes() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    store.r.hset(
        "ap:events:counts", mapping={"n1|0|kmsg|79|evict": 2, "n10|0|kmsg|79|evict": 1, "n2|1|nvml|48|evict": 1}
    )
    store.forget_node("n1")
    assert sorted(store.r.hkeys("ap:events:counts")) == [b"n10|0|kmsg|79|evict", b"n2|1|nvml|48|evict"]
    store.forget_node("n3")  # nothing counted: nothing to drop
    assert store.r.hlen("ap:events:counts") == 2
