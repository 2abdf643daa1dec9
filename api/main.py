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
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from autopilot import config, errors

log = logging.getLogger("autopilot.api")

SPARE_THREADS = 8  # threads no waiting request may take


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
    p.add_argument("--host", default=None, help="bind address (default: see `autopilot api --help` text)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"threads per worker, more than AUTOPILOT_API_MAX_WAITS (default: it plus {SPARE_THREADS})",
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
        port = args.port if args.port is not None else settings.api_port
        if not 1 <= port <= 65535:
            raise errors.BadParameter("--port", f"must be 1..65535, got {port}")
        threads = args.threads if args.threads is not None else settings.api_max_waits + SPARE_THREADS
        if not 1 <= args.workers <= 64 or not 1 <= threads <= 1024:
            raise errors.BadParameter("--workers", "workers must be 1..64 and threads 1..1024")
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
            "worker_class": "gthread",
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
