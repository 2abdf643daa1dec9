"""What the worker's and beat's liveness costs: one probe run (a fresh mark, a stale one with the broker away)
and one mark (``workers.liveness.touch``), as CPU seconds.

The probe is what the kubelet runs every 30 s in each worker and beat container (``python -m workers.probe``);
the mark is what each process does every ``AUTOPILOT_LIVENESS_INTERVAL``.

    python -m bench.liveness --runs 10
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers import liveness
from workers.up import free_port

ROOT = Path(__file__).resolve().parent.parent


def _probe_cpu(env: Mapping[str, str], runs: int) -> tuple[float, int]:
    """(mean CPU seconds of one probe process, its exit code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = 0
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-m", "workers.probe"],
            cwd=ROOT,
            env=dict(env),
            capture_output=True,
            timeout=30,
            check=False,
        )
        code = done.returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return spent / runs, code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="probe runs per case")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "alive")
        liveness.touch(path)
        base = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPILOT_")}
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH", "")]))
        env = {**base, "AUTOPILOT_LIVENESS_FILE": path, "AUTOPILOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        fresh, code = _probe_cpu(env, args.runs)
        print(f"probe, fresh mark:                 {fresh * 1000:7.1f} ms CPU per run (exit {code})")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        stale, code = _probe_cpu(env, args.runs)
        print(f"probe, stale mark, broker away:    {stale * 1000:7.1f} ms CPU per run (exit {code})")
        marks = 10_000
        start = time.process_time()
        for _ in range(marks):
            liveness.touch(path)
        each = (time.process_time() - start) / marks
        print(f"mark (utime of the heartbeat file): {each * 1e6:7.1f} us CPU each")
        share = f"{fresh / 30 * 100:.2f}% of a core for the probe, {each / 10 * 100:.5f}% for the marks"
        print(f"per worker at the defaults: {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
