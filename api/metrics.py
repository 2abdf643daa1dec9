"""``/metrics`` on the API: the cluster's results (from the store) and the API's own request metrics.

``init_app(app, store, settings)`` registers the route and the request hooks. Everything goes
into a private ``CollectorRegistry`` kept in ``app.extensions["autopilot_metrics"]``, never the
process-global default registry, so several apps (tests, ``autopilot up``) never collide.

- ``autopilot.metrics.ResultsCollector`` reads one snapshot of the results store per scrape
  (five pipelined Redis round trips whatever the node count), so one scrape shows every node.
- ``autopilot_api_requests_total{method,endpoint,code}`` and
  ``autopilot_api_request_duration_seconds{method,endpoint}``: ``endpoint`` is the Flask URL
  rule (``/api/v1/nodes/<name>``), never the raw path, and unknown methods fold into ``OTHER``,
  so a scanner cannot blow up the label cardinality.

``/metrics`` needs no token (ARCHITECTURE.md 4.5): the app's auth hook must exempt it.
Under gunicorn with several worker processes the request metrics are per process (the results
metrics are not: they come from Redis).
"""

from __future__ import annotations

import dataclasses
import time

import flask
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from autopilot import config
from autopilot.events.metrics import EventsCollector
from autopilot.gpumetrics import GpuCollector
from autopilot.metrics import NodeInfo, ResultsCollector, Snapshot
from workers import fleet, follower, reconcile
from workers.store import ResultsStore

EXTENSION = "autopilot_metrics"
PATH = "/metrics"
UNMATCHED = "<unmatched>"  # endpoint label of requests that matched no route (404s, scanners)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_START = "_autopilot_metrics_start"

# Buckets for an API whose gathers wait up to a node deadline (default 60 s).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclasses.dataclass(frozen=True)
class ApiMetrics:
    """What ``init_app`` registered (reachable as ``app.extensions["autopilot_metrics"]``)."""

    registry: CollectorRegistry
    requests: Counter
    duration: Histogram
    collector: ResultsCollector


def snapshot_from_store(store: ResultsStore, settings: config.Settings) -> Snapshot:
    """Read everything a scrape exports from the results store."""
    taken_at = time.time()
    names = store.node_names()
    records = store.nodes(names)
    states = store.states(names)
    seen = {r.name: r.last_seen for r in records if r.last_seen}
    # A lost node is UNKNOWN here as soon as it is lost, not only after beat's next reconcile.
    shown = {n: reconcile.shown(s.get("verdict"), (), seen.get(n), taken_at, settings)[0] for n, s in states.items()}
    return Snapshot(
        nodes=[NodeInfo(r.name, r.cpu_model or "", r.gpu_model or "", float(r.last_seen or 0.0)) for r in records],
        latest=store.latest_many(names),
        verdicts={n: v for n, v in shown.items() if v},
        busy=store.busy_counts(names),
        confirmations=store.confirmation_counts(names),
        remediation=store.remediation_summary(),
        taken_at=taken_at,
        live_after_s=settings.live_after_s,
        baselines=fleet.FleetBaselines(store.r, settings).all(),
    )


def init_app(app: flask.Flask, store: ResultsStore, settings: config.Settings) -> ApiMetrics:
    """Register ``GET /metrics`` and the request-metric hooks on ``app``; returns the registry and metrics."""
    registry = CollectorRegistry()
    collector = ResultsCollector(lambda: snapshot_from_store(store, settings))
    registry.register(collector)
    registry.register(EventsCollector(lambda: follower.read_metrics(store)))
    # Per-GPU series (issue 15): one more pipelined read of the nodes' state hashes per scrape.
    registry.register(GpuCollector(lambda: {n: s.get("gpus") for n, s in store.states(store.node_names()).items()}))
    requests = Counter(
        "autopilot_api_requests",
        "HTTP requests answered by the Autopilot API, by method, route and status code",
        ["method", "endpoint", "code"],
        registry=registry,
    )
    duration = Histogram(
        "autopilot_api_request_duration_seconds",
        "Time the Autopilot API took to answer a request, by method and route, in seconds",
        ["method", "endpoint"],
        buckets=BUCKETS,
        registry=registry,
    )
    metrics = ApiMetrics(registry, requests, duration, collector)
    app.extensions[EXTENSION] = metrics

    def start_timer() -> None:
        setattr(flask.g, _START, time.perf_counter())

    def record(response: flask.Response) -> flask.Response:
        method = flask.request.method if flask.request.method in _METHODS else "OTHER"
        rule = flask.request.url_rule
        endpoint = rule.rule if rule is not None else UNMATCHED
        requests.labels(method, endpoint, str(response.status_code)).inc()
        started = getattr(flask.g, _START, None)
        if started is not None:
            duration.labels(method, endpoint).observe(time.perf_counter() - started)
        return response

    # First in line: an auth hook that answers 401 before ours ran would leave the request untimed.
    app.before_request_funcs.setdefault(None, []).insert(0, start_timer)
    app.after_request(record)

    def serve_metrics() -> flask.Response:
        return flask.Response(generate_latest(registry), status=200, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule(PATH, endpoint="metrics", view_func=serve_metrics, methods=["GET"])
    return metrics
