"""``autopilot up`` as a user runs it: a subprocess, its own Redis, simulated nodes, stopped by SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require_binary
from tests.integration.conftest import free_port, stop_process, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class Up:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc = proc
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"^autopilot up: .*?pid (\d+)", self.output(), re.MULTILINE)]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> Up:
        require_binary("redis-server")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPILOT_")}
        env["PYTHONPATH"] = str(ROOT)
        log = tmp_path / "up.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "autopilot.cli", "up", "--port", str(port), *args],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, process_group=0,
            )  # fmt: skip
        started.append(proc)
        up = Up(proc, log, port)
        wait_until(lambda: up.ready() or proc.poll() is not None, 60, "the API of autopilot up", interval_s=0.25)
        assert proc.poll() is None, up.output()
        return up

    try:
        yield start
    finally:
        for proc in started:
            stop_process(proc, grace_s=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a child already dead counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def judged(node: dict[str, Any]) -> dict[str, Any] | None:
    """A node of ``/api/v1/nodes/<name>`` once a reconcile has judged a finding (not before: None)."""
    return node if node["verdict"] in ("WARN", "EVICT") else None


def test_up_simulates_a_faulty_node_and_stops_cleanly_on_sigint(start_up: Any) -> None:
    up = start_up("--simulate", "3", "--fault", "sim-1:remapped:fatal", "--no-local-worker")
    wait_until(lambda: len(up.get("/api/v1/nodes")["nodes"]) == 3, 60, "three simulated nodes", interval_s=0.5)

    report = up.get("/status?format=json&check=remapped,pciebw&deadline=30")
    assert report["complete"] is True
    assert {n: e["status"] for n, e in report["nodes"].items()} == {"sim-0": "ok", "sim-1": "fail", "sim-2": "ok"}
    # The worker reconciles the verdict just after it stores the results (the answer can come
    # first): wait for sim-1's reconcile, then say what it is.
    node = wait_until(lambda: judged(up.get("/api/v1/nodes/sim-1")), 30, "sim-1's verdict", interval_s=0.25)
    assert node["verdict"] == "EVICT"
    assert node["labels"]["autopilot.ibm.com/gpuhealth"] == "EVICT"

    children = up.child_pids()
    assert len(children) == 4  # redis, API, one simulator, beat
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(60) == 0, up.output()
    wait_until(lambda: not any(alive(p) for p in children), 30, "every child of autopilot up to exit")
    assert "stopping (SIGINT)" in up.output()


def test_up_starts_a_dying_child_again_and_keeps_the_stack_up(start_up: Any) -> None:
    up = start_up("--simulate", "1", "--no-local-worker")
    children = up.child_pids()
    beat = children[-1]
    os.kill(beat, signal.SIGKILL)
    again = wait_until(lambda: re.search(r"beat started again, pid (\d+)", up.output()), 30, "beat to be started again")
    assert "beat exited unexpectedly (code -9)" in up.output()
    assert up.proc.poll() is None and alive(int(again.group(1)))
    assert all(alive(p) for p in children[:-1])  # the rest never stopped
    assert up.get("/status?format=json&check=remapped&deadline=30")["complete"] is True

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(60) == 0, up.output()
    wait_until(lambda: not any(alive(p) for p in [*children, int(again.group(1))]), 30, "every child to exit")
