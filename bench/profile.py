"""Where a fan-out's CPU goes: ``bench.fanout``'s cluster, with py-spy recording one simulator.

Starts the same processes as ``bench.fanout`` (redis-server, the API, simulators as ``autopilot
up`` splits them), sends one warm-up status, then records the first simulator (or the API with
``--role api``) with ``py-spy record`` while ``--repeat`` more statuses run. Prints the functions
with the most samples, by own time and including callees, and keeps the collapsed stacks.

    python -m bench.profile --nodes 1000 --repeat 3            # needs py-spy (in .venv/bin)
    python -m bench.profile --role api --out /tmp/api.folded
    python -m bench.profile --checks remapped          # one cheap check: what is left is the runtime around a task

Only a profile: the figures to quote come from ``bench.fanout``, which runs without py-spy.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from bench.common import Bench
from bench.fanout import get_json, start_cluster


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found (pip install py-spy)")
    return found


def summarize(folded: Path, top: int) -> str:
    """The ``top`` frames by own samples and by inclusive samples, from py-spy's raw (folded) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "own:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="statuses recorded (after one warm-up)")
    parser.add_argument("--role", choices=("simulator", "api"), default="simulator")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--checks", default="", help="comma-separated checks to ask for (default: the periodic ones)")
    parser.add_argument("--out", default="/tmp/autopilot-profile.folded", help="collapsed stacks")
    args = parser.parse_args(argv)
    spy = py_spy()
    out = Path(args.out)
    with Bench() as bench:
        api, api_url = bench.start_api()
        sims = start_cluster(bench, args.nodes, None, None)
        url = f"{api_url}/status?format=json&deadline=60"
        if args.checks:
            url += "&" + urllib.parse.urlencode({"check": args.checks})
        get_json(url, 120)
        target = sims[0].pid if args.role == "simulator" else api.pid
        record = [spy, "record", "--pid", str(target), "--rate", str(args.rate), "--format", "raw", "-o", str(out)]
        # Only the thread holding the GIL: waiting threads (a pool's idle threads, the event
        # loop in epoll) are not CPU, and py-spy cannot always tell them idle on its own.
        record.append("--gil")
        if args.role == "api":
            record.append("--subprocesses")  # gunicorn's workers
        spying = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603 - argv
        time.sleep(1.0)  # py-spy attaches
        for _ in range(args.repeat):
            get_json(url, 120)
        spying.send_signal(signal.SIGINT)
        spying.wait(30)
    print(summarize(out, args.top))
    print(f"\ncollapsed stacks: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
