"""Load benchmark: concurrent ``/status`` requests over simulated nodes while beat runs.

Starts a private redis-server, simulator workers for ``--nodes`` nodes (``sim-0..``), beat with
short periodic, invasive (DCGM level 3) and reconcile intervals, and the real API (gunicorn).
Then ``--clients`` threads each send one ``GET /status?format=json`` at once (every live node,
the periodic checks), while beat keeps ticking. Printed:

- how many requests were answered (HTTP 200, ``complete``), and their latency p50/p90/p99/max
  (from sending the request to the last byte of its answer; answers are decoded once all are in),
  and the part of it between the run's creation and its answer (``runtime_s``);
- per request, how many nodes answered and how many were ``unreachable``;
- check executions: results written into the nodes' histories while the requests ran (one per
  check actually run on a node), against the (node, check) pairs the requests asked for;
- the CPU seconds the API, the simulators, beat and Redis spent while the requests ran;
- duplicated work, counted from the store after the load as before coalescing: for every node
  and check, the number of results in the node's history must not exceed the number of runs
  holding a result of that node and check (a task run twice leaves one more history entry than
  runs; a request that joined another's execution holds a copy, and its node's history none);
  invasive DCGM level-3 results per node must not outnumber the invasive runs; periodic runs
  must be one per tick.

With ``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/main main``) the same
load runs first on the processes of DIR, then on this tree's, back to back, and both are printed.

    python -m bench.load                       # 50 clients, 100 nodes
    python -m bench.load --baseline /tmp/main  # before and after, in one run
    python -m bench.load --clients 50 --nodes 100 --checks remapped,gpupower --deadline 120

Exit status 0 when every request was answered and nothing was duplicated, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, Bench, up, wait_until
from bench.fanout import cpu_s
from workers.store import ResultsStore


def get_body(url: str, timeout: float) -> tuple[int, bytes]:
    """The status code and the whole body, read to its last byte (not decoded)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own loopback API
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() or b"{}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def one_request(url: str, timeout: float) -> dict[str, Any]:
    """Send one request and read its answer to the last byte; decoding it is left to ``summarize``."""
    t0 = time.perf_counter()
    try:
        code, raw = get_body(url, timeout)
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__, "s": time.perf_counter() - t0}
    return {"code": code, "raw": raw, "s": time.perf_counter() - t0}


def summarize(answer: dict[str, Any]) -> dict[str, Any]:
    """``one_request``'s answer decoded, once every request has its answer.

    The latency ends at the answer's last byte, and no client decodes while others still read:
    50 answers of 2 MB decoded by threads of this one process held the GIL that the reading
    threads needed, and seconds of this client's own work were counted into the API's latency.
    """
    if "raw" not in answer:
        return answer
    body = json.loads(answer["raw"])
    totals = body.get("totals", {})
    return {
        "ok": answer["code"] == 200 and body.get("complete") is True,
        "code": answer["code"],
        "s": answer["s"],
        "answered": totals.get("answered", 0),
        "unreachable": totals.get("unreachable", 0),
        "runtime_s": body.get("runtime_s", 0.0),  # from the run's creation to its answer, in the API
    }


def duplicates(store: ResultsStore, nodes: Sequence[str]) -> dict[str, Any]:
    """Count work done twice, from the runs and histories in the store.

    Histories are read before runs: a result enters its node's history and its run's hash in one
    MULTI, so a result that lands between the two reads adds a run field, never a history entry.
    """
    histories = {node: store.history(node, 100_000) for node in nodes}
    runs: list[tuple[dict[str, Any], set[str]]] = []
    for key in store.r.scan_iter("ap:run:*", count=1000):
        fields = {f.decode() for f in store.r.hkeys(key)}
        meta = store.r.hget(key, "meta")
        if meta:
            runs.append((json.loads(meta), fields - {"meta"}))
    held: dict[tuple[str, str], int] = {}
    for _, fields in runs:
        for field in fields:
            node, _, check = field.partition("|")
            held[(node, check)] = held.get((node, check), 0) + 1
    extra = 0
    examples: list[str] = []
    invasive_extra = 0
    invasive_runs = sum(1 for meta, _ in runs if meta["source"] == "invasive")
    for node in nodes:
        history = histories[node]
        counts: dict[str, int] = {}
        for result in history:
            counts[result.check] = counts.get(result.check, 0) + 1
        for check, count in counts.items():
            over = max(0, count - held.get((node, check), 0))
            extra += over
            if over and len(examples) < 5:
                runs_of = [r.started_at for r in history if r.check == check]
                examples.append(f"{node}/{check}: {count} results, {held.get((node, check), 0)} runs; {runs_of[:6]}")
        level3 = sum(1 for r in history if r.check == "dcgm" and int(r.params.get("r", 0) or 0) >= 3)
        invasive_extra += max(0, level3 - invasive_runs)
    periodic = sorted(meta["created_at"] for meta, _ in runs if meta["source"] == "periodic")
    gaps = [b - a for a, b in zip(periodic, periodic[1:], strict=False)]
    return {
        "runs": len(runs),
        "periodic_runs": len(periodic),
        "periodic_min_gap_s": round(min(gaps), 2) if gaps else None,
        "invasive_runs": invasive_runs,
        "duplicated_results": extra,
        "duplicated_invasive": invasive_extra,
        "examples": examples,
    }


def executions(store: ResultsStore, nodes: Sequence[str]) -> int:
    """Results in every node's history: one per check run (the history is kept whole here)."""
    pipe = store.r.pipeline(transaction=False)
    for node in nodes:
        pipe.llen(f"ap:history:{node}")
    return sum(int(n) for n in pipe.execute())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent /status requests")
    parser.add_argument("--nodes", type=int, default=100, help="simulated nodes")
    parser.add_argument("--checks", default="", help="checks of each request (default: the periodic checks)")
    parser.add_argument("--deadline", type=float, default=120.0, help="node deadline of each request (s)")
    parser.add_argument("--periodic", default="5s", help="beat's periodic interval")
    parser.add_argument("--invasive", default="10s", help="beat's invasive (DCGM level 3) interval")
    parser.add_argument("--settle", type=float, default=12.0, help="seconds of beat alone before the load")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to measure first")
    args = parser.parse_args(argv)

    print(f"{args.clients} concurrent /status over {args.nodes} simulated nodes while beat runs "
          f"(periodic {args.periodic}, invasive {args.invasive}); checks: {args.checks or 'periodic'}")  # fmt: skip
    clean = True
    trees = ([("before", args.baseline.resolve())] if args.baseline else []) + [("after", ROOT)]
    for name, root in trees:
        clean = measure(args, name if args.baseline else "", root) and clean
    return 0 if clean else 1


def measure(args: argparse.Namespace, name: str, root: Path) -> bool:
    """One load over a fresh stack running from ``root``; prints its figures, True when clean."""
    env = {
        "AUTOPILOT_PERIODIC_INTERVAL": args.periodic,
        "AUTOPILOT_INVASIVE_INTERVAL": args.invasive,
        "AUTOPILOT_RECONCILE_INTERVAL": "5s",
        "AUTOPILOT_HEARTBEAT_INTERVAL": "5s",
        "AUTOPILOT_HISTORY_LEN": "100000",
        # Every client waits at once (this API process's default is 24 per process).
        "AUTOPILOT_API_MAX_WAITS": str(max(24, args.clients)),
    }
    with Bench(root) as bench:
        sims = []
        for offset, count in up.split_simulation(args.nodes, None):
            sim_args = ["worker", "--simulate", str(count), "--simulate-offset", str(offset)]
            sims.append(
                bench.start(f"sim-{offset}", [*sim_args, "--loglevel", "WARNING", "--without-task-events"], env)
            )
        store = ResultsStore(bench.client())
        wait_until(lambda: len(store.node_names()) >= args.nodes, 120, f"{args.nodes} nodes", 0.25)
        nodes = store.node_names()
        api, base = bench.start_api(["--workers", "2"], env)
        beat = bench.start(
            "beat", ["beat", "--schedule-file", str(bench.tmp / "beat-schedule"), "--loglevel", "INFO"], env
        )
        time.sleep(args.settle)  # beat's first ticks, the first invasive run

        query = f"format=json&deadline={args.deadline:g}" + (f"&check={args.checks}" if args.checks else "")
        url = f"{base}/status?{query}"
        ran_before = executions(store, nodes)
        assert bench.redis is not None
        roles = {"api": [api.pid], "simulators": [p.pid for p in sims], "beat": [beat.pid], "redis": [bench.redis.pid]}
        cpu_before = {role: cpu_s(pids) for role, pids in roles.items()}
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            raw_answers = list(pool.map(lambda _: one_request(url, args.deadline * 2 + 60), range(args.clients)))
        wall = time.perf_counter() - t0
        answers = [summarize(a) for a in raw_answers]
        cpu = {role: cpu_s(pids) - cpu_before[role] for role, pids in roles.items()}
        ran = executions(store, nodes) - ran_before
        # Stop beat and let the last tick's tasks land before counting: a result that lands
        # between reading the runs and reading the histories would count as a duplicate.
        bench.stop(beat)
        wait_until(lambda: _quiet(store), 60, "the last tick's results", 0.5)
        found = duplicates(store, nodes)

    times = [a["s"] for a in answers]
    ok = sum(1 for a in answers if a["ok"])
    unreachable = [a.get("unreachable", 0) for a in answers]
    checks = len(args.checks.split(",")) if args.checks else 5
    label = f"[{name}] " if name else ""
    print(f"{label}code: {root}")
    print(f"{label}answered {ok}/{args.clients} (HTTP 200, complete) in {wall:.2f} s wall")
    print(f"{label}latency s: p50 {percentile(times, 50):.2f}, p90 {percentile(times, 90):.2f}, "
          f"p99 {percentile(times, 99):.2f}, max {max(times):.2f}, mean {statistics.mean(times):.2f}")  # fmt: skip
    runtimes = [a.get("runtime_s", 0.0) for a in answers]
    print(f"{label}run time in the API (run created to answered) s: p50 {percentile(runtimes, 50):.2f}, "
          f"p99 {percentile(runtimes, 99):.2f}")  # fmt: skip
    print(f"{label}nodes answered per request: min {min(a.get('answered', 0) for a in answers)}, "
          f"unreachable per request: max {max(unreachable)}, total {sum(unreachable)}")  # fmt: skip
    print(f"{label}check executions while the requests ran (beat's included): {ran}, "
          f"for {args.clients * len(nodes) * checks} (node, check) pairs asked for")  # fmt: skip
    print(f"{label}CPU s during the load: {', '.join(f'{k} {v:.2f}' for k, v in cpu.items())}")
    print(f"{label}store: {json.dumps(found)}")
    failed = [a for a in answers if not a["ok"]]
    if failed:
        print(f"{label}failed requests: {failed[:5]}")
    return not failed and found["duplicated_results"] == 0 and found["duplicated_invasive"] == 0


def _quiet(store: ResultsStore) -> bool:
    """No result written in the last two seconds (every queued task has run)."""
    before = sum(int(store.r.llen(f"ap:history:{n}")) for n in store.node_names())
    time.sleep(2)
    return before == sum(int(store.r.llen(f"ap:history:{n}")) for n in store.node_names())




if __name__ == "__main__":
    raise SystemExit(main())
