"""``/metrics`` at scale: its size and time over N nodes, and what concurrent scrapes cost the rest.

Fills a private redis-server with ``--nodes`` nodes of 8 GPUs (a heartbeat, a verdict, and the
latest ``pciebw``, ``remapped``, ``gpupower``, ``gpumem`` and ``dcgm`` results with one entry per
GPU), starts the real API (``autopilot api``, gunicorn, 2 processes), then prints:

- one scrape: its size and time (the first one renders the node gauges);
- ``--scrapers`` concurrent scrapes: their wall time, p50 and max, and how long a one-node
  request (``GET /api/v1/nodes/<node>``) takes while they run (p50 and max of the requests
  sent one after another during the scrapes).

With ``--baseline DIR`` (another checkout) the same runs first on DIR's code, back to back.

    python -m bench.metrics_scrape                       # 1,000 nodes, 60 scrapers
    python -m bench.metrics_scrape --baseline /tmp/main
"""

from __future__ import annotations

import argparse
import concurrent.futures
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from autopilot.results import CheckResult, DeviceResult, Status, utc_now_iso
from bench.common import ROOT, Bench
from bench.load import percentile
from workers.store import NodeRecord, ResultsStore

GPUS = 8


def populate(store: ResultsStore, nodes: int) -> list[str]:
    names = [f"node-{i}" for i in range(nodes)]
    now = time.time()
    store.heartbeat_many(
        NodeRecord(n, cpu_model="Intel(R) Xeon(R) Platinum 8480+", gpu_model="NVIDIA H100 80GB HBM3",
                   gpu_count=GPUS, last_seen=now)
        for n in names
    )  # fmt: skip
    started = utc_now_iso()
    for name in names:
        per_gpu = {
            "pciebw": [DeviceResult(str(g), Status.OK, 24.0 + g / 10, "GB/s") for g in range(GPUS)],
            "remapped": [DeviceResult(str(g), Status.OK, 0) for g in range(GPUS)],
            "gpupower": [DeviceResult(str(g), Status.OK, 0) for g in range(GPUS)],
            "gpumem": [DeviceResult(str(g), Status.OK, 1400.0, "GB/s") for g in range(GPUS)],
            "dcgm": [DeviceResult(str(g), Status.OK, 0) for g in range(GPUS)],
        }
        results = [
            (CheckResult(c, Status.OK, "ok", node=name, devices=tuple(d), started_at=started, duration_s=1.5), True)
            for c, d in per_gpu.items()
        ]
        store.save_many(results)
        store.set_state(name, {"verdict": "PASS"})
    return names


def get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as resp:  # noqa: S310 - our own loopback API
        size = len(resp.read())
    return time.perf_counter() - t0, size


def measure(args: argparse.Namespace, name: str, root: Path) -> None:
    with Bench(root) as bench:
        store = ResultsStore(bench.client())
        names = populate(store, args.nodes)
        _, base = bench.start_api(["--workers", "2"], {"AUTOPILOT_HEARTBEAT_INTERVAL": "1h"})
        one_s, size = get(f"{base}/metrics")
        probes: list[float] = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                probes.append(get(f"{base}/api/v1/nodes/{names[0]}")[0])

        prober = threading.Thread(target=probe)
        t0 = time.perf_counter()
        prober.start()
        with concurrent.futures.ThreadPoolExecutor(args.scrapers) as pool:
            scrapes = [s for s, _ in pool.map(lambda _: get(f"{base}/metrics"), range(args.scrapers))]
        wall = time.perf_counter() - t0
        done.set()
        prober.join()
    label = f"[{name}] " if name else ""
    print(f"{label}code: {root}")
    print(f"{label}one scrape over {args.nodes} nodes: {size / 1e6:.2f} MB in {one_s:.2f} s")
    print(f"{label}{args.scrapers} concurrent scrapes: {wall:.2f} s wall, p50 {percentile(scrapes, 50):.2f} s, "
          f"max {max(scrapes):.2f} s")  # fmt: skip
    print(f"{label}one-node request during them: {len(probes)} sent, p50 {percentile(probes, 50):.3f} s, "
          f"max {max(probes):.3f} s")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--scrapers", type=int, default=60)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to measure first")
    args = parser.parse_args(argv)
    trees = ([("before", args.baseline.resolve())] if args.baseline else []) + [("after", ROOT)]
    for name, root in trees:
        measure(args, name if args.baseline else "", root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
