"""Limits that keep one API process answering whatever the nodes, Redis or clients do.

- ``Waits``: a bound on the requests that wait on nodes at once (``/status``, a run read with
  ``wait``). A request that finds every slot taken is answered ``503`` with ``Retry-After`` at
  once instead of queueing for a server thread, so the threads beyond the bound stay free for
  ``/healthz``, ``/readyz`` and the short requests, however many clients wait on a hung node.
- ``bound_publisher``: the broker connections the API publishes through time out after
  ``api_redis_timeout_s`` and are never retried, as the store's do (``ResultsStore.bound_timeouts``),
  so a frozen Redis costs a request that long at most, and the error handler answers ``503``.
- ``body_limit``: a request body over ``api_max_body`` is answered ``413`` from its
  ``Content-Length``, before a byte of it is read; a chunked body is read no further than one
  byte past the limit.
- ``json_depth``: the nesting depth of a parsed JSON body, checked without recursion.
- ``unhurried_answer``: the client timeout of ``autopilot api`` (``api.main``) bounds reading a
  request, never writing its answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import flask
from celery import Celery

from api.errors import ApiError
from autopilot import config

EXTENSION = "autopilot_waits"
RETRY_AFTER_S = 2
MAX_JSON_DEPTH = 32  # a run request is 3 deep; anything far deeper is not one


class Waits:
    """At most ``limit`` requests of this process wait on nodes at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the body of the ``with``; ``503`` with ``Retry-After`` when none is free."""
        if not self._slots.acquire(blocking=False):
            raise ApiError(
                503,
                "busy",
                f"this API process already serves {self.limit} waiting requests (AUTOPILOT_API_MAX_WAITS)",
                retry_after_s=RETRY_AFTER_S,
            )
        try:
            yield
        finally:
            self._slots.release()


def waits() -> Waits:
    """The ``Waits`` of the app handling the current request."""
    found: Waits = flask.current_app.extensions[EXTENSION]
    return found


def bound_publisher(app: Celery, settings: config.Settings) -> None:
    """The API's Celery app: broker sockets time out like the store's, and a failed publish is not retried
    (the request answers ``503`` at once; a client retries the whole request)."""
    timeout = settings.api_redis_timeout_s
    options = dict(app.conf.broker_transport_options or {})
    options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        task_publish_retry=False,
    )


def body_limit(max_body: int, length: int | None = None) -> None:
    """``413`` for a body over ``max_body``: as a ``before_request`` hook, from the declared
    Content-Length before reading it; with ``length``, for a chunked body as read (werkzeug
    stops reading it one byte past the limit: ``MAX_CONTENT_LENGTH``)."""
    if length is None:
        length = flask.request.content_length
    if length is not None and length > max_body:
        raise ApiError(413, "too_large", f"request body over the limit of {max_body} bytes (AUTOPILOT_API_MAX_BODY)")


def unhurried_answer(response: flask.Response) -> flask.Response:
    """``after_request``: lift the socket timeout of ``autopilot api --client-timeout`` before the answer is
    written. That timeout bounds a client that stalls while *sending*; a socket's timeout is the total
    of a ``sendall``, so a report of megabytes to a slow link would be cut short by it."""
    sock = flask.request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(None)
    return response


def json_depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects; a scalar is 0."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest
