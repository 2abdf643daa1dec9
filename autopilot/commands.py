"""The command seam: run one program as an argv list with a timeout, never through a shell.

This is the only module of the core that imports ``subprocess``. Each program starts in a
session of its own, so that on a timeout (its own, or the check's watchdog through a
``ProcessScope``) the whole process group is killed: a ``dcgmi`` that forked a helper does not
outlive the check that started it. ``spawn`` leaves a program running in the background (the
``iperf`` servers) with a lifetime after which its group is killed whatever else happens.

Every program runs under ``LC_ALL=C`` (``tool_env``): our parsers read the tools' English messages and
``.`` decimal points, and a node whose environment names another locale (iputils' ``ping`` is
translated; C programs that call ``setlocale`` print ``1,5``) would otherwise make a healthy node's
output unreadable, an ``error`` on every run.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Protocol, runtime_checkable

from autopilot import errors


def tool_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a program runs in: ``env`` (default: this process's) with ``LC_ALL=C``, unless
    ``env`` names its own ``LC_ALL``."""
    out = dict(os.environ if env is None else env)
    if env is None or "LC_ALL" not in env:
        out["LC_ALL"] = "C"
    return out


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a finished program left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float = 0.0


class CommandRunner(Protocol):
    """Runs argv lists. Raises ``ToolNotFound`` and ``ToolTimeout``; a non-zero exit is not an error."""

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult: ...

    def which(self, name: str) -> str | None:
        """Full path of ``name`` if it can be run, else None."""
        ...


@runtime_checkable
class ScopedRunner(Protocol):
    """A runner that can make a copy whose processes belong to a ``ProcessScope`` (an optional capability:
    the execution engine kills a timed-out check's processes through it)."""

    def bind(self, scope: ProcessScope) -> CommandRunner: ...


@runtime_checkable
class InstantRunner(Protocol):
    """A runner that can say a program answers at once (an optional capability: a simulated seam
    computes the answer in Python, with no process to wait for). A caller that would run several
    such programs side by side on threads (``ping``'s peers) runs them one after another instead:
    the threads were most of the cost, and bought nothing when nothing waits."""

    def answers_at_once(self, program: str) -> bool: ...


class Background(Protocol):
    """A program left running in the background (``spawn``): a server for a later client."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None:
        """Its exit status once it has ended, else None."""
        ...

    def output(self) -> str:
        """What it printed so far (stdout and stderr together), for error messages."""
        ...

    def terminate(self, grace_s: float = 2.0) -> None:
        """SIGTERM its process group, SIGKILL after ``grace_s``; idempotent."""
        ...


class Spawner(Protocol):
    """A runner that can also leave a program running (the ``iperf`` servers)."""

    def spawn(self, argv: Sequence[str], *, lifetime_s: float, env: Mapping[str, str] | None = None) -> Background: ...


class ProcessScope:
    """The process groups started on behalf of one check, so a watchdog can kill them all.

    Once ``cancel()`` has been called every live group is killed and any later ``run`` in the
    scope fails at once, so a check whose deadline passed cannot start new programs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pgids: set[int] = set()
        self.cancelled = False

    def add(self, pgid: int) -> None:
        with self._lock:
            if self.cancelled:
                _killpg(pgid)
            self._pgids.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._pgids.discard(pgid)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            pgids = list(self._pgids)
        for pgid in pgids:
            _killpg(pgid)


# What the runner keeps of one output (stdout or stderr). The largest a tool here prints is a few MB
# (nvidia-smi -q -x on 16 GPUs, a dcgmi level-4 JSON); a runaway one (100 MB of a debug loop) would
# otherwise be held whole in the worker's memory, twice (bytes, then text).
OUTPUT_LIMIT_BYTES = 16 * 1024 * 1024
_CHUNK = 64 * 1024


def _capture(proc: subprocess.Popen[bytes], deadline: float) -> tuple[tuple[str, bool], tuple[str, bool]] | None:
    """Read ``proc``'s stdout and stderr to their end and wait for it, until ``deadline`` (monotonic):
    each output as text (newlines translated, bytes that are not UTF-8 replaced, as ``text=True`` read
    them) and whether it was whole; past ``OUTPUT_LIMIT_BYTES`` the rest is read and dropped, so the
    program never blocks on a full pipe. None when the deadline passed (the group is then killed)."""
    if proc.stdout is None or proc.stderr is None:
        raise TypeError("the program's stdout and stderr must be pipes")
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    seen = {out_fd: 0, err_fd: 0}
    with proc.stdout, proc.stderr, selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                return None
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                seen[key.fd] += len(chunk)
                buf = kept[key.fd]
                if len(buf) < OUTPUT_LIMIT_BYTES:
                    buf += chunk[: OUTPUT_LIMIT_BYTES - len(buf)]
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:  # it closed both outputs and went on running
        _kill(proc)
        return None
    return (
        (_text(kept[out_fd]), seen[out_fd] <= OUTPUT_LIMIT_BYTES),
        (_text(kept[err_fd]), seen[err_fd] <= OUTPUT_LIMIT_BYTES),
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc``'s group and reap it: its deadline passed."""
    _killpg(proc.pid)
    proc.wait()


def _text(raw: bytearray) -> str:
    """``raw`` as ``Popen(text=True, errors="replace")`` gives it: UTF-8, universal newlines."""
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SubprocessRunner:
    """The real runner. ``scope`` (optional) collects process groups for the check watchdog."""

    def __init__(self, scope: ProcessScope | None = None, *, path: str | None = None) -> None:
        self.scope = scope
        self.path = path

    def bind(self, scope: ProcessScope) -> SubprocessRunner:
        """A runner like this one whose processes belong to ``scope``."""
        return SubprocessRunner(scope, path=self.path)

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.path)

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        args = [str(a) for a in argv]
        if self.scope is not None and self.scope.cancelled:
            raise errors.ToolTimeout(args[0], timeout)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=tool_env(env),
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise errors.ToolNotFound(
                f"{args[0]}: not found on PATH ({self.path or os.environ.get('PATH', '')})"
            ) from exc
        except PermissionError as exc:
            raise errors.ToolNotFound(f"{args[0]}: not executable ({exc.strerror})") from exc
        if self.scope is not None:
            self.scope.add(proc.pid)
        try:
            captured = _capture(proc, start + timeout)
        finally:
            if self.scope is not None:
                self.scope.discard(proc.pid)
            # Children the program left behind in its group go with it.
            _killpg(proc.pid)
        if captured is None:
            raise errors.ToolTimeout(os.path.basename(args[0]), timeout)
        if self.scope is not None and self.scope.cancelled:
            raise errors.ToolTimeout(os.path.basename(args[0]), timeout)
        (stdout, out_whole), (stderr, err_whole) = captured
        if not out_whole or not err_whole:
            raise errors.ToolOutputTooLarge(os.path.basename(args[0]), OUTPUT_LIMIT_BYTES)
        return CommandResult(tuple(args), proc.returncode, stdout, stderr, time.monotonic() - start)

    def spawn(self, argv: Sequence[str], *, lifetime_s: float, env: Mapping[str, str] | None = None) -> Process:
        """A background program (not part of any check's scope: it outlives the task that started it)."""
        if self.path is not None and argv and not os.path.isabs(str(argv[0])):
            found = self.which(str(argv[0]))
            if found is None:
                raise errors.ToolNotFound(f"{argv[0]}: not found on PATH ({self.path})")
            argv = [found, *list(argv)[1:]]
        return spawn(argv, lifetime_s=lifetime_s, env=env)


class Process:
    """A background program in a session of its own, with output in an unnamed temporary file.

    A file, not a pipe: a server that prints a line per test would block on a full pipe that
    nobody reads. A lifetime timer kills the whole group if nobody stops it first, so a lost
    stop message cannot leave a server behind.
    """

    def __init__(self, proc: subprocess.Popen[bytes], out: IO[bytes], lifetime_s: float) -> None:
        self._proc = proc
        self._out = out
        self._lock = threading.Lock()
        self._timer = threading.Timer(lifetime_s, self.terminate, kwargs={"grace_s": 0.0})
        self._timer.daemon = True
        self._timer.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def output(self) -> str:
        with self._lock:
            if self._out.closed:
                return ""
            # The last 4 KiB only: a server that printed 100 MB is not read whole to name its last words.
            size = self._out.seek(0, os.SEEK_END)
            self._out.seek(max(0, size - 4096))
            return self._out.read().decode(errors="replace")

    def terminate(self, grace_s: float = 2.0) -> None:
        self._timer.cancel()
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (the program, or children it forked) goes now.
        _killpg(self._proc.pid)
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        with self._lock:
            self._out.close()


def spawn(argv: Sequence[str], *, lifetime_s: float, env: Mapping[str, str] | None = None) -> Process:
    """Start ``argv`` in the background, in its own session; killed after ``lifetime_s`` at the latest."""
    if isinstance(argv, str) or not argv:
        raise TypeError("argv must be a non-empty list of strings, never a shell string")
    if lifetime_s <= 0:
        raise ValueError("a background program needs a positive lifetime")
    args = [str(a) for a in argv]
    # The lifetime timer lives in this process and dies with it; coreutils `timeout` enforces the
    # same lifetime from outside, so a SIGKILLed worker cannot leave a server holding its port.
    if shutil.which(args[0]) is None:  # checked here: behind `timeout` a missing program is only exit 127
        raise errors.ToolNotFound(f"{args[0]}: not found on PATH or not executable")
    guard = shutil.which("timeout")
    if guard is not None:
        args = [guard, "--kill-after=2", f"{lifetime_s + 1:g}", *args]
    out = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=tool_env(env),
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        out.close()
        raise errors.ToolNotFound(f"{args[0]}: not found on PATH") from exc
    except PermissionError as exc:
        out.close()
        raise errors.ToolNotFound(f"{args[0]}: not executable ({exc.strerror})") from exc
    return Process(proc, out, lifetime_s)
