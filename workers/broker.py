"""The Redis broker transport: kombu's, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` client (and its table of ~200 response
callbacks) for every operation outside the consume loop: the bookkeeping of each delivered
message under late acks, each ack, each publish. In a simulator that hosts hundreds of nodes that
was a tenth of its CPU. A ``redis.Redis`` client is thread-safe (every command checks a
connection out of the pool), so the channel keeps one per connection pool and hands it out.

It also packs the consume loop's ``BRPOP`` from a per-queue cache: kombu rebuilds and re-encodes
the whole command (every queue the worker consumes, hundreds in a simulator) before each fetch,
and the order of the queues changes after every delivery (the queue just served goes last, for
fairness), so the command itself cannot be cached, but each queue's encoded part can.

It also computes the list of consumed queues when it changes, not on every poll, and encodes
the late-ack copy of each delivered message with orjson (``QoS``).

And it skips a message it cannot read. kombu decodes each message popped from a queue inside the
event loop's read handler, so bytes that are not JSON, or JSON that is not a kombu envelope, raised
out of the loop and Celery stopped the whole consumer ("Unrecoverable error"): the node took no
new work until its in-flight check ended and the worker restarted. Now bytes that are not JSON
are logged once by ``Transport.on_readable`` (the loop's public read callback) and dropped (the
message is already off the queue); JSON that is not a kombu envelope becomes a stand-in message
without a task header, in a content type no serializer accepts (``Message``), which Celery
logs once ("Can't decode message body") and drops. An envelope
that names an unknown task, or a payload in a content type the worker does not accept (pickle),
is rejected and logged by Celery itself.

Nothing else changes: the same commands, pipelines and connection pool.

``TRANSPORT`` is what ``workers.app`` sets as Celery's ``broker_transport``.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from time import monotonic, time
from typing import Any

import orjson
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

TRANSPORT = "workers.broker:Transport"
log = logging.getLogger(__name__)

# Content type of the stand-in for an envelope kombu cannot read: no serializer knows it.
UNREADABLE_TYPE = "application/x-autopilot-unreadable"


def readable_envelope(payload: object) -> bool:
    """Whether ``payload`` has the shape kombu's ``Message`` and our ``QoS.append`` read."""
    if not isinstance(payload, Mapping):
        return False
    props = payload.get("properties")
    if not isinstance(props, Mapping) or "delivery_tag" not in props:
        return False
    info = props.get("delivery_info")
    if not isinstance(info, Mapping) or not {"exchange", "routing_key"} <= info.keys():
        return False
    return isinstance(payload.get("headers"), Mapping | None) and isinstance(payload.get("body"), str | None)


def stand_in(payload: object) -> dict[str, Any]:
    """An envelope kombu can read in place of ``payload``: no task header and a body in a content
    type no serializer accepts (what came in, abridged), so Celery logs it once and drops it."""
    return {
        "body": base64.b64encode(repr(payload)[:200].encode()).decode(),
        "content-type": UNREADABLE_TYPE,
        "content-encoding": "binary",
        "headers": None,
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": ""},
            "body_encoding": "base64",
        },
    }


class Message(kombu_virtual.Message):
    """kombu's message, built from a stand-in when the envelope read from Redis is malformed."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        if not readable_envelope(payload):
            payload = stand_in(payload)
        try:
            super().__init__(payload, channel=channel, **kwargs)  # type: ignore[no-untyped-call]
        except ValueError:  # a body that is not valid in its declared encoding (base64)
            super().__init__(stand_in(payload), channel=channel, **kwargs)  # type: ignore[no-untyped-call]


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
        with self.pipe_or_acquire() as pipe:  # type: ignore[no-untyped-call]
            pipe.zadd(self.unacked_index_key, {delivery_tag: time()}).hset(
                self.unacked_key, delivery_tag, blob
            ).execute()
            # kombu's base QoS.append: the in-process record of unacked messages.
            kombu_virtual.QoS.append(self, message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    Message = Message
    _shared_client: Any = None
    _packed_keys: dict[str, bytes] | None = None
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

    def _brpop_start(self, timeout: Any = None) -> None:
        """kombu's ``_brpop_start``: one BRPOP over every consumed queue, in the cycle's order."""
        if self.global_keyprefix or list(self.priority_steps) != [0]:
            # Prefixed keys or several priority levels: kombu's own packing.
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        conn = self.client.connection
        encode = conn.encoder.encode
        packed = self._packed_keys
        if packed is None:
            packed = self._packed_keys = {}
        parts = [b"*%d\r\n$5\r\nBRPOP\r\n" % (len(queues) + 2)]
        for queue in queues:
            part = packed.get(queue)
            if part is None:
                part = packed[queue] = _bulk(encode(queue))
            parts.append(part)
        parts.append(_bulk(encode(timeout or 0)))
        self._in_poll = conn
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu declares it None
        conn.send_packed_command([b"".join(parts)])  # a list of chunks, as a packer returns


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string: ``$<length>\\r\\n<bytes>\\r\\n``."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def on_readable(self, fileno: int) -> None:
        """kombu's read handler; a message that cannot be decoded is logged and skipped.

        A broken connection still raises (Celery reconnects): only a message that is not JSON
        (``ValueError``: json's ``JSONDecodeError``, ``UnicodeDecodeError``) is caught.
        """
        try:
            super().on_readable(fileno)  # type: ignore[no-untyped-call]
        except tuple(self.connection_errors) + tuple(self.channel_errors):
            raise
        except ValueError as exc:
            log.error("skipped a message that is not JSON in a queue (%s: %.200s)", type(exc).__name__, exc)
