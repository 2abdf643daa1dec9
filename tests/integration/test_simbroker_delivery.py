"""The simulator's transport delivers what kombu's would, in kombu's order, with fewer ``BRPOP``s.

Against a real redis-server: messages published by kombu as released (the API's path) are consumed
once through kombu's Redis transport and once through ``workers.simbroker``'s, with the same QoS;
the two must deliver the same messages in the same order and leave the same ones in Redis.
"""

from __future__ import annotations

import base64
import json
import logging
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


def body_of(raw: Any) -> Any:
    """The body of a kombu message as it lies in a queue."""
    return json.loads(base64.b64decode(json.loads(raw)["body"]))


def brpops(redis_url: str) -> int:
    stats = redis.Redis.from_url(redis_url).info("commandstats")
    return int(stats.get("cmdstat_brpop", {}).get("calls", 0))


def drain_all(redis_url: str, transport: Transport, prefetch: int) -> tuple[list[tuple[str, str]], int]:
    """Every published message as delivered (queue, body), acknowledging what was delivered after each
    read; and the ``BRPOP``s it took."""
    redis.Redis.from_url(redis_url).config_resetstat()
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
    return delivered, brpops(redis_url)


@pytest.mark.parametrize("prefetch", [1, 3, 8])
def test_the_simulators_transport_delivers_in_kombus_order_with_fewer_brpops(redis_url: str, prefetch: int) -> None:
    publish(redis_url, PUBLISHED)
    stock, stock_brpops = drain_all(redis_url, kombu_redis.Transport, prefetch)
    publish(redis_url, PUBLISHED)
    ours, our_brpops = drain_all(redis_url, simbroker.Transport, prefetch)

    assert sorted(stock) == sorted(PUBLISHED)
    assert ours == stock  # the same round robin between queues, each queue in its own order
    for queue in QUEUES:
        assert [b for q, b in ours if q == queue] == [b for q, b in PUBLISHED if q == queue]
    assert stock_brpops >= len(PUBLISHED)
    if prefetch == 1:  # no room beside the message a BRPOP brings: nothing is fetched ahead
        assert our_brpops == stock_brpops
    else:
        assert our_brpops < stock_brpops


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


def test_an_unreadable_message_fetched_ahead_is_skipped_and_the_rest_delivered(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    publish(redis_url, [(QUEUES[0], "first")])
    redis.Redis.from_url(redis_url).lpush(QUEUES[1], b"\xffnot json")
    publish(redis_url, [(QUEUES[2], "third")])
    delivered: list[str] = []
    with (
        caplog.at_level(logging.ERROR),
        consumer(redis_url, simbroker.Transport, 3, lambda body, message: delivered.append(body)) as conn,
    ):
        conn.drain_events(timeout=5)
    assert delivered == ["first", "third"]
    assert "skipped a message that cannot be read from a queue" in caplog.text


def test_messages_fetched_ahead_go_back_to_their_queues_when_a_delivery_fails(redis_url: str) -> None:
    publish(redis_url, [(QUEUES[0], "a0"), (QUEUES[1], "b0"), (QUEUES[2], "c0"), (QUEUES[2], "c1"), (QUEUES[3], "d0")])
    delivered: list[str] = []
    failing = ["b0"]

    def on_message(body: Any, message: Any) -> None:
        if body in failing:
            raise RuntimeError("the consumer failed")
        delivered.append(body)
        message.ack()

    client = redis.Redis.from_url(redis_url)
    with consumer(redis_url, simbroker.Transport, 4, on_message) as conn:
        with pytest.raises(RuntimeError):
            conn.drain_events(timeout=5)
        assert delivered == ["a0"]
        # c0 and d0 were popped with b0: each is back at the end its queue is popped from, next out.
        assert [int(client.llen(q)) for q in QUEUES[:4]] == [0, 0, 2, 1]
        assert [body_of(client.lindex(q, -1)) for q in QUEUES[2:4]] == ["c0", "d0"]
    failing.clear()  # closing the channel gave b0 (delivered, not acknowledged) back, as kombu does
    delivered.clear()
    with consumer(redis_url, simbroker.Transport, 4, on_message) as conn:
        while len(delivered) < 4:
            conn.drain_events(timeout=5)
    assert sorted(delivered) == ["b0", "c0", "c1", "d0"]
    assert [b for b in delivered if b.startswith("c")] == ["c0", "c1"]
