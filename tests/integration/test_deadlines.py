"""Deadlines that hold: the real API (gunicorn, ``autopilot api``) over a real redis-server.

The faults of the measurements in issue 12: a hung node (its worker SIGSTOPped), a node with no
worker (a node record and nothing behind it), many clients waiting on them at once, a run read
with ``wait=300``, and Redis itself frozen with SIGSTOP. Asserted: every answer arrives within
its deadline plus one second (a ``200`` with the node ``unreachable``, or ``503`` with
``Retry-After`` when the wait slots are full or Redis does not answer) and ``/healthz`` answers
throughout. Each test prints a ``DEADLINE`` line with its figures (``pytest -s``).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.integration.conftest import Procs, RedisServer, runtime_env, wait_for_nodes, wait_until
from workers import up
from workers.store import NodeRecord, ResultsStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEADLINE_S = 3
MAX_WAITS = 4
SLACK_S = 1.0  # the bound: deadline + 1 s


def call(url: str, *, method: str = "GET", body: bytes | None = None, timeout: float = 30) -> dict[str, Any]:
    """One request: code, seconds, parsed body and Retry-After."""
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - our own loopback API
            code, raw, retry = resp.status, resp.read(), resp.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        code, raw, retry = exc.code, exc.read(), exc.headers.get("Retry-After")
    return {"code": code, "s": time.monotonic() - t0, "body": json.loads(raw or b"{}"), "retry_after": retry}


class HealthProbe:
    """Asks ``/healthz`` every 50 ms from a thread of its own, as a liveness probe would."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = call(f"{self.base}/healthz", timeout=5)
                self.answers.append((got["code"], got["s"]))
            except OSError:
                self.answers.append((0, 5.0))
            self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def api(private_redis: RedisServer, procs: Procs) -> Iterator[str]:
    port = up.free_port()
    env = runtime_env(
        private_redis.url,
        # Nodes stay live for a minute without a heartbeat: a stopped worker is still selected.
        {"AUTOPILOT_HEARTBEAT_INTERVAL": "20s", "AUTOPILOT_API_MAX_WAITS": str(MAX_WAITS)},
    )
    procs.start("api", ["api", "--port", str(port), "--workers", "1", "--threads", str(MAX_WAITS + 4)], env)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: up.api_ready(base), 60, "the API")
    yield base


def ghost(redis_url: str, name: str) -> None:
    """A node record with no worker behind it."""
    client = redis.Redis.from_url(redis_url)
    try:
        ResultsStore(client).heartbeat(NodeRecord(name, gpu_model="H100", gpu_count=8, last_seen=time.time()))
    finally:
        client.close()


def parallel(calls: list[Callable[[], dict[str, Any]]]) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda f: f(), calls))


def figures(answers: list[dict[str, Any]]) -> str:
    times = sorted(a["s"] for a in answers)
    codes: dict[int, int] = {}
    for a in answers:
        codes[a["code"]] = codes.get(a["code"], 0) + 1
    return f"codes {codes}, slowest {times[-1]:.2f} s"


def test_clients_waiting_on_a_hung_node_and_a_node_without_worker_get_answers_within_the_deadline(
    private_redis: RedisServer, procs: Procs, api: str
) -> None:
    hung = procs.worker("hung", private_redis.url, {"AUTOPILOT_HEARTBEAT_INTERVAL": "20s"})
    wait_for_nodes(private_redis.url, ["hung"])
    os.killpg(hung.pid, signal.SIGSTOP)
    ghost(private_redis.url, "ghost")
    try:
        query = f"format=json&check=remapped&deadline={DEADLINE_S}"
        requests = [lambda n=n: call(f"{api}/status?{query}&host={n}") for n in ["hung", "ghost"] * 8]
        with HealthProbe(api) as probe:
            answers = parallel(requests)
            created = call(
                f"{api}/api/v1/runs",
                method="POST",
                body=json.dumps({"checks": ["remapped"], "hosts": ["hung"], "deadline": DEADLINE_S}).encode(),
            )
            assert created["code"] == 202, created
            long_poll = call(f"{api}/api/v1/runs/{created['body']['id']}?wait=300")
    finally:
        os.killpg(hung.pid, signal.SIGCONT)

    for a in answers:
        assert a["s"] <= DEADLINE_S + SLACK_S, a
        assert a["code"] in (200, 503), a
        if a["code"] == 200:
            assert a["body"]["complete"] is True
            assert [n["status"] for n in a["body"]["nodes"].values()] == ["unreachable"]
        else:
            assert a["body"]["error"] == "busy" and a["retry_after"], a
    assert sum(1 for a in answers if a["code"] == 200) >= MAX_WAITS  # the slots were used
    assert any(a["code"] == 503 for a in answers)  # 16 clients, 4 slots: the rest are turned away
    assert long_poll["code"] == 200 and long_poll["body"]["complete"] is True
    assert long_poll["s"] <= DEADLINE_S + SLACK_S, long_poll
    assert probe.answers and all(code == 200 for code, _ in probe.answers)
    slowest_health = max(s for _, s in probe.answers)
    print(
        f"\nDEADLINE hung node and node without worker: 16 parallel /status deadline={DEADLINE_S}: "
        f"{figures(answers)}; run wait=300 answered in {long_poll['s']:.2f} s; "
        f"/healthz {len(probe.answers)} answers, slowest {slowest_health * 1000:.0f} ms"
    )


def test_a_frozen_redis_costs_no_request_more_than_its_deadline_plus_one_second(
    private_redis: RedisServer, procs: Procs, api: str
) -> None:
    ghost(private_redis.url, "ghost")
    assert call(f"{api}/api/v1/nodes")["code"] == 200  # the API's connections are open before the freeze
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        with HealthProbe(api) as probe:
            answers = parallel(
                [
                    lambda: call(f"{api}/status?format=json&check=remapped&host=ghost&deadline={DEADLINE_S}"),
                    lambda: call(f"{api}/api/v1/nodes"),
                    lambda: call(f"{api}/api/v1/nodes/ghost"),
                    lambda: call(f"{api}/readyz"),
                    lambda: call(
                        f"{api}/api/v1/runs", method="POST", body=json.dumps({"checks": ["remapped"]}).encode()
                    ),
                ]
            )
            time.sleep(0.5)  # the probe keeps asking while Redis stays frozen
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)

    for a in answers:
        assert a["code"] == 503, a
        assert a["s"] <= DEADLINE_S + SLACK_S, a
    assert probe.answers and all(code == 200 for code, _ in probe.answers)
    # Redis back: the same API answers again.
    wait_until(lambda: up.api_ready(api), 10, "the API ready again")
    assert call(f"{api}/api/v1/nodes")["code"] == 200
    slowest_health = max(s for _, s in probe.answers)
    print(
        f"\nDEADLINE Redis frozen (SIGSTOP): {figures(answers)}; "
        f"/healthz {len(probe.answers)} answers, slowest {slowest_health * 1000:.0f} ms"
    )
