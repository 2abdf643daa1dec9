"""The simulator's broker channel consumes the queues it consumes now, with kombu's ack emulation off;
real workers run kombu as released."""

from __future__ import annotations

import inspect
import json
from typing import Any

import kombu
import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.transport.virtual import base as virtual_base

from workers import simbroker
from workers.simbroker import Channel

QUEUES = ["autopilot.node.sim-0", "autopilot.node.sim-1", "autopilot.control"]


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
    for name in ("self._active_queues", "self.active_fanout_queues"):
        assert name in kombus, name


def test_a_simulator_on_another_kombu_gets_kombus_own_transport(monkeypatch: Any) -> None:
    assert simbroker.transport_for("redis://127.0.0.1:6379/0") == simbroker.TRANSPORT
    assert simbroker.transport_for("rediss://127.0.0.1:6379/0") is None
    monkeypatch.setattr(kombu, "__version__", "9.9.9")
    assert simbroker.transport_for("redis://127.0.0.1:6379/0") is None


def test_a_simulator_turns_kombus_ack_emulation_off_and_keeps_its_other_options() -> None:
    """``ack_emulation`` is a public option of kombu's Redis channel; off, the channel takes kombu's
    in-process QoS, which writes nothing to Redis per delivery or ack (test_faults shows a simulator's
    message in flight is not in Redis)."""
    options = simbroker.transport_options({"visibility_timeout": 900, "priority_steps": [0]})
    assert options == {"visibility_timeout": 900, "priority_steps": [0], "ack_emulation": False}
    assert "ack_emulation" in kombu_redis.Channel.from_transport_options
    assert "if not self.ack_emulation:" in inspect.getsource(kombu_redis.Channel.__init__)


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
