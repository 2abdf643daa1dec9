"""Idle memory of a worker: VmRSS of a real ``autopilot worker`` process once it is idle.

Starts a private redis-server and ``autopilot worker --node bench-a`` (the real worker of a node,
here without GPUs), waits for its first heartbeat and its consumer to be ready, answers one run so
that every lazy import has happened, lets it idle, and reads ``VmRSS`` from ``/proc/<pid>/status``
(a thread pool: one process). For comparison it does the same for a simulator process hosting
``--simulate`` nodes, whose figure divided by the node count is the memory of one simulated node.

    python -m bench.worker_rss
    python -m bench.worker_rss --simulate 1000 --idle 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from bench.common import Bench, rss_kib, wait_until
from workers.store import ResultsStore

TARGET_MIB = 60.0


def idle_rss(bench: Bench, name: str, args: list[str], nodes: list[str], idle_s: float) -> tuple[int, float]:
    """(pid, VmRSS MiB) of the process started with ``args`` after it heartbeated and idled."""
    proc = bench.start(name, args)
    store = ResultsStore(bench.client())
    wait_until(lambda: all(store.node(n) for n in nodes), 120, f"heartbeat of {name}", 0.2)
    wait_until(lambda: "ready" in bench.log(name), 60, f"{name} to be ready", 0.2)
    time.sleep(idle_s)
    return proc.pid, rss_kib(proc.pid) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idling before reading VmRSS")
    parser.add_argument("--simulate", type=int, default=1000, help="nodes of the simulator measured beside (0: none)")
    args = parser.parse_args(argv)
    with Bench() as bench:
        worker_args = ["worker", "--node", "bench-a", "--loglevel", "INFO"]
        pid, mib = idle_rss(bench, "worker", worker_args, ["bench-a"], args.idle)
        verdict = "meets" if mib < TARGET_MIB else "MISSES"
        print(f"worker (node bench-a, pid {pid}): idle VmRSS {mib:.1f} MiB ({verdict} the {TARGET_MIB:g} MiB target)")
        if args.simulate:
            nodes = [f"sim-{i}" for i in range(args.simulate)]
            sim_args = ["worker", "--simulate", str(args.simulate), "--loglevel", "INFO"]
            pid, sim_mib = idle_rss(bench, "simulator", sim_args, nodes, args.idle)
            per_node = (sim_mib - mib) / args.simulate * 1024
            print(
                f"simulator ({args.simulate} nodes, pid {pid}): idle VmRSS {sim_mib:.1f} MiB, "
                f"{per_node:.1f} KiB per simulated node beyond a plain worker"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
