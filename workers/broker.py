"""The Redis broker transport: kombu's, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` client (and its table of ~200 response
callbacks) for every operation outside the consume loop: the bookkeeping of each delivered
message under late acks, each ack, each publish. In a simulator that hosts hundreds of nodes that
was a tenth of its CPU. A ``redis.Redis`` client is thread-safe (every command checks a
connection out of the pool), so the channel keeps one per connection pool and hands it out.
Nothing else changes: the same commands, pipelines and connection pool.

``TRANSPORT`` is what ``workers.app`` sets as Celery's ``broker_transport``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "workers.broker:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

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
