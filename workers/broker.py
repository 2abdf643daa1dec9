"""The workers' consumer: Celery's, on kombu as released, skipping a message it cannot read.

kombu's Redis transport decodes each message popped from a queue inside the event loop's read
handler (``Transport.on_readable``), before Celery sees it: bytes that are not JSON, or JSON
that is not a kombu envelope, raised out of the loop and Celery stopped the whole consumer
("Unrecoverable error"). The node took no new work until its in-flight check ended and the
worker restarted.

``Consumer`` is Celery's consumer (set through Celery's ``worker_consumer`` setting). Each
broker connection it reads from gets its transport's public read callback wrapped
(``skip_unreadable``) before the transport registers it with the event loop: a message that
cannot be decoded is logged once and dropped (it is already off the queue), and the loop goes on
consuming. A broken connection still raises, so Celery reconnects as before (and restores the
in-flight messages it had not acknowledged: a reconnect for a bad message would run them twice). What kombu can read
but Celery must not run is Celery's own business, through its public paths: an envelope naming an
unknown task is rejected and logged ("Received unregistered task"), and a payload in a content
type outside ``accept_content`` (pickle) is refused and logged ("Can't decode message body").

``CONSUMER`` is what ``workers.app`` sets as ``worker_consumer``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

CONSUMER = "workers.broker:Consumer"
log = logging.getLogger(__name__)

# What kombu raises building a message from what it read: not JSON (json's JSONDecodeError,
# UnicodeDecodeError: ValueError), or JSON without an envelope's fields and types.
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError)


def skip_unreadable(transport: Any) -> None:
    """Wrap ``transport.on_readable`` (on this instance) so an unreadable message is logged and skipped.

    A transport without a read callback (one that is polled, not event driven) is left alone.
    """
    read = getattr(transport, "on_readable", None)
    if read is None or getattr(read, "skips_unreadable", False):
        return
    fatal = tuple(getattr(transport, "connection_errors", ())) + tuple(getattr(transport, "channel_errors", ()))
    transport.on_readable = _guarded(read, fatal)


def _guarded(read: Callable[[int], Any], fatal: tuple[type[BaseException], ...]) -> Callable[[int], Any]:
    @functools.wraps(read)
    def on_readable(fileno: int) -> Any:
        try:
            return read(fileno)
        except UNREADABLE as exc:
            # kombu's Redis transport counts KeyError as a connection error: its poller raises one,
            # keyed by the socket, for a socket it no longer knows. That one is Celery's to handle
            # (it reconnects); a KeyError of a message's missing field is the message's fault.
            if isinstance(exc, KeyError) and exc.args[:1] == (fileno,):
                raise
            if not isinstance(exc, KeyError) and isinstance(exc, fatal):
                raise
            log.error("skipped a message that cannot be read from a queue (%s: %.200s)", type(exc).__name__, exc)
            return None

    on_readable.skips_unreadable = True  # type: ignore[attr-defined]
    return on_readable


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer; the connections it reads tasks from skip messages they cannot read."""

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        conn = super().connection_for_read(heartbeat=heartbeat)
        skip_unreadable(conn.transport)
        return conn
