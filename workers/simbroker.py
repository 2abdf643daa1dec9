"""The simulator's broker transport: kombu's Redis transport, made cheap for hundreds of queues.

Simulator-only (``autopilot worker --simulate``, one process hosting hundreds of nodes); real
workers use kombu's transport as released. It overrides only public methods of kombu's Redis
channel and QoS, but reads private parts of them (``_active_queues``, ``_create_client``, a
message's ``_raw``), so it is tied to the kombu version it was written against (``KOMBU_CONTRACT``):
``tests/unit/test_worker_broker.py`` checks that it still sends what kombu would, and
``transport_for`` gives stock kombu to a simulator under any other kombu version.

kombu's Redis channel builds a new ``redis.Redis`` client (and its table of ~200 response
callbacks) for every operation outside the consume loop: the bookkeeping of each delivered
message under late acks, each ack, each publish. In a simulator that hosts hundreds of nodes that
was a tenth of its CPU. A ``redis.Redis`` client is thread-safe (every command checks a
connection out of the pool), so the channel keeps one per connection pool and hands it out.

It also computes the list of consumed queues when it changes, not on every poll, and encodes
the late-ack copy of each delivered message with orjson (``QoS``).

A message that cannot be read is skipped as on a real worker (``workers.broker.Consumer``).
Nothing else changes: the same commands, pipelines and connection pool. (It used to pack the
consume loop's ``BRPOP`` itself, overriding kombu's private ``_brpop_start``; measured back to
back at 1,000 nodes that saved nothing beyond the spread between runs, so kombu packs it.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from time import time
from typing import Any

import kombu
import orjson
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

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

class QoS(kombu_redis.QoS):
    """kombu's late-ack bookkeeping, with the delivered message encoded by orjson.

    ``append`` stores each delivered message (until its ack) so a dead worker's message can be
    restored; its ``json.dumps`` of the whole message was a few percent of a simulator's CPU.
    The message is the JSON envelope as read from Redis (plain JSON values), so orjson writes the
    same JSON that kombu's ``loads`` reads back on restore.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        try:
            blob = orjson.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        except orjson.JSONEncodeError:  # something only kombu's encoder knows
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}).hset(
                self.unacked_key, delivery_tag, blob
            ).execute()
            # kombu's base QoS.append: the in-process record of unacked messages.
            kombu_virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS
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
