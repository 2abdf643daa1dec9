"""The gather loop on a manual clock: batching, per-node deadlines, poll back-off, reading each answer once."""

from __future__ import annotations

from typing import Any

import fakeredis

from autopilot import config
from autopilot.results import CheckResult, Status
from tests.unit.api_helpers import stand_in_checks
from workers import runs as gather
from workers.dispatch import Envelope, FakeDispatcher
from workers.runs import RunRequest, Selection, Services
from workers.store import ResultsStore, RunNews


class Cluster:
    """A manual clock whose sleeps let the fake workers answer, slowest nodes last."""

    def __init__(self, answer_after: dict[str, float], default_s: float = 0.1) -> None:
        self.now = 1_000_000.0
        self.store = ResultsStore(fakeredis.FakeRedis())
        self.answer_after = answer_after  # node -> seconds it takes; missing: default_s; inf: never
        self.default_s = default_s
        self.queue: list[tuple[float, Envelope]] = []
        self.sleeps: list[float] = []
        self.in_flight_max = 0
        self.dispatcher = FakeDispatcher(on_send=self.on_send)

    def on_send(self, env: Envelope) -> None:
        self.queue.append((self.now + self.answer_after.get(env.node, self.default_s), env))
        answered = {e.node for t, e in self.queue if t <= self.now}
        self.in_flight_max = max(self.in_flight_max, len({e.node for _, e in self.queue} - answered))

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for due, env in list(self.queue):
            if due <= self.now and not any(r for r in self.store.latest(env.node).values()):
                for check in env.checks:
                    self.store.save_result(CheckResult(check, Status.OK, "ok", node=env.node), env.run_id)

    def services(self) -> Services:
        return Services(
            settings=config.Settings(node_name="x"),
            store=self.store,
            dispatcher=self.dispatcher,
            checks=stand_in_checks(),
            clock=lambda: self.now,
            sleep=self.sleep,
        )


def test_batch_keeps_exactly_n_in_flight_and_sends_in_order() -> None:
    nodes = tuple(f"n{i}" for i in range(10))
    c = Cluster({})
    report = gather.gather(c.services(), RunRequest(("ping",), nodes, deadline_s=5, batch=3), Selection(nodes))
    assert c.in_flight_max == 3
    assert [e.node for e in c.dispatcher.sent] == list(nodes)
    assert report["totals"]["ok"] == 10


def test_without_batch_every_node_is_sent_at_once() -> None:
    nodes = tuple(f"n{i}" for i in range(6))
    c = Cluster({})
    gather.gather(c.services(), RunRequest(("ping",), nodes, deadline_s=5), Selection(nodes))
    assert c.in_flight_max == 6


def test_a_silent_node_frees_its_slot_at_its_own_deadline() -> None:
    nodes = ("a", "b", "c")
    c = Cluster({"a": float("inf")})
    report = gather.gather(c.services(), RunRequest(("ping",), nodes, deadline_s=2, batch=2), Selection(nodes))
    sent = {e.node: e for e in c.dispatcher.sent}
    assert report["nodes"]["a"]["status"] == "unreachable"
    assert report["nodes"]["b"]["status"] == report["nodes"]["c"]["status"] == "ok"
    # c took b's slot as soon as b answered; it did not wait for a's deadline
    assert sent["c"].deadline < sent["a"].deadline + 1
    # the gather ended at a's deadline (plus at most one poll), not later
    assert c.now - (sent["a"].deadline - 2) < 2 + gather.POLL_MAX_S


def test_poll_backs_off_from_20ms_to_200ms_and_never_sleeps_past_a_deadline() -> None:
    c = Cluster({"a": float("inf")})
    gather.gather(c.services(), RunRequest(("ping",), ("a",), deadline_s=3), Selection(("a",)))
    assert c.sleeps[0] == gather.POLL_FIRST_S
    assert max(c.sleeps) <= gather.POLL_MAX_S
    assert gather.POLL_MAX_S in c.sleeps
    assert sorted(c.sleeps[:5]) == c.sleeps[:5]


def test_run_deadline_bounds_every_wave() -> None:
    assert gather.run_deadline_s(10, None, 60) == 60 + gather.WAVE_SLACK_S
    assert gather.run_deadline_s(10, 3, 60) == 4 * (60 + gather.WAVE_SLACK_S)
    assert gather.run_deadline_s(2, 5, 60) == 60 + gather.WAVE_SLACK_S


def test_overall_status_prefers_findings() -> None:
    assert gather.overall({"fail": 1, "unreachable": 3}, complete=True) == "fail"
    assert gather.overall({"warn": 1}, complete=False) == "warn"
    assert gather.overall({"ok": 2}, complete=False) == "pending"
    assert gather.overall({"ok": 2, "unknown": 1}, complete=True) == "error"
    assert gather.overall({"ok": 2}, complete=True) == "ok"


class Counting(ResultsStore):
    """Counts result decodes done by ``run_news`` and ``get_run``."""

    def __init__(self) -> None:
        super().__init__(fakeredis.FakeRedis())
        self.decoded = 0

    def run_news(self, run_id: str, cursor: int) -> RunNews:
        news = super().run_news(run_id, cursor)
        self.decoded += len(news.found)
        return news

    def get_run(self, run_id: str) -> Any:
        got = super().get_run(run_id)
        self.decoded += len(got[1]) if got else 0
        return got


def test_each_answer_is_read_once_while_the_nodes_work() -> None:
    nodes = tuple(f"n{i}" for i in range(8))
    c = Cluster({n: 0.05 * (i + 1) for i, n in enumerate(nodes)})
    c.store = Counting()
    report = gather.gather(c.services(), RunRequest(("ping", "remapped"), nodes, deadline_s=5), Selection(nodes))
    assert report["totals"]["ok"] == 8 and report["totals"]["results"] == 16
    assert c.store.decoded == 16  # no full read of the run at the end


def test_polls_stay_quick_while_answers_arrive() -> None:
    nodes = tuple(f"n{i}" for i in range(6))
    c = Cluster({n: 0.4 + 0.02 * i for i, n in enumerate(nodes)})
    gather.gather(c.services(), RunRequest(("ping",), nodes, deadline_s=5), Selection(nodes))
    # Backed off while nothing came, then back to the first delay once answers did.
    assert max(c.sleeps) > gather.POLL_FIRST_S and c.sleeps[-1] == gather.POLL_FIRST_S


def test_answers_written_without_the_log_are_still_counted() -> None:
    """A worker of an older version writes the run's hash only: the gather counts field names."""
    nodes = ("a", "b")
    c = Cluster({})
    old = c.store

    def save_like_an_old_worker(result: CheckResult, run_id: str | None = None, *, latest: bool = True) -> None:
        old.r.hset(f"ap:run:{run_id}", f"{result.node}|{result.check}", result.to_json())

    c.store.save_result = save_like_an_old_worker  # type: ignore[method-assign]
    report = gather.gather(c.services(), RunRequest(("ping",), nodes, deadline_s=5), Selection(nodes))
    assert report["totals"]["ok"] == 2 and report["complete"]
    assert c.now < 1_000_000.0 + 5  # answered, not timed out
