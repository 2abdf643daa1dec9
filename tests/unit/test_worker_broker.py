"""The simulator's broker channel sends what kombu would: the same late-ack copy of each message,
over the queues it consumes now."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import kombu
import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.transport.virtual import base as virtual_base
from kombu.utils import json as kombu_json

from workers import simbroker
from workers.simbroker import Channel, QoS

QUEUES = ["autopilot.node.sim-0", "autopilot.node.sim-1", "autopilot.control"]


class Pipe:
    """Records what a late-ack bookkeeping pipeline would send."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def zadd(self, *args: Any) -> Pipe:
        self.calls.append(("zadd", args))
        return self

    def hset(self, *args: Any) -> Pipe:
        self.calls.append(("hset", args))
        return self

    def execute(self) -> None:
        self.calls.append(("execute", ()))


def qos(cls: type) -> Any:
    q = cls.__new__(cls)
    q.unacked_index_key, q.unacked_key = "unacked_index", "unacked"
    q._dirty, q._delivered = set(), {}
    q._quick_append = q._delivered.__setitem__
    q.pipe = Pipe()

    @contextmanager
    def pipe_or_acquire(pipe: Any = None, client: Any = None) -> Iterator[Pipe]:
        yield q.pipe

    q.pipe_or_acquire = pipe_or_acquire
    return q


def test_the_late_ack_copy_of_a_message_is_what_kombu_would_store() -> None:
    raw = {
        "body": "W1tdLCB7InJ1bl9pZCI6ICJyIn1d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"id": "t-1", "task": "autopilot.run_checks", "expires": "2026-11-30T01:00:00+00:00", "retries": 0},
        "properties": {"delivery_tag": "tag-1", "priority": 0, "delivery_info": {"routing_key": "q"}},
    }
    message = SimpleNamespace(_raw=raw, delivery_info={"exchange": "", "routing_key": "autopilot.node.a"})
    ours, kombus = qos(QoS), qos(kombu_redis.QoS)
    ours.append(message, "tag-1")
    kombus.append(message, "tag-1")
    (name, (key, tag, blob)) = ours.pipe.calls[1]
    (_, (_, _, expected)) = kombus.pipe.calls[1]
    assert (name, key, tag) == ("hset", "unacked", "tag-1")
    assert kombu_json.loads(blob) == kombu_json.loads(expected)  # restore reads back the same message
    assert [c[0] for c in ours.pipe.calls] == [c[0] for c in kombus.pipe.calls] == ["zadd", "hset", "execute"]
    assert ours._delivered == kombus._delivered == {"tag-1": message}


def test_consumed_queues_are_recomputed_when_consuming_changes(monkeypatch: Any) -> None:
    chan = Channel.__new__(Channel)
    chan._active_queues = ["autopilot.node.a"]
    chan.active_fanout_queues = set()
    assert chan.active_queues == ["autopilot.node.a"]
    assert chan.active_queues is chan.active_queues  # not rebuilt per poll

    def consume(self: Any, queue: str, *args: Any, **kwargs: Any) -> str:
        self._active_queues.append(queue)
        return queue

    def cancel(self: Any, queue: str) -> None:
        self._active_queues.remove(queue)

    monkeypatch.setattr(kombu_redis.Channel, "basic_consume", consume)
    monkeypatch.setattr(kombu_redis.Channel, "basic_cancel", cancel)
    Channel.basic_consume(chan, "autopilot.node.b")
    assert chan.active_queues == ["autopilot.node.a", "autopilot.node.b"]
    Channel.basic_cancel(chan, "autopilot.node.a")
    assert chan.active_queues == ["autopilot.node.b"]


# ------------------------------------------------------------------ the contract with kombu


def test_the_simulator_transport_is_written_against_the_installed_kombu() -> None:
    # Its overrides reach into kombu's private Redis channel: a new kombu release must be checked
    # (this file) before the simulator uses it; meanwhile ``transport_for`` gives stock kombu.
    assert kombu.__version__ == simbroker.KOMBU_CONTRACT
    assert callable(kombu_redis.Channel.conn_or_acquire) and callable(kombu_redis.QoS.pipe_or_acquire)
    assert callable(kombu_redis.Channel._create_client)
    kombus = inspect.getsource(kombu_redis) + inspect.getsource(kombu_virtual) + inspect.getsource(virtual_base)
    for name in ("self._active_queues", "self.active_fanout_queues", "self._raw"):
        assert name in kombus, name


def test_a_simulator_on_another_kombu_gets_kombus_own_transport(monkeypatch: Any) -> None:
    assert simbroker.transport_for("redis://127.0.0.1:6379/0") == simbroker.TRANSPORT
    assert simbroker.transport_for("rediss://127.0.0.1:6379/0") is None
    monkeypatch.setattr(kombu, "__version__", "9.9.9")
    assert simbroker.transport_for("redis://127.0.0.1:6379/0") is None


def test_real_workers_run_kombu_as_released_with_the_skipping_consumer() -> None:
    from autopilot import config
    from workers import broker
    from workers.app import create_celery

    app = create_celery(config.Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert app.conf.broker_transport in (None, "redis")
    assert app.conf.worker_consumer == broker.CONSUMER


def test_an_unreadable_message_is_logged_and_skipped_a_broken_connection_still_raises(caplog: Any) -> None:
    from workers import broker

    class Transport:
        connection_errors = (ConnectionError, KeyError)  # as kombu's Redis transport says
        channel_errors = ()

        def __init__(self) -> None:
            self.next: BaseException | None = None
            self.reads = 0

        def on_readable(self, fileno: int) -> None:
            self.reads += 1
            if self.next is not None:
                raise self.next

    transport = Transport()
    broker.skip_unreadable(transport)
    broker.skip_unreadable(transport)  # wrapped once, however often the consumer reconnects
    for bad in (json.JSONDecodeError("Expecting value", "x", 0), KeyError("properties")):
        transport.next = bad
        transport.on_readable(3)
    assert [r.getMessage()[:48] for r in caplog.records] == [
        "skipped a message that cannot be read from a queu"[:48]
    ] * 2
    transport.next = ConnectionError("gone")
    with pytest.raises(ConnectionError):
        transport.on_readable(3)
    transport.next = KeyError(3)  # kombu's poller no longer knows socket 3: Celery reconnects
    with pytest.raises(KeyError):
        transport.on_readable(3)
    assert transport.reads == 4
