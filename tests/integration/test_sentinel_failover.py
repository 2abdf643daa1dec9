"""Redis Sentinel: the master is killed during a fan-out and nothing restarts.

Real processes: a master and a replica ``redis-server`` (password, append-only with
``appendfsync always``), three ``redis-sentinel`` (quorum 2, master down after 1 s), two
``autopilot worker`` processes and the API in this process, all given only the Sentinels'
addresses (``sentinel://``). The test checks what issue 13 asks: the replica is promoted, the
workers and the API carry on without a restart, every result acknowledged before the kill is
still there, and a run started after the failover is answered completely by the same worker
processes. It prints the figures docs/RELIABILITY.md quotes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flask.testing
import pytest
import redis

from autopilot import config
from autopilot.testing import wait_until
from tests.conftest import require_binary
from tests.integration.conftest import Procs, kill_group, stop_process
from tests.integration.test_redis_security import Server
from workers import app as celery_app
from workers.up import free_port

PASSWORD = "sentinel-test-pass"
MASTER = "autopilot"
NODES = ["node-a", "node-b"]
ApiFactory = Callable[..., flask.testing.FlaskClient]


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports. Nothing binds them until the servers start, so two
    ``free_port()`` calls may name the same port (1 in ~14,000 a pair: the kernel picks at random)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


class SentinelSet:
    """A master, one replica and three Sentinels on loopback ports, each with its own directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.server_bin = require_binary("redis-server")
        self.sentinel_bin = require_binary("redis-sentinel")
        self.tmp = tmp_path
        self.master_port, self.replica_port, *self.sentinel_ports = distinct_free_ports(5)
        self.procs: dict[str, Server] = {}

    def _redis(self, name: str, port: int, *extra: str) -> None:
        workdir = self.tmp / name
        workdir.mkdir()
        argv = [
            self.server_bin, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--requirepass", PASSWORD, "--masterauth", PASSWORD,
            # Every write on disk before it is acknowledged, as the chart's redis-ha values set.
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", *extra,
        ]  # fmt: skip
        self.procs[name] = Server(argv, workdir)
        self.procs[name].wait_listening(port)

    def start(self) -> None:
        self._redis("master", self.master_port)
        self._redis("replica", self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        replica = redis.Redis(port=self.replica_port, password=PASSWORD, socket_timeout=2)
        wait_until(lambda: replica.info("replication").get("master_link_status") == "up", 20, "replication link")
        for i, port in enumerate(self.sentinel_ports):
            workdir = self.tmp / f"sentinel-{i}"
            workdir.mkdir()
            conf = workdir / "sentinel.conf"  # Sentinel rewrites its own file: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel auth-pass {MASTER} {PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 10000\n"
            )
            self.procs[f"sentinel-{i}"] = Server([self.sentinel_bin, str(conf)], workdir)
            self.procs[f"sentinel-{i}"].wait_listening(port)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def master_port_named(self) -> int | None:
        """The master port the Sentinels agree on (None while any answers otherwise)."""
        seen = set()
        for port in self.sentinel_ports:
            try:
                # The raw command: redis-py 6.4's reply callback for this one rejects its own options.
                addr = redis.Redis(port=port, socket_timeout=1).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                )
            except redis.RedisError:
                return None
            seen.add(int(addr[1]) if addr else None)
        return seen.pop() if len(seen) == 1 else None

    def kill_master(self) -> None:
        """SIGKILL, as a crashed node or a lost pod leaves it."""
        server = self.procs.pop("master")
        kill_group(server.proc)
        server.proc.wait(5)

    def stop(self) -> None:
        for server in self.procs.values():
            stop_process(server.proc)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    made = SentinelSet(tmp_path)
    try:
        made.start()
        yield made
    finally:
        made.stop()


def _run(api: flask.testing.FlaskClient, body: dict[str, Any]) -> str:
    created = api.post("/api/v1/runs", json=body)
    assert created.status_code == 202, created.get_data(as_text=True)
    return str(created.get_json()["id"])


def _report(api: flask.testing.FlaskClient, run_id: str, wait_s: int) -> dict[str, Any]:
    answer = api.get(f"/api/v1/runs/{run_id}?wait={wait_s}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return dict(answer.get_json())


def test_a_master_killed_during_a_fanout_fails_over_without_restarts_or_lost_results(
    sentinels: SentinelSet, procs: Procs, api_factory: ApiFactory
) -> None:
    env = {"AUTOPILOT_REDIS_PASSWORD": PASSWORD, "AUTOPILOT_REDIS_SENTINEL_MASTER": MASTER}
    workers = {n: procs.worker(n, sentinels.url, env) for n in NODES}
    settings = config.Settings(redis_url=sentinels.url, redis_password=PASSWORD, redis_sentinel_master=MASTER)
    store = celery_app.make_store(settings)
    wait_until(lambda: all(store.node(n) for n in NODES), 60, "heartbeats through the Sentinel-named master")
    api = api_factory(sentinels.url, redis_password=PASSWORD, redis_sentinel_master=MASTER)

    # Acknowledged before the kill: run A, answered and read back.
    before = _report(api, _run(api, {"checks": ["echo"], "hosts": NODES, "deadline": 30}), 30)
    assert before["complete"] and before["totals"]["ok"] == len(NODES), before
    acknowledged = {n: before["nodes"][n]["results"] for n in NODES}

    # The fan-out in flight: both workers mid-check when the master dies.
    during = _run(api, {"checks": ["sleepy"], "hosts": NODES, "params": {"sleepy": {"seconds": 2}}, "deadline": 15})
    for node, worker in workers.items():
        wait_until(lambda w=worker, n=node: f"sleepy: started on {n}" in w.output(), 30, f"{node} mid-check")
    killed_at = time.monotonic()
    sentinels.kill_master()

    wait_until(lambda: sentinels.master_port_named() == sentinels.replica_port, 30, "the replica's promotion")
    promoted_s = time.monotonic() - killed_at

    # No restart anywhere: the same API object and worker processes answer a new run completely.
    def complete_run() -> dict[str, Any] | None:
        try:
            report = _report(api, _run(api, {"checks": ["echo"], "hosts": NODES, "deadline": 10}), 10)
        except (AssertionError, redis.RedisError):
            return None
        return report if report["totals"]["ok"] == len(NODES) else None

    after = wait_until(complete_run, 45, "a complete run after the failover", interval_s=0.5)
    recovered_s = time.monotonic() - killed_at
    assert after["complete"] is True
    for node, worker in workers.items():
        assert worker.proc.poll() is None, f"{node}'s worker exited:\n{worker.output()}"
        assert after["nodes"][node]["results"][0]["data"]["pid"] == worker.pid

    # Nothing acknowledged before the kill is gone.
    again = _report(api, before["id"], 5)
    lost = sum(again["nodes"][n]["results"] != acknowledged[n] for n in NODES)
    assert lost == 0, again
    in_flight = _report(api, during, 20)
    statuses = sorted(in_flight["nodes"][n]["status"] for n in NODES)
    # The checks that were running when the master died saved their results on the new master
    # (the store's client retries through the failover): that run is whole too.
    assert statuses == ["ok"] * len(NODES), in_flight
    print(
        f"\nsentinel failover: promoted {promoted_s:.1f} s after the kill, complete run {recovered_s:.1f} s after;"
        f" results lost 0 of {len(NODES)} acknowledged; in-flight run answered {statuses}"
    )
