"""Detection quality: how often the verdict is right on a simulated fleet with labelled faults.

A fleet of simulated nodes (``workers.simulate``: 8 H100s each, replayed tool outputs) with the
spread of a real fleet (``workers.simnoise``: per-device variation and run noise from a published
study) and a labelled fault mix: every fault kind the simulator has for the periodic checks,
GPUs at 95/90/80/50% of normal PCIe, DAXPY and DGEMM figures, some faults transient (one bad
sample) and the rest permanent. Several periodic rounds run in this process, no Redis and no workers:
each node's checks run for real through the engine on its simulated seams, each result is judged
against the fleet's baseline (``autopilot.baseline``, the worker's judgement, with an in-process
``Window`` for Redis); a check whose failure is pending or recovering gets its confirmation runs
at once, as the workers send them (``workers.confirming``); the fleet's ping suspects are named
(``network.fleet_suspects``, as the reconcile does); and ``verdict_step`` turns the node's results
into its verdict.

Printed: per fault kind and overall, precision and recall of WARN/EVICT over node-rounds, false
EVICTs, false WARNs, the time to detection in rounds and the confirmation runs it took. Every
figure follows from ``--seed``.

    python -m bench.quality --nodes 1000 --rounds 6 --seed 1

``--flaps --noise SCALE``: instead, verdict flaps of healthy nodes on a fleet whose bandwidth runs
carry SCALE times the published run-to-run noise (the live simulator's ``--sim-noise``), with
confirmation off and on, and how fast real faults are confirmed (``flap_figures``).

Scoring, per node and round (after the round's checks and confirmation runs): the truth is
"faulty" while a fault is active (a permanent fault from round 1 on, in every run; a transient one
in round 2's periodic run only, so its confirmation run finds the node healthy: one bad sample),
the prediction is "faulty" when the verdict is WARN or EVICT. A kind that is no fault (a GPU in
use by others, ``simulate.NOT_FAULTS``) keeps the truth "healthy": its WARN is a false WARN. A
false EVICT is an EVICT without an active fatal fault; a false WARN a WARN without any active
fault. The targets (0 false EVICTs; precision and recall >= 0.95) hold for permanent faults at 80% of normal or worse:
node-rounds with a milder fault (95%, 90%) and transient faults count in their own rows and in
neither side of the "in scope" line. A transient fault of a check whose failures can be noise is
meant to be absorbed by confirmation: its FN is the intended outcome ("absorbed"); one of a check
that acts at once (``remapped``, ``gpupower``) is a TP, and the WARN its hysteresis holds for a
round after (if its recovery is not confirmed at once) is a false WARN of its row.

``verdict_step``: the one place the verdict is made, as ``workers.reconcile`` makes it:
``confirmation.effective`` (N of M, hysteresis) over the node's history, ``network.attribute``
(its pings to the fleet's suspects are not its finding), ``verdict.decide`` with the sticky EVICT.
Settings with N=1 of 1 and K=1 judge every result at once: the verdicts before issue #15.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from autopilot import baseline, config, confirmation, execution, network, registry, results, verdict
from autopilot.context import CheckContext
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult
from workers import confirming, simnoise, simulate

CHECKS = ("pciebw", "gpumem", "remapped", "dcgm", "gpupower", "ping")
ONSET = 1  # round in which permanent faults start (round 0: every node healthy, the fleet warms up)
TRANSIENT_ROUND = 2
SEVERITIES = (0.95, 0.90, 0.80, 0.50)
TARGET = 0.95  # precision and recall in scope
SCOPE = 0.80  # the targets hold for faults at this fraction of normal or worse
FIGURES = {"pciebw": "h2d_pinned_gbps", "daxpy": "daxpy_gbps", "dgemm": "dgemm_tflops"}
HANG_TIMEOUT_S = 0.05  # a hung tool is cut at this check timeout (instead of minutes) to keep rounds fast
# Faults whose failure is fatal (EVICT): the simulator's ``fatal`` kinds and silent data corruption.
FATAL = {("remapped", "fatal"), ("dcgm", "fatal"), ("gpumem", "mismatch")}
PARALLEL = 32  # nodes whose checks run at once


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled fault: a simulator fault (``check:kind``) or a slow GPU figure, permanent or transient."""

    label: str
    faults: tuple[tuple[str, str], ...] = ()  # (check, kind) of workers.simulate
    slow: tuple[simnoise.Slowdown, ...] = ()
    severity: float | None = None  # fraction of normal, for slow figures
    transient: bool = False
    harmless: bool = False  # no fault (``simulate.NOT_FAULTS``: a GPU in use by others): WARN is a false WARN

    @property
    def fatal(self) -> bool:
        return any(f in FATAL for f in self.faults)

    @property
    def in_scope(self) -> bool:
        return self.severity is None or self.severity <= SCOPE

    def active(self, round_: int, *, confirming: bool = False) -> bool:
        """Whether the fault shows in the round's periodic run (or, ``confirming``, in its confirmation runs)."""
        if self.transient:
            return round_ == TRANSIENT_ROUND and not confirming
        return round_ >= ONSET


def cases() -> list[Case]:
    """Every fault kind of the simulator that a periodic check sees, and the slow figures at each severity."""
    out: list[Case] = []
    for check in CHECKS:
        for kind in simulate.kinds(check):
            harmless = (check, kind) in simulate.NOT_FAULTS
            out.append(Case(f"{check}:{kind}", ((check, kind),), harmless=harmless))
            if (check, kind) not in FATAL and kind not in simulate.GENERIC_KINDS and not harmless:
                out.append(Case(f"{check}:{kind} (transient)", ((check, kind),), transient=True))
    for name, figure in FIGURES.items():
        for severity in SEVERITIES:
            slow = (simnoise.Slowdown(figure, 3, severity),)
            out.append(Case(f"{name} at {severity:.0%}", slow=slow, severity=severity))
            if severity == min(SEVERITIES):
                out.append(Case(f"{name} at {severity:.0%} (transient)", slow=slow, severity=severity, transient=True))
    return out


def plan(n: int, seed: int, per_case: int | None = None) -> dict[str, Case | None]:
    """node -> its case (None: healthy); faulty nodes spread over the fleet by the seed."""
    names = simulate.node_names(n)
    all_cases = cases()
    each = per_case if per_case is not None else max(1, n // 250)
    wanted = [c for c in all_cases for _ in range(each)]
    if len(wanted) > n // 2:
        raise ValueError(f"{len(wanted)} faulty nodes do not fit in a fleet of {n} (at most half): more --nodes")
    chosen = random.Random(f"{seed}:plan").sample(names, len(wanted))
    out: dict[str, Case | None] = dict.fromkeys(names)
    out.update(zip(chosen, wanted, strict=True))
    return out


@dataclasses.dataclass
class NodeTrack:
    """What the reconcile keeps about a node between rounds: the store's ``state`` hash and its history."""

    node: str
    state: dict[str, str] = dataclasses.field(default_factory=dict)
    history: list[CheckResult] = dataclasses.field(default_factory=list)  # newest first, as the store's

    def save(self, result: CheckResult, keep: int) -> None:
        self.history.insert(0, result)
        del self.history[keep:]


VerdictStep = Callable[
    [NodeTrack, Mapping[str, CheckResult], frozenset[str], datetime, config.Settings], verdict.Verdict
]


def verdict_step(
    track: NodeTrack,
    latest: Mapping[str, CheckResult],
    suspects: frozenset[str],
    now: datetime,
    settings: config.Settings,
) -> verdict.Verdict:
    """The node's verdict after a round, as ``workers.reconcile.reconcile_node`` makes it.

    ``confirmation.effective`` over the node's history (what ``confirming.effective_latest`` reads),
    its pings to the fleet's ``suspects`` set aside in every sample and in what it lets count
    (``confirming.excuse``, ``network.attribute``), ``verdict.decide`` with the sticky EVICT.
    """
    pol = confirming.policy(settings)
    judged, _ = confirmation.effective(latest, track.history, pol, confirming.excuse(suspects))
    judged = network.attribute(judged, suspects)
    evicted_at = results.parse_iso(track.state["evicted_at"]) if "evicted_at" in track.state else None
    decision = verdict.decide(
        judged, periodic=settings.periodic_checks, now=now, max_age_s=settings.stale_after_s, evicted_at=evicted_at
    )
    if decision.verdict is verdict.Verdict.EVICT and evicted_at is None:
        track.state["evicted_at"] = results.utc_now_iso(now)
    track.state["verdict"] = decision.verdict.value
    return decision.verdict


def confirmation_wanted(
    track: NodeTrack,
    saved: Mapping[str, CheckResult],
    settings: config.Settings,
    checks: CheckRegistry,
    kept: frozenset[str] = frozenset(),
) -> list[str]:
    """The checks a worker would re-run at once after saving ``saved`` (``confirming.after_task``);
    ``kept``: the ping suspects the last reconcile kept (the previous round's)."""
    pol = confirming.policy(settings)
    if pol.acts_at_once or not settings.confirm_runs:
        return []
    ping = saved.get("ping")
    suspects = kept if ping is not None and ping.is_bad else frozenset()
    wanted = []
    for check, result in saved.items():
        judged = confirmation.judge_check(check, result, track.history, pol, confirming.excuse(suspects))
        ring = check in checks and checks.get(check).ring  # a ring check is never re-run on one node
        if judged.wants_confirmation_run and not ring:
            wanted.append(check)
    return wanted


@dataclasses.dataclass
class Fleet:
    """The simulated fleet: per node, its case and its contexts (healthy and faulty seams)."""

    settings: config.Settings
    seed: int
    cases: dict[str, Case | None]
    _seams: dict[
        tuple[frozenset[tuple[str, str]], simulate.SimNetwork], tuple[simulate.SimRunner, simulate.SimTelemetry]
    ] = dataclasses.field(default_factory=dict)
    noise: float = 1.0
    _rngs: dict[str, random.Random] = dataclasses.field(default_factory=dict)
    checks: CheckRegistry = dataclasses.field(kw_only=True)

    def context(
        self, node: str, round_: int, network: simulate.SimNetwork, *, confirming: bool = False
    ) -> CheckContext:
        case = self.cases[node]
        on = case is not None and case.active(round_, confirming=confirming)
        faults = frozenset(case.faults) if on and case is not None else frozenset()
        key = (faults, network)
        if key not in self._seams:
            self._seams[key] = simulate.build_seam(self.settings, dict(faults), network, checks=self.checks)
        runner, telemetry = self._seams[key]
        slow = case.slow if on and case is not None else ()
        noisy = self._runner(node, runner, slow)
        settings = self.settings
        if any(kind == "hang" for _, kind in faults):
            settings = dataclasses.replace(settings, check_timeouts=dict.fromkeys(CHECKS, HANG_TIMEOUT_S))
        directory = simulate.SimPeers(node, lambda: tuple(self.cases))
        return CheckContext(node, settings, noisy, telemetry, peers=directory, checks=self.checks)

    def network(self, round_: int, *, confirming: bool = False) -> simulate.SimNetwork:
        faults = {
            n: dict(c.faults)
            for n, c in self.cases.items()
            if c is not None and c.active(round_, confirming=confirming)
        }
        return simulate.SimNetwork.of(faults)

    def _runner(self, node: str, inner: simulate.SimRunner, slow: Sequence[simnoise.Slowdown]) -> simnoise.NoisyRunner:
        # One run-noise generator per node for the whole benchmark (its periodic and confirmation runs
        # draw from it in turn), so a node's figures follow from the seed alone.
        rng = self._rngs.setdefault(node, simnoise.run_generator(self.seed, node))
        return simnoise.NoisyRunner(inner, node, self.seed, slow, noise=self.noise, _rng=rng)


@dataclasses.dataclass
class Tally:
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0
    false_evict: int = 0
    false_warn: int = 0
    delays: list[int] = dataclasses.field(default_factory=list)
    missed: int = 0  # permanent faults never detected
    collateral: int = 0  # false WARNs whose only findings are pings to a node whose link is down
    confirm_runs: list[int] = dataclasses.field(default_factory=list)  # per detected fault, in its detection round

    def add(self, other: Tally) -> None:
        for f in ("tp", "fn", "fp", "tn", "false_evict", "false_warn", "missed", "collateral"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.delays += other.delays
        self.confirm_runs += other.confirm_runs

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


@dataclasses.dataclass
class Outcome:
    rows: dict[str, Tally]
    in_scope: Tally
    overall: Tally
    verdicts: dict[str, list[verdict.Verdict]]  # node -> verdict after each round
    collateral: dict[str, list[bool]]  # node -> per round: its only findings were pings to a down node
    latest: dict[str, dict[str, CheckResult]]  # node -> its latest results after the last round
    transient: Tally = dataclasses.field(default_factory=Tally)


def run(
    n: int,
    rounds: int,
    seed: int,
    *,
    fleet_plan: Mapping[str, Case | None] | None = None,
    checks: Sequence[str] = CHECKS,
    step: VerdictStep = verdict_step,
    settings: config.Settings | None = None,
    noise: float = 1.0,
) -> Outcome:
    """Run ``rounds`` periodic rounds (with their confirmation runs) over the fleet and score every node-round."""
    base = settings or config.Settings(node_name="bench", periodic_checks=tuple(checks))
    sim_settings = dataclasses.replace(base, bandwidthtest_path="")
    the_plan = dict(fleet_plan) if fleet_plan is not None else plan(n, seed)
    fleet = Fleet(sim_settings, seed, the_plan, noise=noise, checks=registry.shipped())  # a bench assembles its process
    policy = baseline.policy_of(sim_settings)
    window = baseline.Window(policy.window, sim_settings.baseline_max_cohorts)
    keep = max(1, len(checks)) * confirming.policy(sim_settings).depth
    tracks = {node: NodeTrack(node) for node in the_plan}
    verdicts: dict[str, list[verdict.Verdict]] = {node: [] for node in the_plan}
    collateral: dict[str, list[bool]] = {node: [] for node in the_plan}
    confirmation_runs: dict[str, list[int]] = {node: [] for node in the_plan}
    latest: dict[str, dict[str, CheckResult]] = {node: {} for node in the_plan}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    kept: frozenset[str] = frozenset()

    def run_round(
        wanted: Mapping[str, Sequence[str]], round_: int, now: datetime, confirming_: bool
    ) -> dict[str, dict[str, CheckResult]]:
        network = fleet.network(round_, confirming=confirming_)
        contexts = [fleet.context(node, round_, network, confirming=confirming_) for node in wanted]
        # Checks run side by side (a hung tool waits, it does not compute); every node's noise has
        # its own generator, and the fleet judges in node order, so the figures do not depend on it.
        with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            answers = list(
                pool.map(
                    lambda job: execution.run_checks(list(job[0]), job[1]), zip(wanted.values(), contexts, strict=True)
                )
            )
        saved: dict[str, dict[str, CheckResult]] = {}
        stamp = results.utc_now_iso(now)
        for node, found in zip(wanted, answers, strict=True):
            saved[node] = {}
            for r in found:
                r = dataclasses.replace(r, node=node, started_at=stamp)
                judged = baseline.assess(r, model=simulate.GPU_NAME, driver="550.90.07", source=window, policy=policy)
                saved[node][r.check] = judged
                latest[node][r.check] = judged
                tracks[node].save(judged, keep)
        return saved

    for round_ in range(rounds):
        now = start + timedelta(seconds=round_ * sim_settings.periodic_interval_s)
        saved = run_round({node: checks for node in the_plan}, round_, now, False)
        # Confirmation runs, as ``confirming.after_task`` sends them: at once, for every check whose
        # failure is pending or that is recovering, until the judgement no longer asks for one.
        runs = dict.fromkeys(the_plan, 0)
        for attempt in range(1, 1 + max(confirming.policy(sim_settings).need, sim_settings.recover_passes)):
            wanted = {
                node: confirmation_wanted(tracks[node], saved[node], sim_settings, fleet.checks, kept)
                for node in saved
            }
            wanted = {node: found for node, found in wanted.items() if found}
            if not wanted:
                break
            for node in wanted:
                runs[node] += 1
            saved = run_round(wanted, round_, now + timedelta(minutes=2 * attempt), True)
        # The fleet step of the reconcile: the suspects the fleet's pings name (every ping is of this round).
        suspects = network.fleet_suspects({node: r["ping"] for node, r in latest.items() if "ping" in r})
        kept = suspects  # what the reconcile keeps for the next round's workers (``store.set_ping_suspects``)
        down = fleet.network(round_).down
        for node in the_plan:
            collateral[node].append(_only_pings_to(latest[node], down))
            confirmation_runs[node].append(runs[node])
            # Judged after the round's confirmation runs (they take minutes, not an interval).
            verdicts[node].append(step(tracks[node], latest[node], suspects, now + timedelta(minutes=10), sim_settings))
    rows, in_scope, overall, transient = score(the_plan, verdicts, collateral, confirmation_runs)
    return Outcome(rows, in_scope, overall, verdicts, collateral, latest, transient)


def _only_pings_to(latest: Mapping[str, CheckResult], down: frozenset[str]) -> bool:
    """Whether the node's only findings are pings that a peer with its link down did not answer."""
    bad = [r for r in latest.values() if r.is_bad]
    if not bad or any(r.check != "ping" for r in bad):
        return False
    failed = [d.id.split("/")[0] for r in bad for d in r.devices if d.status is not results.Status.OK]
    return bool(failed) and all(peer in down for peer in failed)


def score(
    the_plan: Mapping[str, Case | None],
    verdicts: Mapping[str, Sequence[verdict.Verdict]],
    collateral: Mapping[str, Sequence[bool]],
    confirmation_runs: Mapping[str, Sequence[int]] | None = None,
) -> tuple[dict[str, Tally], Tally, Tally, Tally]:
    """Per row, in scope (healthy and permanent faults at ``SCOPE`` or worse), overall (healthy and every
    permanent fault) and transient (one bad sample) tallies."""
    rows: dict[str, Tally] = {}
    in_scope, overall, transient = Tally(), Tally(), Tally()
    for node, case in the_plan.items():
        tally = Tally()
        first: int | None = None
        for round_, v in enumerate(verdicts[node]):
            truth = case is not None and case.active(round_) and not case.harmless
            said = v in (verdict.Verdict.WARN, verdict.Verdict.EVICT)
            if truth and said:
                tally.tp += 1
                first = round_ if first is None else first
            elif truth:
                tally.fn += 1
            elif said:
                tally.fp += 1
            else:
                tally.tn += 1
            if v is verdict.Verdict.EVICT and not (truth and case is not None and case.fatal):
                tally.false_evict += 1
            elif v is verdict.Verdict.WARN and not truth:
                tally.false_warn += 1
                tally.collateral += collateral[node][round_]
        if case is not None and not case.transient and not case.harmless and len(verdicts[node]) > ONSET:
            if first is None:
                tally.missed += 1
            else:
                tally.delays.append(first - ONSET)
                if confirmation_runs is not None:
                    tally.confirm_runs.append(confirmation_runs[node][first])
        label = case.label if case is not None else "healthy"
        rows.setdefault(label, Tally()).add(tally)
        if case is not None and case.transient:
            transient.add(tally)
            continue
        overall.add(tally)
        if case is None or case.in_scope:
            in_scope.add(tally)
    return rows, in_scope, overall, transient


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _delay(t: Tally) -> str:
    if not t.delays and not t.missed:
        return "-"
    shown = f"{sum(t.delays) / len(t.delays):.1f} (max {max(t.delays)})" if t.delays else "never"
    return shown + (f", {t.missed} missed" if t.missed and t.delays else "")


def _runs(t: Tally) -> str:
    if not t.confirm_runs:
        return "-"
    return f"{sum(t.confirm_runs) / len(t.confirm_runs):.1f} (max {max(t.confirm_runs)})"


def table(outcome: Outcome) -> str:
    head = (
        "| fault | node-rounds faulty | TP | FN | FP | precision | recall | false EVICT "
        "| false WARN (ping collateral) | rounds to detect | confirmation runs to confirm |"
    )
    lines = [head, "|" + "---|" * 11]

    def line(name: str, t: Tally) -> str:
        return (
            f"| {name} | {t.tp + t.fn} | {t.tp} | {t.fn} | {t.fp} | {_fmt(t.precision)} | {_fmt(t.recall)} | "
            f"{t.false_evict} | {t.false_warn} ({t.collateral}) | {_delay(t)} | {_runs(t)} |"
        )

    for name in sorted(outcome.rows, key=lambda k: (k == "healthy", k)):
        lines.append(line(name, outcome.rows[name]))
    lines.append(line(f"**in scope** (permanent faults at {SCOPE:.0%} of normal or worse)", outcome.in_scope))
    lines.append(line("**overall** (every permanent fault)", outcome.overall))
    lines.append(line("**transient** (one bad sample; FN: absorbed)", outcome.transient))
    return "\n".join(lines)


def targets_met(outcome: Outcome) -> bool:
    """0 false EVICTs anywhere; precision and recall >= 0.95 in scope (ping counted)."""
    scope = outcome.in_scope
    return (
        outcome.overall.false_evict == 0
        and outcome.transient.false_evict == 0
        and all(x is not None and x >= TARGET for x in (scope.precision, scope.recall))
    )


FLAP_CASES = (
    Case("pciebw at 80%", slow=(simnoise.Slowdown("h2d_pinned_gbps", 3, 0.8),), severity=0.8),
    Case("daxpy at 80%", slow=(simnoise.Slowdown("daxpy_gbps", 3, 0.8),), severity=0.8),
    Case("dgemm at 80%", slow=(simnoise.Slowdown("dgemm_tflops", 3, 0.8),), severity=0.8),
    Case("pciebw:low", (("pciebw", "low"),)),
    Case("gpumem:slow", (("gpumem", "slow"),)),
)
FLAP_CHECKS = ("pciebw", "gpumem")


@dataclasses.dataclass(frozen=True)
class Flaps:
    """One policy's figures on a noisy fleet: healthy nodes' verdict changes, and how real faults were confirmed."""

    policy: str
    flaps: int  # verdict changes of healthy nodes, round to round
    flapping_nodes: int  # healthy nodes whose verdict changed at least once
    healthy_rounds: int  # healthy node-rounds judged
    detected: int
    faults: int
    rounds_to_detect_max: int | None
    confirm_runs_max: int | None


def flap_figures(nodes: int, rounds: int, seed: int, noise: float, per_case: int = 2) -> list[Flaps]:
    """Verdict flaps and fault confirmation on a fleet whose bandwidth figures carry ``noise`` (``--sim-noise``),
    with confirmation off (every result acts at once) and on (the default settings)."""
    names = simulate.node_names(nodes)
    chosen = random.Random(f"{seed}:flaps").sample(names, per_case * len(FLAP_CASES))
    the_plan: dict[str, Case | None] = dict.fromkeys(names)
    the_plan.update(zip(chosen, [c for c in FLAP_CASES for _ in range(per_case)], strict=True))
    on = config.Settings(node_name="bench", periodic_checks=FLAP_CHECKS)
    off = dataclasses.replace(on, confirm_need=1, confirm_window=1, recover_passes=1, confirm_runs=False)
    out = []
    for name, settings in (("off (every result acts at once)", off), ("on (2 of 3, K=2, confirmation runs)", on)):
        outcome = run(nodes, rounds, seed, fleet_plan=the_plan, checks=FLAP_CHECKS, settings=settings, noise=noise)
        healthy = [v for node, v in outcome.verdicts.items() if the_plan[node] is None]
        changes = [sum(a is not b for a, b in zip(v, v[1:], strict=False)) for v in healthy]
        faulty = outcome.overall
        out.append(
            Flaps(
                name,
                sum(changes),
                sum(1 for c in changes if c),
                sum(len(v) for v in healthy),
                len(faulty.delays),
                len(faulty.delays) + faulty.missed,
                max(faulty.delays, default=None),
                max(faulty.confirm_runs, default=None),
            )
        )
    return out


def flap_table(figures: Sequence[Flaps]) -> str:
    lines = [
        "| confirmation | verdict flaps (healthy nodes) | healthy nodes that flapped | real faults confirmed "
        "| rounds to confirm (max) | confirmation runs in that round (max) |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.policy} | {f.flaps} in {f.healthy_rounds} node-rounds | {f.flapping_nodes} | "
            f"{f.detected} of {f.faults} | {'-' if f.rounds_to_detect_max is None else f.rounds_to_detect_max} | "
            f"{'-' if f.confirm_runs_max is None else f.confirm_runs_max} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-case", type=int, default=None, help="faulty nodes per case (default: nodes / 250)")
    parser.add_argument(
        "--noise", type=float, default=1.0, help="scale of the run-to-run noise (workers/simnoise.py; 1: published)"
    )
    parser.add_argument(
        "--flaps",
        action="store_true",
        help="instead of the table: verdict flaps of a noisy fleet (pciebw, gpumem) with confirmation off and on",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.noise <= simnoise.MAX_NOISE:
        parser.error(f"--noise must be 0..{simnoise.MAX_NOISE:g}")
    if not 10 <= args.nodes <= simulate.MAX_NODES or not 2 <= args.rounds <= 100:
        parser.error("--nodes must be 10..100000 and --rounds 2..100")
    if args.per_case is not None and args.per_case < 0:
        parser.error("--per-case must be >= 0")
    logging.disable(logging.WARNING)  # the engine logs every failing check: thousands of lines here
    if args.flaps:
        per_case = 2 if args.per_case is None else max(1, args.per_case)
        print(
            f"nodes {args.nodes} ({per_case * len(FLAP_CASES)} with a fault from round {ONSET}), rounds {args.rounds}, "
            f"seed {args.seed}, noise {args.noise:g}, checks {', '.join(FLAP_CHECKS)}"
        )
        print()
        print(flap_table(flap_figures(args.nodes, args.rounds, args.seed, args.noise, per_case)))
        return 0
    try:
        fleet_plan = plan(args.nodes, args.seed, args.per_case)
    except ValueError as exc:
        parser.error(str(exc))
    outcome = run(args.nodes, args.rounds, args.seed, fleet_plan=fleet_plan, noise=args.noise)
    faulty = sum(1 for c in fleet_plan.values() if c is not None)
    print(
        f"nodes {args.nodes} ({faulty} with a fault), rounds {args.rounds}, seed {args.seed}, "
        f"checks {', '.join(CHECKS)}"
    )
    print()
    print(table(outcome))
    print()
    print(
        f"targets (0 false EVICTs, precision and recall >= {TARGET} in scope, ping counted): "
        f"{'met' if targets_met(outcome) else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
