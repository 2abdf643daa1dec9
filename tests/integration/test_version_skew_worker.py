"""Task messages of another release reach a real ``autopilot worker --simulate 2`` through a real redis-server.

A message with a key this release does not know runs as usual (the key is logged once); one without its
deadline answers its run's checks ``error`` at once, instead of leaving the run to call the node unreachable
at its deadline (Celery raised TypeError before the task's body ran).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from tests.integration.conftest import Procs, RedisServer, runtime_env, settings_for, wait_for_nodes, wait_until
from workers.app import create_celery
from workers.dispatch import RUN_TASK, CeleryDispatcher
from workers.store import ResultsStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def sender(private_redis: RedisServer) -> Iterator[CeleryDispatcher]:
    app: Celery = create_celery(settings_for(private_redis.url))
    try:
        yield CeleryDispatcher(app)
    finally:
        app.close()


def test_a_real_worker_runs_a_message_with_a_key_more_and_answers_one_with_a_key_fewer(
    private_redis: RedisServer, procs: Procs, sender: CeleryDispatcher
) -> None:
    worker = procs.start(
        "worker-sim", ["worker", "--simulate", "2", "--loglevel", "INFO"], runtime_env(private_redis.url)
    )
    wait_for_nodes(private_redis.url, ["sim-0", "sim-1"])
    client = redis.Redis.from_url(private_redis.url)
    store = ResultsStore(client)
    deadline = time.time() + 60
    newer, older = uuid.uuid4().hex, uuid.uuid4().hex
    for run_id in (newer, newer):  # twice: the unknown key is logged once
        message = {"run_id": run_id, "node": "sim-0", "checks": ["remapped"], "params": {}, "deadline": deadline}
        sender.send_task(RUN_TASK, "sim-0", {**message, "priority_hint": "high"}, expires=deadline)
    sender.send_task(
        RUN_TASK, "sim-1", {"run_id": older, "node": "sim-1", "checks": ["remapped", "gpupower"], "params": {}},
        expires=deadline,
    )  # fmt: skip

    wait_until(lambda: store.run_answered(newer) == {("sim-0", "remapped")}, 30, "the newer message's answer")
    wait_until(lambda: len(store.run_answered(older)) == 2, 30, "the older message's answers")
    summaries = {check: r["summary"] for (_, check), r in store.run_news(older, 0).found.items()}
    assert summaries == {
        "remapped": "message from another version: missing deadline",
        "gpupower": "message from another version: missing deadline",
    }
    assert {r["status"] for r in store.run_news(older, 0).found.values()} == {"error"}
    assert store.run_news(newer, 0).found[("sim-0", "remapped")]["status"] == "ok"
    wait_until(lambda: worker.output().count("succeeded in") >= 3, 30, "the three tasks to end")
    log = worker.output()
    assert log.count("ignoring keyword argument 'priority_hint'") == 1
    assert "TypeError" not in log
    client.close()
