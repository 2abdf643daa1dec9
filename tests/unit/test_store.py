"""The results store's behaviour, the same for every ``autopilot.store.Store``: Redis (over fakeredis)
and in memory; and the Redis store's boundary, where its client's errors become ``StoreUnavailable``."""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from fakeredis.commands_mixins import server_mixin
from redis.backoff import NoBackoff
from redis.retry import Retry

from autopilot import errors
from autopilot.memstore import MemoryStore
from autopilot.results import CheckResult, Status
from autopilot.store import NodeRecord, NodeState, Run, Store
from workers.store import ResultsStore


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "redis":
        yield ResultsStore(fakeredis.FakeRedis(), history_len=3)
    else:
        yield MemoryStore(history_len=3)


def result(check: str, status: Status = Status.OK, node: str = "n1", summary: str = "fine") -> CheckResult:
    return CheckResult(check, status, summary, node=node, started_at="2026-11-29T12:00:00Z")


def test_the_latest_result_per_check_and_a_history_trimmed_to_its_length(store: Store) -> None:
    for i in range(5):
        store.save_result(result("ping", summary=f"#{i}"))
    store.save_result(result("remapped", Status.WARN))
    assert {c: r.summary for c, r in store.latest("n1").items()} == {"ping": "#4", "remapped": "fine"}
    assert [r.summary for r in store.history("n1", limit=10)] == ["fine", "#4", "#3"]
    assert [r.summary for r in store.history("n1", limit=1)] == ["fine"]
    assert store.latest_many(["n1", "n2"])["n2"] == {}


def test_a_node_detail_holds_record_latest_state_labels_and_newest_history(store: Store) -> None:
    assert not store.node_detail("n1", 2).known
    store.heartbeat(NodeRecord("n1", gpu_count=8, last_seen=100.0))
    for i in range(3):
        store.save_result(result("ping", summary=f"#{i}"))
    store.set_state_and_labels("n1", {"verdict": "WARN"}, {"autopilot.ibm.com/gpuhealth": "WARN"})
    detail = store.node_detail("n1", 2)
    assert detail.known and detail.record is not None and detail.record.gpu_count == 8
    assert {c: r.summary for c, r in detail.latest.items()} == {"ping": "#2"}
    assert detail.state.verdict == "WARN" and detail.labels == {"autopilot.ibm.com/gpuhealth": "WARN"}
    assert [r.summary for r in detail.history] == ["#2", "#1"]


def test_a_run_only_result_and_a_busy_answer_never_become_the_latest(store: Store) -> None:
    store.save_result(result("ping"))
    store.save_result(result("ping", Status.ERROR, summary="late"), "r1", latest=False)
    store.save_many([(result("dcgm", Status.BUSY), True), (result("dcgm", Status.BUSY), True)], "r1")
    assert {c: r.summary for c, r in store.latest("n1").items()} == {"ping": "fine"}
    assert store.busy_counts(["n1", "n2"]) == {"n1": {"dcgm": 2}, "n2": {}}
    assert store.run_answered("r1") == {("n1", "ping"), ("n1", "dcgm")}


def test_a_run_holds_its_meta_and_results_and_tells_what_is_new(store: Store) -> None:
    run = Run.new(["ping", "remapped"], ["n1", "n2"], {"ping": {"count": 2}}, 60, now=1000.0)
    store.create_run(run)
    assert store.get_run(run.id) == (run, {}) and store.run_progress(run.id) == 0
    store.save_result(result("ping"), run.id)
    first = store.run_news(run.id, 0)
    assert first.cursor == 1 and set(first.found) == {("n1", "ping")} and first.total == 1
    store.save_many([(result("remapped", node="n2"), True), (result("ping", node="n2"), True)], run.id)
    second = store.run_news(run.id, first.cursor)
    assert set(second.found) == {("n2", "remapped"), ("n2", "ping")} and second.total == 3
    assert store.run_news(run.id, second.cursor).found == {}
    got = store.get_run_stored(run.id)
    assert got is not None and got[1][("n1", "ping")]["status"] == "ok"
    assert store.run_progress(run.id) == 3
    assert store.get_run("no-such-run") is None


def test_heartbeats_name_the_nodes_and_when_they_were_last_seen(store: Store) -> None:
    store.heartbeat(NodeRecord("n2", gpu_model="H100", gpu_count=8, last_seen=200.0))
    store.heartbeat_many([NodeRecord("n1", last_seen=100.0), NodeRecord("n3", last_seen=300.0)])
    assert store.node_names() == ["n1", "n2", "n3"]
    assert store.node_names(seen_since=200.0) == ["n2", "n3"]
    assert store.last_seen(["n1", "nope"]) == {"n1": 100.0}
    assert store.last_seen() == {"n1": 100.0, "n2": 200.0, "n3": 300.0}
    assert [r.name for r in store.nodes(["n3", "nope", "n2"])] == ["n3", "n2"]
    node = store.node("n2")
    assert node is not None and node.gpu_count == 8 and store.node("nope") is None


def test_the_stores_clock_is_read_with_the_heartbeats_and_only_the_heard_ahead_mark_on_its_own(store: Store) -> None:
    store.heartbeat_many([NodeRecord("n1", last_seen=100.0), NodeRecord("n2", last_seen=200.0)])
    before = store.server_time()
    now, seen = store.seen_and_now()
    assert before <= now <= store.server_time() and seen == store.last_seen()
    assert store.seen_and_now(["n2", "nope"])[1] == {"n2": 200.0} and store.seen_and_now([])[1] == {}
    store.set_state("n2", {"verdict": "PASS", "heard_ahead": "200.0 150.0"})
    store.set_state("n1", {"verdict": "PASS"})
    assert store.heard_ahead(["n1", "n2", "nope"]) == {"n2": "200.0 150.0"} and store.heard_ahead([]) == {}


def test_forgetting_a_node_drops_its_record_results_state_and_labels(store: Store) -> None:
    store.heartbeat(NodeRecord("n1", last_seen=100.0))
    store.save_result(result("ping"))
    store.set_state_and_labels("n1", {"verdict": "PASS"}, {"autopilot.ibm.com/gpuhealth": "PASS"})
    store.forget_node("n1")
    assert store.node_names() == [] and store.node("n1") is None and store.latest("n1") == {}
    assert store.history("n1") == [] and store.state("n1").empty and store.labels("n1") == {}


def test_state_and_labels_are_set_and_deleted_together(store: Store) -> None:
    store.set_state_and_labels("n1", {"verdict": "EVICT", "evicted_at": "x"}, {"a": "1", "b": "2"})
    store.set_state("n1", {"verdict": "PASS", "evicted_at": None, "cleared_by": "api:1.2.3.4"})
    store.set_labels("n1", {"a": None, "b": "3"})
    assert store.state("n1") == NodeState(verdict="PASS", cleared_by="api:1.2.3.4")
    assert store.states(["n1", "n2"]) == {"n1": store.state("n1"), "n2": NodeState()}
    assert store.labels("n1") == {"b": "3"}
    view = store.view("n1")
    assert view.state == store.state("n1") and view.labels == {"b": "3"} and view.last_seen is None
    saved = store.save_many([(result("ping"), True)], view="n1")
    assert saved is not None and set(saved.latest) == {"ping"} and saved.state.verdict == "PASS"


def test_confirmations_are_counted_and_the_pending_checks_remembered(store: Store) -> None:
    store.set_state("n1", {"verdict": "WARN"})
    store.record_confirmations("n1", runs=["remapped"], prevented=[], pending=["remapped", "ping"])
    store.record_confirmations("n1", runs=["remapped"], prevented=["remapped"], pending=["ping"])
    assert store.confirmation_marks("n1") == ("WARN", frozenset({"ping"}))
    assert store.confirmation_counts(["n1"]) == {"n1": {"runs|remapped": 2, "prevented|remapped": 1}}
    store.record_confirmations("n1", runs=[], prevented=[], pending=[])
    assert store.confirmation_marks("n1") == ("WARN", frozenset())
    store.set_remediation_summary({"budget": 2, "held": 1.5})
    assert store.remediation_summary() == {"budget": 2.0, "held": 1.5}


def test_a_claim_and_a_tick_are_taken_once(store: Store) -> None:
    assert store.claim("invasive:n1", 60) and not store.claim("invasive:n1", 60)
    assert store.claim_tick("reconcile", 1000.0, 60.0)
    assert not store.claim_tick("reconcile", 1001.0, 60.0)  # same slot
    assert not store.claim_tick("reconcile", 1021.0, 60.0)  # next slot, within half an interval of the last
    assert store.claim_tick("reconcile", 1031.0, 60.0)
    assert store.ping()


def _dead_client() -> redis.Redis:
    # Port 1 on loopback: refused at once, no retry (nothing listens there).
    return redis.Redis(port=1, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.state("n1"),
        lambda s: s.set_state("n1", {"verdict": "PASS"}),
        lambda s: s.node_names(),
        lambda s: s.claim_tick("reconcile", 100.0, 60.0),
        lambda s: s.run_news("r1", 0),
    ],
)
def test_an_unreachable_redis_is_store_unavailable_never_a_redis_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.StoreUnavailable) as caught:
        call(ResultsStore(_dead_client()))
    assert isinstance(caught.value, errors.AutopilotError)
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_a_state_field_that_does_not_exist_is_refused_before_any_write() -> None:
    import fakeredis

    store = ResultsStore(fakeredis.FakeRedis())
    with pytest.raises(ValueError, match="verdikt"):
        store.set_state("n1", {"verdikt": "PASS"})
    assert store.state("n1") == NodeState()


def test_a_run_in_memory_expires_run_ttl_after_its_last_write() -> None:
    now = [1000.0]
    store = MemoryStore(run_ttl_s=60, clock=lambda: now[0])
    run = Run.new(["ping"], ["n1"], {}, 30, now=now[0])
    store.create_run(run)
    now[0] += 50
    store.save_result(result("ping"), run.id)  # a write pushes the expiry back, as EXPIRE does
    now[0] += 50
    assert store.get_run(run.id) is not None
    now[0] += 11
    assert store.get_run(run.id) is None and store.run_answered(run.id) == set()


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_runs_past_their_deadline_beyond_run_keep_are_deleted_oldest_first(kind: str) -> None:
    store: Store = ResultsStore(fakeredis.FakeRedis(), run_keep=2) if kind == "redis" else MemoryStore(run_keep=2)

    def make(at: float, deadline_s: float = 10) -> str:
        run = Run.new(["ping"], ["n1"], {}, deadline_s, now=at)
        store.create_run(run)
        store.save_result(result("ping"), run.id)
        return run.id

    first, second = make(1000), make(1100)
    third = make(1200)
    assert store.get_run(first) is None and store.run_answered(first) == set()
    assert store.get_run(second) is not None and store.get_run(third) is not None
    waiting = make(1300, deadline_s=1000)  # still within its deadline at every later creation
    assert store.get_run(second) is None
    late, last = make(1301), make(1302)
    # Over run_keep, but every run left is within its deadline: none is taken from its gather.
    assert [store.get_run(r) is not None for r in (third, waiting, late, last)] == [False, True, True, True]


def test_a_broker_that_cannot_be_reached_is_store_unavailable_at_the_dispatcher() -> None:
    from celery import Celery

    from workers.dispatch import CeleryDispatcher, Envelope

    app = Celery("t", broker="redis://127.0.0.1:1/0")
    app.conf.update(
        broker_connection_retry=False,
        broker_connection_timeout=0.5,
        task_publish_retry=False,
        broker_transport_options={"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    )
    with pytest.raises(errors.StoreUnavailable):
        CeleryDispatcher(app).send_many([Envelope("r1", "n1", ("ping",), {}, 2e9)])


# ------------------------------------------------------------------ the store's clock


@pytest.fixture(params=["redis", "memory"])
def clocked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, list[float]]:
    """A store whose own clock (Redis ``TIME``; the memory store's ``clock``) reads ``at[0]``, whatever this
    host's clock says: fakeredis answers ``TIME`` from its server module's ``time``, steered here."""
    at = [1_000_000.0]
    if request.param == "redis":
        monkeypatch.setattr(server_mixin, "time", types.SimpleNamespace(time=lambda: at[0]))
        return ResultsStore(fakeredis.FakeRedis()), at
    return MemoryStore(clock=lambda: at[0]), at


def test_server_time_is_the_stores_clock_and_every_view_carries_it(clocked: tuple[Store, list[float]]) -> None:
    store, at = clocked
    assert store.server_time() == 1_000_000.0
    at[0] += 90.5
    assert store.server_time() == 1_000_090.5
    # read in the view's own round trip: the reconcile after a task asks for no TIME of its own
    assert store.view("n1").now == 1_000_090.5
    at[0] += 1
    saved = store.save_many([(result("ping"), True)], view="n1")
    assert saved is not None and saved.now == 1_000_091.5
    assert store.node_detail("n1", 1).now == 1_000_091.5


def test_a_heartbeat_is_scored_on_the_stores_clock_and_the_view_carries_the_offset(
    clocked: tuple[Store, list[float]],
) -> None:
    store, _ = clocked
    # n1's worker runs 10 min ahead of the store, n2's 10 min behind; both heartbeat at store time 1000
    store.heartbeat(NodeRecord("n1", last_seen=1600.0, clock_offset=600.0))
    store.heartbeat_many([NodeRecord("n2", last_seen=400.0, clock_offset=-600.0), NodeRecord("n3", last_seen=990.0)])
    assert store.last_seen() == {"n1": 1000.0, "n2": 1000.0, "n3": 990.0}
    assert store.node_names(seen_since=1000.0) == ["n1", "n2"]
    ahead = store.node("n1")
    # the record keeps the worker's own stamp and what it measured
    assert ahead is not None and (ahead.last_seen, ahead.clock_offset, ahead.shared_seen) == (1600.0, 600.0, 1000.0)
    view = store.view("n2")
    assert (view.last_seen, view.clock_offset) == (1000.0, -600.0)
    assert store.save_many([(result("ping", node="n2"), True)], view="n2") == dataclasses.replace(
        view, latest={"ping": result("ping", node="n2")}
    )
    assert store.view("n3").clock_offset is None and store.view("nope").clock_offset is None


def test_the_nodes_heard_within_a_while_are_counted_on_the_stores_clock(clocked: tuple[Store, list[float]]) -> None:
    store, at = clocked
    store.heartbeat_many([NodeRecord("n1", last_seen=at[0] - 10), NodeRecord("n2", last_seen=at[0] - 100)])
    # whatever this host's clock reads: the scores and the clock they are judged by are the store's
    assert store.node_names(heard_within=45.0) == ["n1"]
    assert store.node_names(heard_within=45.0, seen_since=at[0] - 5) == []
    at[0] += 60
    assert store.node_names(heard_within=45.0) == [] and store.node_names(heard_within=120.0) == ["n1"]


def test_a_record_from_an_older_worker_without_a_clock_offset_still_reads() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    older = NodeRecord("n1", gpu_count=8, last_seen=500.0).to_dict()
    del older["clock_offset"]  # as a worker of the release before the offset wrote it
    store.r.set("ap:node:n1", json.dumps(older))
    store.r.zadd("ap:nodes", {"n1": 500.0})
    record = store.node("n1")
    assert record is not None and record.gpu_count == 8 and record.clock_offset is None
    assert record.shared_seen == 500.0
    view = store.view("n1")
    assert (view.last_seen, view.clock_offset) == (500.0, None)
    assert [r.name for r in store.nodes()] == ["n1"]
