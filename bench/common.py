"""What the benchmarks share: a private redis-server, runtime processes, and their cleanup.

Every process a benchmark starts is a child in its own process group, stopped (SIGTERM, then
SIGKILL) when the ``Bench`` context exits, however the benchmark ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import redis

from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.testing import wait_until
from workers import up

__all__ = ["ROOT", "Bench", "group_rss_kib", "ok_result", "rss_kib", "up", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class Bench:
    """``with Bench() as b``: ``b.redis_url``, ``b.start(name, args, env)``, ``b.stop(proc)``.

    ``root``: the source tree the runtime processes run from (another checkout, to measure the
    code before a change against it in the same run).
    """

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.tmp = Path(tempfile.mkdtemp(prefix="autopilot-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_url = ""

    def __enter__(self) -> Bench:
        port = up.free_port()
        (self.tmp / "redis").mkdir()
        argv = up.redis_argv(up.redis_executable(), port, str(self.tmp / "redis"))
        self.redis = self._spawn(argv, self.tmp / "redis.log", os.environ)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        up.wait_for_redis(self.redis_url, self.redis, 10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        if self.redis is not None:
            self.stop(self.redis)

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.redis_url)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPILOT_") and k != "NODE_NAME"}
        env.update(AUTOPILOT_REDIS_URL=self.redis_url, PYTHONPATH=str(self.root))
        env.update(extra or {})
        return env

    def start(self, name: str, args: list[str], extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "autopilot.cli", *args]
        proc = self._spawn(argv, self.tmp / f"{name}.log", self.env(extra_env))
        self.procs.append(proc)
        return proc

    def start_api(
        self, extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """The API (``autopilot api`` on a free port) and its base URL, once it answers ``/readyz``."""
        port = up.free_port()
        proc = self.start("api", ["api", "--port", str(port), *extra_args], extra_env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: up.api_ready(url), 60, "the API")
        return proc, url

    def _spawn(self, argv: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(  # noqa: S603 - argv list
                argv, cwd=self.root, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=out, process_group=0
            )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def group_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its children (gunicorn workers, for instance)."""
    total = rss_kib(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            with contextlib.suppress(OSError, RuntimeError):
                total += group_rss_kib(int(child))
    return total


def ok_result(node: str, check: str) -> CheckResult:
    """A result of the usual size: eight GPUs, one device entry each."""
    devices = tuple(DeviceResult(str(i), Status.OK, value=24.5 + i, unit="GB/s", detail="") for i in range(8))
    return CheckResult(check, Status.OK, f"{check}: 8 GPUs ok", node=node, devices=devices, duration_s=1.5)
