"""What one Prometheus scrape of ``/metrics`` costs at 1,000 simulated nodes: its size and time.

Starts ``bench.fanout``'s cluster (redis-server, the real API under gunicorn, simulators as
``autopilot up`` splits them), fills the store with one cluster-wide status over every node (so
every node has its latest results, verdict and GPU state, and the fleet its baselines), then
sends ``--repeat`` scrapes of ``GET /metrics`` one after another and prints the median and best
time to the last byte, the body's size, its series count, and the API's and Redis's CPU seconds
per scrape (``/proc``). With ``--statuses N`` it sends N more statuses first, so history grows.

    python -m bench.metrics_fanout                       # 1,000 nodes, 5 scrapes
    python -m bench.metrics_fanout --nodes 100 --repeat 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from bench.common import Bench
from bench.fanout import cpu_s, get_json, start_cluster


def scrape(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - our own loopback API
        body: bytes = resp.read()
    return time.perf_counter() - t0, body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes")
    parser.add_argument("--repeat", type=int, default=5, help="measured scrapes (after one warm-up)")
    parser.add_argument("--statuses", type=int, default=0, help="extra statuses before scraping")
    args = parser.parse_args(argv)
    with Bench() as bench:
        api, api_url = bench.start_api()
        sims = start_cluster(bench, args.nodes, None, None)
        for _ in range(1 + args.statuses):
            answer = get_json(f"{api_url}/status?format=json&deadline=60", 120)
            if answer["totals"]["answered"] != args.nodes:
                raise RuntimeError(f"only {answer['totals']} answered")
        assert bench.redis is not None
        roles = {"api": [api.pid], "redis": [bench.redis.pid]}
        scrape(f"{api_url}/metrics")  # warm-up
        before = {role: cpu_s(pids) for role, pids in roles.items()}
        times: list[float] = []
        body = b""
        for _ in range(args.repeat):
            took, body = scrape(f"{api_url}/metrics")
            times.append(took)
        cpu = {role: (cpu_s(pids) - before[role]) / args.repeat for role, pids in roles.items()}
        lines = body.decode().splitlines()
        series = sum(1 for line in lines if line and not line.startswith("#"))
        families = sum(1 for line in lines if line.startswith("# TYPE"))
        row: dict[str, Any] = {
            "nodes": args.nodes,
            "median_s": statistics.median(times),
            "best_s": min(times),
            "times_s": times,
            "body_mib": len(body) / 2**20,
            "series": series,
            "families": families,
            "cpu_s_per_scrape": cpu,
        }
        print(
            f"{args.nodes} nodes: /metrics median {row['median_s']:.3f} s (best {row['best_s']:.3f} s, runs "
            f"{', '.join(f'{t:.3f}' for t in times)}); {row['body_mib']:.2f} MiB, {series} series in "
            f"{families} families; CPU s per scrape: {', '.join(f'{k} {v:.2f}' for k, v in cpu.items())}",
            flush=True,
        )
        for proc in sims:
            bench.stop(proc)
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
