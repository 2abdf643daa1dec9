"""One home for runs: create a run, fan it out, gather its answers and report them.

The API's routes validate a request, select its nodes and call this module (``gather`` for
``/status``, ``start`` and ``read`` for ``/api/v1/runs``), then render what it returns; beat's
periodic and invasive ticks call ``tick`` (``workers.tasks.fanout``). Every run, whoever asked for
it, is created, sent and reported here.

``create_run`` records a run; ``Gather`` sends one ``Envelope`` per node through the dispatcher
(the nodes that fit in the free slots in growing slices, each one claim wave and one
``dispatch.send_all`` batch, so the first nodes start while the rest are claimed),
at most ``batch`` nodes in flight at once (the next node is sent when one finishes), and polls
the store until every (node, check) pair is in or the node's deadline has passed. Each node's
deadline counts from when it was sent, so a node never waits behind another's slow answer, and a
node that says nothing by its deadline frees its slot and is reported ``unreachable``: a gather
never hangs. Each poll reads only what was written since the last one (the run's write log), so
the answers are decoded while the nodes still work, not all at the end. Polling sleeps 20 ms
while answers arrive and backs off to 200 ms while none do.

Requests coalesce (``workers.dispatch.Flights``): a (node, check, parameters) already queued or
running for another run, and not answered yet, is joined instead of sent again; each poll copies
the joined executions' results that have landed into this run (as answers of the run only, so a
node's history holds each execution once), where they are read like any other. A joined
execution that gives up sooner than this run is replaced: when its deadline passes unanswered,
or when it answers ``error`` and its deadline was earlier than this run's for the node, the
node's missing checks are sent (or joined) again, under this run's deadline for the node.

``report`` turns a run and its results into the structured answer shared by ``/status?format=json``
and ``/api/v1/runs/<id>``; for the network checks it adds ``network``: the suspects that
``network.localise`` names from the run's pair results, and iperf's per-interface summary.

``iperf`` is not sent to the nodes like the other checks: its ring needs them all at once. When
the dispatcher can send named tasks, the run's other checks are gathered first, then one
``autopilot.iperf_ring`` task goes to the control queue (``dispatch.CONTROL_QUEUE``), where a
worker runs the ring coordinator (``workers.ring``) and writes each node's ``iperf`` result into
the run; the gather waits for them like any answer, never past the run's deadline (which grows
by the ring's bound). The process that asked (the API) never coordinates the ring itself.
``ping`` over an explicit selection is told the selection (its ``nodes``), so each node pings
only the other selected nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from autopilot import config, errors, names, network, polling, results, verdict
from autopilot.checks import iperf
from autopilot.cluster import ClusterClient
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult, Status, StoredResult
from autopilot.store import NodeState
from workers import reconcile, ring
from workers.dispatch import Dispatcher, Envelope, Joined, TaskSender, clock_shifts, send_all, task_sender
from workers.store import ResultsStore, Run, stored_result

log = logging.getLogger(__name__)

POLL_FIRST_S = 0.02
POLL_MAX_S = 0.2
POLL_GROWTH = 1.5
# Time a freed slot may wait for the poll that notices it; added per wave to the run's deadline.
WAVE_SLACK_S = POLL_MAX_S + 0.05
# Nodes in the first slice a gather claims and sends; each next slice is twice the last.
SEND_FIRST = 16

# Node statuses in the answer, least to most severe for the totals' "status". "busy": some checks
# never started (another GPU check held the GPUs until the deadline) and the rest were ok.
NODE_STATUSES = ("ok", "skipped", "busy", "pending", "unknown", "unreachable", "error", "warn", "fail")


class StoreClock:
    """This host's clock put on the store's (Redis ``TIME``): its time less its offset to the store, measured with
    one ``TIME`` at first use and again every ``every_s`` (a round trip a minute, not one per call).

    The API's runs are made with it: their deadlines and stamps are on the clock beat's ticks make theirs on
    (``store.server_time()``) and every other API replica too, so a claim of another run's execution (``Flights``)
    and a stored run's deadline are compared on the clock they were made on. On this host's own clock 10 min ahead,
    a periodic run read through ``/api/v1/runs/<id>`` was over at once, every node ``unreachable``; 10 min behind,
    a tick's lapsed execution was joined and waited on to the request's deadline."""

    def __init__(self, store: ResultsStore, *, wall: Callable[[], float] = time.time, every_s: float = 60.0) -> None:
        self._store = store
        self._wall = wall
        self._every_s = every_s
        self._offset = 0.0
        self._at: float | None = None  # this host's time of the last measure

    def __call__(self) -> float:
        now = self._wall()
        if self._at is None or not 0 <= now - self._at < self._every_s:
            try:
                shared = self._store.server_time()
            except errors.StoreUnavailable:
                # The last offset stands (none: this host's clock); what needs the store fails on its own call.
                return now - self._offset
            after = self._wall()
            self._offset, self._at, now = (now + after) / 2 - shared, after, after
        return now - self._offset


@dataclasses.dataclass
class Services:
    """What a run needs: settings, store, dispatcher, cluster seam, check registry, clock and sleep.

    The API keeps one in its app (``api.services``); beat builds one per tick. The clock and sleep
    are here so tests can drive a gather without waiting.
    """

    settings: config.Settings
    store: ResultsStore
    dispatcher: Dispatcher
    checks: CheckRegistry
    cluster: ClusterClient | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """A validated request to run ``checks`` on a selection of nodes."""

    checks: tuple[str, ...]
    hosts: tuple[str, ...] = ()
    nodelabel: tuple[str, str] | None = None
    job: tuple[str, str, str] | None = None
    params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    deadline_s: float = 60.0
    batch: int | None = None  # None: every selected node at once

    @property
    def explicit(self) -> bool:
        """True when the request names its nodes (otherwise: every live node)."""
        return bool(self.hosts or self.nodelabel or self.job)


@dataclasses.dataclass(frozen=True)
class Selection:
    nodes: tuple[str, ...]  # known nodes, in request order: these are dispatched, except the lost ones
    unknown: tuple[str, ...] = ()  # named, but no worker has registered them
    lost: tuple[str, ...] = ()  # of ``nodes`` (host=all only): no heartbeat for ``settings.live_after_s``


def run_deadline_s(nodes: int, batch: int | None, node_deadline_s: float) -> float:
    """Upper bound of a run: with B slots and N nodes each taking at most D, greedy sending ends
    by ceil(N/B) * D (node i is sent by floor(i/B) * D)."""
    waves = 1 if not batch or batch >= nodes else math.ceil(nodes / batch)
    return waves * (node_deadline_s + WAVE_SLACK_S)


@dataclasses.dataclass(frozen=True)
class Ring:
    """A run's ring check (its spec's ``ring``: iperf) and the sender of the coordinator's task."""

    check: str
    sender: TaskSender


def ring_of(svc: Services, checks: Collection[str]) -> Ring | None:
    """The ring check of ``checks`` and the sender of the ring's coordinator task (and the
    coordinator's own tasks, in the worker), when ``checks`` has a check whose spec is a ring and
    the dispatcher can send named tasks; otherwise None (the check then goes out like any check,
    and a worker skips it)."""
    check = next((c for c in checks if c in svc.checks and svc.checks.get(c).ring), None)
    if check is None:
        return None
    sender = task_sender(svc.dispatcher)
    return Ring(check, sender) if sender is not None else None


def run_params(svc: Services, req: RunRequest, selection: Selection) -> dict[str, dict[str, Any]]:
    """The request's parameters, with ``ping``'s ``nodes`` set to an explicit selection."""
    params = {c: dict(p) for c, p in req.params.items()}
    ping = params.get("ping")
    if (
        ping is not None
        and req.explicit
        and not ping.get("nodes")
        and "ping" in svc.checks
        and any(p.name == "nodes" for p in svc.checks.get("ping").params)
    ):
        ping["nodes"] = ",".join(selection.nodes)
    return params


def create_run(svc: Services, req: RunRequest, selection: Selection, *, source: str = "api") -> Run:
    params = run_params(svc, req, selection)
    deadline_s = run_deadline_s(len(selection.nodes), req.batch, req.deadline_s)
    the_ring = ring_of(svc, req.checks)
    if the_ring is not None:
        deadline_s += ring.estimate_s(svc.store, svc.settings, selection.nodes, params.get(the_ring.check, {}))
    run = Run.new(req.checks, selection.nodes, params, deadline_s, source=source, now=svc.clock(), lost=selection.lost)
    svc.store.create_run(run)
    return run


def send_ring(run: Run, the_ring: Ring) -> None:
    """Hand the run's ring (``iperf``) to a worker: one coordinator task on the control queue,
    dropped unrun at the run's deadline (its nodes are then reported without an iperf answer)."""
    kwargs = {"run_id": run.id, "nodes": list(run.nodes), "params": dict(run.params.get(the_ring.check, {}))}
    the_ring.sender.send_control(ring.RING_TASK, kwargs, expires=run.deadline)


def answered(store: ResultsStore, run_id: str) -> set[tuple[str, str]]:
    """The (node, check) pairs a run holds (cheap: field names only)."""
    return store.run_answered(run_id)


class Gather:
    """Drives one run: sends envelopes as slots free up and notices answers and expired nodes."""

    def __init__(
        self,
        svc: Services,
        run: Run,
        *,
        node_deadline_s: float,
        batch: int | None,
        without: Collection[str] = (),
        lost: Collection[str] = (),
    ) -> None:
        self.svc = svc
        self.run = run
        self.node_deadline_s = node_deadline_s
        self.batch = batch
        # The checks sent to the nodes (the ring's check is run by the coordinator instead).
        self.checks = tuple(c for c in run.checks if c not in without)
        # A lost node (no heartbeat) is sent nothing: it is out of time from the start.
        self.waiting: collections.deque[str] = collections.deque(
            n for n in (run.nodes if self.checks else ()) if n not in lost
        )
        self.in_flight: dict[str, float] = {}  # node -> its deadline (epoch s)
        self.done: set[str] = set()
        self.expired: set[str] = set(lost)
        # The run's results as read so far (from the run's write log, a little at each poll).
        self.found: dict[tuple[str, str], StoredResult] = {}
        self._have: collections.Counter[str] = collections.Counter()  # node -> checks of self.checks in found
        self._cursor = 0
        self._news = False  # the last poll found something new
        # Set when results arrive that the log does not name (a worker of an older version):
        # answers are then counted from the run's field names and read in full at the end.
        self._by_keys = False
        self._seen = -1
        self.flights = svc.store.flights()
        self.joined: dict[tuple[str, str], Joined] = {}  # (node, check) -> the execution it waits on
        self._leader_cursors: dict[str, int] = {}  # joined run -> entries of its write log read
        self._gave_up: set[tuple[str, str]] = set()  # joined, answered error by a less patient run
        self._shifts: dict[str, float] | None = None  # node -> its clock minus ours (``clock_shifts``), read once

    @property
    def finished(self) -> bool:
        return not self.waiting and not self.in_flight

    def send_ready(self) -> None:
        """Send nodes while a slot is free."""
        free = len(self.waiting) if self.batch is None else max(0, self.batch - len(self.in_flight))
        if not free or not self.waiting:
            return
        nodes = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        if self._shifts is None:
            self._shifts = clock_shifts(self.svc.store, self.svc.clock, self.run.nodes)
        shifts = self._shifts
        # Each node's deadline counts from before its publish (never later than it was sent).
        deadline = self.svc.clock() + self.node_deadline_s
        params = {c: p for c, p in self.run.params.items() if c in self.checks}
        for node in nodes:
            self.in_flight[node] = deadline
        # Claimed and sent in growing slices (SEND_FIRST nodes, then twice as many each time):
        # the first nodes start their checks while the rest are claimed and published, instead
        # of every worker waiting for the whole cluster's claims (a third of a second of the
        # API's CPU at 1,000 nodes, with the workers idle). Each slice is one claim wave and one
        # producer batch, so 1,000 nodes cost six of each rather than one.
        start, size = 0, SEND_FIRST
        while start < len(nodes):
            envelopes = [
                Envelope(self.run.id, n, self.checks, params, deadline, shifts.get(n, 0.0))
                for n in nodes[start : start + size]
            ]
            envelopes, joined = self.flights.claim(envelopes, now=self.svc.clock())
            self.joined.update(joined)
            send_all(self.svc.dispatcher, envelopes)
            start, size = start + size, size * 2

    def poll(self) -> bool:
        """One look at the store; frees the slots of finished nodes and fills them. True when all are done."""
        if self.joined:
            self._copy_joined()
            self._replace_lapsed()
        have = self._read_keys() if self._by_keys else self._read_news()
        for node in [n for n in self.in_flight if have[n] >= len(self.checks)]:
            del self.in_flight[node]
            self.done.add(node)
        now = self.svc.clock()
        for node in [n for n, deadline in self.in_flight.items() if now >= deadline]:
            del self.in_flight[node]
            self.expired.add(node)
        if self.joined:
            self.joined = {k: j for k, j in self.joined.items() if k[0] in self.in_flight}
        self.send_ready()
        return self.finished

    def _copy_joined(self) -> None:
        """Take the results of joined executions that have landed, and copy them into this run.

        Each joined run's write log is read from where the last poll stopped, so a poll costs two
        round trips however many (node, check) pairs it waits on. Each result is decoded once and
        copied as stored, outside this run's write log (this gather holds it already). An
        ``error`` from an execution less patient than this run is not taken: the check is sent
        again (``_replace_lapsed``), as if that execution had never answered.
        """
        landed = self.flights.landed(self.joined, self._leader_cursors)
        if not landed:
            return
        taken: dict[tuple[str, str], bytes] = {}
        for key, blob in landed.items():
            result = stored_result(blob, *key)
            joined = self.joined.pop(key)
            if result.status == Status.ERROR.value and joined.deadline < self.in_flight.get(key[0], 0.0):
                self._gave_up.add(key)
                continue
            taken[key] = blob
            if key not in self.found and key[1] in self.checks:
                self._have[key[0]] += 1
            self.found[key] = result
        self.flights.copy(self.run.id, taken, self.svc.store.run_ttl_s)

    def _replace_lapsed(self) -> None:
        """Send again, under this run's deadlines, what joined executions gave up on."""
        now = self.svc.clock()
        lapsed: dict[str, list[str]] = {}
        for (node, check), joined in list(self.joined.items()):
            if now >= joined.deadline and node in self.in_flight:
                lapsed.setdefault(node, []).append(check)
                del self.joined[(node, check)]
        for node, check in self._gave_up:
            if node in self.in_flight:
                lapsed.setdefault(node, []).append(check)
        self._gave_up.clear()
        if not lapsed:
            return
        envelopes = [
            Envelope(
                self.run.id,
                node,
                tuple(checks),
                {c: p for c, p in self.run.params.items() if c in checks},
                self.in_flight[node],
                (self._shifts or {}).get(node, 0.0),
            )
            for node, checks in lapsed.items()
        ]
        envelopes, rejoined = self.flights.claim(envelopes, now=now)
        self.joined.update(rejoined)
        send_all(self.svc.dispatcher, envelopes)

    def _read_news(self) -> collections.Counter[str]:
        news = self.svc.store.run_news(self.run.id, self._cursor)
        self._cursor = news.cursor
        self._news = bool(news.found)
        for key, result in news.found.items():
            if key not in self.found and key[1] in self.checks:
                self._have[key[0]] += 1
            self.found[key] = result
        if news.total > len(self.found):
            log.info("run %s has results its write log does not name: counting field names", self.run.id)
            self._by_keys = True
            return self._read_keys()
        return self._have

    def _read_keys(self) -> collections.Counter[str]:
        progress = self.svc.store.run_progress(self.run.id)
        self._news = progress != self._seen
        if self._news:
            self._seen = progress
            self._have = collections.Counter(
                node for node, check in answered(self.svc.store, self.run.id) if check in self.checks
            )
        return self._have

    def wait_for_check(self, check: str, until: float) -> set[str]:
        """Poll until every node of the run has ``check``'s answer, or ``until``; the nodes still without one.

        For the ring's results, written by its coordinator (a worker) into the run. The coordinator
        holds the ring's lease (``ring.CLAIM``, owned by this run) until its results are in; once
        the lease was seen held for this run and is held no more while results are missing, the
        coordinator died (its worker killed or restarted): the nodes without a result get an
        ``error`` saying so, in the run only, then rather than at ``until`` (the ring's whole bound).
        """
        missing = set(self.run.nodes)
        held = False  # this run's coordinator was seen holding the ring's lease
        declared = False  # the missing results were written as the coordinator's loss

        def complete() -> bool:
            nonlocal missing, held, declared
            if self._by_keys:
                have = {n for n, c in answered(self.svc.store, self.run.id) if c == check}
            else:
                self._read_news()
                have = {n for n, c in self.found if c == check}
            missing = {n for n in self.run.nodes if n not in have}
            if not missing or declared:
                return not missing
            if self.svc.store.lease_holder(ring.CLAIM) == self.run.id:
                held = True
            elif held:
                self._coordinator_lost(check, missing)
                declared = True
            return False

        polling.poll_until(
            complete, deadline=until, interval_s=self._backoff(), clock=self.svc.clock, sleep=self.svc.sleep
        )
        return missing

    def _coordinator_lost(self, check: str, nodes: Collection[str]) -> None:
        """``check``'s ``error`` for each of ``nodes``, in this run only: its coordinator died before
        answering them (nothing here says anything of the nodes themselves, so no verdict moves)."""
        log.warning("run %s: the %s ring's coordinator is gone; %d node(s) unanswered", self.run.id, check, len(nodes))
        why = "ring coordinator lost: its lease lapsed before it wrote this result (its worker died or restarted)"
        params = dict(self.run.params.get(check, {}))
        stamp = results.utc_now_iso(datetime.fromtimestamp(self.svc.clock(), UTC))
        self.svc.store.save_many(
            [
                (CheckResult(check, Status.ERROR, why, node=n, params=params, started_at=stamp), False)
                for n in sorted(nodes)
            ],
            self.run.id,
        )

    def _backoff(self) -> polling.Backoff:
        """Polls come quickly while answers arrive and back off while none do."""
        return polling.Backoff(POLL_FIRST_S, POLL_MAX_S, POLL_GROWTH, lambda: self._news)

    def results(self) -> dict[tuple[str, str], StoredResult]:
        """Everything the run holds now (the last news, or the whole run when counting by keys)."""
        if not self._by_keys:
            self._read_news()
        return _results(self.svc.store, self.run.id) if self._by_keys else self.found

    def wait(self) -> None:
        """Send and poll until every node has answered or run out of time.

        Polls come quickly while answers arrive and back off while none do, so the last answer
        is noticed within ``POLL_FIRST_S`` of a busy spell and an idle wait costs little.
        """
        self.send_ready()
        backoff = self._backoff()

        def next_wait() -> float:
            # Never sleep past the next node deadline: its slot should be freed on time.
            until_next = min(self.in_flight.values(), default=self.svc.clock()) - self.svc.clock()
            return min(backoff(), until_next)

        # ``poll`` ends by itself once every node answered or ran out of time: no deadline of our own.
        clock, sleep = self.svc.clock, self.svc.sleep
        polling.poll_until(self.poll, deadline=math.inf, interval_s=next_wait, clock=clock, sleep=sleep)


TICK_KINDS = ("periodic", "invasive")


def tick_interval(settings: config.Settings, kind: str) -> float:
    """Seconds between beat's ticks of ``kind`` (one of ``TICK_KINDS``); 0: that loop is off.

    The one place that maps a tick's kind to its interval (the tick's deadline and the claim that
    keeps a second beat from doubling it both use it). An unknown kind is refused rather than run
    as an invasive tick."""
    if kind == "periodic":
        return settings.periodic_interval_s
    if kind == "invasive":
        return settings.invasive_interval_s
    raise errors.BadParameter("kind", f"not a tick kind ({', '.join(TICK_KINDS)}): {str(kind)[:40]!r}")


def tick(svc: Services, *, kind: str, now: float) -> Run | None:
    """Beat's periodic (or invasive) tick: one run over every live node, sent at once.

    The tick's executions are claimed (``Flights.lead``) so a request during the tick joins its
    checks instead of queueing its own behind them for the node's GPU lock. Nothing is gathered:
    the workers' results reach the store (and the verdicts) without anyone waiting on them.
    """
    settings = svc.settings
    interval = tick_interval(settings, kind)
    nodes = svc.store.node_names(seen_since=now - settings.live_after_s)
    if kind == "periodic":
        checks = [c for c in settings.periodic_checks if c in svc.checks]
        params: dict[str, dict[str, Any]] = {}
    else:
        checks = ["dcgm"]
        params = {"dcgm": {"r": 3}}
    if not nodes or not checks:
        return None
    timeout = max(svc.checks.get(c).timeout_s for c in checks)
    run = Run.new(checks, nodes, params, deadline_s=min(interval, timeout + 60), source=kind, now=now)
    svc.store.create_run(run)
    # The tick's deadlines are on the store's clock (``now``): each message says its deadline on its worker's.
    shifts = clock_shifts(svc.store, svc.clock, nodes, on_store_clock=True)
    envelopes = [Envelope(run.id, node, run.checks, params, run.deadline, shifts.get(node, 0.0)) for node in nodes]
    svc.store.flights().lead(envelopes, now=now)
    send_all(svc.dispatcher, envelopes)
    log.info("fanout %s: run %s over %d nodes", kind, run.id, len(nodes))
    return run


def _prepare(svc: Services, req: RunRequest, selection: Selection) -> tuple[Run, Ring | None, Gather]:
    """Create the run, and its ``Gather`` of every check but the ring's (run by its coordinator)."""
    run = create_run(svc, req, selection)
    the_ring = ring_of(svc, run.checks)
    without = (the_ring.check,) if the_ring else ()
    g = Gather(svc, run, node_deadline_s=req.deadline_s, batch=req.batch, without=without, lost=selection.lost)
    return run, the_ring, g


def gather(svc: Services, req: RunRequest, selection: Selection) -> dict[str, Any]:
    """Run ``req`` on the selected nodes and wait for the answer (``/status``)."""
    run, the_ring, g = _prepare(svc, req, selection)
    g.wait()
    timed_out = set(g.expired)
    if the_ring is not None:
        send_ring(run, the_ring)
        timed_out |= g.wait_for_check(the_ring.check, run.deadline)
    return report(svc, run, g.results(), timed_out=timed_out, unknown=selection.unknown, complete=True)


def start(svc: Services, req: RunRequest, selection: Selection) -> Run:
    """Create the run and send it; a batched run keeps sending from a background thread, and a run
    with a ring is watched there until its coordinator answered (or is found dead, or the deadline).

    The first wave is sent before this returns, so a broker failure reaches the caller. The ring's
    coordinator task is sent once the run's other checks are in (at once when it has none).
    """
    run, the_ring, g = _prepare(svc, req, selection)
    g.send_ready()
    ring_sent = False
    if the_ring is not None and g.finished:
        send_ring(run, the_ring)
        ring_sent = True
    # Joined executions are copied into the run by the gather, so it goes on in the background;
    # so does the watch on a ring's coordinator (a dead one is noticed when its lease lapses).
    if the_ring is not None or (not g.finished and (g.waiting or g.joined)):
        thread = threading.Thread(
            target=_continue, args=(g, the_ring, ring_sent), name=f"gather-{run.id[:8]}", daemon=True
        )
        thread.start()
    return run


def _continue(g: Gather, the_ring: Ring | None = None, ring_sent: bool = False) -> None:
    try:
        g.wait()
        if the_ring is not None:
            if not ring_sent:
                send_ring(g.run, the_ring)
            g.wait_for_check(the_ring.check, g.run.deadline)
    except Exception:  # a background thread has nobody to raise to: log it, the run times out
        log.exception("gather of run %s failed", g.run.id)


def read(svc: Services, run_id: str, *, wait_s: float = 0.0) -> dict[str, Any] | None:
    """The report of a stored run; with ``wait_s``, wait up to that long for it to complete."""
    got = svc.store.get_run_stored(run_id)
    if got is None:
        return None
    run, found = got
    expected = len(run.nodes) * len(run.checks)
    if wait_s > 0 and len(found) < expected:
        # Never past the run's deadline: by then the answer is complete whatever is missing.
        polling.poll_until(
            lambda: svc.store.run_progress(run_id) >= expected,
            deadline=min(svc.clock() + wait_s, run.deadline),
            interval_s=polling.Backoff(POLL_FIRST_S, POLL_MAX_S, POLL_GROWTH, lambda: False),
            clock=svc.clock,
            sleep=svc.sleep,
        )
        found = _results(svc.store, run_id)
    return report(svc, run, found)


def _results(store: ResultsStore, run_id: str) -> dict[tuple[str, str], StoredResult]:
    got = store.get_run_stored(run_id)
    return got[1] if got else {}


# ------------------------------------------------------------------ the answer


def iso_time(epoch: float) -> str:
    return results.utc_now_iso(datetime.fromtimestamp(epoch, UTC))


def node_status(found: Sequence[Mapping[str, Any]]) -> str:
    """The worst status of a node's results (as dicts). ``skipped`` beside other results counts as
    ``ok`` (nothing is wrong); a node whose every check was skipped is ``skipped``, never ``ok``:
    nothing was looked at, so nothing says it is healthy."""
    if found and all(r["status"] == Status.SKIPPED.value for r in found):
        return Status.SKIPPED.value
    worst = results.worst((Status(r["status"]) for r in found), default=Status.OK)
    return "ok" if worst is Status.SKIPPED else worst.value


def report(
    svc: Services,
    run: Run,
    found: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    timed_out: Collection[str] | None = None,
    unknown: Sequence[str] = (),
    complete: bool | None = None,
) -> dict[str, Any]:
    """The structured answer for ``run``, from its results as dicts (``CheckResult.to_dict``).

    A node is ``pending`` while it may still answer, ``unreachable`` when it said nothing by its
    deadline ("no heartbeat since <time>" when it is lost: such a node is sent nothing and is
    ``unreachable`` at once), and ``unknown`` when no worker has registered it. A node that
    answered some checks but not all by its deadline gets an ``error`` result for each missing
    one. Without ``timed_out`` (reading a stored run), every node runs out of time at the run's
    deadline. A node's ``verdict`` and ``reasons`` are as ``reconcile.shown`` says.
    """
    now = svc.clock()
    expected = len(run.nodes) * len(run.checks)
    have = sum(1 for n in run.nodes for c in run.checks if (n, c) in found)
    # Lost is judged on the store's clock, which the heartbeats are scored on (read with them in one round trip);
    # ``now``, this process's clock, stays for the run's deadline, set on it when the run was made.
    shared, seen = svc.store.seen_and_now(run.nodes)
    moment = datetime.fromtimestamp(shared, UTC)
    if timed_out is None:
        # A stored run: every node is out of time at the deadline, and a node lost when the run
        # was made at once (it was sent nothing); the run is complete once the others answered.
        timed_out = run.nodes if now >= run.deadline else run.lost
        if complete is None:
            owed = sum(1 for n in run.nodes for c in run.checks if n not in run.lost)
            complete = now >= run.deadline or have >= owed
    if complete is None:
        complete = have >= expected or now >= run.deadline
    late = set(timed_out)
    states = svc.store.states(list(run.nodes)) if run.nodes else {}
    nodes: dict[str, dict[str, Any]] = {}
    for node in run.nodes:
        got = [found[(node, c)] for c in run.checks if (node, c) in found]
        missing = [c for c in run.checks if (node, c) not in found]
        state = states.get(node, NodeState())
        entry: dict[str, Any]
        if not missing:
            entry = {"status": node_status(got)}
        elif node not in late:
            entry = {"status": "pending"}
        elif not got:
            since = reconcile.lost_at(seen.get(node), state.heard_ahead, moment, svc.settings)
            why = verdict.lost_reason(since) if since is not None else "no answer within the deadline"
            entry = {"status": "unreachable", "detail": why}
        else:
            # The node answered its other checks, so it is up: say where the missing one is (a hung
            # tool read as a slow node; the worker stops it at the check's own timeout).
            why = (
                "no answer within the deadline: the node answered its other checks, this one still runs or waits there"
            )
            got += [
                CheckResult(c, Status.ERROR, why, node=node, params=run.params.get(c, {})).to_dict() for c in missing
            ]
            entry = {"status": node_status(got)}
        # The reconcile's lost rule, its heard_ahead mark included, as /api/v1/nodes says it.
        entry["verdict"], entry["reasons"] = reconcile.shown(
            state.verdict, state.reason_list, seen.get(node), shared, svc.settings, state.heard_ahead
        )
        entry["results"] = got
        nodes[node] = entry
    for node in unknown:
        nodes[node] = {
            "status": "unknown",
            "detail": "no worker has registered this node",
            "verdict": None,
            "reasons": [],
            "results": [],
        }
    totals = {s: 0 for s in NODE_STATUSES}
    for entry in nodes.values():
        totals[entry["status"]] += 1
    answered_nodes = sum(1 for n in run.nodes if nodes[n]["status"] not in ("pending", "unreachable"))
    answer = {
        "id": run.id,
        "checks": list(run.checks),
        "params": {c: dict(p) for c, p in run.params.items()},
        "source": run.source,
        "created_at": iso_time(run.created_at),
        "deadline": iso_time(run.deadline),
        "runtime_s": round(max(0.0, min(now, run.deadline) - run.created_at), 3),
        "complete": complete,
        "status": overall(totals, complete=complete),
        "totals": {"nodes": len(nodes), "answered": answered_nodes, "results": have, "expected": expected, **totals},
        "nodes": nodes,
    }
    net = network_report(run, found, late)
    if net:
        answer["network"] = net
    return answer


def _silent_pairs(node: str, others: Sequence[str], interfaces: Collection[str]) -> list[network.PairResult]:
    """A node that could not answer at all: every pair on its side counts as bad."""
    return [network.PairResult(node, other, i, True) for other in others if other != node for i in interfaces]


def network_report(
    run: Run, found: Mapping[tuple[str, str], Mapping[str, Any]], late: Collection[str]
) -> dict[str, Any]:
    """``report["network"]``: per network check of the run, the pairs counted and the suspects.

    A node with no result by its deadline counts as bad pairs towards every other node on every
    interface seen in the run. Pairs whose ping could not run (``error``) say nothing about a link,
    as in the reconcile's localisation (``network.ping_pairs``): a node whose ping tool fails is its
    own ``error``, not every one of its links a suspect.
    """
    out: dict[str, Any] = {}
    if "ping" in run.checks:
        pairs: list[network.PairResult] = []
        silent: list[str] = []
        for node in run.nodes:
            result = found.get((node, "ping"))
            if result is None:
                if node in late:
                    silent.append(node)
                continue
            measured = _ping_pairs(result)
            pairs += [network.PairResult(node, target, interface, bad) for target, interface, bad in measured]
        interfaces = sorted({p.interface for p in pairs}) or ["any"]
        for node in silent:
            pairs += _silent_pairs(node, run.nodes, interfaces)
        out["ping"] = _suspects(pairs)
    if "iperf" in run.checks:  # the ring's pairs, as the iperf check reports them
        ring_pairs: list[dict[str, Any]] = []
        for node in run.nodes:
            result = found.get((node, "iperf"))
            if result is not None:
                ring_pairs += [dict(p) for p in _pairs(result) if _ring_pair(p)]
        out["iperf"] = {**_suspects(iperf.pair_results(ring_pairs)), "interfaces": iperf.summarize(ring_pairs)}
    return out


def _ping_pairs(result: Mapping[str, Any]) -> tuple[tuple[str, str, bool], ...]:
    """The (target, interface, bad) of each pair a ``ping`` result measured."""
    if isinstance(result, StoredResult):
        return _stored_ping_pairs(result.json_bytes)
    return _measured_pairs(result)


# Concurrent statuses that joined one execution hold the same stored ``ping`` results: each was
# decoded once per status (a tenth of the API's CPU under bench.load). About 4 KB a result.
@functools.lru_cache(maxsize=1024)
def _stored_ping_pairs(blob: bytes) -> tuple[tuple[str, str, bool], ...]:
    return _measured_pairs(CheckResult.dict_from_json(blob))


def _measured_pairs(result: Mapping[str, Any]) -> tuple[tuple[str, str, bool], ...]:
    return tuple(
        (p["target"], p["interface"], p["status"] != "ok")
        for p in _pairs(result)
        if _named_pair(p, "target") and p.get("status") in ("ok", "warn", "fail")
    )


def _pairs(result: Mapping[str, Any]) -> list[Any]:
    """``data.pairs`` of a ``ping`` or ``iperf`` result; empty when it is not a list."""
    found = result["data"].get("pairs", [])
    return found if isinstance(found, list) else []


# The pairs of a stored result are another worker's data: one of another shape (not an object, a node
# name that is not one, an interface name with control characters) is left out of the network summary,
# which would otherwise fail the whole answer or carry the characters into the text answer.
def _named_pair(pair: Any, *nodes: str) -> bool:
    """``pair`` is an object whose ``nodes`` fields are node names and whose ``interface`` is a short,
    printable name."""
    if not isinstance(pair, dict):
        return False
    interface = pair.get("interface")
    return (
        isinstance(interface, str)
        and 0 < len(interface) <= 64
        and interface.isprintable()
        and all(isinstance(pair.get(f), str) and names.is_dns1123_subdomain(pair[f]) for f in nodes)
    )


def _ring_pair(pair: Any) -> bool:
    """An ``iperf`` pair ``iperf.summarize`` can count: named, with a status and a bandwidth or none."""
    if not _named_pair(pair, "source", "target") or not isinstance(pair.get("status"), str):
        return False
    gbps = pair.get("gbps")
    return gbps is None or (isinstance(gbps, int | float) and not isinstance(gbps, bool) and math.isfinite(gbps))


def _suspects(pairs: Sequence[network.PairResult]) -> dict[str, Any]:
    return {
        "pairs": len(pairs),
        "bad_pairs": sum(1 for p in pairs if p.bad),
        "suspects": network.localise(pairs).to_dict(),
    }


def overall(totals: Mapping[str, int], *, complete: bool) -> str:
    """One word for the whole run: a finding (fail, warn) beats an inability to look (error), which
    beats checks that did not start because the GPUs were busy (busy)."""
    for status in ("fail", "warn"):
        if totals.get(status):
            return status
    if not complete:
        return "pending"
    if any(totals.get(s) for s in ("error", "unreachable", "unknown")):
        return "error"
    if totals.get("busy"):
        return "busy"
    if totals.get("skipped") and not totals.get("ok"):
        return "skipped"  # not one node was looked at
    return "ok"
