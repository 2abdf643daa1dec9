"""The API's own limits: waiting requests bounded (503 + Retry-After), body size (413), JSON depth (400)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import fakeredis
import pytest
from flask import Flask

from api import limits
from api.app import create_app
from autopilot import config
from tests.unit.api_helpers import FakeWorkers, stand_in_checks
from workers.dispatch import FakeDispatcher
from workers.store import NodeRecord, ResultsStore


def make_app(**overrides: Any) -> Flask:
    settings = config.Settings(node_name="api-host", node_deadline_s=2.0, **overrides)
    store = ResultsStore(fakeredis.FakeRedis())
    store.heartbeat(NodeRecord("gpu-1", gpu_model="H100", gpu_count=8, last_seen=time.time()))
    return create_app(
        settings, store=store, dispatcher=FakeDispatcher(on_send=FakeWorkers(store)), checks=stand_in_checks()
    )


def test_a_request_that_finds_every_wait_slot_taken_is_answered_503_with_retry_after() -> None:
    app = make_app(api_max_waits=2)
    client = app.test_client()
    waits: limits.Waits = app.extensions[limits.EXTENSION]
    with waits.slot(), waits.slot():  # two requests already waiting on nodes
        busy = client.get("/status?host=gpu-1&check=remapped")
        run_wait = client.get("/api/v1/runs/0123456789abcdef0123456789abcdef?wait=5")
        health = client.get("/healthz")

    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == str(limits.RETRY_AFTER_S)
    assert busy.get_json()["error"] == "busy"
    assert run_wait.status_code == 503
    assert health.status_code == 200
    # Slots are given back: the next request is served.
    assert client.get("/status?host=gpu-1&check=remapped&format=json").status_code == 200


def test_a_slot_is_given_back_when_the_request_fails() -> None:
    app = make_app(api_max_waits=1)
    client = app.test_client()
    assert client.get("/status?host=no_such_node!").status_code == 400
    assert client.get("/status?host=gpu-1&check=remapped&format=json").status_code == 200


def test_a_body_over_the_limit_is_answered_413_before_it_is_read() -> None:
    app = make_app(api_max_body=1024)
    read: list[int] = []

    class Body(io.BytesIO):
        """A request stream that records every read: nothing may be read."""

        def read(self, size: int | None = -1) -> bytes:
            read.append(size or -1)
            return super().read(size)

    answer = app.test_client().post(
        "/api/v1/runs",
        input_stream=Body(b"{}"),
        content_type="application/json",
        # What a client declaring 300 MB sends first; the stream behind it is never read.
        environ_overrides={"CONTENT_LENGTH": str(300 * 1024 * 1024)},
    )

    assert answer.status_code == 413
    assert answer.get_json()["error"] == "too_large"
    assert read == []


def test_a_chunked_body_is_cut_at_the_limit() -> None:
    app = make_app(api_max_body=1024)
    body = json.dumps({"checks": ["remapped"], "params": {"remapped": {"x": "y" * 4096}}}).encode()
    # As gunicorn hands over a chunked body: no length, the server ends the stream.
    answer = app.test_client().post(
        "/api/v1/runs",
        data=body,
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert answer.status_code == 413


@pytest.mark.parametrize("depth", [limits.MAX_JSON_DEPTH + 1, 100_000])
def test_a_deeply_nested_json_body_is_answered_400(depth: int) -> None:
    body = "[" * depth + "]" * depth
    answer = make_app().test_client().post("/api/v1/runs", data=body, content_type="application/json")
    assert answer.status_code == 400
    assert answer.get_json()["field"] == "body"


def test_json_depth_counts_nesting_of_lists_and_objects() -> None:
    assert limits.json_depth(1) == 0
    assert limits.json_depth({"a": [1, {"b": []}]}) == 4
    assert limits.json_depth([[], [[[]]]]) == 4
