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

TRANSPORT = "workers.simbroker:Transport"
# The kombu release this transport's private overrides were written and checked against.
KOMBU_CONTRACT = "5.7.0"
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
