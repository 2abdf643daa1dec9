"""What one Redis sustains for Autopilot: tasks/s, results/s, memory per node, per connection.

Starts a private redis-server and drives it through the real code paths, then reads Redis's own
CPU time (``INFO cpu``) and memory (``INFO memory``), so the figures say what Redis can take, not
how fast this Python client is (on a small machine the client is the bottleneck):

- publish: ``CeleryDispatcher.send_many`` of one ``run_checks`` task per node (what a fan-out does);
- consume: per task, what kombu's Redis transport sends for a late-acked message (``BRPOP`` of the
  node's queue, the unacked bookkeeping ``ZADD``+``HSET`` in a pipeline, then the ack's
  ``ZREM``+``HDEL``), replayed with raw commands (a Celery worker per node is out of reach here);
- results: ``ResultsStore.save_many`` of ``--checks`` results per node, one MULTI per task into a run,
  as a worker saves them;
- memory: node records (``heartbeat_many``), latest results, history entries and run records for
  ``--nodes`` nodes, and idle client connections (each worker holds a few).

    python -m bench.redis_capacity                      # 10,000 nodes
    python -m bench.redis_capacity --nodes 2000 --checks 5 --history 10 --connections 500

docs/PERFORMANCE.md ("One Redis, and 10,000 nodes") quotes its output.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Sequence

import redis

from autopilot import config
from bench.common import Bench, ok_result
from workers import app as celery_app
from workers.dispatch import CeleryDispatcher, Envelope
from workers.store import NodeRecord

CHECKS = ("pciebw", "remapped", "dcgm", "ping", "gpupower", "gpumem", "iperf", "pvc")


def _cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measured(client: redis.Redis, what: Callable[[], int]) -> tuple[int, float, float]:
    """(operations, wall seconds, Redis CPU seconds) of ``what()``, which returns its operation count."""
    cpu0, t0 = _cpu_s(client), time.perf_counter()
    count = what()
    return count, time.perf_counter() - t0, _cpu_s(client) - cpu0


def report(name: str, count: int, wall_s: float, cpu_s: float) -> None:
    per_core = count / cpu_s if cpu_s > 0 else float("inf")
    print(
        f"{name:<9} {count:>8} ops  {count / wall_s:>9.0f}/s through this client  "
        f"Redis CPU {cpu_s * 1e6 / count:>6.1f} us/op  => {per_core:>9.0f}/s per Redis core"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=5, help="results per task (the periodic set has 5)")
    parser.add_argument("--history", type=int, default=10, help="history entries per node to measure")
    parser.add_argument("--connections", type=int, default=1000, help="idle client connections to measure")
    args = parser.parse_args(argv)
    nodes = [f"sim-{i}" for i in range(args.nodes)]
    checks = CHECKS[: args.checks]

    with Bench() as bench:
        client = bench.client()
        settings = config.Settings(redis_url=bench.redis_url)
        store = celery_app.make_store(settings)
        app = celery_app.create_celery(settings)
        dispatcher = CeleryDispatcher(app)
        base = _memory(client)
        print(
            f"one redis-server ({client.info('server')['redis_version']}), {args.nodes} nodes,"
            f" {len(checks)} checks per task"
        )

        deadline = time.time() + 3600
        envelopes = [Envelope("bench-run", n, checks, {}, deadline) for n in nodes]

        def publish() -> int:
            for start in range(0, len(envelopes), 1000):
                dispatcher.send_many(envelopes[start : start + 1000])
            return len(envelopes)

        report("publish", *measured(client, publish))
        queued = _memory(client) - base

        def consume() -> int:
            # kombu's Redis transport, per late-acked message (kombu/transport/redis.py QoS).
            done = 0
            for node in nodes:
                _, payload = client.brpop([f"autopilot.node.{node}"], timeout=1) or (None, b"")
                tag = uuid.uuid4().hex
                with client.pipeline() as pipe:
                    pipe.zadd("unacked_index", {tag: time.time()}).hset("unacked", tag, payload).execute()
                with client.pipeline() as pipe:
                    pipe.zrem("unacked_index", tag).hdel("unacked", tag).execute()
                done += 1
            return done

        report("consume", *measured(client, consume))

        run_id = "bench-run"

        def save() -> int:
            for node in nodes:
                store.save_many([(ok_result(node, c), True) for c in checks], run_id)
            return len(nodes) * len(checks)

        before_results = _memory(client)
        report("results", *measured(client, save))
        one_round = _memory(client) - before_results

        def heartbeat() -> int:
            records = [
                NodeRecord(
                    name=n,
                    addresses={"eth0": ["10.0.0.1"]},
                    gpu_model="NVIDIA H100 80GB HBM3",
                    gpu_count=8,
                    last_seen=time.time(),
                )
                for n in nodes
            ]
            for start in range(0, len(records), 500):
                store.heartbeat_many(records[start : start + 500])
            return len(records)

        before_nodes = _memory(client)
        report("heartbeat", *measured(client, heartbeat))
        node_records = _memory(client) - before_nodes

        before_history = _memory(client)
        for _ in range(args.history - 1):
            for start in range(0, len(nodes), 200):
                for node in nodes[start : start + 200]:
                    store.save_many([(ok_result(node, c), True) for c in checks])
        history_entries = (args.history - 1) * len(checks) * len(nodes)
        per_history = (_memory(client) - before_history) / history_entries

        before_conns = _memory(client)
        conns = [redis.Redis.from_url(bench.redis_url) for _ in range(args.connections)]
        for c in conns:
            c.ping()
        per_conn = (_memory(client) - before_conns) / args.connections
        for c in conns:
            c.close()

        n = len(nodes)
        print(f"memory    queued task            {queued / n:>8.0f} B per node (until consumed)")
        print(f"memory    node record            {node_records / n:>8.0f} B per node")
        print(f"memory    one round of results   {one_round / n:>8.0f} B per node (latest + 1 history + run record)")
        print(f"memory    history entry          {per_history:>8.0f} B per result kept (AUTOPILOT_HISTORY_LEN)")
        print(f"memory    idle connection        {per_conn:>8.0f} B per client connection")
        print(f"memory    total                  {_memory(client) / 2**20:>8.1f} MiB used_memory")
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
