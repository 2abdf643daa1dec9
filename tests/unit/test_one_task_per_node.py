"""One message per node per run: light checks first, GPU checks under the node's lock, and only the
GPU checks handed back while another run holds the lock."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from celery import Celery
from celery import _state as celery_state
from celery.exceptions import Retry

from autopilot import config, registry
from autopilot.registry import shipped as shipped_checks
from autopilot.results import Status
from autopilot.testing import wait_until
from workers import host as hosting
from workers import simulate, tasks
from workers.app import create_celery
from workers.dispatch import RUN_TASK, CeleryDispatcher, Envelope, partition
from workers.host import NodeHost
from workers.store import ResultsStore, Run

NODE = "sim-0"
CHECKS = ("remapped", "ping", "gpupower")  # ping is light; the others use the GPUs


@pytest.fixture
def host() -> NodeHost:
    settings = config.Settings(node_name="test", redis_url="", periodic_checks=CHECKS)
    return NodeHost(
        settings, ResultsStore(fakeredis.FakeRedis()), simulate.contexts(settings, 1, [], checks=shipped_checks())
    )


def new_run(host: NodeHost, deadline_s: float = 60) -> Run:
    run = Run.new(CHECKS, [NODE], {}, deadline_s)
    host.store.create_run(run)
    return run


def run_task(host: NodeHost, run: Run, checks: tuple[str, ...] = CHECKS) -> list[Any]:
    return tasks.run_checks(host, run_id=run.id, node=NODE, checks=checks, params={}, deadline=run.deadline)


def answered(host: NodeHost, run: Run) -> set[str]:
    return {check for _, check in host.store.run_answered(run.id)}


def test_partition_keeps_the_order_within_each_group() -> None:
    assert partition(CHECKS, shipped_checks()) == (("ping",), ("remapped", "gpupower"))
    assert partition(("ping",), shipped_checks()) == (("ping",), ())
    assert partition(("no-such-check",), shipped_checks()) == (("no-such-check",), ())  # unknown here: light


def test_one_task_runs_the_light_checks_and_then_the_gpu_checks(host: NodeHost) -> None:
    run = new_run(host)
    done = run_task(host, run)
    assert [r.check for r in done] == ["ping", "remapped", "gpupower"]
    assert answered(host, run) == set(CHECKS)
    assert host.store.state(NODE).verdict  # recomputed after the task
    assert not host.gpu_lock(NODE).locked()


def test_a_busy_gpu_lock_hands_back_only_the_gpu_checks_after_the_light_ones_ran(host: NodeHost) -> None:
    run = new_run(host)
    lock = host.gpu_lock(NODE)
    lock.acquire()  # another run's GPU check
    try:
        with pytest.raises(tasks.GpusBusy) as busy:
            run_task(host, run)
        assert busy.value.checks == ("remapped", "gpupower")
        assert [r.check for r in busy.value.done] == ["ping"]  # what the confirmation glue judges
        assert answered(host, run) == {"ping"}  # the light check did not wait
        assert host.store.state(NODE).verdict  # and its result was judged
        # The retry of the GPU part alone, lock still busy: handed back again, nothing saved.
        host.store.set_state(NODE, {"verdict": "sentinel"})
        with pytest.raises(tasks.GpusBusy):
            run_task(host, run, busy.value.checks)
        assert host.store.state(NODE).verdict == "sentinel"
    finally:
        lock.release()
    done = run_task(host, run, busy.value.checks)
    assert [r.check for r in done] == ["remapped", "gpupower"]
    assert answered(host, run) == set(CHECKS)
    assert host.store.state(NODE).verdict != "sentinel"


def test_gpu_checks_still_blocked_at_the_deadline_are_answered_busy(host: NodeHost) -> None:
    run = new_run(host, deadline_s=0.5)
    with host.gpu_lock(NODE):
        done = run_task(host, run)
    assert {r.check: r.status for r in done} == {
        "ping": Status.SKIPPED,
        "remapped": Status.BUSY,
        "gpupower": Status.BUSY,
    }
    assert "held the GPUs until the deadline" in done[1].summary
    assert answered(host, run) == set(CHECKS)


@pytest.fixture
def app(host: NodeHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    # Celery registers every ``@app.task`` of every app built in this process on each app it
    # finalizes; this app gets only its own (the others' would collide by name and warn).
    monkeypatch.setattr(celery_state, "_on_app_finalizers", set())
    # The broker is never reached: the task is called directly and its retry is recorded.
    celery = create_celery(config.Settings(node_name="test", redis_url="redis://127.0.0.1:1/0"))
    hosting.install(host)
    yield celery
    hosting.install(None)
    celery.close()


def test_the_celery_task_retries_the_gpu_checks_only_with_their_params(
    app: Celery, host: NodeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = app.tasks[RUN_TASK]
    retried: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retried.append(options)
        return Retry("again")

    monkeypatch.setattr(task, "retry", retry)
    run = new_run(host)
    params: dict[str, dict[str, Any]] = {"ping": {}, "gpupower": {}}
    with host.gpu_lock(NODE), pytest.raises(Retry):
        task(run_id=run.id, node=NODE, checks=list(CHECKS), params=params, deadline=run.deadline)
    (options,) = retried
    assert options["kwargs"] == {
        "run_id": run.id,
        "node": NODE,
        "checks": ["remapped", "gpupower"],
        "params": {"gpupower": {}},
        "deadline": run.deadline,
    }
    assert options["countdown"] > 0
    assert answered(host, run) == {"ping"}
    summary = task(run_id=run.id, node=NODE, checks=["remapped", "gpupower"], params={}, deadline=run.deadline)
    assert summary.keys() == {"remapped", "gpupower"}


def test_the_dispatcher_publishes_one_message_per_node_with_every_check() -> None:
    app = Celery("dispatch-test", broker="memory://", set_as_current=False)
    deadline = time.time() + 60
    params = {"ping": {"count": 2}}
    envelopes = [Envelope("run-1", node, CHECKS, params, deadline) for node in ("node-a", "node-b")]
    CeleryDispatcher(app).send_many(envelopes)
    with app.connection_for_read() as conn:
        for node in ("node-a", "node-b"):
            queue = conn.SimpleQueue(f"autopilot.node.{node}")
            message = queue.get(timeout=1)
            kwargs = message.payload[1]
            assert kwargs["node"] == node and kwargs["checks"] == list(CHECKS)
            assert kwargs["params"] == {"remapped": {}, "ping": {"count": 2}, "gpupower": {}}
            message.ack()
            assert queue.qsize() == 0  # one message for the node, not one per group
            queue.close()
    app.close()


def _sent_by_api_and_by_send_task(app: Celery, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The message the dispatcher publishes for one envelope, then the one ``app.send_task`` publishes
    for it as the dispatcher used to call it, both from the same queue."""
    envelope = Envelope("run-1", "node-a", ("remapped", "ping"), {"ping": {"count": 2, "nodes": ""}}, time.time() + 60)
    kwargs = {
        "run_id": "run-1",
        "node": "node-a",
        "checks": ["remapped", "ping"],
        "params": {"remapped": {}, "ping": {"count": 2, "nodes": ""}},
        "deadline": envelope.deadline,
    }
    with monkeypatch.context() as patched:
        patched.setattr(app, "send_task", lambda *a, **k: pytest.fail("the API's publish went through send_task"))
        CeleryDispatcher(app).send_many([envelope])
    queue = "autopilot.node.node-a"
    expires = datetime.fromtimestamp(envelope.deadline, UTC)
    app.send_task(
        RUN_TASK,
        kwargs=kwargs,
        argsrepr="()",
        kwargsrepr=repr(kwargs),
        queue=queue,
        routing_key=queue,
        expires=expires,
        declare=[],
    )
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        ours, celerys = simple.get(timeout=1), simple.get(timeout=1)
        simple.close()
    return ours, celerys


def _masked(message: Any) -> dict[str, Any]:
    """What a worker reads of a message, without what differs between two sends (ids, the ms left)."""
    headers = {k: v for k, v in message.headers.items() if k not in ("id", "root_id")}
    properties = {k: v for k, v in message.properties.items() if k not in ("correlation_id", "delivery_tag")}
    assert 0 < int(properties.pop("expiration")) <= 60_000
    assert message.headers["root_id"] == message.headers["id"] == message.properties["correlation_id"]
    return {
        "headers": headers,
        "properties": properties,
        "payload": message.payload,
        "delivery_info": message.delivery_info,
        "content": (message.content_type, message.content_encoding),
    }


def test_the_apis_task_message_is_the_one_celery_send_task_publishes(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_celery(config.Settings(node_name="x", redis_url="redis://127.0.0.1:1/0"))
    app.conf.broker_url = "memory://"
    ours, celerys = _sent_by_api_and_by_send_task(app, monkeypatch)
    assert _masked(ours) == _masked(celerys)
    assert ours.headers["parent_id"] is None and ours.headers["expires"] == celerys.headers["expires"]
    app.close()


def test_a_task_that_sends_run_tasks_is_their_parent_as_with_send_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Beat's tick and a confirmation run publish from inside a task: Celery names it in each message.
    app = create_celery(config.Settings(node_name="x", redis_url="redis://127.0.0.1:1/0"))
    app.conf.broker_url = "memory://"
    request = SimpleNamespace(id="tick-1", root_id="beat-0", delivery_info={})
    parent = SimpleNamespace(request=request, add_trail=lambda result: None)
    monkeypatch.setattr(Celery, "current_worker_task", property(lambda _: parent))
    sent: list[dict[str, Any]] = []
    real = app.send_task
    monkeypatch.setattr(app, "send_task", lambda *a, **k: sent.append(k) or real(*a, **k))
    CeleryDispatcher(app).send_many([Envelope("run-1", "node-a", ("ping",), {}, time.time() + 60)])
    assert len(sent) == 1
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue("autopilot.node.node-a")
        message = simple.get(timeout=1)
        simple.close()
    assert (message.headers["parent_id"], message.headers["root_id"]) == ("tick-1", "beat-0")
    app.close()


class CountingStore(ResultsStore):
    """Records each ``save_many`` call: how many results it wrote, and whether it read the node back."""

    def __init__(self) -> None:
        super().__init__(fakeredis.FakeRedis())
        self.saves: list[tuple[list[str], bool]] = []

    def save_many(self, items: Any, run_id: str | None = None, *, view: str | None = None) -> Any:
        self.saves.append(([r.check for r, _ in items], view is not None))
        return super().save_many(items, run_id, view=view)


def counting_host() -> NodeHost:
    settings = config.Settings(node_name="test", redis_url="", periodic_checks=CHECKS)
    return NodeHost(settings, CountingStore(), simulate.contexts(settings, 1, [], checks=shipped_checks()))


def test_a_task_of_quick_checks_writes_its_results_and_reads_the_node_in_one_multi() -> None:
    host = counting_host()
    run = new_run(host)
    run_task(host, run)
    assert host.store.saves == [(["ping", "remapped", "gpupower"], True)]  # type: ignore[attr-defined]
    assert answered(host, run) == set(CHECKS)
    assert host.store.state(NODE).verdict


def test_a_result_is_in_the_store_while_a_slow_check_after_it_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    host = counting_host()
    run = new_run(host)
    seen_during: list[set[str]] = []
    spec = registry.REGISTRY.get("gpupower")

    def slow(ctx: Any, params: Any) -> Any:
        # Until the results before it are in the store (bounded), not for a fixed time that a busy
        # machine could outlast before the writer's next tick (every HOLD_S).
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: answered(host, run) >= {"ping", "remapped"}, 10, "the early writes", interval_s=0.02)
        seen_during.append(answered(host, run))
        return spec.run(ctx, params)

    monkeypatch.setitem(registry.REGISTRY._specs, "gpupower", dataclasses.replace(spec, run=slow))
    run_task(host, run)
    # ping and remapped were written while gpupower ran; gpupower with the task's last MULTI.
    assert seen_during == [{"ping", "remapped"}]
    assert host.store.saves == [(["ping", "remapped"], False), (["gpupower"], True)]  # type: ignore[attr-defined]
    assert answered(host, run) == set(CHECKS)


def test_a_task_hands_its_confirmation_the_marks_its_last_multi_read(host: NodeHost) -> None:
    from workers import confirming
    from workers.dispatch import FakeDispatcher

    host.store.record_confirmations(NODE, runs=[], prevented=[], pending=["gpupower"])
    done = run_task(host, new_run(host))
    # The verdict its reconcile stored and the pending checks: what a read of their own would give.
    assert done.marks == host.store.confirmation_marks(NODE) == (host.store.state(NODE).verdict, {"gpupower"})

    def no_read(node: str) -> Any:
        raise AssertionError("the marks were handed over: no read of their own")

    host.store.confirmation_marks = no_read  # type: ignore[method-assign]
    confirming.after_task(
        host.store, FakeDispatcher(), host.settings, NODE, done, marks=done.marks, checks=shipped_checks()
    )
    # gpupower passed on this run: no longer pending once its confirmation has judged it.
    assert host.store.confirmation_counts([NODE]) == {NODE: {}}
    assert host.store.r.hget("ap:confirm:sim-0", "pending") is None
