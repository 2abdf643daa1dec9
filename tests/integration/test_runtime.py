"""The runtime for real: a real redis-server, real worker processes for node-a/node-b/node-c, beat.

The API is the real Flask app (``api.app.create_app``) over that Redis, driven through its test
client; the workers are ``python -m autopilot.cli worker --node X`` subprocesses that also load
the test checks ``echo`` and ``sleepy`` (tests/integration/check_specs.py). Every wait is bounded
and every process is killed by the ``procs`` fixture, whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask.testing
import pytest
import redis

from tests.integration.conftest import Procs, RedisServer, wait_for_nodes, wait_until
from workers.store import ResultsStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NODES = ["node-a", "node-b", "node-c"]
ApiFactory = Callable[..., flask.testing.FlaskClient]


def status(api: flask.testing.FlaskClient, query: str) -> dict[str, Any]:
    answer = api.get(f"/status?format=json&{query}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body: dict[str, Any] = answer.get_json()
    return body


def received_tasks(log: str) -> int:
    return sum(1 for line in log.splitlines() if "Task autopilot.run_checks[" in line and line.endswith("received"))


def test_a_task_for_node_b_runs_only_on_b(redis_url: str, procs: Procs, api_factory: ApiFactory) -> None:
    workers = {n: procs.worker(n, redis_url) for n in NODES}
    wait_for_nodes(redis_url, NODES)
    api = api_factory(redis_url)

    report = status(api, "check=echo&host=node-b&deadline=30")

    assert list(report["nodes"]) == ["node-b"]
    (result,) = report["nodes"]["node-b"]["results"]
    assert result["status"] == "ok" and result["node"] == "node-b"
    assert result["data"]["pid"] == workers["node-b"].pid  # answered by b's own process
    assert received_tasks(workers["node-b"].output()) == 1
    assert received_tasks(workers["node-a"].output()) == 0
    assert received_tasks(workers["node-c"].output()) == 0


def test_status_over_three_nodes_returns_all_three(redis_url: str, procs: Procs, api_factory: ApiFactory) -> None:
    workers = {n: procs.worker(n, redis_url) for n in NODES}
    wait_for_nodes(redis_url, NODES)
    api = api_factory(redis_url)

    report = status(api, "check=echo&host=node-a,node-b,node-c&deadline=30")

    assert report["complete"] is True
    assert sorted(report["nodes"]) == NODES
    for node in NODES:
        (result,) = report["nodes"][node]["results"]
        assert (report["nodes"][node]["status"], result["node"]) == ("ok", node)
        assert result["data"]["pid"] == workers[node].pid


def test_a_worker_killed_mid_check_is_reported_unreachable_and_the_rest_is_intact(
    redis_url: str, procs: Procs, api_factory: ApiFactory
) -> None:
    workers = {n: procs.worker(n, redis_url) for n in NODES}
    wait_for_nodes(redis_url, NODES)
    api = api_factory(redis_url)
    body = {"checks": ["sleepy"], "hosts": NODES, "params": {"sleepy": {"seconds": 3}}, "deadline": 12}
    created = api.post("/api/v1/runs", json=body)
    assert created.status_code == 202, created.get_data(as_text=True)
    run_id = created.get_json()["id"]

    # SIGKILL b while its check runs: no result, no goodbye.
    wait_until(lambda: "sleepy: started on node-b" in workers["node-b"].output(), 30, "node-b to start its check")
    workers["node-b"].proc.kill()
    workers["node-b"].proc.wait(10)

    answer = api.get(f"/api/v1/runs/{run_id}?wait=60")
    assert answer.status_code == 200
    report = answer.get_json()
    assert report["complete"] is True
    assert report["nodes"]["node-b"]["status"] == "unreachable"
    assert report["nodes"]["node-b"]["results"] == []
    for node in ("node-a", "node-c"):
        (result,) = report["nodes"][node]["results"]
        assert (report["nodes"][node]["status"], result["status"], result["node"]) == ("ok", "ok", node)
    assert report["totals"]["unreachable"] == 1 and report["totals"]["ok"] == 2


def test_workers_and_api_recover_after_a_redis_restart(
    private_redis: RedisServer, procs: Procs, api_factory: ApiFactory
) -> None:
    url = private_redis.url
    worker = procs.worker("node-a", url)
    wait_for_nodes(url, ["node-a"])
    api = api_factory(url)
    assert status(api, "check=echo&host=node-a&deadline=30")["nodes"]["node-a"]["status"] == "ok"

    private_redis.kill()  # a crash: the memory-only server comes back empty
    private_redis.start()

    # Nobody touches the worker or the API: the worker heartbeats its node back and consumes its
    # queue again, and the next request is answered.
    wait_for_nodes(url, ["node-a"], timeout_s=60)

    def answered() -> dict[str, Any] | None:
        try:
            report = status(api, "check=echo&host=node-a&deadline=5")
        except (AssertionError, redis.RedisError):
            return None
        return report if report["nodes"].get("node-a", {}).get("status") == "ok" else None

    report = wait_until(answered, 90, "an answer from node-a after the restart", interval_s=1)
    assert report["nodes"]["node-a"]["results"][0]["data"]["pid"] == worker.pid
    assert worker.proc.poll() is None


def test_beat_fans_periodic_checks_out_to_every_live_node(redis_url: str, procs: Procs) -> None:
    periodic = {"AUTOPILOT_PERIODIC_CHECKS": "echo", "AUTOPILOT_PERIODIC_INTERVAL": "2s"}
    for node in NODES:
        procs.worker(node, redis_url, periodic)
    wait_for_nodes(redis_url, NODES)
    procs.beat(redis_url, periodic)

    client = redis.Redis.from_url(redis_url)
    store = ResultsStore(client)
    try:
        latest = wait_until(
            lambda: (found if all("echo" in found[n] for n in NODES) else None)
            if (found := store.latest_many(NODES))
            else None,
            60,
            "a periodic echo result on every node",
            interval_s=0.5,
        )
    finally:
        client.close()
    for node in NODES:
        assert latest[node]["echo"].node == node
        assert latest[node]["echo"].status.value == "ok"
