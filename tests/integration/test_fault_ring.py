"""The iperf ring's worker SIGKILLed mid-ring: its iperf3 servers must not outlive it.

The full ring runs between network namespaces (test_network_netns.py), which needs a free lab
address range; this test takes the part a kill can break, in isolation: a worker process starts
its ring servers the way the ``autopilot.iperf_servers`` task does (``ring.SERVERS.start`` over
the real ``SubprocessRunner``, real ``iperf3 -s``), and is SIGKILLed before the ring's stop
message. Servers run in their own session, so the worker's death does not reach them; their
lifetime is enforced twice: by a timer in the worker and, from outside it, by coreutils
``timeout``, so a dead worker's servers end at their lifetime and free the ring's ports.
(``--idle-timeout`` alone would not do: it restarts an idle iperf3 server rather than ending it.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_binary
from tests.integration.conftest import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CHILD = """
import sys, time
from autopilot.commands import SubprocessRunner
from workers import ring
port, lifetime = int(sys.argv[1]), float(sys.argv[2])
reply = ring.SERVERS.start(SubprocessRunner(), "r" * 32, ["127.0.0.1"], [port], lifetime, "node-a")
print("started", reply, flush=True)
time.sleep(600)
"""
LIFETIME_S = 3.0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _servers_on(port: int) -> list[int]:
    """Pids of ``iperf3 -s -p <port>`` processes (found in /proc: they left our process tree)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"iperf3") and b"-s" in argv and str(port).encode() in argv:
                    found.append(int(entry.name))
    return found


def test_sigkilled_worker_leaves_no_iperf3_server(tmp_path: Path) -> None:
    require_binary("iperf3")
    port = free_port()
    log = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(LIFETIME_S)], cwd=ROOT, env=env,
                                 stdout=out, stderr=out, process_group=0)  # fmt: skip
    try:
        wait_until(lambda: b"started" in log.read_bytes(), 20, "the ring's server to start")
        assert b"'ok': True" in log.read_bytes(), log.read_text()
        assert _listening(port)
        os.killpg(child.pid, signal.SIGKILL)  # the whole worker group, as a supervisor would
        child.wait(10)
        time.sleep(LIFETIME_S + 2)  # past the lifetime the dead worker's timer would have enforced
        leaked = _servers_on(port)
        print(f"\nFAULT ring-worker-sigkill: leaked_iperf3_servers={len(leaked)}, port_still_bound={_listening(port)}")
        assert not leaked and not _listening(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        for pid in _servers_on(port):  # servers this test caused; their pids, one by one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
