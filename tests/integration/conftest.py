"""Fixtures of the runtime integration tests: a real redis-server and real worker processes.

- ``redis_server`` (session): ``redis-server`` on a free loopback port, memory only; skipped
  locally when the binary is missing, a failure under CI=true (``require_binary``).
- ``redis_url`` (per test): that server, flushed, so no test sees another's nodes or results.
- ``procs`` (per test): starts ``autopilot worker`` / ``autopilot beat`` subprocesses, each in a
  process group of its own with its output in a log file; the finalizer kills every group it
  started (SIGTERM, then SIGKILL), whatever the test did.

Workers load the test checks of ``check_specs`` (``echo``, ``sleepy``) through
``AUTOPILOT_EXTRA_CHECKS`` and heartbeat every second so that they are live at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import flask.testing
import pytest
import redis

from autopilot import config
from autopilot.testing import wait_until
from tests.conftest import ROOT, require_binary
from workers.store import ResultsStore
from workers.up import free_port

T = TypeVar("T")
START_S = 10.0  # bound on a redis-server answering PING
STOP_S = 5.0  # grace between SIGTERM and SIGKILL
WORKER_READY_S = 30.0  # bound on a worker's first heartbeat
EXTRA_CHECKS = "tests.integration.checks_for_tests"


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = STOP_S) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``, and reap the leader."""
    kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)


class RedisServer:
    """A memory-only redis-server on ``port`` that a test may kill and start again on the same port."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        with open(self.workdir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:

            def answers() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited {self.proc.returncode}; see {self.workdir}/redis.log")
                try:
                    return bool(client.ping())
                except redis.RedisError:
                    return False

            wait_until(answers, START_S, f"redis-server on port {self.port}", interval_s=0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save, as a crash would leave it."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait(STOP_S)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return require_binary("redis-server")


@pytest.fixture(scope="session")
def redis_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.alive():  # a test that broke it must not break the next one
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def private_redis(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (for tests that kill and restart it)."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(redis_binary, free_port(), workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def runtime_env(redis_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker/beat under test: this session's, less any AUTOPILOT_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPILOT_") and k != "NODE_NAME"}
    env.update(
        AUTOPILOT_REDIS_URL=redis_url,
        AUTOPILOT_EXTRA_CHECKS=EXTRA_CHECKS,
        AUTOPILOT_HEARTBEAT_INTERVAL="1s",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
    )
    env.update(extra or {})
    return env


def settings_for(redis_url: str, **overrides: object) -> config.Settings:
    """Settings of the in-process API, matching ``runtime_env``."""
    return config.Settings(node_name="api", redis_url=redis_url, heartbeat_interval_s=1.0, **overrides)  # type: ignore[arg-type]


class Process:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Procs:
    """Starts runtime processes for one test and kills them all at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Process] = []

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> Process:
        log = self.tmp_path / f"{name}.log"
        argv = [sys.executable, "-m", "autopilot.cli", "--log-level", "INFO", *args]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=out, process_group=0
            )
        started = Process(name, proc, log)
        self.started.append(started)
        return started

    def worker(self, node: str, redis_url: str, extra_env: Mapping[str, str] | None = None) -> Process:
        return self.start(
            f"worker-{node}", ["worker", "--node", node, "--loglevel", "INFO"], runtime_env(redis_url, extra_env)
        )

    def beat(self, redis_url: str, extra_env: Mapping[str, str] | None = None) -> Process:
        schedule = self.tmp_path / "beat-schedule"
        args = ["beat", "--schedule-file", str(schedule), "--loglevel", "INFO"]
        return self.start("beat", args, runtime_env(redis_url, extra_env))

    def stop_all(self) -> None:
        for p in reversed(self.started):
            stop_process(p.proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def wait_for_nodes(redis_url: str, nodes: list[str], timeout_s: float = WORKER_READY_S) -> None:
    """Until every node has heartbeated into the store (its worker is up)."""
    client = redis.Redis.from_url(redis_url)
    store = ResultsStore(client)
    try:
        wait_until(lambda: all(store.node(n) for n in nodes), timeout_s, f"heartbeats of {', '.join(nodes)}")
    finally:
        client.close()


@pytest.fixture
def api_factory() -> Callable[[str], flask.testing.FlaskClient]:
    """``api_factory(redis_url)``: a test client of the real API over that Redis, knowing the test checks."""
    from api.app import create_app
    from tests.integration.check_specs import registry_with_specs

    def make(redis_url: str, **overrides: object) -> flask.testing.FlaskClient:
        return create_app(settings_for(redis_url, **overrides), checks=registry_with_specs()).test_client()

    return make
