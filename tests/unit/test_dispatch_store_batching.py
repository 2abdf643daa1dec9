"""Fewer round trips without weaker guarantees: batched sends, a task's results saved in one MULTI
that also reads the node back, and the verdict state written with its labels, only when it changed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis

from autopilot import config, errors
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from workers import reconcile
from workers.dispatch import Envelope, FakeDispatcher, send_all
from workers.store import NodeRecord, NodeState, NodeView, ResultsStore, Run


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


def test_a_save_with_view_saves_like_save_result_and_reads_the_node_after_it() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    run = Run.new(["ping", "remapped"], ["node-a"], {}, 60)
    store.create_run(run)
    store.set_state("node-a", {"verdict": "PASS"})
    store.save_result(result("ping"), run.id)
    view = store.save_many([(result("remapped", Status.WARN), True)], run.id, view="node-a")
    assert view is not None
    assert {c: r.status for c, r in view.latest.items()} == {"ping": Status.OK, "remapped": Status.WARN}
    assert view.state == NodeState(verdict="PASS")
    assert store.latest("node-a").keys() == {"ping", "remapped"}
    assert [r.check for r in store.history("node-a")] == ["remapped", "ping"]
    assert store.run_answered(run.id) == {("node-a", "ping"), ("node-a", "remapped")}
    assert store.view("node-a") == view


def test_a_save_with_view_of_a_run_only_answer_leaves_latest_alone() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    view = store.save_many([(result("dcgm", Status.SKIPPED), False)], "run-1", view="node-a")
    assert view is not None and view.latest == {} and store.history("node-a") == []
    assert store.run_answered("run-1") == {("node-a", "dcgm")}


def test_state_and_labels_are_written_together_and_none_deletes() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    store.set_state_and_labels("node-a", {"verdict": "EVICT", "evicted_at": "x"}, {"a": "1", "b": "2"})
    store.set_state_and_labels("node-a", {"verdict": "PASS", "evicted_at": None}, {"a": None, "b": "3"})
    assert store.state("node-a").to_fields() == {"verdict": "PASS"}
    assert store.labels("node-a") == {"b": "3"}


def test_reconcile_from_a_view_matches_reconcile_that_reads() -> None:
    settings = config.Settings(node_name="node-a", redis_url="")
    now = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    read, given = ResultsStore(fakeredis.FakeRedis()), ResultsStore(fakeredis.FakeRedis())
    for store in (read, given):
        store.save_result(result("ping"))
    view = given.save_many([(result("remapped", Status.FAIL), True)], view="node-a")
    read.save_result(result("remapped", Status.FAIL))
    a = reconcile.reconcile_node(read, "node-a", settings, now, checks=shipped_checks())
    b = reconcile.reconcile_node(given, "node-a", settings, now, view=view, checks=shipped_checks())
    assert a == b
    assert read.state("node-a") == given.state("node-a") and read.labels("node-a") == given.labels("node-a")


def test_save_many_writes_like_one_save_result_per_item_in_order() -> None:
    one, many = ResultsStore(fakeredis.FakeRedis()), ResultsStore(fakeredis.FakeRedis())
    items = [
        (result("ping"), True),
        (result("remapped", Status.WARN), True),
        (result("dcgm", Status.SKIPPED), False),  # an answer for the run only
        (result("ping", Status.FAIL), True),  # the same check again: the later one is the latest
    ]
    for store in (one, many):
        store.create_run(Run("run-1", ("ping", "remapped", "dcgm"), ("node-a",), {}, 0.0, 1e12))
    for r, latest in items:
        one.save_result(r, "run-1", latest=latest)
    assert many.save_many(items, "run-1") is None
    for store in (one, many):
        latest = {c: r.status for c, r in store.latest("node-a").items()}
        assert latest == {"ping": Status.FAIL, "remapped": Status.WARN}
        assert [(r.check, r.status) for r in store.history("node-a")] == [
            ("ping", Status.FAIL),
            ("remapped", Status.WARN),
            ("ping", Status.OK),
        ]
    assert one.get_run("run-1") == many.get_run("run-1")


def test_save_many_reads_the_node_back_without_decoding_what_it_wrote() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    old = result("dcgm")
    store.save_result(old)
    store.set_labels("node-a", {"autopilot.ibm.com/gpuhealth": "PASS"})
    mine = [result("ping"), result("remapped", Status.WARN)]
    view = store.save_many([(r, True) for r in mine], "run-1", view="node-a")
    assert view is not None
    assert view.latest["ping"] is mine[0] and view.latest["remapped"] is mine[1]  # not parsed again
    assert view.latest["dcgm"] == old  # parsed from the store
    assert view.labels == {"autopilot.ibm.com/gpuhealth": "PASS"}
    assert store.view("node-a") == view


class CountingStore(ResultsStore):
    """Counts the verdict-state writes."""

    def __init__(self) -> None:
        super().__init__(fakeredis.FakeRedis())
        self.writes: list[tuple[dict[str, str | None], dict[str, str | None]]] = []

    def set_state_and_labels(self, node: str, values: Any, labels: Any) -> None:
        self.writes.append((dict(values), dict(labels)))
        super().set_state_and_labels(node, values, labels)


def test_reconcile_writes_only_what_changed_and_nothing_in_steady_state() -> None:
    settings = config.Settings(node_name="node-a", redis_url="", periodic_checks=("ping", "remapped"))
    now = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    store = CountingStore()
    first = store.save_many([(result("ping"), True), (result("remapped"), True)], view="node-a")
    assert (
        reconcile.reconcile_node(store, "node-a", settings, now, view=first, checks=shipped_checks()).verdict.value
        == "PASS"
    )
    assert len(store.writes) == 1
    # Same results again: same verdict, same labels, nothing to write.
    again = store.save_many([(result("ping"), True)], view="node-a")
    reconcile.reconcile_node(store, "node-a", settings, now, view=again, checks=shipped_checks())
    assert len(store.writes) == 1
    # A warning: only the changed fields go out, and the stored state is what a full write gives.
    changed = store.save_many([(result("remapped", Status.WARN), True)], view="node-a")
    later = datetime(2026, 11, 29, 12, 0, 9, tzinfo=UTC)
    reconcile.reconcile_node(store, "node-a", settings, later, view=changed, checks=shipped_checks())
    state_written, labels_written = store.writes[-1]
    assert state_written["verdict"] == "WARN" and "changed_at" in state_written
    assert labels_written == {"autopilot.ibm.com/gpuhealth": "WARN"}
    full = ResultsStore(fakeredis.FakeRedis())
    full.save_many([(result("ping"), True), (result("remapped", Status.WARN), True)])
    reconcile.reconcile_node(full, "node-a", settings, later, checks=shipped_checks())
    assert store.state("node-a").verdict == full.state("node-a").verdict == "WARN"
    assert store.labels("node-a") == full.labels("node-a")


def test_a_view_without_labels_makes_reconcile_write_every_label() -> None:
    settings = config.Settings(node_name="node-a", redis_url="", periodic_checks=("ping",))
    store = CountingStore()
    store.save_result(result("ping"))
    store.set_labels("node-a", {"autopilot.ibm.com/gpuhealth": "PASS"})
    store.set_state("node-a", {"verdict": "PASS"})
    view = store.view("node-a")
    now = datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC)
    reconcile.reconcile_node(
        store, "node-a", settings, now, view=NodeView(view.latest, view.state), checks=shipped_checks()
    )
    assert store.writes and store.writes[-1][1]["autopilot.ibm.com/gpuhealth"] == "PASS"


def test_run_news_reads_only_what_was_written_since_the_cursor() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    store.create_run(Run("run-1", ("ping", "remapped"), ("node-a", "node-b"), {}, 0.0, 1e12))
    assert store.run_news("run-1", 0) == store.run_news("run-1", 0) and store.run_news("run-1", 0).cursor == 0
    store.save_many([(result("ping"), True), (result("remapped"), True)], "run-1")
    first = store.run_news("run-1", 0)
    assert set(first.found) == {("node-a", "ping"), ("node-a", "remapped")} and first.total == 2
    store.save_many([(result("ping", Status.FAIL, node="node-b"), True)], "run-1")
    store.save_many([(result("ping", Status.FAIL, node="node-b"), True)], "run-1")  # a redelivered task
    second = store.run_news("run-1", first.cursor)
    assert list(second.found) == [("node-b", "ping")] and second.found[("node-b", "ping")]["status"] == "fail"
    assert second.total == 3 and store.run_news("run-1", second.cursor).found == {}


def test_last_seen_of_named_nodes_is_one_command_whatever_their_number(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 1,000-node answer shows every node's last heartbeat: one ZMSCORE, not a ZSCORE per node.
    store = ResultsStore(fakeredis.FakeRedis())
    store.heartbeat_many([NodeRecord(f"n{i}", last_seen=100.0 + i) for i in range(300)])
    sent: list[str] = []
    for cls in (redis.client.Redis, redis.client.Pipeline):
        real = cls.execute_command

        def counted(self: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            sent.append(str(args[0]))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "execute_command", counted)
    names = [f"n{i}" for i in range(0, 300, 3)] + ["never-seen"]
    assert store.last_seen(names) == {f"n{i}": 100.0 + i for i in range(0, 300, 3)}
    assert sent == ["ZMSCORE"]
