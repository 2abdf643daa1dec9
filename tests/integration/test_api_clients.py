"""The API under gunicorn against clients that misbehave below the application: half-sent requests and
requests gunicorn cannot parse.

Before ``api.main.BoundedThreadWorker``, gunicorn read each request on a pool thread from a socket
without a timeout: a few connections that sent half a request each held every thread for good, and
``/healthz`` never answered. A request line over gunicorn's limit was answered with an HTML page.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Procs, runtime_env, wait_until
from workers import up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

THREADS = 2


@pytest.fixture
def api(redis_url: str, procs: Procs) -> Iterator[int]:
    port = up.free_port()
    env = runtime_env(redis_url, {"AUTOPILOT_API_MAX_WAITS": "1"})
    argv = ["api", "--port", str(port), "--workers", "1", "--threads", str(THREADS), "--client-timeout", "1"]
    procs.start("api", argv, env)
    wait_until(lambda: up.api_ready(f"http://127.0.0.1:{port}"), 60, "the API")
    yield port


def _raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_clients_that_stop_mid_request_do_not_hold_the_threads(api: int) -> None:
    stalled = []
    try:
        for _ in range(3 * THREADS):  # every thread, and a backlog behind them
            sock = socket.create_connection(("127.0.0.1", api), timeout=30)
            sock.sendall(b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            stalled.append(sock)
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=60) as response:  # noqa: S310
            assert response.status == 200
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"GET /status?host=" + b"a" * 5_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n", 431),
    ],
    ids=["request line over the limit", "negative content-length", "too many headers"],
)
def test_requests_gunicorn_cannot_parse_get_a_json_error(api: int, request_bytes: bytes, code: int) -> None:
    head, _, body = _raw(api, request_bytes).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(code).encode()
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["field"] == "request"
