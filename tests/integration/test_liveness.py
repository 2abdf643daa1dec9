"""Liveness of a real ``autopilot worker --simulate 2`` and a real ``autopilot beat`` on a private redis-server.

Each process's own loop advances its heartbeat file; ``autopilot probe`` fails for a worker whose loop is
frozen (SIGSTOP) while Redis answers, and passes for both while Redis is stopped (beat's file keeps
advancing; the worker's ages, excused by the broker's silence) and once it is back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from autopilot.testing import wait_until
from tests.conftest import ROOT
from tests.integration.conftest import Procs, RedisServer, runtime_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def advances(path: Path, within_s: float = 30) -> None:
    """Until ``path`` is touched again after now (or first created)."""
    seen = mtime(path)
    wait_until(lambda: mtime(path) > seen, within_s, f"{path.name} to be touched again")


def run_probe(env: Mapping[str, str], *args: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", "autopilot.cli", "probe", *args]
    done = subprocess.run(argv, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout + done.stderr


def test_worker_and_beat_heartbeats_advance_freeze_and_outlive_a_redis_outage(
    private_redis: RedisServer, procs: Procs, tmp_path: Path
) -> None:
    worker_file, beat_file = tmp_path / "worker.alive", tmp_path / "beat.alive"
    common = {"AUTOPILOT_LIVENESS_INTERVAL": "0.2s", "AUTOPILOT_RECONCILE_INTERVAL": "1h"}
    worker_env = runtime_env(private_redis.url, {**common, "AUTOPILOT_LIVENESS_FILE": str(worker_file)})
    beat_env = runtime_env(private_redis.url, {**common, "AUTOPILOT_LIVENESS_FILE": str(beat_file)})
    worker = procs.start("worker-sim", ["worker", "--simulate", "2", "--loglevel", "INFO"], worker_env)
    procs.start("beat", ["beat", "--schedule-file", str(tmp_path / "schedule"), "--loglevel", "INFO"], beat_env)

    wait_until(lambda: worker_file.exists() and beat_file.exists(), 60, "both heartbeat files")
    advances(worker_file)
    advances(beat_file)  # beat wakes every liveness interval, not every 5 minutes, to mark it
    assert run_probe(worker_env, "--max-age", "5s")[0] == 0
    assert run_probe(beat_env, "--max-age", "5s")[0] == 0

    # A frozen loop (SIGSTOP: nothing of the process runs) ages its file while Redis answers: the probe fails.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: run_probe(worker_env, "--max-age", "1s")[0] == 1, 30, "the probe to fail a frozen worker")
        code, said = run_probe(worker_env, "--max-age", "1s")
        assert code == 1 and "stopped making progress" in said, said
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    advances(worker_file)
    assert run_probe(worker_env, "--max-age", "5s")[0] == 0

    # Redis away: beat keeps ticking; the worker's consumer waits to reconnect, and the probe excuses that.
    private_redis.stop()
    try:
        advances(beat_file)
        advances(beat_file)
        wait_until(lambda: mtime(worker_file) < mtime(beat_file) - 2, 30, "the worker's file to age in the outage")
        code, said = run_probe(worker_env, "--max-age", "1s")
        assert code == 0 and "broker does not answer" in said, said
        assert run_probe(beat_env, "--max-age", "5s")[0] == 0
        assert worker.proc.poll() is None
    finally:
        private_redis.start()
    advances(worker_file, within_s=90)  # reconnected: the loop marks its progress again
    assert run_probe(worker_env, "--max-age", "5s")[0] == 0
