"""Passive detection: from a fault reaching its source to the label and condition on the Node.

100 simulated nodes, each with its own follower reading its own kernel log (``FakeKmsg``, the real
record format, classification, folding and supervisor) and polling counters (a stand-in that never
changes), writing through the worker's ``StoreSink`` to a private ``redis-server`` and reconciling
against an in-memory cluster (``FakeCluster``, the cluster seam's stand-in: labels and conditions
as the API server keeps them). 200 mixed events (Xid 79/48/119/95/74/94, SXid fatal, PCIe AER fatal
and non-fatal, and application Xids 13/31/43 that must change nothing) are written at random times.

Prints p50/p99/max from the write to the kernel log to the moment the node's label and condition
are current (``StoreSink.emit`` returned after the reconcile), and the followers' idle CPU per node
per hour (the process's CPU time while nothing happens, divided by the nodes).

    python -m bench.detect --nodes 100 --events 200 --spread 20 --idle 30
"""

from __future__ import annotations

import argparse
import random
import re
import threading
import time
from collections.abc import Sequence

import redis

from autopilot import config, registry
from autopilot.context import CheckContext
from autopilot.events import follower as follower_mod
from autopilot.events import kmsg
from autopilot.events.counters import CounterPoller
from autopilot.events.model import Event
from autopilot.nvml_events import GpuCounters
from autopilot.results import CheckResult
from autopilot.testing import FakeCluster, FakeRunner, FakeTelemetry, wait_until
from bench.common import Bench
from bench.load import percentile
from workers import follower as glue
from workers.store import ResultsStore

LINES = [
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus. bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 48, An uncorrectable double bit error (DBE) bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 119, pid=1, name=x, Timeout waiting for RPC from GSP bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 95, pid=1, name=x, Uncontained: FBHUB bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 74, pid=1, name=x, NVLink: fatal error detected bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 94, pid=1, name=x, Contained: SM bench#{n}",
    "nvidia-nvswitch0: SXid (PCI:0000:{bus:02x}:00.0): 20034, Fatal, Link 4 LTSSM Fault Up bench#{n}",
    "pcieport 0000:00:01.0: AER: Uncorrected (Fatal) error received: 0000:{bus:02x}:00.0 bench#{n}",
    "pcieport 0000:00:01.0: AER: Uncorrected (Non-Fatal) error received: 0000:{bus:02x}:00.0 bench#{n}",
]
APPLICATION = [
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 13, pid=7, name=python, Graphics SM Warp Exception bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 31, pid=7, name=python, MMU Fault bench#{n}",
    "NVRM: Xid (PCI:0000:{bus:02x}:00): 43, pid=7, name=python, Ch 00000008 bench#{n}",
]
_TAG = re.compile(r"bench#(\d+)")


class TimingSink(glue.StoreSink):
    """The worker's sink, noting when each event's result was written and its node reconciled."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.done: dict[int, float] = {}
        self.lock = threading.Lock()

    def emit(self, node: str, result: CheckResult | None, counted: Sequence[Event], timed: Sequence[Event]) -> None:
        super().emit(node, result, counted, timed)
        now = time.monotonic()
        with self.lock:
            for e in timed:
                tag = _TAG.search(e.message)
                if tag:
                    self.done.setdefault(int(tag.group(1)), now)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--spread", type=float, default=20.0, help="seconds over which the events are written")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    names = [f"sim-{i}" for i in range(args.nodes)]
    settings = config.Settings(node_name="bench", periodic_checks=())
    cluster = FakeCluster()
    for n in names:
        cluster.add_node(n, gpus=8)
    with Bench() as bench:
        store = ResultsStore(redis.Redis.from_url(bench.redis_url))
        checks = registry.shipped()  # a bench assembles its own process
        contexts = {
            n: CheckContext(n, settings, FakeRunner(), FakeTelemetry([]), cluster=cluster, checks=checks) for n in names
        }
        sink = TimingSink(store, settings, contexts, checks)
        gpu_index = {f"0000:{i:02x}:00.0": str(i) for i in range(8)}
        devices = {n: kmsg.FakeKmsg(capacity=4096) for n in names}
        counters = [
            GpuCounters(f"0000:{i:02x}:00.0", ecc_uncorrected_volatile=0, nvlink_up=(True,) * 18) for i in range(8)
        ]
        followers = {
            n: follower_mod.Follower(
                n, sink, gpu_index=gpu_index, kmsg_device=devices[n], poller=CounterPoller(lambda: counters),
                poll_interval_s=settings.events_poll_interval_s, storm_window_s=settings.events_storm_window_s,
            )
            for n in names
        }  # fmt: skip
        for f in followers.values():
            f.start()
        stop = threading.Event()
        threading.Thread(target=glue._flush_loop, args=(followers, stop), daemon=True).start()
        wait_until(lambda: all(d.opened for d in devices.values()), 30, "every follower to open its kernel log")

        # Idle: nothing is written; the followers wait on their logs and poll their counters.
        time.sleep(1.0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(args.idle)
        idle_cpu, idle_wall = time.process_time() - cpu0, time.monotonic() - wall0

        # Events at random times; application Xids are mixed in and must change no verdict.
        plan = sorted((rng.uniform(0, args.spread), i) for i in range(args.events))
        written: dict[int, float] = {}
        last_seq: dict[str, int] = {}
        kinds: dict[int, str] = {}
        app_nodes = set(names[: max(1, args.nodes // 10)])
        start = time.monotonic()
        for at, i in plan:
            time.sleep(max(0.0, start + at - time.monotonic()))
            node = names[i % args.nodes] if i % 10 else sorted(app_nodes)[i % len(app_nodes)]
            pool = APPLICATION if node in app_nodes else LINES
            line = rng.choice(pool).format(bus=rng.randrange(8), n=i)
            kinds[i] = "application" if pool is APPLICATION else "fault"
            written[i] = time.monotonic()
            last_seq[node] = devices[node].write(line)
        faults = [i for i in written if kinds[i] == "fault"]
        # Every record read and handled (a repeat of a code on a GPU folds and has no latency of its own).
        wait_until(lambda: all(followers[n].last_seq == s for n, s in last_seq.items()), 30, "the followers")
        time.sleep(2.0)  # the last flush of folded repeats
        stop.set()
        for f in followers.values():
            f.stop()
        latencies = [sink.done[i] - written[i] for i in faults if i in sink.done]
        folded = len(faults) - len(latencies)
        app_changed = [n for n in app_nodes if store.state(n).verdict not in (None, "PASS")]
        labelled = sum(
            1 for n in names if cluster.nodes[n].labels.get("autopilot.ibm.com/gpuhealth") in ("WARN", "EVICT")
        )
        per_node_core = idle_cpu / idle_wall / args.nodes
        print(
            f"nodes {args.nodes}, events {args.events} ({len(faults)} faults, {args.events - len(faults)} application "
            f"Xids) over {args.spread:g} s; {folded} folded into an earlier finding of the same GPU and code"
        )
        print(
            f"event -> label+condition: p50 {percentile(latencies, 50) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms (n={len(latencies)})"
        )
        print(f"nodes labelled WARN/EVICT: {labelled}; application-Xid nodes whose verdict changed: {len(app_changed)}")
        print(
            f"idle follower CPU: {per_node_core * 100:.3f} % of a core per node = {per_node_core * 3600:.1f} "
            f"CPU-s per node per hour (measured {idle_wall:.0f} s, {args.nodes} followers in one process)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
