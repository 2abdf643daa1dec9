"""Bad messages in a node's queue, with a real redis-server and a real worker process.

Whatever lands in ``autopilot.node.<node>`` (bytes that are not JSON, JSON that is no kombu
envelope, an envelope naming a task nobody registered, a pickled payload the worker must not
unpickle) is rejected, logged once and skipped: the worker keeps consuming, and a real task sent
after them is answered while another check of the same worker is still running.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable

import flask.testing
import pytest
import redis

from autopilot import names
from tests.integration.conftest import Procs, wait_for_nodes, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODE = "node-a"
ApiFactory = Callable[..., flask.testing.FlaskClient]


def _envelope(body: bytes, content_type: str, task: str) -> bytes:
    """A kombu Redis message as kombu writes it (base64 body, Celery protocol 2 headers)."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "binary" if content_type.endswith("serialize") else "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": f"bad-{task}", "argsrepr": "()", "kwargsrepr": "{}"},
            "properties": {
                "correlation_id": f"bad-{task}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": names.node_queue(NODE)},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": f"tag-{task}",
            },
        }
    ).encode()


def bad_messages() -> dict[str, bytes]:
    celery_body = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    return {
        "garbage": b"\x00\xffnot json at all",
        "broken envelope": b'{"body": 12, "headers": "nope"}',
        "unknown task": _envelope(celery_body, "application/json", "autopilot.no_such_task"),
        "pickle payload": _envelope(
            pickle.dumps(([], {}, {})), "application/x-python-serialize", "autopilot.run_checks"
        ),
    }


def test_bad_messages_are_skipped_and_the_next_task_is_answered_at_once(
    redis_url: str, procs: Procs, api_factory: ApiFactory
) -> None:
    worker = procs.worker(NODE, redis_url, {"AUTOPILOT_WORKER_CONCURRENCY": "4"})
    wait_for_nodes(redis_url, [NODE])
    api = api_factory(redis_url)
    # A long check in flight: a consumer that restarts would wait for it before taking more work.
    started = api.post(
        "/api/v1/runs", json={"checks": ["sleepy"], "hosts": [NODE], "params": {"sleepy": {"seconds": 60}}}
    )
    assert started.status_code == 202, started.get_data(as_text=True)
    wait_until(lambda: "sleepy: started on" in worker.output(), 30, "the sleepy check to start")

    client = redis.Redis.from_url(redis_url)
    queue = names.node_queue(NODE)
    for blob in bad_messages().values():
        client.lpush(queue, blob)
    wait_until(lambda: client.llen(queue) == 0, 10, "the bad messages to be taken off the queue")

    answer = api.get(f"/status?format=json&check=echo&host={NODE}&deadline=10")

    assert answer.status_code == 200
    node = answer.get_json()["nodes"][NODE]
    assert node["status"] == "ok", node
    assert worker.proc.poll() is None
    log = worker.output()
    assert "Unrecoverable" not in log
    # No reconnect for a bad message: it would restore the in-flight check and run it twice.
    assert "Connection to broker lost" not in log
    assert log.count("sleepy: started on") == 1
    # Each bad message is logged once (one log record; a traceback may follow it), as what it is.
    records = [line for line in log.splitlines() if line[:2] == "20"]
    for said in (
        "skipped a message that cannot be read from a queue (JSONDecodeError",  # the garbage
        "skipped a message that cannot be read from a queue (KeyError",  # the broken envelope
        "Received unregistered task of type 'autopilot.no_such_task'",
        "untrusted content of type pickle",
    ):
        assert sum(said in record for record in records) == 1, said
