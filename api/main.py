"""``autopilot api``: serve the API with gunicorn (threads, so long-polls do not block others).

The bind address is ``--host``, else ``AUTOPILOT_API_HOST``, else 127.0.0.1 when no token is
configured (an open API must not face the network by accident) and 0.0.0.0 when one is. The port
is ``--port``, else ``AUTOPILOT_API_PORT`` (3333). ``--dev`` uses Flask's development server.

Each worker process runs ``--threads`` threads, by default ``AUTOPILOT_API_MAX_WAITS`` plus
``SPARE_THREADS``: requests that wait on nodes take at most ``api_max_waits`` of them
(``api.limits``), so the spare ones always answer ``/healthz``, ``/readyz`` and short requests.

Before gunicorn forks, ``PROMETHEUS_MULTIPROC_DIR`` is pointed at a fresh directory, so every
worker process writes its request metrics there and ``/metrics`` sums them (``api.metrics``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]
from gunicorn.http.errors import (  # type: ignore[import-untyped]
    ConfigurationProblem,
    ForbiddenProxyRequest,
    LimitRequestHeaders,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.workers.gthread import ThreadWorker  # type: ignore[import-untyped]

from autopilot import config, errors, parsing

log = logging.getLogger("autopilot.api")

SPARE_THREADS = 8  # threads no waiting request may take
CLIENT_TIMEOUT_S = 10.0  # a client silent this long, mid-request, loses its connection (--client-timeout)
# gunicorn's own answers to a request it cannot parse, but the plain 400s
_PARSE_ANSWERS = (
    (LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (UnsupportedTransferCoding, 501, "Not Implemented"),
)


class BoundedThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn's threaded worker, with two bounds on what a client can do to it.

    - A client that stops sending mid-request (headers or body) is dropped after ``client_timeout_s``:
      gunicorn reads a request on a pool thread from a blocking socket without a timeout, so 120
      connections that each sent half a request held every thread, and ``/healthz`` hung. The app
      lifts the timeout before it writes its answer (``limits.unhurried_answer``).
    - A request gunicorn cannot parse (a request line over its limit, a bad header) is answered with
      the API's JSON error body, not gunicorn's HTML page.
    """

    client_timeout_s = CLIENT_TIMEOUT_S

    def handle(self, conn: Any) -> Any:
        conn.sock.settimeout(self.client_timeout_s)  # gthread made it blocking (no timeout) just before
        return super().handle(conn)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if not isinstance(exc, ParseException) or isinstance(exc, ConfigurationProblem | ForbiddenProxyRequest):
            super().handle_error(req, client, addr, exc)
            return
        status, reason = next(((c, r) for kind, c, r in _PARSE_ANSWERS if isinstance(exc, kind)), (400, "Bad Request"))
        self.log.warning("invalid request from %s: %s", (addr or ("?",))[0], exc)
        body = json.dumps({"error": "bad_request", "field": "request", "detail": str(exc)[:200]}).encode()
        head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        try:
            client.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        except OSError:
            pass  # the client is gone: nothing to tell it


def bind_host(settings: config.Settings, requested: str | None) -> tuple[str, str]:
    """(address, why) for the listening socket."""
    if requested:
        return requested, "--host"
    if settings.api_host:
        return settings.api_host, "AUTOPILOT_API_HOST"
    if settings.api_token:
        return "0.0.0.0", "a token is set (AUTOPILOT_API_TOKEN), so the API may face the network"
    return "127.0.0.1", "no AUTOPILOT_API_TOKEN: an unauthenticated API listens on loopback only"


class GunicornServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn run in-process; each worker builds its own app after the fork (no shared sockets)."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_metrics_dir() -> str:
    """Point prometheus_client's multiprocess mode at a fresh directory, for the processes to come.

    Fresh at every start: files a previous API left would count its requests again. It must be set
    before prometheus_client is first imported (it picks its value class then); nothing on the way
    to here imports it, and the check below says so loudly if that ever changes.
    """
    if "prometheus_client.values" in sys.modules:
        raise errors.ConfigError("prometheus_client was imported before autopilot api could set multiprocess mode")
    path = tempfile.mkdtemp(prefix="autopilot-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autopilot api", description="Serve the Autopilot HTTP API.")
    p.add_argument("--port", type=int, default=None, help="port (default AUTOPILOT_API_PORT, 3333)")
    p.add_argument(
        "--host",
        default=None,
        help="bind address (default AUTOPILOT_API_HOST; unset: 127.0.0.1, or 0.0.0.0 with AUTOPILOT_API_TOKEN set)",
    )
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"threads per worker, more than AUTOPILOT_API_MAX_WAITS (default: it plus {SPARE_THREADS})",
    )
    p.add_argument(
        "--client-timeout",
        type=float,
        default=CLIENT_TIMEOUT_S,
        help=f"seconds a client may stay silent mid-request before it is dropped (default {CLIENT_TIMEOUT_S:g})",
    )
    p.add_argument("--dev", action="store_true", help="Flask's development server instead of gunicorn")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.Settings.from_env(os.environ)
        if not settings.redis_url:
            raise errors.ConfigError("AUTOPILOT_REDIS_URL is not set (or use `autopilot up`)")
        if args.host:
            args.host = config.bind_address(args.host, "--host")  # gunicorn retried ";rm", then exited 1
        port = settings.api_port if args.port is None else parsing.check_port(args.port, field="--port")
        threads = args.threads if args.threads is not None else settings.api_max_waits + SPARE_THREADS
        if not 1 <= args.workers <= 64 or not 1 <= threads <= 1024:
            raise errors.BadParameter("--workers", "workers must be 1..64 and threads 1..1024")
        if not 0.1 <= args.client_timeout <= 3600:  # also refuses nan
            raise errors.BadParameter("--client-timeout", f"must be 0.1..3600 seconds, got {args.client_timeout}")
        if threads <= settings.api_max_waits:
            raise errors.BadParameter(
                "--threads",
                f"{threads} threads leave none for /healthz while {settings.api_max_waits} requests wait "
                "(AUTOPILOT_API_MAX_WAITS): give more threads or a lower AUTOPILOT_API_MAX_WAITS",
            )
    except errors.ConfigError as exc:
        print(f"autopilot api: {exc}", file=sys.stderr)
        return 2
    host, why = bind_host(settings, args.host)
    # Printed, not logged: where an API listens, and why, must show whatever the log level.
    print(f"autopilot api: listening on {host}:{port} ({why})", file=sys.stderr, flush=True)

    def factory() -> Flask:
        from api.app import create_app

        return create_app(settings)

    if args.dev:
        factory().run(host=host, port=port, threaded=True)
        return 0
    try:
        metrics_dir = multiprocess_metrics_dir()
    except errors.ConfigError as exc:
        print(f"autopilot api: {exc}", file=sys.stderr)
        return 2
    GunicornServer(
        factory,
        {
            "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "workers": args.workers,
            "worker_class": type("Worker", (BoundedThreadWorker,), {"client_timeout_s": args.client_timeout}),
            "threads": threads,
            # gthread workers heartbeat from their main loop, so a long /status does not count
            # against this; it only bounds a worker that is truly stuck.
            "timeout": 60,
            "graceful_timeout": 15,
            "keepalive": 5,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "autopilot-api",
        },
    ).run()
    shutil.rmtree(metrics_dir, ignore_errors=True)  # the processes that wrote there are gone
    return 0
