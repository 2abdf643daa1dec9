"""The command seam: run one program as an argv list with a timeout, never through a shell.

This is the only module of the core that imports ``subprocess``. Each program starts in a
session of its own, so that on a timeout (its own, or the check's watchdog through a
``ProcessScope``) the whole process group is killed: a ``dcgmi`` that forked a helper does not
outlive the check that started it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from autopilot import errors


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
                env=dict(env) if env is not None else None,
                start_new_session=True,
                text=True,
                errors="replace",
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
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            proc.communicate()
            raise errors.ToolTimeout(os.path.basename(args[0]), timeout) from None
        finally:
            if self.scope is not None:
                self.scope.discard(proc.pid)
            # Children the program left behind in its group go with it.
            _killpg(proc.pid)
        if self.scope is not None and self.scope.cancelled:
            raise errors.ToolTimeout(os.path.basename(args[0]), timeout)
        return CommandResult(tuple(args), proc.returncode, stdout, stderr, time.monotonic() - start)
