"""What a task's body sends to Redis: a write of one field is one command, the reads that judge a failed
ping are one round trip, and a node's GPU judgement is not parsed and written out again when it did not
change; each shortcut answers as the long way does."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from autopilot import config, gpuverdict, results
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.verdict import Verdict
from tests.unit.test_ping_attribution import NOW, fleet, store_with
from tests.unit.test_ping_attribution import settings as ping_settings
from workers import confirming, gpureconcile, reconcile
from workers.dispatch import FakeDispatcher
from workers.store import NodeState, ResultsStore

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def trips(monkeypatch: pytest.MonkeyPatch, client: Any) -> list[str]:
    """What reaches Redis from ``client`` from now on, in order: ``MULTI`` or ``PIPELINE`` for each pipeline
    executed, the command's name for each command sent on its own."""
    sent: list[str] = []
    command, pipeline = client.execute_command, client.pipeline

    def alone(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return command(*args, **options)

    def piped(transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = pipeline(transaction=transaction, shard_hint=shard_hint)
        execute = pipe.execute

        def counted(raise_on_error: bool = True) -> Any:
            sent.append("MULTI" if transaction else "PIPELINE")
            return execute(raise_on_error)

        pipe.execute = counted
        return pipe

    monkeypatch.setattr(client, "execute_command", alone)
    monkeypatch.setattr(client, "pipeline", piped)
    return sent


def test_one_state_field_is_one_command_and_state_with_labels_one_multi(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    sent = trips(monkeypatch, store.r)
    store.set_state_and_labels("n1", {"gpus_at": "2026-11-30T08:00:00Z"}, {})  # a steady reconcile's write
    store.set_state_and_labels("n1", {"verdict": "WARN", "reasons": None}, {})  # HSET and HDEL: together
    store.set_state_and_labels("n1", {"verdict": "PASS"}, {"autopilot.ibm.com/gpuhealth": "PASS"})
    assert sent == ["PIPELINE", "MULTI", "MULTI"]  # before: a MULTI each
    assert (store.state("n1").verdict, store.state("n1").gpus_at) == ("PASS", "2026-11-30T08:00:00Z")
    assert store.labels("n1") == {"autopilot.ibm.com/gpuhealth": "PASS"}


def test_a_failed_pings_reconcile_reads_history_suspects_and_spans_in_one_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = store_with(fleet({"gpu-3"}))
    store.set_ping_suspects({"gpu-3"}, 60, now=NOW.timestamp(), keep_s=3600)
    monkeypatch.setattr(reconcile, "fleet_pings", lambda *a, **k: pytest.fail("read the fleet's pings"))
    sent = trips(monkeypatch, store.r)
    decision = reconcile.reconcile_node(
        store, "gpu-1", ping_settings(), NOW + timedelta(seconds=5), checks=shipped_checks()
    )
    assert decision.verdict is Verdict.PASS  # its failure is the suspect's
    # The node's view, then its history with the kept suspects and their spans (before: an LRANGE and two GETs).
    assert sent[:2] == ["PIPELINE", "PIPELINE"]
    assert not {"GET", "LRANGE"} & set(sent)


def test_confirmation_after_a_failed_ping_reads_history_suspects_and_spans_in_one_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pings = fleet({"gpu-3"})
    store = store_with(pings)
    store.set_ping_suspects({"gpu-3"}, 60, now=NOW.timestamp(), keep_s=3600)
    sent = trips(monkeypatch, store.r)
    run = confirming.after_task(
        store, FakeDispatcher(), ping_settings(), "gpu-1", [pings["gpu-1"]], checks=shipped_checks()
    )
    assert run is None  # its only failed pair is to the kept suspect: nothing to confirm
    assert not {"GET", "LRANGE"} & set(sent)  # before: an LRANGE and two GETs
    history, kept, spans = store.history_and_suspects("gpu-1", 10)
    assert (history, kept, spans) == (store.history("gpu-1", 10), store.ping_suspects(), store.ping_suspect_spans())
    assert store.history_and_suspects("gpu-1", 10, suspects=False)[1] is None


def gpu_setup(node: str) -> tuple[ResultsStore, config.Settings, dict[str, CheckResult]]:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="beat", periodic_checks=("remapped",))
    devices = tuple(
        DeviceResult(str(i), Status.OK, uuid=f"GPU-{i:08x}-0000-4000-8000-{i:012x}", bus_id=f"0000:{i:02x}:00.0")
        for i in range(4)
    )
    found = CheckResult("remapped", Status.OK, "ok", node=node, started_at=results.utc_now_iso(T0), devices=devices)
    return store, settings, {"remapped": found}


def counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = dict.fromkeys(("loads", "dumps", "publication"), 0)
    for name in calls:
        real: Callable[..., Any] = getattr(gpuverdict, name)

        def wrapped(*args: Any, _name: str = name, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(gpuverdict, name, wrapped)
    return calls


def test_a_steady_gpu_judgement_is_not_parsed_nor_written_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    node = "memo-steady"
    store, settings, latest = gpu_setup(node)
    first = gpureconcile.reconcile_gpus(store, node, settings, latest, NodeState(), T0, checks=shipped_checks())
    state = NodeState().updated(first.state)
    # The first reconcile that reads back what the last one wrote parses it; from then on nothing changes.
    second = gpureconcile.reconcile_gpus(store, node, settings, latest, state, T0, checks=shipped_checks())
    assert second.state["gpus"] == state.gpus
    calls = counting(monkeypatch)
    later = T0 + timedelta(seconds=30)
    again = gpureconcile.reconcile_gpus(store, node, settings, latest, state, later, checks=shipped_checks())
    assert calls == {"loads": 0, "dumps": 0, "publication": 0}  # before: one each
    monkeypatch.setattr(gpureconcile, "_memo", {})
    fresh = gpureconcile.reconcile_gpus(store, node, settings, latest, state, later, checks=shipped_checks())
    assert calls == {"loads": 1, "dumps": 1, "publication": 1}
    assert again == fresh


def test_a_gpu_state_another_writer_changed_is_read_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    node = "memo-changed"
    store, settings, latest = gpu_setup(node)
    first = gpureconcile.reconcile_gpus(store, node, settings, latest, NodeState(), T0, checks=shipped_checks())
    # Another writer (an operator's tool, another release) evicted GPU 0 meanwhile: the memo of this
    # process's last judgement must not hide it.
    key, gpu0 = next((k, s) for k, s in first.states.items() if s.index == "0")
    evicted = {**first.states, key: dataclasses.replace(gpu0, verdict=Verdict.EVICT, evicted_at="2026-11-30T08:00:10Z")}
    state = NodeState().updated({**first.state, "gpus": gpuverdict.dumps(evicted)})
    calls = counting(monkeypatch)
    later = T0 + timedelta(seconds=30)
    again = gpureconcile.reconcile_gpus(store, node, settings, latest, state, later, checks=shipped_checks())
    assert calls["loads"] == 1
    assert again.states[key].verdict is Verdict.EVICT  # sticky, as written
    assert again.labels[gpuverdict.GPUS_EVICT] == "1"


def test_confirmation_that_changes_nothing_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="w", periodic_checks=("gpupower",))
    for i in range(3):  # a confirmed failure: nothing pending, nothing to re-run, no flap prevented
        at = results.utc_now_iso(T0 + timedelta(minutes=i))
        store.save_result(CheckResult("gpupower", Status.FAIL, "GPU 6: HW slowdown", node="n1", started_at=at))
    latest = store.latest("n1")["gpupower"]
    sent = trips(monkeypatch, store.r)
    marks = ("WARN", frozenset[str]())
    assert (
        confirming.after_task(store, FakeDispatcher(), settings, "n1", [latest], checks=shipped_checks(), marks=marks)
        is None
    )
    assert sent == ["LRANGE"]  # the history it judges by; before: and a MULTI that deleted no pending field
    # What changes something is still written: a pending check no longer pending.
    sent.clear()
    confirming.after_task(
        store,
        FakeDispatcher(),
        settings,
        "n1",
        [latest],
        checks=shipped_checks(),
        marks=("WARN", frozenset({"gpupower"})),
    )
    assert sent == ["LRANGE", "PIPELINE"]


def test_a_tasks_reconcile_judges_by_the_store_clock_read_with_its_view_not_by_a_time_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="n1", periodic_checks=("pciebw",))
    sent = trips(monkeypatch, store.r)
    done = CheckResult("pciebw", Status.OK, "fine", node="n1", started_at=results.utc_now_iso())
    view = store.save_many([(done, True)], view="n1")  # as tasks.run_checks ends: write, and read back
    assert view is not None and view.now is not None
    decision = reconcile.reconcile_node(store, "n1", settings, view=view, checks=shipped_checks())
    assert decision.verdict is Verdict.PASS
    # before: the reconcile asked Redis for TIME on its own, a round trip per task
    assert "TIME" not in sent and sent[0] == "MULTI"
