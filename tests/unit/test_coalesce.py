"""Requests that coalesce: a (node, check, parameters) already queued or running is joined, not sent again."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping
from typing import Any

import fakeredis
import pytest
import redis

from autopilot import config
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from tests.unit.api_helpers import stand_in_checks
from workers import runs as gather
from workers import tasks
from workers.dispatch import Envelope, FakeDispatcher
from workers.runs import RunRequest, Selection, Services
from workers.store import NodeRecord, ResultsStore

NODES = ("n1", "n2")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def services(store: ResultsStore, dispatcher: FakeDispatcher, clock: Clock) -> Services:
    return Services(
        settings=config.Settings(node_name="x"),
        store=store,
        dispatcher=dispatcher,
        checks=stand_in_checks(),
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )


def started(
    svc: Services, checks: tuple[str, ...] = ("remapped",), params: Mapping[str, Mapping[str, Any]] | None = None
) -> gather.Gather:
    req = RunRequest(checks, NODES, params=dict(params or {}), deadline_s=30)
    run = gather.create_run(svc, req, Selection(NODES))
    g = gather.Gather(svc, run, node_deadline_s=req.deadline_s, batch=None)
    g.send_ready()
    return g


def answer(store: ResultsStore, run_id: str, node: str, check: str = "remapped") -> None:
    store.save_result(CheckResult(check, Status.OK, f"{check} on {node}", node=node), run_id)


def test_an_equal_request_joins_the_queued_execution_and_gets_its_answer() -> None:
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    first = started(svc)
    second = started(svc)

    assert [(e.run_id, e.node) for e in dispatcher.sent] == [(first.run.id, "n1"), (first.run.id, "n2")]
    for node in NODES:
        answer(store, first.run.id, node)
    assert second.poll() and first.poll()
    got = second.results()
    assert {k: r["summary"] for k, r in got.items()} == {
        ("n1", "remapped"): "remapped on n1",
        ("n2", "remapped"): "remapped on n2",
    }
    # The joined answer is in the second run too (GET /api/v1/runs/<id>), and once in the node's history.
    assert set(store.run_answered(second.run.id)) == {("n1", "remapped"), ("n2", "remapped")}
    assert [r.summary for r in store.history("n1")] == ["remapped on n1"]


def test_a_request_after_the_answer_landed_runs_the_check_again() -> None:
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    first = started(svc)
    answer(store, first.run.id, "n1")

    later = started(svc)

    assert [(e.run_id, e.node) for e in dispatcher.sent[2:]] == [(later.run.id, "n1")]
    assert set(later.joined) == {("n2", "remapped")}


def test_other_parameters_or_other_checks_are_sent_and_only_the_shared_check_is_joined() -> None:
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    started(svc, ("dcgm",), {"dcgm": {"r": 1}})
    other_params = started(svc, ("dcgm",), {"dcgm": {"r": 2}})
    more_checks = started(svc, ("dcgm", "remapped"), {"dcgm": {"r": 1}})

    assert len([e for e in dispatcher.sent if e.run_id == other_params.run.id]) == 2
    sent = [e for e in dispatcher.sent if e.run_id == more_checks.run.id]
    assert [(e.node, e.checks) for e in sent] == [("n1", ("remapped",)), ("n2", ("remapped",))]


def test_when_a_joined_execution_lapses_unanswered_the_request_sends_its_own() -> None:
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    # Another request's execution, with a deadline close enough to ours to join.
    store.flights().lead([Envelope("tick", n, ("remapped",), {}, clock.now + 26) for n in NODES], now=clock.now)
    patient = started(svc)  # deadline 30 s
    assert dispatcher.sent == [] and set(patient.joined) == {(n, "remapped") for n in NODES}
    answer(store, "tick", "n1")  # the tick answered n1 only

    clock.now += 26  # the other run's deadline: n2's message expired unrun
    assert not patient.poll()

    assert [(e.run_id, e.node, e.checks) for e in dispatcher.sent] == [(patient.run.id, "n2", ("remapped",))]
    assert dispatcher.sent[0].deadline == patient.in_flight["n2"]
    assert ("n1", "remapped") in patient.results()


def test_a_request_during_a_beat_tick_joins_the_ticks_checks() -> None:
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    for node in NODES:
        store.heartbeat(NodeRecord(node, last_seen=clock.now))
    # A tick whose deadline is close to the request's (30 s): min(interval, check timeout + 60).
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",), periodic_interval_s=28)
    tick = tasks.fanout(store, dispatcher, settings, kind="periodic", now=clock.now, checks=shipped_checks())
    assert tick is not None and len(dispatcher.sent) == 2

    request = started(svc)

    assert len(dispatcher.sent) == 2  # nothing more queued
    assert {k: j.run_id for k, j in request.joined.items()} == {(n, "remapped"): tick.id for n in NODES}


def test_an_error_from_a_less_patient_execution_is_not_taken_the_check_is_sent_again() -> None:
    client = fakeredis.FakeRedis()
    store, dispatcher, clock = ResultsStore(client), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    hasty = [Envelope("hasty", n, ("remapped",), {}, clock.now + 5) for n in NODES]
    store.flights().lead(hasty, now=clock.now)
    patient = started(svc)  # deadline 30 s: joins the hasty run's executions
    assert dispatcher.sent == [] and {j.run_id for j in patient.joined.values()} == {"hasty"}
    store.save_result(CheckResult("remapped", Status.ERROR, "GPUs busy until the deadline", node="n1"), "hasty")
    answer(store, "hasty", "n2")

    patient.poll()

    assert [(e.run_id, e.node, e.checks) for e in dispatcher.sent] == [(patient.run.id, "n1", ("remapped",))]
    assert set(patient.results()) == {("n2", "remapped")}
    assert "n1" in patient.in_flight  # still waiting for its own execution


def test_a_request_joins_a_running_task_whole_including_its_checks_already_answered() -> None:
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    first = started(svc, ("remapped", "pciebw"))
    answer(store, first.run.id, "n1", "remapped")  # n1's task is still running pciebw
    answer(store, first.run.id, "n2", "remapped")
    answer(store, first.run.id, "n2", "pciebw")  # n2's task is over

    second = started(svc, ("remapped", "pciebw"))

    assert {k: j.run_id for k, j in second.joined.items()} == {
        ("n1", "remapped"): first.run.id,
        ("n1", "pciebw"): first.run.id,
    }
    assert [(e.run_id, e.node, e.checks) for e in dispatcher.sent[2:]] == [
        (second.run.id, "n2", ("remapped", "pciebw"))
    ]
    answer(store, first.run.id, "n1", "pciebw")
    second.poll()
    assert {("n1", "remapped"), ("n1", "pciebw")} <= set(second.results())


def test_requests_that_find_the_same_answered_execution_at_once_run_it_again_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 statuses right after a tick answered all found its claims answered and each took them
    over and sent its own execution; the first to take over is now the one the others join."""
    store, dispatcher, clock = ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(), Clock()
    svc = services(store, dispatcher, clock)
    first = started(svc)
    for node in NODES:
        answer(store, first.run.id, node)
    real_claim = store.claim_flights
    between: list[gather.Gather] = []
    let_in = [True]

    def read_then_let_another_request_in(claims: Any) -> Any:
        seen = real_claim(claims)
        if let_in[0]:  # after this request read the answered claims, before it takes them over
            let_in[0] = False
            between.append(started(svc))
        return seen

    monkeypatch.setattr(store, "claim_flights", read_then_let_another_request_in)
    later = started(svc)

    [other] = between
    resent = dispatcher.sent[2:]
    assert sorted((e.run_id, e.node) for e in resent) == [(other.run.id, "n1"), (other.run.id, "n2")]
    assert {k: j.run_id for k, j in later.joined.items()} == {
        ("n1", "remapped"): other.run.id,
        ("n2", "remapped"): other.run.id,
    }
    for node in NODES:
        store.save_result(CheckResult("remapped", Status.WARN, f"again on {node}", node=node), other.run.id)
    assert later.poll()
    assert {k: r["summary"] for k, r in later.results().items()} == {
        ("n1", "remapped"): "again on n1",
        ("n2", "remapped"): "again on n2",
    }


class _Batches(FakeDispatcher):
    """Records each batch's size and how many flights the store held when it was published."""

    def __init__(self, store: ResultsStore) -> None:
        super().__init__()
        self.store = store
        self.batches: list[tuple[int, int]] = []

    def send_many(self, envelopes: list[Envelope]) -> None:
        claimed = len(self.store.r.keys("ap:flight:*"))
        self.batches.append((len(envelopes), claimed))
        self.sent.extend(envelopes)


def test_a_large_gather_publishes_its_first_nodes_before_claiming_the_rest() -> None:
    """The first slice's workers start while the rest are claimed: slices of 16, then twice as many each time."""
    store, clock = ResultsStore(fakeredis.FakeRedis()), Clock()
    dispatcher = _Batches(store)
    svc = services(store, dispatcher, clock)
    nodes = tuple(f"n{i}" for i in range(100))
    req = RunRequest(("remapped", "dcgm"), nodes, deadline_s=30)
    run = gather.create_run(svc, req, Selection(nodes))
    gather.Gather(svc, run, node_deadline_s=req.deadline_s, batch=None).send_ready()

    # Two checks per node: a slice of n nodes claims 2n flights before its publish.
    assert dispatcher.batches == [(16, 32), (32, 96), (52, 200)]
    assert [e.node for e in dispatcher.sent] == list(nodes)


def test_flight_keys_of_no_parameters_and_of_parameters_in_any_order() -> None:
    from workers.store import flight_key

    assert flight_key("n1", "dcgm", {}) == flight_key("n1", "dcgm", {})
    assert flight_key("n1", "dcgm", {}) != flight_key("n2", "dcgm", {}) != flight_key("n2", "ping", {})
    assert flight_key("n1", "dcgm", {"r": 1, "x": "a"}) == flight_key("n1", "dcgm", {"x": "a", "r": 1})
    assert flight_key("n1", "dcgm", {"r": 1}) not in (flight_key("n1", "dcgm", {}), flight_key("n1", "dcgm", {"r": 2}))
    # The digest of no parameters is the one a claim written before this constant used (sha256 of "{}"),
    # so a request across an upgrade still joins a check queued before it.
    assert flight_key("n1", "dcgm", {}).endswith("|" + hashlib.sha256(b"{}").hexdigest()[:20])


def _counting(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts the HEXISTS and HKEYS commands queued on any pipeline from now on."""
    counts: collections.Counter[str] = collections.Counter()
    for command in ("hexists", "hkeys"):
        real = getattr(redis.client.Pipeline, command)

        def counted(self: Any, *args: Any, _real: Any = real, _name: str = command) -> Any:
            counts[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(redis.client.Pipeline, command, counted)
    return counts


def _answered_runs(store: ResultsStore, nodes: int) -> tuple[str, str]:
    """Two runs over ``nodes`` nodes: ``remapped`` answered on the first's even nodes and on the second's node 0."""
    runs = []
    for _ in range(2):
        req = RunRequest(("remapped",), tuple(f"n{i}" for i in range(nodes)), deadline_s=30)
        run = gather.create_run(services(store, FakeDispatcher(), Clock()), req, Selection(req.hosts))
        runs.append(run.id)
    for i in range(0, nodes, 2):
        answer(store, runs[0], f"n{i}")
    answer(store, runs[1], "n0")
    return runs[0], runs[1]


def test_runs_answered_reads_the_names_of_a_run_asked_about_most_of_its_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fleet-wide gather after another asks the last run about every pair: one HKEYS, not a HEXISTS per pair.
    store = ResultsStore(fakeredis.FakeRedis())
    big, small = _answered_runs(store, 200)
    asked = [(big, f"n{i}", c) for i in range(200) for c in ("remapped", "dcgm")] + [(small, "n0", "remapped")]
    asked += [(small, "n1", "remapped"), ("no-such-run", "n0", "remapped")]
    counts = _counting(monkeypatch)
    got = store.runs_answered(asked)
    expected = [r == big and c == "remapped" and int(n[1:]) % 2 == 0 for r, n, c in asked[:400]] + [True, False, False]
    assert got == expected
    assert counts == {"hkeys": 1, "hexists": 3}


def test_runs_answered_asks_pair_by_pair_when_a_run_holds_far_more_than_is_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    big, _ = _answered_runs(store, 600)  # 300 fields: asking 70 of them does not read them all
    asked = [(big, f"n{i}", "remapped") for i in range(70)]
    counts = _counting(monkeypatch)
    assert store.runs_answered(asked) == [i % 2 == 0 for i in range(70)]
    assert counts == {"hexists": 70}


def test_runs_answered_by_names_is_not_thrown_by_a_field_name_that_is_not_utf8() -> None:
    client = fakeredis.FakeRedis()
    store = ResultsStore(client)
    big, _ = _answered_runs(store, 100)
    client.hset(f"ap:run:{big}", b"\xff\xfe|remapped", b"{}")  # another writer's key, not ours
    asked = [(big, f"n{i}", "remapped") for i in range(100)]
    assert store.runs_answered(asked) == [i % 2 == 0 for i in range(100)]
