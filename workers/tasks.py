"""Task bodies as plain functions (the Celery wrappers in ``workers.app`` only decode and retry).

``run_checks``  run one node's checks of a run (light ones first, then the GPU ones under the
                node's GPU lock, handed back for a retry while another run holds it), save the
                results into the store (latest, history, run) within moments of being known, and
                recompute the node's verdict after the task;
``fanout``      beat's periodic/invasive tick: one run over every live node, done once per tick
                however many beats sent it;
``reconcile``   beat's verdict/label tick and stale/lost sweep over every known node;
``iperf_servers``, ``iperf_clients``, ``iperf_stop``
                one node's part of the ``iperf`` ring (``workers.ring``), answered into the
                ring's hash in the store;
``iperf_ring``  the ring's coordinator, taken from the control queue by one worker.

Beat's reconcile task runs ``reconcile_and_remediate``: the tick, then the remediation pass.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import redis

from autopilot import config, errors, execution, names, results
from autopilot.checks import iperf
from autopilot.cluster import ClusterClient
from autopilot.context import CheckContext
from autopilot.errors import StoreUnavailable
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult, Status
from workers import fleet, invasive_flow, remediating, ring, runs
from workers import reconcile as reconciling
from workers.dispatch import Dispatcher, TaskSender, partition
from workers.host import NodeHost
from workers.store import NodeView, ResultsStore, Run

log = logging.getLogger(__name__)

# What ``Run.new`` makes (uuid4 hex): a message's run id becomes part of Redis keys, so nothing else is used.
_RUN_ID = re.compile(r"[0-9a-f]{32}")
# Far more than any registry holds: each name a message carries is answered, one store field each.
_MOST_CHECKS = 256
# The furthest ahead a real run ends: a run with the iperf ring waits the ring's estimate, which grows with
# members x lanes x duration (2,000 nodes on 64 lanes at iperf's longest duration: about 120 days).
_MOST_AHEAD_S = 366 * 86_400.0

# The keyword arguments of each task's message, as this release sends them (``message_kwargs``).
RUN_CHECKS_KWARGS = ("run_id", "node", "checks", "params", "deadline")
FANOUT_KWARGS = ("kind",)
RECONCILE_KWARGS: tuple[str, ...] = ()
SERVERS_KWARGS = ("run_id", "node", "binds", "ports", "lifetime_s")
CLIENTS_KWARGS = ("run_id", "node", "phase", "jobs", "duration_s")
STOP_KWARGS = ("run_id", "node")
RING_KWARGS = ("run_id", "nodes", "params")

# (task, key's first 64 characters) of the unknown keyword arguments already logged: a newer sender's field
# is named once per process, not once per message. Bounded, since a hostile sender can invent keys without end.
_UNKNOWN_SEEN: set[tuple[str, str]] = set()
_UNKNOWN_SEEN_MOST = 1024
_UNKNOWN_LOCK = threading.Lock()


def message_kwargs(task: str, message: Mapping[str, Any], expected: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments of ``task``'s message that ``expected`` names, and those of them it lacks.

    During a rolling upgrade the sender (API, beat, coordinator) may be a release ahead or behind. A key
    outside ``expected`` is a newer sender's optional field: ignored, and logged once per task and key.
    A missing one is the caller's to answer (``other_version``); Celery itself would raise TypeError
    before the task's body ran, and the run would wait for its deadline to call the node unreachable.
    """
    for key in message:
        if key in expected:
            continue
        # Remembered by what the log shows of it: a hostile key may be a megabyte, and 1,024 of them a gigabyte.
        shown = str(key)[:64]
        with _UNKNOWN_LOCK:
            first = (task, shown) not in _UNKNOWN_SEEN and len(_UNKNOWN_SEEN) < _UNKNOWN_SEEN_MOST
            if first:
                _UNKNOWN_SEEN.add((task, shown))
        if first:
            log.warning("%s: ignoring keyword argument %.64r from another version (logged once)", task, key)
    given = {k: message[k] for k in expected if k in message}
    return given, [k for k in expected if k not in message]


def other_version(missing: Sequence[str]) -> str:
    """What a check of a message lacking ``missing`` is answered."""
    return f"message from another version: missing {', '.join(missing)}"


class GpusBusy(Exception):
    """Another GPU check holds this node's GPUs; ``checks`` (the task's GPU checks) are retried shortly.

    The task's light checks are done and saved by then: only the GPU checks go back to the queue.
    """

    def __init__(self, node: str, checks: Sequence[str], done: Sequence[CheckResult] = ()) -> None:
        super().__init__(node)
        self.node = node
        self.checks = tuple(checks)
        self.done = tuple(done)  # the light checks' results, saved already


class Done(list[CheckResult]):
    """A task's results, in order, with what its confirmation needs from the store (``marks``).

    ``marks``: the node's verdict after the task's reconcile and the checks pending confirmation that
    the task's last MULTI read (``confirming.after_task``'s ``marks``); None when the task read none.
    """

    marks: tuple[str, frozenset[str]] | None = None


def run_checks(
    host: NodeHost,
    *,
    run_id: str,
    node: str,
    checks: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    deadline: float,
) -> Done:
    """Run one node's checks of a run: the light ones first, then the GPU ones under the node's GPU lock.

    Light checks never wait for the lock, so a long GPU check of another run does not hold them
    up. When the lock is busy the GPU checks are handed back (``GpusBusy``) to be retried until
    shortly before ``deadline``, then answered ``busy``: in the run only, never as the node's
    latest result (it is no finding about the node), and counted. Results are written as ``_Writer``
    says; the verdict is recomputed after the task from what it saved, also when it hands its
    GPU checks back.
    """
    refused = _refusal(run_id, node, checks)
    if refused:
        # Nothing from this message can key a write (a run, a node), so nothing is answered: logged once,
        # acked, and the run (if there is one) reports the node at its deadline.
        log.warning("run_checks message refused: %s", refused)
        return Done()
    checks = list(dict.fromkeys(checks))  # a check named twice runs (and is answered) once
    ctx = host.context(node)
    writer = _Writer(host.store, run_id, judge=fleet.judge_in(host.fleet, ctx) if ctx is not None else None)
    if ctx is None:
        # A message for a node this process does not host: answer it so the run is not left
        # waiting, and say why (a mis-routed message is a deployment bug worth seeing).
        for c in checks:
            writer.add(CheckResult(c, Status.ERROR, f"worker does not host node {node}", node=node))
        writer.flush()
        return writer.done
    unusable = _unusable(params, deadline)
    if unusable:
        # The run is answered (it does not wait for its deadline), but only the run: a malformed message
        # says nothing about the node.
        log.warning("run %s on %s: message refused: %s", run_id, node, unusable)
        for c in checks:
            writer.add(CheckResult(c, Status.ERROR, f"task message refused: {unusable}", node=node), latest=False)
        writer.flush()
        return writer.done
    unknown = [c for c in checks if c not in ctx.checks]
    for c in unknown:
        # A newer release's check during a rolling upgrade, or a name from a hostile sender: no finding about
        # the node, so the run is answered and the node's latest results and verdict are left alone.
        why = f"check {c[:64]!r} is unknown to this worker (another release, or not in its AUTOPILOT_EXTRA_CHECKS)"
        writer.add(CheckResult(c, Status.ERROR, why, node=node), latest=False)
    checks = [c for c in checks if c in ctx.checks]
    light, gpu = partition(checks, ctx.checks)
    lock = host.gpu_lock(node) if gpu else None
    held = handed_back = False
    try:
        _run_group(host, ctx, light, params, writer)
        if lock is None:
            return writer.done
        held = lock.acquire(blocking=False)
        if not held:
            if time.time() + 1 < deadline:
                handed_back = True
                raise GpusBusy(node, gpu, writer.done)
            for c in gpu:
                # No started_at: it never started.
                busy = CheckResult(
                    c,
                    Status.BUSY,
                    "not run: another GPU check held the GPUs until the deadline",
                    node=node,
                    params=dict(params.get(c) or {}),
                )
                writer.add(busy, latest=False)
            return writer.done
        _run_group(host, ctx, gpu, params, writer)
        return writer.done
    finally:
        if held:
            lock.release()  # type: ignore[union-attr]
        # A retry that ran nothing (only GPU checks, lock still busy) changed nothing to judge.
        if writer.done or not handed_back:
            # What is still held, and in the same MULTI what the verdict is computed from.
            view = writer.flush(view=node)
            decision = reconciling.reconcile_node(
                host.store, node, host.settings, cluster=ctx.cluster, view=view, checks=ctx.checks
            )
            if view is not None and view.confirm_pending is not None:
                writer.done.marks = (decision.verdict.value, view.confirm_pending)


def run_checks_incomplete(host: NodeHost, given: Mapping[str, Any], missing: Sequence[str]) -> Done:
    """A ``run_checks`` message lacking keyword arguments (``missing``), from another release.

    With a valid run id, node and check names each check is answered ``error`` in the run only (the
    message says nothing about the node), so the run does not wait for its deadline; otherwise
    nothing can key an answer and the message is refused as a malformed one is.
    """
    why = other_version(missing)
    run_id, node, checks = given.get("run_id"), given.get("node"), given.get("checks")
    refused = _refusal(run_id, node, checks)
    if refused:
        log.warning("run_checks message refused: %s (%s)", why, refused)
        return Done()
    log.warning("run %s on %s: %s", run_id, node, why)
    writer = _Writer(host.store, str(run_id))
    for c in dict.fromkeys(checks):  # type: ignore[arg-type]
        writer.add(CheckResult(c, Status.ERROR, why, node=str(node)), latest=False)
    writer.flush()
    return writer.done


def _is_run_id(run_id: object) -> bool:
    """Whether ``run_id`` is what ``Run.new`` makes (32 hex digits): only such a one may key Redis."""
    return isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) is not None


def _refusal(run_id: object, node: object, checks: object) -> str:
    """Why a ``run_checks`` message cannot be answered at all (its run id, node or check names are not
    what a release of the API sends); "" when it can."""
    if not _is_run_id(run_id):
        return f"run_id is not 32 hex digits: {str(run_id)[:80]!r}"
    try:
        names.node_name(node, field="node")  # type: ignore[arg-type]
    except errors.BadParameter as exc:
        return str(exc)
    if not isinstance(checks, (list, tuple)) or not all(isinstance(c, str) for c in checks):
        return f"checks is not a list of check names: {str(checks)[:80]!r}"
    if len(set(checks)) > _MOST_CHECKS:
        return f"{len(set(checks))} different check names (at most {_MOST_CHECKS})"
    return ""


def _unusable(params: object, deadline: object) -> str:
    """Why a ``run_checks`` message's parameters or deadline cannot be used; "" when they can."""
    if not isinstance(params, Mapping):
        return f"params is not a mapping of check to parameters: {type(params).__name__}"
    for check, given in params.items():
        if given is not None and not isinstance(given, Mapping):
            return f"params of {str(check)[:40]!r} is not a mapping of parameter to value: {type(given).__name__}"
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
        return f"deadline is not a finite epoch time: {str(deadline)[:40]!r}"
    if deadline > time.time() + _MOST_AHEAD_S:
        # As good as an infinite one: busy GPU checks would be handed back until then.
        return f"deadline is more than {_MOST_AHEAD_S / 86_400:g} days ahead: {deadline:g}"
    return ""


class _Writer:
    """A task's results on their way to the store: held back briefly, then written together.

    While checks run, what finished is written every ``HOLD_S``; the rest is written when the
    task ends, in one MULTI with the read-back its reconcile needs. A simulated node's
    checks take milliseconds, so its task writes once instead of once per check. A real node's
    checks take seconds, so each result is still in the store (where a gather sees it, and
    where it survives a worker killed during the next check) a moment after it is known.
    """

    HOLD_S = 0.2

    def __init__(self, store: ResultsStore, run_id: str, *, judge: fleet.Judge | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.judge = judge  # the fleet's judgement (workers.fleet) of a result about the node
        self.done = Done()  # every result of the task, written or held
        self._held: list[tuple[CheckResult, bool]] = []

    def add(self, result: CheckResult, *, latest: bool = True) -> None:
        """``latest=False``: an answer for the run only, that says nothing about the node."""
        if latest and self.judge is not None:
            result = self.judge(result)
        self._held.append((result, latest))
        self.done.append(result)

    def flush(self, *, view: str | None = None) -> NodeView | None:
        """Write what is held (one MULTI); with ``view``, also read that node back (``ResultsStore.save_many``)."""
        if not self._held and view is None:
            return None
        # The fleet's figures of these results, when they have any, go in the same MULTI (no write of their own).
        if self.judge is not None and self.judge.figures.kept:
            out = self.store.save_many(self._held, self.run_id, view=view, figures=self.judge.figures)
        else:
            out = self.store.save_many(self._held, self.run_id, view=view)
        self._held = []
        return out

    def progress(self) -> execution.Progress:
        """For ``execution.run_checks``: while its checks run, write their results every ``HOLD_S``."""
        return (self.HOLD_S, self._write_now)

    def _write_now(self, new: Sequence[CheckResult]) -> None:
        for result in new:
            self.add(result)
        try:
            self.flush()
        except (StoreUnavailable, redis.RedisError) as exc:
            # Kept: the task's last flush writes it, or fails the task (and the message is redelivered).
            log.warning("writing results of run %s while checks run failed: %s", self.run_id, exc)


def _run_group(
    host: NodeHost,
    ctx: CheckContext,
    checks: Sequence[str],
    params: Mapping[str, Mapping[str, Any]],
    writer: _Writer,
) -> None:
    """Run ``checks`` in order; each result goes to ``writer``.

    Consecutive checks run in one ``execution.run_checks`` call; a level-3 DCGM in a cluster
    runs as a Job between them.
    """
    pending: list[str] = []
    for check in [*checks, None]:
        if check is not None and not _as_job(check, ctx, params, host.settings):
            pending.append(check)
            continue
        if pending:
            before = len(writer.done)
            done = execution.run_checks(pending, ctx, params, progress=writer.progress())
            for result in done[len(writer.done) - before :]:
                writer.add(result)  # those not already written while the rest ran
            pending = []
        if check is not None and ctx.cluster is not None:
            # Level 3 in a cluster runs as a Job (minutes): what is held is written first. The
            # GPU lock stays held meanwhile, so no other GPU check touches GPUs the Job is testing.
            writer.flush()
            result = _stamped(invasive_flow.run(host, ctx.node, ctx.cluster), ctx.clock.now())
            # "GPUs busy, no Job" answers the run but must not replace the node's latest dcgm result.
            writer.add(result, latest=result.status is not Status.SKIPPED)


def _as_job(check: str, ctx: CheckContext, params: Mapping[str, Mapping[str, Any]], settings: config.Settings) -> bool:
    """A check its spec runs as a Job with these parameters (level-3 DCGM), in a cluster: a Kubernetes Job,
    not work for the engine."""
    if ctx.cluster is None or check not in ctx.checks:
        return False
    return ctx.checks.get(check).runs_as_job(params.get(check) or {}, settings)


def _stamped(result: CheckResult, now: datetime) -> CheckResult:
    return result if result.started_at else dataclasses.replace(result, started_at=results.utc_now_iso(now))


def fanout(
    store: ResultsStore,
    dispatcher: Dispatcher,
    settings: config.Settings,
    checks: CheckRegistry,
    *,
    kind: str,
    now: float | None = None,
) -> Run | None:
    """One tick of periodic (or invasive) work over every live node (``runs.tick``); None if already done."""
    # The store's clock, not this worker's (any worker on the control queue runs the tick): the live nodes are
    # scored on it, and every beat's claim of the tick slot judges by the same one.
    moment = store.server_time() if now is None else now
    interval = runs.tick_interval(settings, kind)
    if interval <= 0:
        return None
    # Two beats, or one tick delivered twice, claim the same tick: only the first does the work.
    if not store.claim_tick(f"fanout:{kind}", moment, interval):
        log.info("fanout %s: already done for this interval", kind)
        return None
    return runs.tick(runs.Services(settings, store, dispatcher, checks), kind=kind, now=moment)


def reconcile(
    store: ResultsStore, settings: config.Settings, cluster: ClusterClient | None = None, *, checks: CheckRegistry
) -> dict[str, str]:
    """Recompute every known node's verdict (and publish it), lost nodes included, and forget those past their
    retention (``reconcile.reconcile_all``); returns node -> verdict."""
    if not store.claim_tick("reconcile", store.server_time(), max(1.0, settings.reconcile_interval_s)):
        return {}
    return reconciling.reconcile_all(store, settings, cluster, checks=checks)


def iperf_ring(
    store: ResultsStore,
    sender: TaskSender,
    settings: config.Settings,
    *,
    run_id: str,
    nodes: Sequence[str],
    params: Mapping[str, Any],
) -> dict[str, str]:
    """Coordinate one run's ``iperf`` ring; each node's result goes into the run. Node -> status."""
    if not _ring_run(run_id, nodes):
        log.warning("iperf_ring message refused: run_id or nodes are not names: %s", str(run_id)[:80])
        return {}
    try:
        # The iperf check's own parameters (the API validated them; a message is checked again): a
        # duration of 10**6 would hold the coordinator past the run's deadline, waiting for clients.
        checked = _iperf_params(params)
    except errors.BadParameter as exc:
        log.warning("iperf ring %s refused: %s", run_id, exc)
        return _answer_ring(store, run_id, nodes, f"task message refused: {exc}")
    outcome = ring.run_ring(store, sender, settings, run_id, list(nodes), checked)
    return {node: result.status.value for node, result in outcome.results.items()}


def iperf_ring_incomplete(store: ResultsStore, given: Mapping[str, Any], missing: Sequence[str]) -> dict[str, str]:
    """A coordinator message lacking ``missing`` (another release): with a valid run id and nodes, every node is
    answered ``error`` in the run, and no ring starts; otherwise it is refused."""
    run_id, nodes = given.get("run_id"), given.get("nodes")
    why = other_version(missing)
    if not _ring_run(run_id, nodes):
        log.warning("iperf_ring message refused: %s", why)
        return {}
    log.warning("iperf ring %s: %s", run_id, why)
    return _answer_ring(store, str(run_id), nodes, why)  # type: ignore[arg-type]


def _ring_run(run_id: object, nodes: object) -> bool:
    """Whether a coordinator message's run id and nodes may key answers into the run."""
    return (
        _is_run_id(run_id)
        and isinstance(nodes, list | tuple)
        and all(isinstance(n, str) and names.is_dns1123_subdomain(n) for n in nodes)
    )


def _answer_ring(store: ResultsStore, run_id: str, nodes: Sequence[str], why: str) -> dict[str, str]:
    for node in dict.fromkeys(nodes):
        refused = CheckResult("iperf", Status.ERROR, why, node=node)
        store.save_result(refused, run_id, latest=False)  # about the message, not the node
    return {node: Status.ERROR.value for node in nodes}


# The most a ring message may ask of one node (the coordinator sends far less): one server port per
# parallel client (iperf's pclients maximum), an address per lane. A ring's lifetime grows with its
# members and lanes (one step per member per lane, up to 80 s each): 2,000 members on 64 lanes at
# iperf's longest duration ask about 120 days, so the bound is the furthest a real run ends.
_MOST_PORTS = iperf.MAX_PCLIENTS
_MOST_BINDS = 64
_MOST_JOBS = 256
_MOST_LIFETIME_S = _MOST_AHEAD_S
_MOST_DURATION_S = 60  # iperf's duration_s maximum


def _ring_names(run_id: object, node: object) -> None:
    """``BadParameter`` unless ``run_id`` and ``node`` are what may key a ring answer (``ring:<run_id>``)."""
    if not _is_run_id(run_id):
        raise errors.BadParameter("run_id", f"not 32 hex digits: {str(run_id)[:80]!r}")
    names.node_name(node, field="node")  # type: ignore[arg-type]


def _address(raw: object, field: str) -> str:
    """An IP address as the ring's plan writes it: it goes after ``-B``/``-c`` on iperf3's command line."""
    if not isinstance(raw, str) or len(raw) > 64 or raw.startswith("-"):
        raise errors.BadParameter(field, f"not an IP address: {str(raw)[:80]!r}")
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise errors.BadParameter(field, f"not an IP address: {raw!r}") from None
    return raw


def _ports(raw: object, field: str) -> list[int]:
    if not isinstance(raw, list | tuple) or not 0 < len(raw) <= _MOST_PORTS:
        raise errors.BadParameter(field, f"not a list of 1 to {_MOST_PORTS} ports")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in raw):
        raise errors.BadParameter(field, "a port is not an integer")
    if not all(iperf.PORT_RANGE[0] <= p <= 65535 for p in raw):
        # What iperf.ports gives out: never a privileged port, which a server would bind as root.
        raise errors.BadParameter(field, f"a port is outside {iperf.PORT_RANGE[0]}..65535")
    return list(raw)


def _seconds(raw: object, field: str, most: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= most:
        raise errors.BadParameter(field, f"not a number of seconds in (0, {most:g}]: {str(raw)[:40]!r}")
    return float(raw)


def _servers_message(run_id: object, node: object, binds: object, ports: object, lifetime_s: object) -> None:
    _ring_names(run_id, node)
    if not isinstance(binds, list | tuple) or not 0 < len(binds) <= _MOST_BINDS:
        raise errors.BadParameter("binds", f"not a list of 1 to {_MOST_BINDS} addresses")
    for address in binds:
        _address(address, "binds")
    _ports(ports, "ports")
    _seconds(lifetime_s, "lifetime_s", _MOST_LIFETIME_S)


def _clients_message(run_id: object, node: object, phase: object, jobs: object, duration_s: object) -> None:
    _ring_names(run_id, node)
    _phase(phase)
    if isinstance(duration_s, bool) or not isinstance(duration_s, int):
        raise errors.BadParameter("duration_s", "not an integer")
    _seconds(duration_s, "duration_s", _MOST_DURATION_S)
    _jobs(jobs)


def _phase(phase: object) -> None:
    if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase < 1_000_000:
        raise errors.BadParameter("phase", f"not a phase number: {str(phase)[:40]!r}")


def _jobs(jobs: object) -> None:
    """``BadParameter`` unless ``jobs`` is a clients message's list of jobs (names, lane, addresses, ports)."""
    if not isinstance(jobs, list | tuple) or len(jobs) > _MOST_JOBS:
        raise errors.BadParameter("jobs", f"not a list of at most {_MOST_JOBS} jobs")
    for job in jobs:
        if not isinstance(job, Mapping):
            raise errors.BadParameter("jobs", "a job is not a mapping")
        names.node_name(job.get("source"), field="jobs.source")  # type: ignore[arg-type]
        names.node_name(job.get("target"), field="jobs.target")  # type: ignore[arg-type]
        if not isinstance(job.get("interface"), str) or len(job["interface"]) > 253:
            raise errors.BadParameter("jobs.interface", "not a lane name")
        _address(job.get("address"), "jobs.address")
        if job.get("source_address"):
            _address(job["source_address"], "jobs.source_address")
        _ports(job.get("ports"), "jobs.ports")


def _iperf_params(raw: object) -> dict[str, Any]:
    """``raw`` checked against the iperf check's parameters, as given (no defaults added)."""
    if not isinstance(raw, Mapping):
        raise errors.BadParameter("params", "not a mapping of parameter to value")
    known = {p.name: p for p in iperf.PARAMS}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise errors.BadParameter(str(name)[:64], "unknown parameter for iperf")
        out[name] = value if value is None else known[name].parse(value)
    return out


def iperf_servers(
    host: NodeHost, *, run_id: str, node: str, binds: Sequence[str], ports: Sequence[int], lifetime_s: float
) -> dict[str, Any]:
    try:
        _servers_message(run_id, node, binds, ports, lifetime_s)
    except errors.BadParameter as exc:
        # Nothing from it reaches a command line or a key; the coordinator reports the node silent.
        log.warning("iperf_servers message refused: %s", exc)
        return {"ok": False, "started": 0, "error": f"message refused: {exc}"}
    ctx = host.context(node)
    if ctx is None:
        reply: dict[str, Any] = {"ok": False, "started": 0, "error": f"worker does not host node {node}"}
    else:
        reply = ring.SERVERS.start(ctx.commands, run_id, binds, [int(p) for p in ports], float(lifetime_s), node)
    ring.post(host.store, run_id, f"servers|{node}", reply, ttl_s=lifetime_s)
    return reply


def iperf_clients(
    host: NodeHost, *, run_id: str, node: str, phase: int, jobs: Sequence[Mapping[str, Any]], duration_s: int
) -> list[dict[str, Any]]:
    try:
        _clients_message(run_id, node, phase, jobs, duration_s)
    except errors.BadParameter as exc:
        log.warning("iperf_clients message refused: %s", exc)
        return []
    ctx = host.context(node)
    if ctx is None:
        why = iperf.Measure(Status.ERROR, None, f"worker does not host node {node}")
        pairs = [iperf.pair(j["source"], j["target"], j["interface"], j["address"], why) for j in jobs]
    else:
        pairs = ring.run_clients(ctx.commands, jobs, int(duration_s))
    ring.post(host.store, run_id, f"clients|{phase}|{node}", {"pairs": pairs})
    return pairs


def iperf_servers_incomplete(host: NodeHost, given: Mapping[str, Any], missing: Sequence[str]) -> dict[str, Any]:
    """A servers message lacking ``missing`` (another release) starts nothing; with a valid run id and node its
    reply says why, so the coordinator reports it at once rather than as a silent node."""
    why = other_version(missing)
    reply: dict[str, Any] = {"ok": False, "started": 0, "error": why}
    try:
        _ring_names(given.get("run_id"), given.get("node"))
    except errors.BadParameter as exc:
        log.warning("iperf_servers message refused: %s (%s)", why, exc)
        return reply
    log.warning("iperf ring %s on %s: servers message refused: %s", given["run_id"], given["node"], why)
    ring.post(host.store, given["run_id"], f"servers|{given['node']}", reply)
    return reply


def iperf_clients_incomplete(host: NodeHost, given: Mapping[str, Any], missing: Sequence[str]) -> list[dict[str, Any]]:
    """A clients message lacking ``missing`` (another release) runs nothing; when its run id, node, phase and jobs
    are valid each job's pair is answered ``error``, so the coordinator does not wait out the step for it."""
    why = other_version(missing)
    try:
        _ring_names(given.get("run_id"), given.get("node"))
        phase, jobs = given.get("phase"), given.get("jobs")
        _phase(phase)
        _jobs(jobs)
    except errors.BadParameter as exc:
        log.warning("iperf_clients message refused: %s (%s)", why, exc)
        return []
    log.warning("iperf ring %s on %s: clients message refused: %s", given["run_id"], given["node"], why)
    failed = iperf.Measure(Status.ERROR, None, why)
    pairs = [iperf.pair(j["source"], j["target"], j["interface"], j["address"], failed) for j in jobs]  # type: ignore[union-attr]
    ring.post(host.store, given["run_id"], f"clients|{phase}|{given['node']}", {"pairs": pairs})
    return pairs


def iperf_stop(host: NodeHost, *, run_id: str, node: str) -> int:
    try:
        _ring_names(run_id, node)
    except errors.BadParameter as exc:
        log.warning("iperf_stop message refused: %s", exc)
        return 0
    stopped = ring.SERVERS.stop(run_id, node)
    ring.post(host.store, run_id, f"stopped|{node}", {"stopped": stopped})
    return stopped


def reconcile_and_remediate(
    store: ResultsStore, settings: config.Settings, cluster: ClusterClient | None = None, *, checks: CheckRegistry
) -> dict[str, str]:
    """Beat's reconcile tick: ``reconcile``, then the remediation pass (``workers.remediating``, opt-in).

    The pass runs only in the process that claimed the tick (``reconcile`` answers nothing otherwise),
    after the verdicts are fresh, so two passes never race for the budget.
    """
    verdicts = reconcile(store, settings, cluster, checks=checks)
    if verdicts and cluster is not None:
        remediating.run(store, cluster, settings)
    return verdicts
