"""A second beat (in phase or not) or a tick delivered twice never doubles the periodic work."""

from __future__ import annotations

import fakeredis
import pytest

import autopilot.checks  # noqa: F401 - the periodic checks must be registered
from autopilot import config, errors
from autopilot.registry import shipped as shipped_checks
from workers import runs, tasks
from workers.dispatch import FakeDispatcher
from workers.store import NodeRecord, ResultsStore

INTERVAL = 60.0


@pytest.mark.parametrize("offset_s", [0.0, 0.4, 17.0, 29.9, 30.1, 45.0, 59.9])
def test_two_beats_at_any_phase_make_one_run_per_interval(offset_s: float) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(periodic_interval_s=INTERVAL, periodic_checks=("remapped",))
    start = 1_800_000_000.0
    sent = FakeDispatcher()
    runs: list[float] = []
    ticks = sorted([start + i * INTERVAL for i in range(20)] + [start + offset_s + i * INTERVAL for i in range(20)])
    for t in ticks:
        store.heartbeat(NodeRecord("node-a", last_seen=t))
        if tasks.fanout(store, sent, settings, kind="periodic", now=t, checks=shipped_checks()) is not None:
            runs.append(t)
    span = ticks[-1] - ticks[0]
    assert len(runs) <= span // INTERVAL + 1
    assert len(runs) >= 18  # the work still happens every interval (one slot may be skipped once)
    assert min(b - a for a, b in zip(runs, runs[1:], strict=False)) >= INTERVAL / 2
    assert len(sent.sent) == len(runs)


def test_a_tick_delivered_twice_runs_once() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(periodic_interval_s=INTERVAL, periodic_checks=("remapped",))
    store.heartbeat(NodeRecord("node-a", last_seen=1_800_000_000.0))
    first = tasks.fanout(
        store, FakeDispatcher(), settings, kind="periodic", now=1_800_000_000.0, checks=shipped_checks()
    )
    again = tasks.fanout(
        store, FakeDispatcher(), settings, kind="periodic", now=1_800_000_000.5, checks=shipped_checks()
    )
    assert first is not None and again is None


def test_interval_zero_disables_without_crashing() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(periodic_interval_s=60, invasive_interval_s=0)
    assert tasks.fanout(store, FakeDispatcher(), settings, kind="invasive", checks=shipped_checks()) is None


def test_beat_entries_go_to_the_control_queue_and_expire_with_their_interval() -> None:
    from workers.app import CONTROL_QUEUE, beat_schedule

    settings = config.Settings(
        node_name="x", periodic_interval_s=3600, invasive_interval_s=14400, reconcile_interval_s=60
    )
    schedule = beat_schedule(settings)
    assert schedule["periodic-checks"] == {
        "task": "autopilot.fanout",
        "schedule": 3600,
        "options": {"queue": CONTROL_QUEUE, "expires": 3600},
        "kwargs": {"kind": "periodic"},
    }
    assert schedule["invasive-checks"]["kwargs"] == {"kind": "invasive"}
    assert schedule["invasive-checks"]["options"]["expires"] == 14400
    assert schedule["reconcile"] == {
        "task": "autopilot.reconcile",
        "schedule": 60,
        "options": {"queue": CONTROL_QUEUE, "expires": 60},
    }


def test_a_tick_kind_names_its_interval_and_an_unknown_kind_sends_nothing() -> None:
    settings = config.Settings(periodic_interval_s=60, invasive_interval_s=14400, periodic_checks=("remapped",))
    assert runs.tick_interval(settings, "periodic") == 60
    assert runs.tick_interval(settings, "invasive") == 14400
    store = ResultsStore(fakeredis.FakeRedis())
    store.heartbeat(NodeRecord("node-a", last_seen=1_800_000_000.0))
    sent = FakeDispatcher()
    with pytest.raises(errors.BadParameter):
        tasks.fanout(store, sent, settings, kind="periodc", now=1_800_000_000.0, checks=shipped_checks())
    assert sent.sent == []


def test_a_tick_judges_the_live_nodes_and_its_slot_by_the_stores_clock_whatever_its_workers_reads() -> None:
    # before: the worker that ran the tick (any on the control queue) used its own clock: one hours off picked
    # none of the nodes, scored on the store's clock, or nodes lost long ago, and claimed another slot
    at = [1_800_000_000.0]
    store = ResultsStore(fakeredis.FakeRedis(), server_clock=lambda: at[0])
    settings = config.Settings(periodic_interval_s=INTERVAL, periodic_checks=("remapped",))
    store.heartbeat_many([NodeRecord("node-a", last_seen=at[0] - 10), NodeRecord("node-b", last_seen=at[0] - 300)])
    run = tasks.fanout(store, FakeDispatcher(), settings, kind="periodic", checks=shipped_checks())
    assert run is not None and run.nodes == ("node-a",)
    at[0] += 1  # the same slot, on the store's clock: claimed
    assert tasks.fanout(store, FakeDispatcher(), settings, kind="periodic", checks=shipped_checks()) is None
