"""The simulator's transport delivers what kombu's would, in kombu's order, within the QoS.

Against a real redis-server: messages published by kombu as released (the API's path) are consumed
once through kombu's Redis transport and once through ``workers.simbroker``'s, with the same QoS;
the two must deliver the same messages in the same order (kombu's round robin between queues, each
queue in its own order). A change to how the simulator fetches messages (docs/PERFORMANCE.md lists
what was tried) must keep this.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis

from workers import simbroker

OPTIONS = {"priority_steps": [0], "ack_emulation": False}
QUEUES = [f"autopilot.node.sim-{i}" for i in range(6)]
# Per queue, in publish order: some queues hold several messages, some none.
PUBLISHED = [(QUEUES[i], f"{QUEUES[i]}#{n}") for n in range(3) for i in (0, 2, 3, 5) if n < {0: 3, 2: 1, 3: 2, 5: 3}[i]]

Transport = type[kombu_redis.Transport]


@contextmanager
def consumer(
    redis_url: str, transport: Transport, prefetch: int, on_message: Callable[[Any, Any], None]
) -> Iterator[Connection]:
    with Connection(redis_url, transport=transport, transport_options=OPTIONS) as conn:
        queues = [Queue(q, Exchange(q), routing_key=q) for q in QUEUES]
        with Consumer(conn, queues=queues, callbacks=[on_message], prefetch_count=prefetch):
            yield conn


def publish(redis_url: str, messages: list[tuple[str, Any]]) -> None:
    with Connection(redis_url, transport_options=OPTIONS) as conn:
        producer = Producer(conn)
        for queue, body in messages:
            producer.publish(body, exchange="", routing_key=queue, serializer="json")


def drain_all(redis_url: str, transport: Transport, prefetch: int) -> list[tuple[str, str]]:
    """Every published message as delivered (queue, body), acknowledging what was delivered after each read."""
    delivered: list[tuple[str, str]] = []
    unacked: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        delivered.append((message.delivery_info["routing_key"], body))
        unacked.append(message)

    with consumer(redis_url, transport, prefetch, on_message) as conn:
        while len(delivered) < len(PUBLISHED):
            conn.drain_events(timeout=5)
            while unacked:
                unacked.pop().ack()
    return delivered


@pytest.mark.parametrize("prefetch", [1, 4])
def test_the_simulators_transport_delivers_in_kombus_order(redis_url: str, prefetch: int) -> None:
    publish(redis_url, PUBLISHED)
    stock = drain_all(redis_url, kombu_redis.Transport, prefetch)
    publish(redis_url, PUBLISHED)
    ours = drain_all(redis_url, simbroker.Transport, prefetch)

    assert sorted(stock) == sorted(PUBLISHED)
    assert ours == stock  # the same round robin between queues, each queue in its own order
    for queue in QUEUES:
        assert [b for q, b in ours if q == queue] == [b for q, b in PUBLISHED if q == queue]


def test_no_more_than_the_qos_allows_is_taken_off_the_queues(redis_url: str) -> None:
    publish(redis_url, PUBLISHED)
    delivered: list[str] = []
    with consumer(redis_url, simbroker.Transport, 4, lambda body, message: delivered.append(body)) as conn:
        while len(delivered) < 4:
            conn.drain_events(timeout=5)
        with pytest.raises(socket.timeout):  # nothing acknowledged: no room for a fifth
            conn.drain_events(timeout=1.5)
        assert len(delivered) == 4
        client = redis.Redis.from_url(redis_url)
        assert sum(int(client.llen(q)) for q in QUEUES) == len(PUBLISHED) - 4
