"""A simulated node's own CPU: the checks of one task, and the whole task body, per node, in one process.

What a simulator spends per node per fan-out, without Celery, kombu or the API around it (``bench.fanout``
measures those together, on shared cores; this figure is steadier). Over ``--nodes`` simulated
contexts (the periodic checks, a ping ring over the simulated nodes, no ``--sim-noise``: as ``bench.fanout``), it prints
the CPU milliseconds per node of:

- ``engine``: ``execution.run_checks`` (the checks, GPU identities, the engine);
- ``task``: ``tasks.run_checks`` (the same, plus the fleet's judgement, the store's write and the
  node's reconcile) against a private redis-server, whose own CPU is not counted.

``--parts`` also prints where the task body's CPU goes, per node: each check's own ``run`` (called
directly, without the engine), and the task's parts (the engine, the fleet's judgement, the store's
write, the node's reconcile with its GPU half and ``gpuverdict.decide``), measured by timing those
functions inside the task body (each part includes the parts named under it; the mean over the rounds).

``--root DIR`` measures another source tree too (a ``git archive`` of an older commit), so the
figures before and after a change come from one run. ``--profile`` prints cProfile's top functions
by the CPU of the calling thread (the task body; the checks themselves run on a check thread, where
``py-spy record --gil`` sees them).

    T=/tmp/before; mkdir -p $T; git archive main | tar -x -C $T
    .venv/bin/python -m bench.simnode --root $T            # before, then this tree
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CHECKS = ("pciebw", "remapped", "dcgm", "ping", "gpupower")
ROOT = Path(__file__).resolve().parents[1]


def measure(
    nodes: int, rounds: int, redis_url: str, profile: bool, sort: str = "tottime", parts: bool = False
) -> dict[str, float]:
    """CPU ms per node of the engine and of the task body (run in the tree on ``sys.path``); with
    ``parts``, also of each check's ``run`` and of the task body's parts (``part:...`` keys)."""
    import cProfile
    import logging
    import pstats

    import redis

    from autopilot import config, execution, registry
    from workers import simulate, tasks
    from workers.host import NodeHost
    from workers.store import ResultsStore, Run

    logging.disable(logging.WARNING)  # a faultless fleet logs nothing worth the CPU here
    settings = config.Settings(node_name="bench", redis_url=redis_url, periodic_checks=CHECKS)
    checks = registry.shipped()
    names = simulate.node_names(nodes)
    ctxs = simulate.contexts(settings, nodes, [], checks=checks, live_nodes=lambda: names)
    host = NodeHost(settings, ResultsStore(redis.Redis.from_url(redis_url)), ctxs)

    def engine() -> None:
        for ctx in ctxs.values():
            execution.run_checks(CHECKS, ctx)

    def task() -> None:
        run = Run.new(CHECKS, names, {}, 60)
        host.store.create_run(run)
        for name in names:
            tasks.run_checks(host, run_id=run.id, node=name, checks=CHECKS, params={}, deadline=run.deadline)

    out: dict[str, float] = {}
    if parts:
        out.update(_check_parts(ctxs, rounds))
    for label, fn in (("engine", engine), ("task", task)):
        fn()  # warm-up: imports, caches, the first check thread, the fleet's baselines
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            fn()
            best = min(best, (time.process_time() - start) / nodes * 1000)
        out[label] = best
        if profile:
            prof = cProfile.Profile(time.thread_time)  # CPU of the calling thread, not waits
            prof.runcall(fn)
            print(f"--- cProfile of {label} ({nodes} nodes), by {sort}", file=sys.stderr)
            pstats.Stats(prof, stream=sys.stderr).sort_stats(sort).print_stats(40)
    if parts:
        out.update(_task_parts(task, nodes, rounds))
    return out


def _check_parts(ctxs: Mapping[str, Any], rounds: int) -> dict[str, float]:
    """CPU ms per node of each check's own ``run`` (no engine, thread or identities), best of ``rounds``."""
    out: dict[str, float] = {}
    for name in CHECKS:
        first = next(iter(ctxs.values()))
        spec = first.checks.get(name)
        params = spec.validate({})
        for ctx in ctxs.values():  # warm-up
            spec.run(ctx, params)
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            for ctx in ctxs.values():
                spec.run(ctx, params)
            best = min(best, (time.process_time() - start) / len(ctxs) * 1000)
        out[f"check:{name}"] = best
    return out


def _task_parts(task: Callable[[], None], nodes: int, rounds: int) -> dict[str, float]:
    """CPU ms per node spent inside each part of the task body, timed around the functions the task
    calls (benchmark-only wrappers, set for this measurement and removed after it)."""
    from autopilot import execution, gpuverdict
    from workers import fleet, gpureconcile, reconcile
    from workers.store import ResultsStore

    spent: dict[str, float] = dict.fromkeys(TASK_PARTS, 0.0)
    owners: dict[str, tuple[Any, str]] = {
        "engine": (execution, "run_checks"),
        "judge": (fleet.Judge, "__call__"),
        "save": (ResultsStore, "save_many"),
        "reconcile": (reconcile, "reconcile_node"),
        "reconcile.gpus": (gpureconcile, "reconcile_gpus"),
        "reconcile.gpus.decide": (gpuverdict, "decide"),
    }
    originals = {part: getattr(owner, attr) for part, (owner, attr) in owners.items()}

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.process_time() - start

        return call

    try:
        for part, (owner, attr) in owners.items():
            setattr(owner, attr, timed(part, originals[part]))
        for _ in range(rounds):
            task()
    finally:
        for part, (owner, attr) in owners.items():
            setattr(owner, attr, originals[part])
    return {f"part:{p}": v / rounds / nodes * 1000 for p, v in spent.items()}


TASK_PARTS = ("engine", "judge", "save", "reconcile", "reconcile.gpus", "reconcile.gpus.decide")


def run_in(root: Path, args: argparse.Namespace, redis_url: str) -> dict[str, float]:
    """``measure`` in a child process whose imports come from ``root``."""
    # -P: this file's folder (bench/, where profile.py would shadow the standard one) is not on the path.
    argv = [sys.executable, "-P", __file__, "--measure", "--nodes", str(args.nodes), "--rounds", str(args.rounds)]
    argv += ["--redis-url", redis_url, "--sort", args.sort] + (["--profile"] if args.profile else [])
    argv += ["--parts"] if args.parts else []
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(argv, cwd=root, env=env, stdout=subprocess.PIPE, check=True, timeout=1800)  # noqa: S603
    figures: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per figure (the best is printed)")
    parser.add_argument("--root", type=Path, action="append", default=[], help="another source tree to measure")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions (stderr)")
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumtime"), help="--profile's order")
    parser.add_argument("--parts", action="store_true", help="also each check's run and the task body's parts")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.nodes, args.rounds, args.redis_url, args.profile, args.sort, args.parts)))
        return 0
    from bench.common import Bench

    with Bench() as bench:
        print(f"CPU ms per simulated node ({args.nodes} nodes, checks {','.join(CHECKS)}; best of {args.rounds})")
        for root in [*args.root, ROOT]:
            bench.client().flushall()
            figures = run_in(root.resolve(), args, bench.redis_url)
            shown = "  ".join(f"{k} {v:6.3f}" for k, v in figures.items() if ":" not in k)
            print(f"{str(root):40} {shown}", flush=True)
            for kind in ("check", "part"):
                mine = [(k.split(":", 1)[1], v) for k, v in figures.items() if k.startswith(kind + ":")]
                inner = "  ".join(f"{k} {v:.3f}" for k, v in mine)
                if inner:
                    print(f"{'':40} {kind}s: {inner}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
