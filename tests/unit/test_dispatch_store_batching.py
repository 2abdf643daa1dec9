"""Fewer round trips without weaker guarantees: batched sends, a task's last save that reads the
node back in the same MULTI, and the verdict state written with its labels."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import fakeredis
import pytest

from autopilot import config, errors
from autopilot.results import CheckResult, Status
from workers import reconcile
from workers.dispatch import Envelope, FakeDispatcher, send_all
from workers.store import ResultsStore, Run


def envelopes(n: int) -> list[Envelope]:
    return [Envelope("run", f"node-{i}", ("ping",), {}, 100.0) for i in range(n)]


class Batching:
    """A dispatcher with ``send_many``: every call is one batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def send(self, envelope: Envelope) -> None:  # pragma: no cover - send_all must not use it
        raise AssertionError("send_all sent one by one to a dispatcher that batches")

    def send_many(self, sent: Sequence[Envelope]) -> None:
        self.batches.append([e.node for e in sent])


def test_send_all_batches_when_the_dispatcher_can_and_keeps_the_order() -> None:
    batching = Batching()
    send_all(batching, envelopes(3))
    assert batching.batches == [["node-0", "node-1", "node-2"]]


def test_send_all_falls_back_to_one_send_per_envelope() -> None:
    fake = FakeDispatcher()
    send_all(fake, envelopes(3))
    assert [e.node for e in fake.sent] == ["node-0", "node-1", "node-2"]


def test_an_invalid_node_name_is_refused_before_anything_is_published() -> None:
    from workers.app import create_celery
    from workers.dispatch import CeleryDispatcher

    # The broker is unreachable: a publish would fail differently, so the refusal came first.
    app = create_celery(config.Settings(node_name="test", redis_url="redis://127.0.0.1:1/0"))
    bad = [*envelopes(2), Envelope("run", "Not_A_Node", ("ping",), {}, 100.0)]
    with pytest.raises(errors.BadParameter):
        CeleryDispatcher(app).send_many(bad)
    app.close()


def result(check: str, status: Status = Status.OK, node: str = "node-a") -> CheckResult:
    return CheckResult(check, status, "fine", node=node, started_at="2026-11-29T12:00:00Z")


def test_save_and_view_saves_like_save_result_and_reads_the_node_after_it() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    run = Run.new(["ping", "remapped"], ["node-a"], {}, 60)
    store.create_run(run)
    store.set_state("node-a", {"verdict": "PASS"})
    store.save_result(result("ping"), run.id)
    view = store.save_and_view(result("remapped", Status.WARN), run.id)
    assert {c: r.status for c, r in view.latest.items()} == {"ping": Status.OK, "remapped": Status.WARN}
    assert view.state == {"verdict": "PASS"}
    assert store.latest("node-a").keys() == {"ping", "remapped"}
    assert [r.check for r in store.history("node-a")] == ["remapped", "ping"]
    assert store.run_answered(run.id) == {("node-a", "ping"), ("node-a", "remapped")}
    assert store.view("node-a") == view


def test_save_and_view_of_a_run_only_answer_leaves_latest_alone() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    view = store.save_and_view(result("dcgm", Status.SKIPPED), "run-1", latest=False)
    assert view.latest == {} and store.history("node-a") == []
    assert store.run_answered("run-1") == {("node-a", "dcgm")}


def test_state_and_labels_are_written_together_and_none_deletes() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    store.set_state_and_labels("node-a", {"verdict": "EVICT", "evicted_at": "x"}, {"a": "1", "b": "2"})
    store.set_state_and_labels("node-a", {"verdict": "PASS", "evicted_at": None}, {"a": None, "b": "3"})
    assert store.state("node-a") == {"verdict": "PASS"}
    assert store.labels("node-a") == {"b": "3"}


def test_reconcile_from_a_view_matches_reconcile_that_reads() -> None:
    settings = config.Settings(node_name="node-a", redis_url="")
    now = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    read, given = ResultsStore(fakeredis.FakeRedis()), ResultsStore(fakeredis.FakeRedis())
    for store in (read, given):
        store.save_result(result("ping"))
    view = given.save_and_view(result("remapped", Status.FAIL))
    read.save_result(result("remapped", Status.FAIL))
    a = reconcile.reconcile_node(read, "node-a", settings, now)
    b = reconcile.reconcile_node(given, "node-a", settings, now, view=view)
    assert a == b
    assert read.state("node-a") == given.state("node-a") and read.labels("node-a") == given.labels("node-a")
