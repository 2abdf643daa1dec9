"""A real ``autopilot worker --simulate 1 --concurrency 1`` whose one pool thread gets stuck in a task.

A ``sleepy`` check within its timeout holds the thread past ``AUTOPILOT_WEDGE_MARGIN`` without wedging the
worker; a task naming ``hang`` (``checks_for_tests``: its thread never comes back) wedges it: the worker logs
it, stops its liveness mark (``autopilot probe`` fails while Redis answers), and its node record says
``wedged_since`` with ``last_seen`` held there.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from autopilot import config
from tests.integration.conftest import Procs, RedisServer, runtime_env, wait_for_nodes, wait_until
from tests.integration.test_liveness import advances, run_probe
from workers.app import create_celery
from workers.dispatch import CeleryDispatcher, Envelope
from workers.store import ResultsStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_worker_whose_only_thread_is_stuck_fails_its_probe_and_says_so_in_its_record(
    private_redis: RedisServer, procs: Procs, tmp_path: Path
) -> None:
    alive = tmp_path / "worker.alive"
    env = runtime_env(
        private_redis.url,
        {
            "AUTOPILOT_LIVENESS_FILE": str(alive),
            "AUTOPILOT_LIVENESS_INTERVAL": "0.2s",
            "AUTOPILOT_WEDGE_MARGIN": "1s",
            "AUTOPILOT_RECONCILE_INTERVAL": "1h",
        },
    )
    worker = procs.start("worker-sim", ["worker", "--simulate", "1", "--concurrency", "1", "--no-control"], env)
    wait_for_nodes(private_redis.url, ["sim-0"])
    advances(alive)
    client = redis.Redis.from_url(private_redis.url)
    store = ResultsStore(client)
    sender = CeleryDispatcher(create_celery(config.Settings(redis_url=private_redis.url)))

    def send(checks: tuple[str, ...], params: dict[str, dict[str, float]]) -> None:
        sender.send(Envelope(uuid.uuid4().hex, "sim-0", checks, params, time.time() + 120))

    try:
        # A long check within its timeout holds the one thread past the margin: not wedged.
        send(("sleepy",), {"sleepy": {"seconds": 4.0}})
        wait_until(lambda: "sleepy: started on sim-0" in worker.output(), 30, "the sleepy check to start")
        time.sleep(2.5)  # past the 1 s margin, within sleepy's 310 s timeout
        advances(alive, within_s=5)
        assert run_probe(env, "--max-age", "1s")[0] == 0
        record = store.node("sim-0")
        assert record is not None and record.wedged_since == 0.0

        # A task whose thread never comes back: wedged once the margin (its bound: no check the registry knows) passes.
        send(("hang",), {})
        wait_until(lambda: "this pool thread is stuck for good" in worker.output(), 30, "the hang to start")
        wait_until(
            lambda: (r := store.node("sim-0")) is not None and r.wedged_since > 0, 30, "the record to say wedged"
        )
        record = store.node("sim-0")
        assert record is not None and record.last_seen == record.wedged_since
        wait_until(lambda: run_probe(env, "--max-age", "1s")[0] == 1, 30, "the probe to fail a wedged worker")
        code, said = run_probe(env, "--max-age", "1s")
        assert code == 1 and "wedged" in said, said
        logged = [line for line in worker.output().splitlines() if "worker wedged" in line]
        assert len(logged) == 1 and "autopilot.run_checks for" in logged[0], logged
        assert worker.proc.poll() is None  # alive, heartbeating its record: only the kubelet restarts it
        seen = record.last_seen
        time.sleep(2.5)  # two heartbeats later, last_seen has not moved
        again = store.node("sim-0")
        assert again is not None and again.last_seen == seen
    finally:
        client.close()
