"""The engine's own cost: CPU per five simulated checks, by how they are handed to check threads.

Runs the periodic checks of one simulated node (replayed outputs, so the checks themselves are
cheap) in this process, three ways, and prints the CPU milliseconds per five checks:

- ``run_checks``: the five on one check thread, one hand-off back to the caller (what a task does);
- ``run_check`` x5: a check thread hand-off per check (what a task did before round 3);
- inline: the checks called directly, with no thread and no watchdog (the floor; never used,
  since a hung check would then hang its caller).

    python -m bench.engine --repeat 500
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import autopilot.checks  # noqa: F401 - registers the checks
from autopilot import config, execution, registry
from workers import simulate

CHECKS = ("pciebw", "remapped", "dcgm", "ping", "gpupower")


def cpu_ms_per_round(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: imports, first thread
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=500, help="rounds of five checks per way")
    args = parser.parse_args(argv)
    settings = config.Settings(node_name="bench", redis_url="", periodic_checks=CHECKS)
    checks = registry.shipped()  # a bench assembles its own process
    ctx = simulate.contexts(settings, 1, [], checks=checks)["sim-0"]
    specs = [checks.get(c) for c in CHECKS]

    def sequence() -> object:
        return execution.run_checks(CHECKS, ctx)

    def one_by_one() -> object:
        return [execution.run_check(c, ctx) for c in CHECKS]

    def inline() -> object:
        return [spec.run(ctx, spec.validate({})) for spec in specs]

    ways = {"run_checks (one hand-off)": sequence, "run_check x5 (a hand-off each)": one_by_one, "inline": inline}
    for _ in range(2):  # twice, interleaved, to see the noise
        for name, fn in ways.items():
            print(f"{name:32} {cpu_ms_per_round(fn, args.repeat):6.3f} ms CPU per five checks", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
