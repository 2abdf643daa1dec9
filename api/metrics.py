"""``/metrics`` on the API: the cluster's results (from the store) and the API's own request metrics.

``init_app(app, store, settings, checks)`` registers the route and the request hooks. Everything goes
into private ``CollectorRegistry`` objects kept in ``app.extensions["autopilot_metrics"]``, never
the process-global default registry, so several apps (tests, ``autopilot up``) never collide.

- ``autopilot.metrics.ResultsCollector`` reads one snapshot of the results store (a few
  pipelined Redis round trips whatever the node count), so one scrape shows every node. Its
  exposition is rendered at most once per ``metrics_interval_s`` and every scrape within the
  interval gets the same bytes (``SharedExposition``): at 1,000 nodes a rendering is several MB
  and most of a second, and concurrent scrapers each rendering their own slowed every other
  request of the process.
- ``autopilot_api_requests_total{method,endpoint,code}`` and
  ``autopilot_api_request_duration_seconds{method,endpoint}``: ``endpoint`` is the Flask URL
  rule (``/api/v1/nodes/<name>``), never the raw path, and unknown methods fold into ``OTHER``,
  so a scanner cannot blow up the label cardinality.

``/metrics`` needs no token (ARCHITECTURE.md 4.5): the app's auth hook must exempt it.
Under gunicorn (``autopilot api``) prometheus_client runs in multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by ``api.main`` before any metric exists): each process writes
its request metrics to a file there and a scrape through any process sums them all, so the
counters never go backwards from one scrape to the next, whichever process answers. Files of
under 8 bytes are left out of the sum (``ProcessFiles``): prometheus_client creates a process's
file before sizing it, and reading one in that moment raised ``struct.error`` and failed the
scrape (prometheus/client_python#1199; for good when a process died in that moment).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import threading
import time
from collections.abc import Callable, Iterable

import flask
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from autopilot import config
from autopilot.events.metrics import EventsCollector
from autopilot.metrics import NodeInfo, ResultsCollector, Snapshot
from autopilot.registry import CheckRegistry
from workers import reconcile
from workers.store import ResultsStore

EXTENSION = "autopilot_metrics"
PATH = "/metrics"
UNMATCHED = "<unmatched>"  # endpoint label of requests that matched no route (404s, scanners)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_START = "_autopilot_metrics_start"

# Buckets for an API whose gathers wait up to a node deadline (default 60 s).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class SharedExposition:
    """A registry's exposition, rendered at most once per ``interval_s`` and shared by every caller.

    The first caller after the interval renders while the others wait for it and get its bytes:
    however many scrapers arrive together, one reads the store. ``interval_s`` 0: every call renders.
    """

    def __init__(
        self, registry: CollectorRegistry, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.clock = clock
        self.renders = 0
        self._lock = threading.Lock()
        self._body = b""
        self._until = float("-inf")

    def render(self) -> bytes:
        with self._lock:
            now = self.clock()
            if now >= self._until:
                self._body = generate_latest(self.registry)
                self._until = now + self.interval_s
                self.renders += 1
            return self._body


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable (set by api.main)
FILE_HEADER = 8  # bytes a process's metric file holds before its first value


class ProcessFiles(Collector):
    """Every process's metric files summed (``MultiProcessCollector.merge``), less any not sized yet."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            try:
                if os.path.getsize(name) >= FILE_HEADER:
                    files.append(name)
            except OSError:  # gone since the glob (a process's file removed)
                continue
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps metric values in per-process files (``PROMETHEUS_MULTIPROC_DIR``
    was set before it was imported)."""
    return values.ValueClass is not values.MutexValue


@dataclasses.dataclass(frozen=True)
class ApiMetrics:
    """What ``init_app`` registered (reachable as ``app.extensions["autopilot_metrics"]``)."""

    registry: CollectorRegistry  # the request metrics of this process
    requests: Counter
    duration: Histogram
    collector: ResultsCollector
    nodes: SharedExposition  # the results collector's exposition, shared by scrapers


def snapshot_from_store(store: ResultsStore, settings: config.Settings) -> Snapshot:
    """Read everything a scrape exports from the results store."""
    taken_at = store.server_time()  # the reconciles' clock, which the heartbeats' times are on
    names = store.node_names()
    records = store.nodes(names)
    states = store.states(names)
    seen = {r.name: r.shared_seen for r in records if r.last_seen}
    # A lost node is UNKNOWN here as soon as it is lost, not only after beat's next reconcile.
    shown = {
        n: reconcile.shown(s.verdict, (), seen.get(n), taken_at, settings, s.heard_ahead)[0] for n, s in states.items()
    }
    return Snapshot(
        nodes=[
            NodeInfo(
                r.name, r.cpu_model or "", r.gpu_model or "", seen.get(r.name, 0.0), r.wedged_since, r.clock_offset
            )
            for r in records
        ],
        latest=store.latest_many(names),
        verdicts={n: v for n, v in shown.items() if v},
        busy=store.busy_counts(names),
        confirmations=store.confirmation_counts(names),
        remediation=store.remediation_summary(),
        taken_at=taken_at,
        live_after_s=settings.live_after_s,
        baselines=store.fleet(settings).all(),
        gpus={n: s.gpus for n, s in states.items()},
    )


def init_app(app: flask.Flask, store: ResultsStore, settings: config.Settings, checks: CheckRegistry) -> ApiMetrics:
    """Register ``GET /metrics`` and the request-metric hooks on ``app``; returns the registry and metrics."""
    registry = CollectorRegistry()
    collector = ResultsCollector(lambda: snapshot_from_store(store, settings), checks)
    results_registry = CollectorRegistry()
    results_registry.register(collector)
    results_registry.register(EventsCollector(store.events().snapshot))
    nodes = SharedExposition(results_registry, settings.metrics_interval_s)
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
    metrics = ApiMetrics(registry, requests, duration, collector, nodes)
    if multiprocess_mode():
        # Every process's files, summed; this process's own values are among them.
        served = CollectorRegistry()
        served.register(ProcessFiles(os.environ[MULTIPROC_ENV]))
    else:
        served = registry
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
        body = nodes.render() + generate_latest(served)
        return flask.Response(body, status=200, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule(PATH, endpoint="metrics", view_func=serve_metrics, methods=["GET"])
    return metrics
