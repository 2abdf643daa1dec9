"""``create_app``: the Flask application factory.

Services (settings, results store, dispatcher, cluster seam, check registry) are built once and
kept in ``app.extensions["autopilot"]``; tests pass their own (fakeredis, ``FakeDispatcher``).
What the app builds itself is bounded (``api.limits``): Redis and broker sockets time out after
``api_redis_timeout_s`` without retries, at most ``api_max_waits`` requests wait on nodes at once,
and a body over ``api_max_body`` is answered 413 before it is read.
With ``settings.api_token`` set, every path but ``/healthz``, ``/readyz`` and ``/metrics`` needs
``Authorization: Bearer <token>``. ``/metrics`` is served by ``api.metrics``. In a cluster (or
with a kubeconfig) the cluster seam resolves ``job``/``nodelabel`` and publishes operator clears.
"""

from __future__ import annotations

import hmac
import logging
import os

from flask import Flask, request

from api import errors as api_errors
from api import limits, metrics
from api.encoding import FastJSONProvider
from api.errors import ApiError
from api.routes import bp
from api.services import EXTENSION, Services
from autopilot import cluster as cluster_mod
from autopilot import config, registry
from autopilot.cluster import ClusterClient
from workers.dispatch import CeleryDispatcher, Dispatcher
from workers.runs import StoreClock
from workers.store import ResultsStore

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def create_app(
    settings: config.Settings | None = None,
    *,
    store: ResultsStore | None = None,
    dispatcher: Dispatcher | None = None,
    cluster: ClusterClient | None = None,
    checks: registry.CheckRegistry | None = None,
) -> Flask:
    """The API. Anything not given is built from ``settings`` (default: the environment)."""
    settings = settings or config.Settings.from_env(os.environ)
    if checks is None:
        checks = registry.shipped(settings.extra_checks)  # the app factory assembles the process
    if store is None or dispatcher is None:
        from workers import app as celery_app  # Celery is only needed when nothing is injected

        if store is None:
            store = celery_app.make_store(settings)
            store.bound_timeouts(settings.api_redis_timeout_s)
        if dispatcher is None:
            publisher = celery_app.create_celery(settings, checks)
            limits.bound_publisher(publisher, settings)
            dispatcher = CeleryDispatcher(publisher)

    if cluster is None:
        cluster = cluster_mod.from_settings(settings)  # None without Kubernetes: labels stay local

    app = Flask(__name__, static_folder=None)
    # werkzeug stops reading a chunked body one byte past the limit, so that a body over it is
    # told from one at it (``limits.body_limit`` answers a declared Content-Length over it
    # before anything is read).
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body + 1
    app.extensions[limits.EXTENSION] = limits.Waits(settings.api_max_waits)
    app.json = FastJSONProvider(app)
    app.json.sort_keys = False  # keep reports in their logical order
    # The runs' deadlines and stamps on the store's clock, as beat's ticks make theirs (``StoreClock``).
    app.extensions[EXTENSION] = Services(
        settings=settings, store=store, dispatcher=dispatcher, checks=checks, cluster=cluster, clock=StoreClock(store)
    )
    api_errors.register(app)
    app.before_request(lambda: limits.body_limit(settings.api_max_body))
    app.after_request(limits.unhurried_answer)
    _install_auth(app, settings.api_token)
    app.register_blueprint(bp)
    metrics.init_app(app, store, settings, checks)
    return app


def _install_auth(app: Flask, token: str) -> None:
    if not token:
        return
    expected = token.encode()

    @app.before_request
    def require_token() -> None:
        if request.path in OPEN_PATHS:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 7235: clients send "bearer" too); the token is compared
        # in constant time, so it cannot leak through response timing.
        if not hmac.compare_digest(given.lstrip(" ").encode(), expected) or scheme.lower() != "bearer":
            raise ApiError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")
