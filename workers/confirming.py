"""Glue of confirmation (``autopilot.confirmation``) to the results store and the queues.

``effective_latest`` is what the verdict reconciliation judges instead of the raw latest results,
over the node's ``samples`` (its history, read once and only when the judgement can differ).
``after_task`` runs after each task that saved results: for every check the task saved, it counts
a flap the confirmation prevented and, for a failure still pending (or a check still recovering), sends a *confirmation
run* of that check, with the same parameters, to that node's queue at once. A confirmation run's
own result is judged the same way, so a pending failure triggers at most ``need - 1`` runs in a
row and a recovery at most ``recover - 1``: the loop ends on its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence

from autopilot import config, confirmation, network, results
from autopilot.confirmation import Policy, State
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult, Status
from workers.dispatch import Dispatcher, Envelope
from workers.store import NodeState, ResultsStore, Run

log = logging.getLogger(__name__)

SOURCE = "confirm"


def policy(settings: config.Settings) -> Policy:
    return Policy(need=settings.confirm_need, window=settings.confirm_window, recover=settings.recover_passes)


def _history(settings: config.Settings, pol: Policy, checks: int) -> int:
    # The history mixes every check of the node: enough entries for each to show ``depth`` results.
    return min(settings.history_len, max(1, checks) * pol.depth)


@dataclasses.dataclass(frozen=True)
class Samples:
    """What ``effective_latest`` judges over, read once per reconcile (``samples``): the node's history
    and the spans of the fleet's ping suspects; ``kept``: the fleet's kept ping suspects when they were
    read with them (``read_kept``), for the reconcile that judges the failed ping next."""

    history: Sequence[CheckResult]
    spans: Mapping[str, tuple[float, float]]
    kept: frozenset[str] | None = None
    read_kept: bool = False


def samples(
    store: ResultsStore,
    node: str,
    latest: Mapping[str, CheckResult],
    state: NodeState,
    settings: config.Settings,
    *,
    kept: bool = False,
) -> Samples | None:
    """The node's samples, or None when judging ``latest`` cannot differ from taking it as it is
    (``confirmation.needs_history``: nothing is read). The suspects' spans matter only to a failed
    ``ping`` among them, so they are read only then; with ``kept``, a failed latest ``ping`` also reads
    the kept suspects (``Samples.kept``), in the same round trip."""
    pol = policy(settings)
    if not confirmation.needs_history(latest, state.verdict, pol):
        return None
    limit = _history(settings, pol, len(latest))
    if any(r.check == "ping" and r.is_bad for r in latest.values()):
        # Its spans are needed whatever the history holds, and its reconcile's suspects: one round trip.
        history, suspects, spans = store.history_and_suspects(node, limit, suspects=kept)
        return Samples(history, spans, suspects, read_kept=kept)
    history = store.history(node, limit=limit)
    failed_ping = any(r.check == "ping" and r.is_bad for r in history)
    return Samples(history, store.ping_suspect_spans() if failed_ping else {})


def effective_latest(
    latest: Mapping[str, CheckResult],
    found: Samples | None,
    settings: config.Settings,
    *,
    suspects: Collection[str] = (),
) -> dict[str, CheckResult]:
    """The node's latest result per check as the verdict should judge it (``confirmation.effective`` over
    ``found``, from ``samples``), its failed pings to the fleet's ``suspects`` (and to those named when
    each sample was taken) set aside in every sample (``excuse``)."""
    if found is None:
        return dict(latest)
    sets_aside = excuse(suspects, found.spans, lead_s=settings.node_deadline_s)
    judged, _ = confirmation.effective(latest, found.history, policy(settings), sets_aside)
    return judged


def effective_devices(
    latest: Mapping[str, CheckResult],
    found: Samples | None,
    settings: config.Settings,
    *,
    suspects: Collection[str] = (),
) -> dict[str, CheckResult]:
    """The node's latest result per check with each device as its own samples in ``found`` let it count
    (``confirmation.effective_devices``): what its GPUs' verdicts judge, so that one GPU's failure is confirmed,
    and its recovery held, by its own samples."""
    if found is None:
        return dict(latest)
    sets_aside = excuse(suspects, found.spans, lead_s=settings.node_deadline_s)
    return confirmation.effective_devices(latest, found.history, policy(settings), sets_aside)


def excuse(
    suspects: Collection[str], spans: Mapping[str, tuple[float, float]] | None = None, *, lead_s: float = 0.0
) -> Callable[[CheckResult], CheckResult] | None:
    """What confirmation passes each sample through: its failed pings to ``suspects`` set aside
    (``network.excuse_ping``), and to the nodes the fleet named when the sample was taken (``spans``:
    node -> first and last epoch seconds it was named; a sample up to ``lead_s`` before the first look
    counts, since the fleet names a node only once the run's pings of it are in). None without either.

    Without the spans, a node down for two samples and then back left its failures in every other
    node's history, judged against the suspects of now: two of three bad, every node that pinged it WARN.
    """
    kept = frozenset(suspects)
    if not kept and not spans:
        return None
    if not spans:
        return lambda result: network.excuse_ping(result, kept)
    windows = dict(spans)

    def then(result: CheckResult) -> CheckResult:
        at = _epoch(result.started_at)
        named = {n for n, (first, last) in windows.items() if at is not None and first - lead_s <= at <= last}
        return network.excuse_ping(result, kept | named)

    return then


def _epoch(stamp: str) -> float | None:
    try:
        return results.parse_iso(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def after_task(
    store: ResultsStore,
    dispatcher: Dispatcher,
    settings: config.Settings,
    node: str,
    done: Sequence[CheckResult],
    *,
    checks: CheckRegistry,
    now: float | None = None,
    marks: tuple[str, frozenset[str]] | None = None,
) -> Run | None:
    """Count prevented flaps and send the confirmation run a task's results call for; returns that run.

    ``marks``: the node's verdict and pending checks (``ResultsStore.confirmation_marks``) when the
    task has them already (its reconcile's verdict, the pending checks of its last read); else read here.
    """
    pol = policy(settings)
    saved = {r.check: r for r in done if r.node == node and r.started_at and r.status is not Status.BUSY}
    if pol.acts_at_once or not saved:
        return None
    verdict, pending = marks if marks is not None else store.confirmation_marks(node)
    # Steady state (every saved result passes, nothing pending, the node not WARN) costs no history read.
    calm = verdict not in confirmation.HOLDING_VERDICTS
    if calm and not pending & set(saved) and not any(r.is_bad for r in saved.values()):
        return None
    limit = _history(settings, pol, len(checks))
    # A failed ping is judged without its pairs to the suspects the last reconcile kept (read with the
    # history, only then): failures to a down node must not make a new failed pair count at once, unconfirmed.
    ping = saved.get("ping")
    if ping is not None and ping.is_bad:
        history, kept, spans = store.history_and_suspects(node, limit)
        suspects = kept or frozenset()
    else:
        history, suspects, spans = store.history(node, limit=limit), frozenset(), {}
    sets_aside = excuse(suspects, spans, lead_s=settings.node_deadline_s)
    judged = {c: confirmation.judge_check(c, r, history, pol, sets_aside) for c, r in saved.items()}
    prevented = [c for c, j in judged.items() if j.flap_prevented]
    still = {c for c in pending if c not in saved} | {c for c, j in judged.items() if j.state is State.PENDING}
    rerun = [c for c, j in judged.items() if j.wants_confirmation_run] if settings.confirm_runs else []
    run = _send(store, dispatcher, settings, checks, node, [(c, saved[c]) for c in rerun], now) if rerun else None
    counted = rerun if run else []
    # Nothing to count and the same checks pending as the task read: the write would change nothing (a
    # WARN node's every task wrote it).
    if counted or prevented or still != pending:
        store.record_confirmations(node, runs=counted, prevented=prevented, pending=still)
    for check in prevented:
        log.info("node %s: %s flap prevented (%s)", node, check, judged[check].state.value)
    return run


def _send(
    store: ResultsStore,
    dispatcher: Dispatcher,
    settings: config.Settings,
    registry: CheckRegistry,
    node: str,
    found: Sequence[tuple[str, CheckResult]],
    now: float | None,
) -> Run | None:
    # A run as a Job (level-3 DCGM) takes its node's GPUs for up to 40 minutes, and a ring check (iperf)
    # runs over many nodes from the ring coordinator: both are confirmed by N of M over the runs to
    # come, never re-run at once on one node.
    checks = [
        c
        for c, r in found
        if c in registry and not registry.get(c).ring and not registry.get(c).runs_as_job(r.params, settings)
    ]
    if not checks:
        return None
    params = {c: dict(r.params) for c, r in found if c in checks and r.params}
    timeout = max(registry.get(c).timeout_s for c in checks)
    run = Run.new(checks, [node], params, deadline_s=timeout + 60, source=SOURCE, now=now)
    store.create_run(run)
    dispatcher.send(Envelope(run.id, node, run.checks, params, run.deadline))
    log.info("node %s: confirmation run %s of %s", node, run.id, ", ".join(checks))
    return run
