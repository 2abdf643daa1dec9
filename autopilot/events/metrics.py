"""The follower's Prometheus series, built from counts the workers keep in the results store.

- ``autopilot_gpu_events_total{node,gpu,source,code,action}``: every event read, ignored ones too;
- ``autopilot_gpu_event_to_label_seconds``: from the moment an event reached its source (the kernel
  log's record time, the NVML or counter reading) to the moment its result was written and the
  node's verdict and labels reconciled.

Pure, like ``autopilot.metrics``: the API passes a snapshot function that reads the store.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from autopilot import errors

log = logging.getLogger(__name__)

LABELS = ("node", "gpu", "source", "code", "action")
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EVENTS = "autopilot_gpu_events"
LATENCY = "autopilot_gpu_event_to_label_seconds"


def bucket_of(seconds: float) -> str:
    """The histogram bucket (upper bound, as text) a latency falls in."""
    for bound in BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


@dataclasses.dataclass(frozen=True)
class EventsSnapshot:
    counts: Mapping[tuple[str, str, str, str, str], float] = dataclasses.field(default_factory=dict)
    """(node, gpu, source, code, action) -> events."""
    buckets: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """bucket upper bound (``bucket_of``) -> observations in it (not cumulative)."""
    latency_sum: float = 0.0


def families(snapshot: EventsSnapshot) -> list[Metric]:
    events = CounterMetricFamily(
        EVENTS, "GPU, NVSwitch, PCIe and fabric events the follower read, by catalogue action", labels=LABELS
    )
    for labels, value in sorted(snapshot.counts.items()):
        events.add_metric(list(labels), value)
    cumulative: list[tuple[str, float]] = []
    total = 0.0
    for bound in [*map(repr, BUCKETS), "+Inf"]:
        total += snapshot.buckets.get(bound, 0.0)
        cumulative.append((bound, total))
    latency = HistogramMetricFamily(
        LATENCY, "Seconds from an event reaching its source to its result written and the node reconciled"
    )
    latency.add_metric([], cumulative, sum_value=snapshot.latency_sum if math.isfinite(snapshot.latency_sum) else 0.0)
    return [events, latency]


class EventsCollector(Collector):
    """Rebuilds the two families from ``snapshot_fn()`` on each scrape; a store failure exports nothing."""

    def __init__(self, snapshot_fn: Callable[[], EventsSnapshot]) -> None:
        self._snapshot_fn = snapshot_fn

    def describe(self) -> Iterator[Metric]:
        yield from families(EventsSnapshot())

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = self._snapshot_fn()
        except errors.StoreUnavailable as exc:  # the results collector already reports the store as down
            log.warning("metrics: reading the event counts failed: %s", exc)
            return
        except Exception:  # anything else is a bug, with its traceback; the scrape goes on
            log.exception("metrics: reading the event counts failed")
            return
        yield from families(snapshot)
