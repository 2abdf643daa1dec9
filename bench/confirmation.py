"""Confirmation against noise: verdict flaps with and without it, and how fast a real fault still moves it.

A fleet of simulated nodes runs one noisy check (``pciebw``) every hour; each sample misses its floor
with probability ``--noise`` whatever the hardware. A pending failure or a recovering check gets a
confirmation run (an immediate second sample), as the workers do. On ``--faulty`` of the nodes a real
fault appears half-way and every later sample fails. For each policy (N of M, K) it prints the
verdict changes of the healthy nodes (each one a flap) and, for the faulty ones, how many samples
after the fault the verdict went WARN (1: the periodic sample itself, 2: its confirmation run).

    python -m bench.confirmation --nodes 200 --hours 500 --noise 0.05
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from autopilot import confirmation, results
from autopilot.confirmation import Policy
from autopilot.results import CheckResult, Status
from autopilot.verdict import Verdict, decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICIES = {
    "none (1 of 1, K=1)": Policy(1, 1, 1),
    "default (2 of 3, K=2)": Policy(2, 3, 2),
    "3 of 5, K=2": Policy(3, 5, 2),
}


def simulate(policy: Policy, *, hours: int, noise: float, fault_at: int | None, rng: random.Random) -> tuple[int, int]:
    """(verdict changes, samples from the fault until WARN; 0 if never) for one node."""
    history: list[CheckResult] = []
    changes = 0
    verdict = Verdict.PASS
    to_warn = 0
    since_fault = 0
    for hour in range(hours):
        moment = T0 + timedelta(hours=hour)
        broken = fault_at is not None and hour >= fault_at
        # The periodic sample, then confirmation runs while the judgement asks for one (a worker sends
        # one per result; the loop ends by itself within max(N, K) samples).
        for _ in range(1 + max(policy.need, policy.recover)):
            bad = broken or rng.random() < noise
            since_fault += broken
            status = Status.FAIL if bad else Status.OK
            history.insert(0, CheckResult("pciebw", status, "", node="n", started_at=results.utc_now_iso(moment)))
            del history[policy.depth :]
            judged = confirmation.judge(history, policy)
            now = decide({"pciebw": judged.effective}, periodic=["pciebw"], now=moment, max_age_s=3 * 3600).verdict
            if now is not verdict:
                changes += 1
                verdict = now
                if broken and now is Verdict.WARN and not to_warn:
                    to_warn = since_fault
            if not judged.wants_confirmation_run:
                break
            moment += timedelta(minutes=2)
    return changes, to_warn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--hours", type=int, default=500)
    parser.add_argument("--noise", type=float, default=0.05, help="probability a healthy sample misses its floor")
    parser.add_argument("--faulty", type=float, default=0.1, help="share of nodes that get a real fault half-way")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"{args.nodes} nodes, {args.hours} hourly runs, noise {args.noise:.0%}, {args.faulty:.0%} get a real fault")
    print(f"{'policy':<24} {'flaps/node/1000 runs':>22} {'samples to WARN (max)':>22} {'faults missed':>14}")
    for name, policy in POLICIES.items():
        rng = random.Random(args.seed)
        flaps = 0
        healthy = 0
        worst = 0
        missed = 0
        for i in range(args.nodes):
            faulty = i < args.nodes * args.faulty
            changes, to_warn = simulate(
                policy, hours=args.hours, noise=args.noise, fault_at=args.hours // 2 if faulty else None, rng=rng
            )
            if faulty:
                worst = max(worst, to_warn)
                missed += to_warn == 0
            else:
                flaps += changes
                healthy += 1
        rate = flaps / max(1, healthy) / args.hours * 1000
        print(f"{name:<24} {rate:>22.1f} {worst:>22d} {missed:>14d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
