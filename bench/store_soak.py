"""Redis memory over repeated runs: flat once the retention settings bound every key that grows.

Starts a private redis-server and drives ``ResultsStore`` as the runtime does, round after round:
heartbeats of ``--nodes`` nodes, one run over all of them (``create_run``), each node's results
saved into it with the read-back a task makes (``save_many(view=...)``), and the node's verdict state
written. Each round's deadline has passed when the next starts, as with beat's periodic runs. After
each round it reads ``used_memory`` (``INFO memory``, after a ``MEMORY PURGE``).

It runs twice on the same server, flushed in between: with ``run_keep`` as set (``--keep``), and
with ``run_keep`` so large that only the TTL bounds runs (what the store did before ``AUTOPILOT_RUN_KEEP``).

    python -m bench.store_soak                         # 100 nodes, 5 checks, 120 rounds, keep 20
    python -m bench.store_soak --nodes 200 --rounds 300 --keep 50

docs/PERFORMANCE.md ("Redis memory over repeated runs") quotes its output.
"""

from __future__ import annotations

import argparse
import json

import redis

from bench.common import Bench, ok_result
from workers.store import NodeRecord, ResultsStore, Run

CHECKS = ("pciebw", "remapped", "dcgm", "ping", "gpupower")


def memory(client: redis.Redis) -> int:
    client.execute_command("MEMORY", "PURGE")
    return int(client.info("memory")["used_memory"])


def soak(client: redis.Redis, nodes: int, rounds: int, keep: int) -> list[int]:
    """``used_memory`` after each round."""
    store = ResultsStore(client, history_len=100, run_ttl_s=86400, run_keep=keep)
    names = [f"node-{i:04d}" for i in range(nodes)]
    out: list[int] = []
    for r in range(rounds):
        now = 1_000_000.0 + r * 3600  # one round an hour, as beat's periodic checks
        store.heartbeat_many(NodeRecord(n, gpu_model="H100", gpu_count=8, last_seen=now) for n in names)
        run = Run.new(CHECKS, names, {}, 600, source="beat", now=now)
        store.create_run(run)
        for n in names:
            store.save_many([(ok_result(n, c), True) for c in CHECKS], run.id, view=n)
            store.set_state(n, {"verdict": "PASS", "reasons": json.dumps([]), "gpus_at": str(now)})
        out.append(memory(client))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--keep", type=int, default=20, help="run_keep for the bounded soak")
    args = parser.parse_args(argv)
    with Bench() as bench:
        client = bench.client()
        figures: dict[str, list[int]] = {}
        for label, keep in ((f"run_keep={args.keep}", args.keep), ("TTL only", 10**9)):
            client.flushall()
            figures[label] = soak(client, args.nodes, args.rounds, keep)
        client.close()
    half = args.rounds // 2
    print(f"{args.nodes} nodes x {len(CHECKS)} checks, {args.rounds} rounds (one run over every node each)")
    last = args.rounds - half
    print(f"| retention | after round 1 | round {half} | round {args.rounds} | growth over the last {last} rounds |")
    print("| --- | --- | --- | --- | --- |")
    for label, used in figures.items():
        mib = [u / 2**20 for u in used]
        growth = mib[-1] - mib[half - 1]
        print(f"| {label} | {mib[0]:.1f} MiB | {mib[half - 1]:.1f} MiB | {mib[-1]:.1f} MiB | {growth:+.2f} MiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
