"""Task messages from another release (a rolling upgrade): a key more, or a key fewer.

The Celery tasks of ``workers.app`` are called as a worker calls them, with the message's keyword
arguments. An unknown key (a newer sender's optional field) is ignored and logged once per task and
key; a missing one answers the run's checks ``error`` when the message names a valid run, node and
checks, and is refused otherwise. Before, Celery raised TypeError and the run waited for its deadline.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery import _state as celery_state

from autopilot import config
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.testing import FakeRunner, FakeTelemetry
from workers import app as app_mod
from workers import host as hosting
from workers import ring, simulate, tasks
from workers.dispatch import RUN_TASK
from workers.host import NodeHost
from workers.store import ResultsStore

NODE = "sim-0"
RUN = "89abcdef0123456789abcdef01234567"


@pytest.fixture
def host() -> NodeHost:
    settings = config.Settings(node_name="test", redis_url="", periodic_checks=("remapped", "gpupower"))
    contexts = simulate.contexts(settings, 1, [], checks=shipped_checks())
    runner = FakeRunner(installed=["iperf3"])
    contexts["node-b"] = CheckContext("node-b", settings, runner, FakeTelemetry(), checks=shipped_checks())
    return NodeHost(settings, ResultsStore(fakeredis.FakeRedis()), contexts)


@pytest.fixture
def app(host: NodeHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    # Only this app's tasks on this app (see test_one_task_per_node), and its store the host's.
    monkeypatch.setattr(celery_state, "_on_app_finalizers", set())
    monkeypatch.setattr(app_mod, "make_store", lambda settings: host.store)
    monkeypatch.setattr(tasks, "_UNKNOWN_SEEN", set(), raising=False)
    celery = app_mod.create_celery(config.Settings(node_name="test", redis_url="redis://127.0.0.1:1/0"))
    hosting.install(host)
    yield celery
    hosting.install(None)
    celery.close()


def message(**changed: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_id": RUN,
        "node": NODE,
        "checks": ["remapped", "gpupower"],
        "params": {},
        "deadline": time.time() + 30,
    }
    out.update(changed)
    return {k: v for k, v in out.items() if v is not None}


def test_an_unknown_key_is_ignored_and_logged_once_per_task_and_key(
    app: Celery, host: NodeHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.tasks")
    task = app.tasks[RUN_TASK]
    assert task(**message(priority_hint="high")) == {"remapped": "ok", "gpupower": "ok"}
    assert task(**message(priority_hint="low", trace={"a": 1})) == {"remapped": "ok", "gpupower": "ok"}
    said = [r.getMessage() for r in caplog.records if "from another version" in r.getMessage()]
    assert len(said) == 2, said  # priority_hint once, trace once
    assert any("'priority_hint'" in s for s in said) and any("'trace'" in s for s in said)
    assert set(host.store.latest(NODE)) == {"remapped", "gpupower"}


@pytest.mark.parametrize("missing", [("deadline",), ("params",), ("params", "deadline")])
def test_a_missing_key_answers_each_check_of_the_run_error(
    app: Celery, host: NodeHost, missing: tuple[str, ...]
) -> None:
    sent = {k: v for k, v in message().items() if k not in missing}
    assert app.tasks[RUN_TASK](**sent) == {"remapped": "error", "gpupower": "error"}
    assert host.store.run_answered(RUN) == {(NODE, "remapped"), (NODE, "gpupower")}
    for result in host.store.run_news(RUN, 0).found.values():
        assert result["summary"] == f"message from another version: missing {', '.join(missing)}"
    assert host.store.latest(NODE) == {}  # says nothing about the node


@pytest.mark.parametrize(
    "changed",
    [
        {"run_id": None},
        {"node": None},
        {"checks": None},
        {"run_id": "x:*", "deadline": None},
        {"node": "a b", "params": None},
    ],
    ids=repr,
)
def test_a_message_missing_a_key_that_cannot_key_an_answer_is_refused(
    app: Celery, host: NodeHost, changed: dict[str, Any]
) -> None:
    before = set(host.store.r.keys("*"))
    assert app.tasks[RUN_TASK](**message(**changed)) == {}
    assert set(host.store.r.keys("*")) == before


SERVERS: dict[str, Any] = {"run_id": RUN, "node": "node-b", "binds": ["10.0.0.2"], "ports": [5200], "lifetime_s": 60.0}
JOB = {
    "source": "node-b",
    "target": "node-c",
    "interface": "eth0",
    "address": "10.0.0.3",
    "source_address": "10.0.0.2",
    "ports": [5200],
}
CLIENTS: dict[str, Any] = {"run_id": RUN, "node": "node-b", "phase": 0, "jobs": [JOB], "duration_s": 5}


def test_a_servers_message_missing_its_lifetime_starts_nothing_and_says_why(app: Celery, host: NodeHost) -> None:
    sent = {k: v for k, v in SERVERS.items() if k != "lifetime_s"}
    reply = app.tasks[ring.SERVERS_TASK](**sent)
    assert reply == {"ok": False, "started": 0, "error": "message from another version: missing lifetime_s"}
    assert ring.replies(host.store, RUN, "servers") == {"node-b": reply}
    assert ring.SERVERS.stop(RUN, "node-b") == 0  # nothing was started


def test_a_servers_message_with_an_unknown_key_starts_its_servers(app: Celery, host: NodeHost) -> None:
    run_id = uuid.uuid4().hex  # ring.SERVERS is the process's: a run it stopped stays refused
    try:
        reply = app.tasks[ring.SERVERS_TASK](**{**SERVERS, "run_id": run_id}, window=3)
        assert reply == {"ok": True, "started": 1, "error": ""}
    finally:
        ring.SERVERS.stop(run_id, "node-b")


def test_a_clients_message_missing_its_duration_answers_each_pair_error(app: Celery, host: NodeHost) -> None:
    sent = {k: v for k, v in CLIENTS.items() if k != "duration_s"}
    pairs = app.tasks[ring.CLIENTS_TASK](**sent)
    assert [(p["source"], p["target"], p["status"]) for p in pairs] == [("node-b", "node-c", "error")]
    assert ring.replies(host.store, RUN, "clients|0") == {"node-b": {"pairs": pairs}}


@pytest.mark.parametrize("dropped", ["run_id", "node", "phase", "jobs"])
def test_a_clients_message_missing_its_names_or_jobs_is_refused(app: Celery, host: NodeHost, dropped: str) -> None:
    sent = {k: v for k, v in CLIENTS.items() if k not in (dropped, "duration_s")}
    before = set(host.store.r.keys("*"))
    assert app.tasks[ring.CLIENTS_TASK](**sent) == []
    assert set(host.store.r.keys("*")) == before


def test_a_stop_message_missing_its_node_stops_nothing(app: Celery) -> None:
    assert app.tasks[ring.STOP_TASK](run_id=RUN) == 0
    assert app.tasks[ring.STOP_TASK](run_id=RUN, node="node-b", reason="done") == 0


def test_a_ring_message_missing_its_params_answers_every_node_error(app: Celery, host: NodeHost) -> None:
    answered = app.tasks[ring.RING_TASK](run_id=RUN, nodes=["node-b", "node-c"])
    assert answered == {"node-b": "error", "node-c": "error"}
    assert host.store.run_answered(RUN) == {("node-b", "iperf"), ("node-c", "iperf")}


def test_a_ring_message_missing_its_run_id_is_refused(app: Celery, host: NodeHost) -> None:
    before = set(host.store.r.keys("*"))
    assert app.tasks[ring.RING_TASK](nodes=["node-b"], params={}) == {}
    assert set(host.store.r.keys("*")) == before


def test_beats_ticks_tolerate_a_key_more_and_refuse_a_fanout_without_its_kind(app: Celery) -> None:
    assert app.tasks["autopilot.fanout"](jitter=3) is None
    assert app.tasks["autopilot.reconcile"](since=0) == {}


def test_the_unknown_keys_remembered_for_logging_once_are_bounded_in_size_not_only_in_number(
    app: Celery, host: NodeHost, caplog: pytest.LogCaptureFixture
) -> None:
    # A hostile sender's keys may each be a megabyte: the 1,024 remembered must not hold a gigabyte.
    caplog.set_level(logging.WARNING, logger="workers.tasks")
    task = app.tasks[RUN_TASK]
    for n in range(3):
        huge = f"{n}" + "k" * 1_000_000
        assert task(**message(**{huge: 1})) == {"remapped": "ok", "gpupower": "ok"}
    assert sum(len(key) for _, key in tasks._UNKNOWN_SEEN) <= 3 * 64
    said = [r.getMessage() for r in caplog.records if "from another version" in r.getMessage()]
    assert len(said) == 3 and all(len(s) < 200 for s in said)


def test_a_fanout_tick_with_its_kind_given_positionally_still_fans_out(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the mapping, fanout_task(kind) took its kind by position too (celery call --args, Flower's
    # apply): such a message must not turn into a TypeError.
    kinds: list[str] = []
    monkeypatch.setattr(tasks, "fanout", lambda *args, kind, **kwargs: kinds.append(kind))
    app.tasks["autopilot.fanout"]("periodic")
    app.tasks["autopilot.fanout"](kind="invasive")
    assert kinds == ["periodic", "invasive"]


def test_a_fanout_tick_of_a_kind_this_worker_does_not_know_is_refused_not_raised(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    # A newer beat's tick kind during a rolling upgrade (or a sender's typo): before, ConfigError out of the
    # task, a traceback in the worker log at every tick. Refused with one warning line, as a tick without a kind.
    caplog.set_level(logging.WARNING, logger="workers.app")
    assert app.tasks["autopilot.fanout"](kind="events") is None
    assert app.tasks["autopilot.fanout"](kind=["periodic"]) is None
    said = [r.getMessage() for r in caplog.records if r.name == "workers.app"]
    assert len(said) == 2 and "'events'" in said[0] and "another release" in said[0]
