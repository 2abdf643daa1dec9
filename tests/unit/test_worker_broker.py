"""The worker's broker channel packs the same BRPOP that kombu would, in the cycle's current order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kombu.utils.scheduling import round_robin_cycle
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from workers.broker import Channel

QUEUES = ["autopilot.node.sim-0", "autopilot.node.sim-1", "autopilot.control"]


class Conn:
    def __init__(self) -> None:
        self.encoder = Encoder("utf-8", "strict", False)
        self.sent: list[bytes] = []

    def send_packed_command(self, chunks: list[bytes]) -> None:
        assert isinstance(chunks, list)  # redis-py sends each item of what it is given
        self.sent.append(b"".join(chunks))


def kombu_packing(conn: Conn, *args: Any) -> bytes:
    return b"".join(PythonRespSerializer(6000, conn.encoder.encode).pack(*args))


def channel() -> Any:
    conn = Conn()
    return SimpleNamespace(
        global_keyprefix="",
        priority_steps=[0],
        brpop_timeout=1,
        active_queues=set(QUEUES),
        _queue_cycle=round_robin_cycle(list(QUEUES)),
        client=SimpleNamespace(connection=conn),
        _packed_keys=None,
        _in_poll=None,
        _brpop_sent_at=None,
    )


def test_brpop_is_kombus_command_in_the_cycles_order_after_each_rotation() -> None:
    chan = channel()
    conn = chan.client.connection
    Channel._brpop_start(chan)
    chan._queue_cycle.rotate("autopilot.node.sim-0")  # the queue just served goes last
    Channel._brpop_start(chan, timeout=2.5)
    assert conn.sent == [
        kombu_packing(conn, "BRPOP", *QUEUES, 1),
        kombu_packing(conn, "BRPOP", "autopilot.node.sim-1", "autopilot.control", "autopilot.node.sim-0", 2.5),
    ]
    assert chan._in_poll is conn and chan._brpop_sent_at is not None
    assert set(chan._packed_keys) == set(QUEUES)  # each queue encoded once


def test_no_queues_sends_nothing() -> None:
    chan = channel()
    chan.active_queues = set()
    chan._queue_cycle = round_robin_cycle([])
    Channel._brpop_start(chan)
    assert chan.client.connection.sent == [] and chan._in_poll is None
