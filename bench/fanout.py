"""Fan-out benchmark: one cluster-wide status over 10, 100 and 1,000 simulated nodes.

The real path: an HTTP ``GET /status?format=json`` to the real API (``autopilot api``, gunicorn),
which selects every live node, enqueues each node's tasks into its Redis queue, and gathers the
results from the store; the tasks are run by simulator worker processes (``autopilot worker
--simulate``) whose nodes run the real checks over replayed tool outputs, so the checks' own time
is close to zero and what is measured is the runtime's overhead.

Printed per size: the end-to-end time of the request (median and best of ``--repeat``: from
sending it to the last byte of the answer), the time the benchmark then takes to decode the
answer (the client's cost, apart), the time per node, the checks' own time (the engine's
``duration_s`` summed over each node's checks, the longest node and the sum over all nodes),
and beside it the cost of a bare Redis round trip
(PING and SET, one at a time) measured in the same run.

    python -m bench.fanout                     # 10, 100, 1000 nodes
    python -m bench.fanout --nodes 1000 --repeat 5 --sim-processes 4 --concurrency 8
    python -m bench.fanout --nodes 1000 --checks pciebw,remapped,dcgm,gpupower   # a check set of your own
    python -m bench.fanout --nodes 1000 --root /tmp/before    # the runtime of another tree (before/after)

``--checks``: the checks the status asks for (its ``check`` parameter; default: the API's periodic
checks), so that two trees whose default checks differ are compared on the same work.
``--root``: run the API and simulators from another source tree (``git archive`` of an older
commit), with this benchmark's measurement, in the same run as this tree's.

Starts its own redis-server, API and simulators, and stops them all at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, Bench, group_rss_kib, up, wait_until
from workers.store import ResultsStore

TARGET_S = 2.0


def redis_round_trips(bench: Bench, n: int = 2000) -> dict[str, float]:
    """Mean microseconds of one PING and one SET, sent one at a time (each a full round trip)."""
    client = bench.client()
    try:
        client.ping()
        t0 = time.perf_counter()
        for _ in range(n):
            client.ping()
        ping_us = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for i in range(n):
            client.set(f"bench:rtt:{i % 16}", "x" * 64)
        set_us = (time.perf_counter() - t0) / n * 1e6
        client.delete(*[f"bench:rtt:{i}" for i in range(16)])
    finally:
        client.close()
    return {"ping_us": ping_us, "set_us": set_us}


def get_json(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own loopback API
        body: dict[str, Any] = json.loads(resp.read())
    return body


def start_cluster(bench: Bench, nodes: int, sim_processes: int | None, concurrency: int | None) -> list[Any]:
    """Simulator workers for ``sim-0..sim-<nodes-1>``, returned once every node has heartbeated."""
    procs = []
    extra = ["--concurrency", str(concurrency)] if concurrency else []
    for offset, count in up.split_simulation(nodes, sim_processes):
        args = ["worker", "--simulate", str(count), "--simulate-offset", str(offset), "--loglevel", "WARNING"]
        # As `autopilot up` starts them: simulators send no task events.
        args += ["--without-task-events", *extra]
        procs.append(bench.start(f"sim-{offset}", args, {"AUTOPILOT_HEARTBEAT_INTERVAL": "5s"}))
    store = ResultsStore(bench.client())
    wait_until(lambda: len(store.node_names()) >= nodes, 120, f"{nodes} simulated nodes to heartbeat", 0.25)
    # Heartbeats start before Celery consumes; the warm-up request in ``measure`` waits for the rest.
    return procs


def cpu_s(pids: Sequence[int]) -> float:
    """User+system CPU seconds of ``pids`` and their children (gunicorn workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        children = Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(OSError):
            total += cpu_s([int(c) for c in children.read_text().split()])
    return total


def idle_core_s() -> float:
    """Core-seconds the whole machine has spent idle (idle + iowait, all cores) since boot, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def measure(
    api_url: str, nodes: int, repeat: int, roles: Mapping[str, Sequence[int]], checks: str = ""
) -> dict[str, Any]:
    url = f"{api_url}/status?format=json&deadline=60"
    if checks:
        url += "&" + urllib.parse.urlencode({"check": checks})
    get_json(url, 120)  # warm-up: connections, imports, first task of every queue
    times: list[float] = []
    decode: list[float] = []
    last: dict[str, Any] = {}
    before = {role: cpu_s(pids) for role, pids in roles.items()}
    idle = 0.0
    for _ in range(repeat):
        idle_before = idle_core_s()
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - our own loopback API
            body = resp.read()
        t1 = time.perf_counter()
        idle += idle_core_s() - idle_before
        last = json.loads(body)
        times.append(t1 - t0)
        decode.append(time.perf_counter() - t1)
    cpu = {role: (cpu_s(pids) - before[role]) / repeat for role, pids in roles.items()}
    answered = last["totals"]["answered"]
    if answered != nodes or not last["complete"]:
        raise RuntimeError(f"only {answered} of {nodes} nodes answered: {last['totals']}")
    per_node = [sum(r["duration_s"] for r in entry["results"]) for entry in last["nodes"].values()]
    return {
        "nodes": nodes,
        "median_s": statistics.median(times),
        "best_s": min(times),
        "times_s": times,
        # The benchmark's own json.loads of the answer, after the last byte: the client's cost.
        "client_decode_s": statistics.median(decode),
        "answer_mib": len(body) / 2**20,
        "checks": last["checks"],
        "check_time_max_node_s": max(per_node),
        "check_time_sum_s": sum(per_node),
        "server_runtime_s": last.get("runtime_s"),
        "cpu_s_per_request": cpu,
        # Cores left idle from sending a request to its answer's last byte: how far the request
        # is from keeping every core busy.
        "idle_core_s_per_request": idle / repeat,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="10,100,1000", help="comma-separated cluster sizes")
    parser.add_argument("--repeat", type=int, default=3, help="measured requests per size (after one warm-up)")
    parser.add_argument(
        "--sim-processes", type=int, default=None, help="simulator processes (default: as autopilot up)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="threads per simulator (default: settings)")
    parser.add_argument("--checks", default="", help="comma-separated checks to ask for (default: the periodic ones)")
    parser.add_argument("--root", type=Path, default=None, help="source tree the API and simulators run from")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.nodes.split(",") if s.strip()]
    root = args.root.resolve() if args.root else ROOT
    print(f"tree: {root}; checks: {args.checks or 'the periodic ones'}", flush=True)

    rows = []
    with Bench(root) as bench:
        api, api_url = bench.start_api()
        rtt = redis_round_trips(bench)
        print(f"redis round trip (one at a time): PING {rtt['ping_us']:.0f} us, SET {rtt['set_us']:.0f} us")
        for nodes in sizes:
            bench.client().flushall()
            sims = start_cluster(bench, nodes, args.sim_processes, args.concurrency)
            assert bench.redis is not None
            roles = {"api": [api.pid], "simulators": [p.pid for p in sims], "redis": [bench.redis.pid]}
            row = measure(api_url, nodes, args.repeat, roles, args.checks)
            row["sim_processes"] = len(sims)
            row["sim_rss_mib"] = sum(group_rss_kib(p.pid) for p in sims) / 1024
            rows.append(row)
            _print_row(row, rtt)
            for proc in sims:
                bench.stop(proc)
        rtt_after = redis_round_trips(bench)
        print(f"redis round trip after the runs: PING {rtt_after['ping_us']:.0f} us, SET {rtt_after['set_us']:.0f} us")
    print(json.dumps({"redis_rtt_us": rtt, "runs": rows}, indent=1))
    return 0


def _print_row(row: dict[str, Any], rtt: dict[str, float]) -> None:
    nodes = row["nodes"]
    e2e = row["median_s"]
    overhead = e2e - row["check_time_max_node_s"]
    verdict = "meets" if overhead < TARGET_S else "MISSES"
    print(
        f"{nodes:>5} nodes ({row['sim_processes']} simulator processes, {row['sim_rss_mib']:.0f} MiB RSS): "
        f"end-to-end median {e2e:.3f} s (best {row['best_s']:.3f} s, "
        f"runs {', '.join(f'{t:.3f}' for t in row['times_s'])}; "
        f"then {row['client_decode_s']:.3f} s to decode the {row['answer_mib']:.1f} MiB answer here); "
        f"{e2e / nodes * 1000:.2f} ms per node = {e2e / nodes * 1e6 / rtt['ping_us']:.1f} Redis round trips per node; "
        f"checks' own time: longest node {row['check_time_max_node_s']:.3f} s, "
        f"all nodes {row['check_time_sum_s']:.2f} s; "
        f"beyond the checks {overhead:.3f} s ({verdict} the {TARGET_S:g} s target); checks {','.join(row['checks'])}; "
        f"CPU s per request: {', '.join(f'{k} {v:.2f}' for k, v in row['cpu_s_per_request'].items())}; "
        f"idle core-s per request {row['idle_core_s_per_request']:.2f} of {os.cpu_count()} cores",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
