"""The simulator's broker transport: kombu's Redis transport, made cheap for hundreds of queues.

Simulator-only (``autopilot worker --simulate``, one process hosting hundreds of nodes); real
workers use kombu's transport as released. It overrides only public methods of kombu's Redis
channel, but reads a private part of it (``_active_queues``, ``_create_client``), so it is tied
to the kombu version it was written against (``KOMBU_CONTRACT``):
``tests/unit/test_worker_broker.py`` checks that it still sends what kombu would, and
``transport_for`` gives stock kombu to a simulator under any other kombu version.

kombu's Redis channel builds a new ``redis.Redis`` client (and its table of ~200 response
callbacks) for every operation outside the consume loop: each publish, each queue declared. In
a simulator that hosts hundreds of nodes that was a tenth of its CPU. A ``redis.Redis`` client
is thread-safe (every command checks a connection out of the pool), so the channel keeps one
per connection pool and hands it out. It also computes the list of consumed queues when it
changes, not on every poll.

``transport_options`` turns kombu's ack emulation off for a simulator (a public option; why
there). A message that cannot be read is skipped as on a real worker (``workers.broker.Consumer``).
(The consume loop's ``BRPOP`` used to be packed here too, overriding kombu's private
``_brpop_start``; measured back to back at 1,000 nodes that saved nothing beyond the spread
between runs, so kombu packs it. The orjson copy of each message for the late-ack bookkeeping
went with the bookkeeping.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from kombu.utils.scheduling import round_robin_cycle

from workers import broker

TRANSPORT = "workers.simbroker:Transport"
# The kombu release this transport's private overrides were written and checked against.
KOMBU_CONTRACT = "5.7.0"
# At most this many messages popped ahead per BRPOP reply, when the QoS sets no limit (Celery's
# consumer always sets one: concurrency x worker_prefetch_multiplier).
FETCH_AHEAD = 64
log = logging.getLogger(__name__)


def transport_for(broker_url: str) -> str | None:
    """This transport for a simulator on a ``redis://`` broker under ``KOMBU_CONTRACT``; else None (stock kombu).

    Other schemes (``rediss://``, ``sentinel://``) keep their own transports.
    """
    if not broker_url.startswith("redis://"):
        return None
    if kombu.__version__ != KOMBU_CONTRACT:
        log.warning("kombu %s is not %s: the simulator uses kombu's own transport", kombu.__version__, KOMBU_CONTRACT)
        return None
    return TRANSPORT

def transport_options(options: dict[str, Any]) -> dict[str, Any]:
    """A simulator's broker transport options: ``options`` without kombu's ack emulation.

    With it (a real worker's), kombu keeps each delivered message in Redis until its ack (two
    MULTIs per message) so that a worker that dies has its messages restored to their queues once
    ``visibility_timeout`` (the longest check plus ten minutes) has passed. A simulated node's
    task is long expired by then (its run's deadline is far shorter), so for a simulator the
    bookkeeping restored nothing and cost about a tenth of its CPU; a killed simulator's tasks in
    flight are lost, and their runs report those nodes unreachable at their deadlines, as they
    would with it. ``ack_emulation`` is a public transport option of kombu's Redis transport.
    """
    return {**options, "ack_emulation": False}


class Channel(kombu_redis.Channel):
    _shared_client: Any = None
    _active: list[str] | None = None

    @property
    def active_queues(self) -> list[str]:
        """kombu's ``active_queues``, computed when the consumed queues change instead of on every
        poll (a scan of every queue a simulator consumes, several times per delivery)."""
        active = self._active
        if active is None:
            active = self._active = list(
                dict.fromkeys(q for q in self._active_queues if q not in self.active_fanout_queues)
            )
        return active

    def basic_consume(self, *args: Any, **kwargs: Any) -> Any:
        return self._changing_queues(super().basic_consume, *args, **kwargs)

    def basic_cancel(self, *args: Any, **kwargs: Any) -> Any:
        return self._changing_queues(super().basic_cancel, *args, **kwargs)

    def _changing_queues(self, change: Any, *args: Any, **kwargs: Any) -> Any:
        """Call kombu's ``change`` of the consumed queues; ``active_queues`` is recomputed after it."""
        self._active = None
        try:
            return change(*args, **kwargs)
        finally:
            self._active = None

    def _brpop_read(self, **options: Any) -> Any:
        """kombu's read of the consume loop's ``BRPOP`` reply (one message), then ``_deliver_ready``."""
        cycle = self._queue_cycle
        # The round-robin order the BRPOP was sent with: where its queue stood in it says which
        # queues were empty then (those ahead of it) and which were not looked at (those after it).
        order = list(cycle.items) if self._fetches_ahead() else None
        delivered = super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        if order is not None and delivered and cycle.items:
            try:
                skipped = order.index(cycle.items[-1])  # kombu rotated the BRPOP's queue to the end
            except ValueError:  # the consumed queues changed while the message was delivered
                return delivered
            self._deliver_ready(skipped)
        return delivered

    def _fetches_ahead(self) -> bool:
        """Whether ``_deliver_ready`` keeps kombu's order: one list per queue, named as the queue (the app's
        ``priority_steps`` ``[0]``), served in kombu's round robin (its default ``queue_order_strategy``)."""
        return list(self.priority_steps) == [0] and type(self._queue_cycle) is round_robin_cycle

    def _deliver_ready(self, skipped: int) -> None:
        """Pop and deliver, without blocking, as many further messages as the QoS has room for (prefetch
        less the messages delivered and not yet acknowledged), in one pipeline of ``RPOP``s, one per queue.

        kombu sends one ``BRPOP`` over every consumed queue (250 in a simulator) per message: each
        names all 250 keys (built, packed, parsed by Redis, which blocks the client on all of them
        when they are empty). During a fan-out most of those queues hold a message, so the queues
        that come next in kombu's round robin are popped here together. The queues are the ones a
        ``BRPOP`` sent now would look at first: the round robin's front, past the ``skipped`` queues
        that were empty when the last ``BRPOP`` looked (popping those would mostly miss). Each queue
        served goes to the end of the round robin as after a ``BRPOP``; a queue keeps its order (the
        same end is popped); a queue found empty keeps its place.
        """
        room = self.qos.can_consume_max_estimate()
        if room is None:  # no prefetch limit: as many as kombu's own bulk fetches would take
            room = FETCH_AHEAD
        room = min(room, FETCH_AHEAD)
        if room <= 0:
            return
        cycle = self._queue_cycle
        queues = cycle.items[skipped : skipped + room]
        if not queues:
            return
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.rpop(queue)
            popped = pipe.execute()
        ready = [(queue, item) for queue, item in zip(queues, popped, strict=True) if item is not None]
        for at, (queue, item) in enumerate(ready):
            try:
                cycle.rotate(queue)
                self._deliver_one(queue, item)
            except BaseException:
                # A failure delivering one message must not lose the others popped with it: each goes
                # back to the end of its queue that is popped, so it is still the next one out.
                self._put_back(ready[at + 1 :])
                raise

    def _deliver_one(self, queue: str, item: bytes) -> None:
        """Hand one popped message to kombu's delivery, as ``_brpop_read`` does; one that cannot be read is
        logged and skipped as on a real worker (``workers.broker``), and the rest of the batch goes on."""
        try:
            message = loads(bytes_to_str(item))  # type: ignore[no-untyped-call]
            self.connection._deliver(message, queue)
        except broker.UNREADABLE as exc:
            transport = self.connection
            if not broker.skipped(exc, tuple(transport.connection_errors) + tuple(transport.channel_errors)):
                raise

    def _put_back(self, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        try:
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                for queue, item in items:
                    pipe.rpush(queue, item)
                pipe.execute()
        except Exception:
            log.exception("lost %d popped message(s) that could not be put back on their queues", len(items))

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            # A channel that reconnected has a new pool: the client follows it.
            shared = self._shared_client = self._create_client()  # type: ignore[no-untyped-call]
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
