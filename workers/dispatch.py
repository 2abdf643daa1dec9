"""The one door from the API into the workers: create a run and enqueue its tasks.

``Dispatcher`` is what ``api`` may use; ``CeleryDispatcher`` sends real tasks, ``FakeDispatcher``
records what would have been sent. Each node gets one message per run, with all of the run's
checks: the worker runs the light ones first and then takes the node's GPU lock for the GPU ones
(``partition``); when another run's GPU check holds the lock it re-queues only the GPU checks, so
a light check never waits behind another run's GPU check. (It used to be two messages per node,
light and GPU; one message halves the broker work of a fan-out, which is most of a worker's CPU.)

``send_all(d, envelopes)`` sends many envelopes at once: ``CeleryDispatcher.send_many`` publishes
them through one producer in one Redis pipeline (one round trip per batch, not one per message;
a 1,000-node gather sends six growing slices, ``runs.SEND_FIRST``); a dispatcher without
``send_many`` gets them one by one.

``Flights`` makes check requests coalesce (single flight): before a gather sends, it claims each
(node, check, parameters) in Redis. A request for one already queued or running, and not yet
answered, joins that execution instead of queueing another, and copies its result into its own
run when it lands (``api.gather``). The claim lives until the execution's deadline. An
execution that gives up sooner than the request that joined it is no loss to that request: when
its deadline passes unanswered (its message may have expired unrun), or when it answers
``error`` (it could not run in its time, e.g. the GPUs stayed busy), the request sends its own
then, under its own deadline. Beat's fan-out claims its executions too (``Flights.lead``), so a
request during a tick joins the tick's checks instead of queueing behind them for the node's
GPU lock. Fifty requests over the same nodes so cost one check per node, not fifty (and fifty
turns of each node's GPU lock).

A dispatcher may also send named tasks to a node's queue (``send_task``; the ``iperf`` ring's
server, client and stop tasks) and to the control queue every worker consumes (``send_control``;
the ring's coordinator). ``task_sender(d)`` says whether ``d`` can: ``CeleryDispatcher``
always, ``FakeDispatcher`` when it was given ``on_task`` to answer them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import kombu.exceptions
from celery import Celery
from kombu.utils.uuid import uuid

from autopilot import names
from autopilot.registry import CheckRegistry
from workers.store import FlightClaim, ResultsStore, translating

RUN_TASK = "autopilot.run_checks"
# Beat's ticks and the iperf ring's coordinator: every worker consumes it, the first free one runs each.
CONTROL_QUEUE = "autopilot.control"
# Redis commands buffered before a publish batch is flushed mid-gather (one LPUSH per task).
PUBLISH_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class Envelope:
    run_id: str
    node: str
    checks: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    deadline: float  # epoch s on the sender's clock (its gather and claims judge it there)
    # The target worker's clock minus the sender's (0: not known). Celery drops a message whose ``expires`` has
    # passed by the consuming worker's clock, and the task judges its deadline on that clock too: the message
    # carries ``sent_deadline``, the deadline as that worker's clock reads it. Without it a worker 10 min ahead
    # dropped every message with less than 10 min left (every periodic run: its results went stale, UNKNOWN).
    clock_shift_s: float = 0.0

    @property
    def sent_deadline(self) -> float:
        """``deadline`` on the target worker's clock: what the message says."""
        return self.deadline + self.clock_shift_s


def partition(checks: Sequence[str], registry: CheckRegistry) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The light checks and the GPU checks of ``checks``, each in the order given."""
    # A name ``registry`` does not hold (a test's extra checks, validated by the caller's own
    # registry) counts as light: it cannot ask for the GPU lock.
    gpu = registry.gpu_checks(checks)
    light = tuple(c for c in checks if c not in gpu)
    return light, gpu


@dataclasses.dataclass(frozen=True)
class Joined:
    """An execution a request joined: the run that sent it, and that run's deadline for the node."""

    run_id: str
    deadline: float


class Flights:
    """Claims (node, check, parameters) executions in the store so that equal requests coalesce.

    At most four pipelined round trips per wave: ``SET NX GET`` claims each key or reads who
    holds it (one atomic step, so two requests never both see it free); ``HEXISTS`` asks
    whether the holder's run has its answer already (then the execution is over, not joinable,
    unless the holder's task on that node still runs other checks of this request: the whole
    task is joined, answered checks included);
    ``SET`` takes over the keys not joined from a holder that is answered, past its deadline, or
    less patient than this run (later requests then join the execution most likely to answer
    them). A take-over is itself claimed first, with ``SET NX GET`` on the key's successor of that
    holder (``ResultsStore.claim_successions``): requests that find the same finished holder at
    once (50 concurrent statuses after a beat tick answered) elect one of them to send, and the
    others join it, where each used to send its own (ten times the work, measured by
    ``bench.load``). A request that is not joining (beat's tick) still sends, as before. The keys
    are the store's (``ResultsStore.claim_flights`` and beside it); the holder's words
    (``run_id deadline``) are this class's.
    """

    def __init__(self, store: ResultsStore) -> None:
        self.store = store

    def _succeed(
        self,
        claims: Sequence[FlightClaim],
        taking: Mapping[int, Joined],
        joined: dict[tuple[str, str], Joined],
        now: float,
    ) -> list[int]:
        """Of the claims ``taking`` (index -> the holder it takes over from), those whose succession
        this run won (it sends them); one another run won first is joined to that run (added to
        ``joined``), unless that run gave up already."""
        asked = [(claims[i], holder.run_id) for i, holder in taking.items()]
        won: list[int] = []
        for i, raw in zip(taking, self.store.claim_successions(asked), strict=True):
            successor = _parse_holder(raw)
            if successor is not None and successor.deadline > now:
                joined[(claims[i].node, claims[i].check)] = successor
            else:
                won.append(i)
        return won

    def lead(self, envelopes: Sequence[Envelope], *, now: float) -> None:
        """Claim the (node, check) pairs of ``envelopes`` without joining anything (beat's fan-out
        always sends): requests meanwhile may join them."""
        self.claim(envelopes, now=now, join=False)

    def claim(
        self, envelopes: Sequence[Envelope], *, now: float, join: bool = True
    ) -> tuple[list[Envelope], dict[tuple[str, str], Joined]]:
        """The envelopes to send (each with the checks this run leads) and the (node, check) pairs joined."""
        pairs = [(e, c) for e in envelopes for c in e.checks]
        if not pairs:
            return [], {}
        claims = [_claim(e, c, now) for e, c in pairs]
        held = [_parse_holder(v) for v in self.store.claim_flights(claims)]
        # A holder past its deadline gave up (the key outlived it only by the clocks' skew).
        live = [(i, h) for i, h in enumerate(held) if h is not None and h.deadline > now]
        answered: set[int] = set()
        if live:
            done = self.store.runs_answered([(h.run_id, pairs[i][0].node, pairs[i][1]) for i, h in live])
            answered = {i for (i, _), yes in zip(live, done, strict=True) if yes}
        # A holder's task on a node still runs while any of its checks there is unanswered: the
        # checks it already answered are joined too (their results are in its run), or this run
        # would queue a task for them that waits behind the running one for the node's GPU lock.
        running = {(pairs[i][0].node, h.run_id) for i, h in live if i not in answered}
        joined: dict[tuple[str, str], Joined] = {}
        take_over: dict[int, Joined] = {}  # claim index -> the holder it takes over from
        for i, h in enumerate(held):
            if h is None:
                continue  # ours already (SET NX)
            e, c = pairs[i]
            unanswered = h.deadline > now and i not in answered
            task_running = h.deadline > now and (e.node, h.run_id) in running
            if join and task_running:
                joined[(e.node, c)] = h
            elif not unanswered or h.deadline < e.deadline:
                take_over[i] = h
        taken = self._succeed(claims, take_over, joined, now) if take_over and join else list(take_over)
        if taken:
            self.store.take_flights([claims[i] for i in taken])
        send = []
        for e in envelopes:
            led = tuple(c for c in e.checks if (e.node, c) not in joined)
            if led:
                send.append(e if led == e.checks else dataclasses.replace(e, checks=led))
        return send, joined

    def landed(self, joined: Mapping[tuple[str, str], Joined], cursors: dict[str, int]) -> dict[tuple[str, str], bytes]:
        """The results of ``joined`` executions written since the last call, as stored (bytes).

        ``cursors`` (joined run -> entries of its write log already read) is updated: each call
        reads only what each joined run wrote since, in two pipelined round trips in all.
        """
        leaders = sorted({j.run_id for j in joined.values()})
        written = self.store.run_writes_since({leader: cursors.get(leader, 0) for leader in leaders})
        wanted: list[tuple[str, str, str]] = []
        for leader in leaders:
            cursors[leader] = cursors.get(leader, 0) + len(written[leader])
            for node, check in dict.fromkeys(written[leader]):
                holder = joined.get((node, check))
                if holder is not None and holder.run_id == leader:
                    wanted.append((leader, node, check))
        if not wanted:
            return {}
        blobs = self.store.run_blobs(wanted)
        return {(node, check): blob for (_, node, check), blob in zip(wanted, blobs, strict=True) if blob is not None}

    def copy(self, run_id: str, results: Mapping[tuple[str, str], bytes], ttl_s: float) -> None:
        """Write joined results into ``run_id``'s results as they are (not into its write log: the
        gather that copies them already holds them)."""
        self.store.copy_into_run(run_id, results, ttl_s)


def _claim(e: Envelope, check: str, now: float) -> FlightClaim:
    return FlightClaim(e.node, check, e.params.get(check, {}), _holder(e.run_id, e.deadline), _ttl_ms(e.deadline, now))


def _holder(run_id: str, deadline: float) -> str:
    return f"{run_id} {deadline:.3f}"


def _parse_holder(raw: bytes | str | None) -> Joined | None:
    if raw is None:
        return None
    run_id, _, deadline = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
    try:
        return Joined(run_id, float(deadline))
    except ValueError:  # not written by us: treat as free (it is overwritten)
        return Joined(run_id, float("-inf"))


def _ttl_ms(deadline: float, now: float) -> int:
    return max(1, int((deadline - now) * 1000))


class Dispatcher(Protocol):
    def send(self, envelope: Envelope) -> None: ...


@runtime_checkable
class BatchDispatcher(Protocol):
    """A dispatcher that can send many envelopes in one batch (an optional capability)."""

    def send_many(self, envelopes: Sequence[Envelope]) -> None: ...


def clock_shifts(
    store: ResultsStore, clock: Callable[[], float], nodes: Sequence[str], *, on_store_clock: bool = False
) -> dict[str, float]:
    """Node -> its worker's clock minus the clock this process's deadlines are on (``clock``; the store's with
    ``on_store_clock``, as beat's ticks make them), for the nodes whose worker measured its offset; the others are
    left out (0: their messages say the deadline as before). One round trip (``offsets_and_now``), once per run.
    A message's ``expires`` is judged by Celery on the consuming worker's clock: see ``Envelope.clock_shift_s``."""
    before = clock()
    now, offsets = store.offsets_and_now(nodes)
    own = 0.0 if on_store_clock else (before + clock()) / 2 - now
    return {n: offset - own for n, offset in offsets.items()}


def send_all(dispatcher: Dispatcher, envelopes: Sequence[Envelope]) -> None:
    """Send ``envelopes`` in order, in one batch when ``dispatcher`` can (``BatchDispatcher``)."""
    if isinstance(dispatcher, BatchDispatcher):
        dispatcher.send_many(envelopes)
        return
    for envelope in envelopes:
        dispatcher.send(envelope)


@runtime_checkable
class TaskSender(Protocol):
    """Sends one named task to one node's queue; dropped unconsumed after ``expires`` (epoch s).

    ``supports_tasks`` False: it has the method but cannot take tasks now (a fake without a handler)."""

    @property
    def supports_tasks(self) -> bool: ...

    def send_task(self, task: str, node: str, kwargs: Mapping[str, Any], *, expires: float) -> None: ...

    def send_control(self, task: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        """Sends one named task to the control queue, for whichever worker takes it first."""
        ...


def task_sender(dispatcher: object) -> TaskSender | None:
    """``dispatcher`` as a ``TaskSender`` when it can send named tasks, else None."""
    return dispatcher if isinstance(dispatcher, TaskSender) and dispatcher.supports_tasks else None


@translating
class CeleryDispatcher:
    """The dispatcher over Celery's broker; a broker that cannot be reached is ``StoreUnavailable``."""

    supports_tasks = True

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_task(self, task: str, node: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        self._send_to(names.node_queue(node), task, kwargs, expires)

    def send_control(self, task: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        self._send_to(CONTROL_QUEUE, task, kwargs, expires)

    def _send_to(self, queue: str, task: str, kwargs: Mapping[str, Any], expires: float) -> None:
        self.app.send_task(
            task,
            kwargs=dict(kwargs),
            queue=queue,
            routing_key=queue,
            expires=datetime.fromtimestamp(expires, UTC),
        )

    def send(self, envelope: Envelope) -> None:
        self.send_many([envelope])

    def send_many(self, envelopes: Sequence[Envelope]) -> None:
        """Publish one task per envelope through one producer, in one Redis pipeline.

        Queues are not declared per publish: a task goes through the anonymous exchange straight
        into its queue's list, which needs no declaration, and each worker declares the queues it
        consumes. A failed pipeline raises ``StoreUnavailable`` (the API answers 503), as a failed
        single publish did.
        """
        # Every node name is validated before anything is published.
        messages = [(queue, e) for queue, e in ((names.node_queue(e.node), e) for e in envelopes) if e.checks]
        if not messages:
            return
        # Outside a task (the API) each message is built by Celery's own two steps (below); inside
        # one (beat's tick, a confirmation run) ``app.send_task`` also records the sending task as
        # each message's parent, so it sends them as before.
        publish = self._publish if self.app.current_worker_task is None else self._publish_from_task
        with self.app.producer_or_acquire() as producer:
            try:
                with producer.batch(max_size=PUBLISH_BATCH):
                    for queue, envelope in messages:
                        publish(producer, queue, envelope)
            except kombu.exceptions.BatchPublishError as exc:
                raise kombu.exceptions.OperationalError(str(exc)) from exc

    @functools.cached_property
    def _defaults(self) -> tuple[str, str, bool]:
        """The settings ``app.send_task`` reads for each message (its serializer, its reply-to, whether
        to send a task-sent event), read once: a Celery setting lookup costs about 10 us."""
        conf = self.app.conf
        return str(conf.task_serializer), str(self.app.thread_oid), bool(conf.task_send_sent_event)

    def _publish(self, producer: Any, queue: str, envelope: Envelope) -> None:
        """One task message, as ``app.send_task`` makes and publishes it outside a task, through
        the same public steps it takes (``app.amqp``'s router, ``create_task_message`` and
        ``send_task_message``), without its per-call overhead: settings looked up, the task's
        options merged, the expiry worked out through time zones, a result object made. That was
        about 40 us of the API's CPU per node of a fan-out. tests/unit/test_one_task_per_node.py
        checks that the message is the one ``app.send_task`` publishes (ids and times aside).
        Left out with the overhead: the result backend's hook (the app has no result backend:
        ``task_ignore_result``), and the translation of the connection's errors to kombu's (this
        class's ``translating`` turns both into ``StoreUnavailable``).
        """
        kwargs = _run_kwargs(envelope)
        serializer, reply_to, sent_event = self._defaults
        amqp = self.app.amqp
        # What send_task routes: the options given, plus the task's own options that are set
        # (only its serializer, Celery's default), without the expiry and time limits it pops.
        given = {"serializer": serializer, "argsrepr": "()", "kwargsrepr": repr(kwargs)}
        options = amqp.router.route(
            {**given, "queue": queue, "routing_key": queue, "declare": []}, RUN_TASK, (), kwargs
        )
        # send_task's message property: the seconds the message has left (never below 0).
        options["expiration"] = max(0.0, envelope.deadline - time.time())
        task_id = uuid()
        message = amqp.create_task_message(
            task_id,
            RUN_TASK,
            (),
            kwargs,
            expires=datetime.fromtimestamp(envelope.sent_deadline, UTC),
            reply_to=reply_to,
            create_sent_event=sent_event,
            ignore_result=None,
            **options,
        )
        amqp.send_task_message(producer, RUN_TASK, message, **options)

    def _publish_from_task(self, producer: Any, queue: str, envelope: Envelope) -> None:
        kwargs = _run_kwargs(envelope)
        self.app.send_task(
            RUN_TASK,
            kwargs=kwargs,
            # What Flower shows of the task; the builtin repr of these small, JSON-safe values
            # costs a fraction of Celery's default saferepr.
            argsrepr="()",
            kwargsrepr=repr(kwargs),
            queue=queue,
            routing_key=queue,
            # A task still queued at its deadline is dropped by the worker: its run already
            # reported the node unreachable, and a check run that late answers nobody.
            expires=datetime.fromtimestamp(envelope.sent_deadline, UTC),
            producer=producer,
            declare=[],
        )


def _run_kwargs(envelope: Envelope) -> dict[str, Any]:
    """The keyword arguments of ``RUN_TASK``'s message for ``envelope``."""
    return {
        "run_id": envelope.run_id,
        "node": envelope.node,
        "checks": list(envelope.checks),
        "params": {c: dict(envelope.params.get(c, {})) for c in envelope.checks},
        "deadline": envelope.sent_deadline,
    }


class FakeDispatcher:
    """Records envelopes; ``on_send`` lets a test answer them (e.g. run the task inline).

    With ``on_task`` it also takes named tasks (``tasks`` records them as (task, node, kwargs);
    a task for the control queue has ``CONTROL_QUEUE`` for its node).
    """

    def __init__(self, on_send: Any = None, on_task: Any = None) -> None:
        self.sent: list[Envelope] = []
        self.on_send = on_send
        self.on_task = on_task
        self.tasks: list[tuple[str, str, dict[str, Any]]] = []

    @property
    def supports_tasks(self) -> bool:
        return self.on_task is not None

    def send_task(self, task: str, node: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        names.node_queue(node)  # the same validation a real send does
        self.tasks.append((task, node, dict(kwargs)))
        if self.on_task is not None:
            self.on_task(task, node, dict(kwargs))

    def send_control(self, task: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        self.tasks.append((task, CONTROL_QUEUE, dict(kwargs)))
        if self.on_task is not None:
            self.on_task(task, CONTROL_QUEUE, dict(kwargs))

    def send(self, envelope: Envelope) -> None:
        self.sent.append(envelope)
        if self.on_send is not None:
            self.on_send(envelope)
