"""Prometheus metrics built from a snapshot of the results store (ARCHITECTURE.md 4.3).

One scrape of the API shows every node: :class:`ResultsCollector` asks a snapshot function for
the node records, each node's latest result per check and each node's verdict, and rebuilds
every series from it on each scrape. Nothing is kept between scrapes, so a node or check that
disappears from the store disappears from ``/metrics`` too (upstream's gauges were never
deleted and went stale).

Two families of series:

- ``autopilot_health_checks{health,node,cpumodel,gpumodel,deviceid}``: upstream's gauge, with
  upstream's ``health`` values and meaning, so existing dashboards and alerts keep working
  (see :func:`upstream_samples`). A result whose status is ``error`` or ``skipped`` exports
  nothing here: upstream's 0 means "healthy", and a check that could not look is not healthy.
- our own ``autopilot_check_*``, ``autopilot_node_*`` and ``autopilot_nodes`` series, which do
  show errors and skips, durations, last-run times and verdicts, and the counter
  ``autopilot_checks_busy_total{node,check}``: checks that never started because another GPU
  check held the node's GPUs until the deadline (kept in the store, so it survives scrapes);
  ``autopilot_confirmation_runs_total`` and ``autopilot_verdict_flaps_prevented_total{node,check}``
  (confirmation, docs/RESULTS.md) and the ``autopilot_remediation_*_nodes`` gauges of beat's last
  remediation pass (docs/OPERATIONS.md); and the per-GPU series of ``autopilot.gpumetrics``, from
the same snapshot.

This module is pure: it reads no store itself (the API passes ``snapshot_fn``), so tests run it
on a fresh ``CollectorRegistry`` over handmade results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from autopilot import baseline, errors, gpumetrics, results
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult, Status
from autopilot.verdict import Verdict

log = logging.getLogger(__name__)

# Statuses a latest result can have: busy never is one (it is counted on its own).
STATUSES: tuple[str, ...] = tuple(s.value for s in Status if s is not Status.BUSY)
VERDICTS: tuple[str, ...] = tuple(v.value for v in Verdict)
NODE_STATES: tuple[str, ...] = ("live", "stale")

# Statuses that are a judgement of the hardware; error and skipped are not, and export nothing
# on the upstream gauge.
_JUDGED = (Status.OK, Status.WARN, Status.FAIL)
_PCIEBW_UNIT = "GB/s"  # pciebw's link-only mode stores lane counts instead: those are no bandwidth

LABEL_VALUE_LIMIT = 128  # characters of a label value taken from data (``_label``)
BASELINE_LABELS = ("model", "driver", "check", "metric")
HEALTH_CHECKS = "autopilot_health_checks"
HEALTH_HELP = "Summary of the health checks measurements on compute nodes. Gauge Vector version"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """What the metrics need of a node record."""

    name: str
    cpu_model: str = ""
    gpu_model: str = ""
    last_seen: float = 0.0
    """Epoch seconds of the node's last heartbeat (0: never)."""
    wedged_since: float = 0.0
    """Epoch seconds since when the node's worker is wedged, every thread stuck in a task (0: it is not)."""
    clock_offset: float | None = None
    """The node's worker's clock minus the store's at its last heartbeat, in seconds (None: not measured)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything one scrape exports, read from the results store in one go."""

    nodes: Sequence[NodeInfo] = ()
    latest: Mapping[str, Mapping[str, CheckResult]] = dataclasses.field(default_factory=dict)
    """node -> check -> latest result."""
    verdicts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """node -> stored verdict (``PASS`` ...); a node without one is ``UNKNOWN``."""
    busy: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    """node -> check -> how many times it was answered ``busy`` (a counter, from the store)."""
    confirmations: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    """node -> ``runs|<check>`` / ``prevented|<check>`` -> count (counters, from the store)."""
    remediation: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """beat's last remediation pass: ``budget``, ``held``, ``deferred`` nodes (empty: remediation never ran)."""
    taken_at: float = dataclasses.field(default_factory=time.time)
    """Epoch seconds the snapshot was read: the reference for live and stale."""
    live_after_s: float = 45.0
    """A node whose last heartbeat is older than this (relative to ``taken_at``) is stale."""
    baselines: Sequence[Mapping[str, Any]] = ()
    """The fleet's cohorts (``workers.fleet.FleetBaselines.all``): model, driver, check, metric, count, median, mad."""
    gpus: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    """node -> its stored ``gpus`` state field (per-GPU verdicts, ``gpumetrics.build``), read with the verdicts."""


def upstream_samples(result: CheckResult) -> dict[str, float]:
    """``deviceid -> value`` of ``autopilot_health_checks`` for one result (upstream section 4.4).

    - ``pciebw``: per GPU, the measured host-to-device bandwidth in GB/s (none for a GPU in use by
      others while measured: its figure is not the link's);
    - ``remapped``: per GPU, 1 when a row remap is pending or has failed, else 0;
    - ``gpupower`` (health ``power-slowdown``): per GPU, 1 when HW slowdown is active, else 0;
    - ``gpumem``: per GPU, 1 on failure, else 0 (upstream reported device 0 only);
    - ``dcgm``, ``pvc``: deviceid ``""``, 1 on failure, else 0;
    - ``ping``: deviceid = remote node (the part of a device id before ``/``), 1 when any of
      that node's addresses was unreachable.

    Empty for ``error``/``skipped`` results, for checks without an upstream series (the ``health``
    of a check's spec says which have one, and under which name), and per device for devices that
    are themselves ``error``/``skipped`` or carry no usable value.
    """
    if result.status not in _JUDGED or result.check not in _UPSTREAM_FORMS:
        return {}
    judged = [d for d in result.devices if d.status in _JUDGED]
    check = result.check
    out: dict[str, float] = {}
    if check == "pciebw":
        per_gpu = result.data.get("gpus")
        for d in judged:
            value = _number(d.value)
            entry = per_gpu.get(d.id) if isinstance(per_gpu, Mapping) else None
            if isinstance(entry, Mapping) and baseline.in_use_by_others(entry):
                # Warned or failed for what load does not change, its figure is still the contended one.
                continue
            if value is not None and d.unit == _PCIEBW_UNIT:
                out[d.id] = value
    elif check in ("remapped", "gpupower"):
        # Their device value is already upstream's 0/1; the status is the fallback when absent.
        bad = (Status.WARN, Status.FAIL) if check == "remapped" else (Status.FAIL,)
        for d in judged:
            value = _number(d.value)
            out[d.id] = (1.0 if value else 0.0) if value is not None else _flag(d.status in bad)
    elif check == "gpumem":
        for d in judged:
            out[d.id] = _flag(d.status is Status.FAIL)
        if not result.devices:
            out[""] = _flag(result.status is Status.FAIL)
    elif check == "ping":
        for d in judged:
            remote = d.id.split("/", 1)[0]
            out[remote] = max(out.get(remote, 0.0), _flag(d.status is Status.FAIL))
    else:  # dcgm, pvc: one node-wide series
        out[""] = _flag(result.status is Status.FAIL)
    return out


# The checks whose results upstream_samples knows how to turn into upstream's values.
_UPSTREAM_FORMS = frozenset({"pciebw", "remapped", "gpupower", "gpumem", "ping", "dcgm", "pvc"})


class ResultsCollector(Collector):
    """A custom collector: every series is rebuilt from ``snapshot_fn()`` on each scrape.

    If ``snapshot_fn`` raises (the store is down), the scrape still succeeds with
    ``autopilot_results_store_up 0`` and none of the other series, so the API's own metrics stay
    visible and an alert can fire on the store.
    """

    def __init__(self, snapshot_fn: Callable[[], Snapshot], checks: CheckRegistry) -> None:
        self._snapshot_fn = snapshot_fn
        self._health = checks.health_names()

    def describe(self) -> Iterator[Metric]:
        # Names only, for the registry's collision check; must not touch the store.
        yield _store_up()
        yield from _Families().all()
        yield from gpumetrics.build({})

    def collect(self) -> Iterator[Metric]:
        up = _store_up()
        try:
            snapshot = self._snapshot_fn()
        except Exception as exc:  # any store failure: report it as a metric rather than fail the scrape
            # An outage is expected and said by the gauge: one line per scrape, not a traceback each time.
            if isinstance(exc, errors.StoreUnavailable):
                log.warning("metrics: reading the results store failed: %s", exc)
            else:
                log.exception("metrics: reading the results store failed")
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from build(snapshot, self._health)
        # The per-GPU series come from the same snapshot: one read of the node states per render.
        yield from gpumetrics.build(snapshot.gpus)


def build(snapshot: Snapshot, health: Mapping[str, str]) -> list[Metric]:
    """The metric families of one snapshot (what :class:`ResultsCollector` yields besides ``up``);
    ``health``: check -> upstream ``health`` value (``CheckRegistry.health_names``)."""
    fam = _Families()
    infos = {n.name: n for n in snapshot.nodes}
    names = sorted(set(infos) | set(snapshot.latest))
    counts = dict.fromkeys(NODE_STATES, 0)
    for node in names:
        info = infos.get(node, NodeInfo(node))
        live = info.last_seen > 0 and snapshot.taken_at - info.last_seen <= snapshot.live_after_s
        counts["live" if live else "stale"] += 1
        if info.last_seen > 0:
            fam.last_seen.add_metric([node], info.last_seen)
        if info.wedged_since > 0:
            fam.wedged_since.add_metric([node], info.wedged_since)
        if info.clock_offset is not None:
            fam.clock_offset.add_metric([node], info.clock_offset)
        verdict = snapshot.verdicts.get(node, Verdict.UNKNOWN.value)
        if verdict not in VERDICTS:  # keep the label set bounded whatever the store holds
            verdict = Verdict.UNKNOWN.value
        for v in VERDICTS:
            fam.verdict.add_metric([node, v], _flag(v == verdict))
        for check, result in sorted(snapshot.latest.get(node, {}).items()):
            _add_result(fam, info, check, result, health.get(check))
        for check, times in sorted(snapshot.busy.get(node, {}).items()):
            fam.busy.add_metric([node, check], float(times))
        for key, times in sorted(snapshot.confirmations.get(node, {}).items()):
            kind, _, check = key.partition("|")
            counter = {"runs": fam.confirmation_runs, "prevented": fam.flaps_prevented}.get(kind)
            if counter is not None and check:
                counter.add_metric([node, check], float(times))
    for key, gauge in (("budget", fam.remediation_budget), ("held", fam.remediation_held)):
        if key in snapshot.remediation:
            gauge.add_metric([], snapshot.remediation[key])
    if snapshot.remediation:
        fam.remediation_deferred.add_metric([], snapshot.remediation.get("deferred", 0.0))
    for state in NODE_STATES:
        fam.nodes.add_metric([state], float(counts[state]))
    for cohort in snapshot.baselines:
        labels = [str(cohort[k]) for k in BASELINE_LABELS]
        fam.baseline_samples.add_metric(labels, float(cohort["count"]))
        if cohort.get("median") is not None and cohort.get("mad") is not None:
            fam.baseline_median.add_metric(labels, float(cohort["median"]))
            fam.baseline_mad.add_metric(labels, float(cohort["mad"]))
    return fam.all()


def _add_result(fam: _Families, info: NodeInfo, check: str, result: CheckResult, health: str | None) -> None:
    node = info.name
    # The store's key is the authority on which check this is; a result's own name should agree.
    if result.check != check:
        result = dataclasses.replace(result, check=check)
    for s in STATUSES:
        fam.status.add_metric([node, check, s], _flag(s == result.status.value))
    fam.fatal.add_metric([node, check], _flag(result.fatal))
    fam.duration.add_metric([node, check], max(0.0, float(result.duration_s)))
    started = _epoch(result.started_at)
    if started is not None:
        fam.last_run.add_metric([node, check], started)
    per_gpu = result.data.get("gpus")
    if isinstance(per_gpu, Mapping) and any(isinstance(e, Mapping) and "in_use" in e for e in per_gpu.values()):
        # A GPU held at every run is never judged while the result reads ok: this is where that shows.
        held = sum(1 for e in per_gpu.values() if isinstance(e, Mapping) and baseline.in_use_by_others(e))
        fam.in_use.add_metric([node, check], float(held))
    if health is not None:
        models = [_label(info.cpu_model), _label(info.gpu_model)]
        for device, value in sorted(upstream_samples(result).items()):
            fam.health.add_metric([health, node, *models, _label(device)], value)


def _label(text: str) -> str:
    """A label value from a worker's or a tool's words (a CPU model, a device id): at most
    ``LABEL_VALUE_LIMIT`` characters (a longer one ends in a digest of the whole), since it is repeated
    in every series of its node and kept by the TSDB; a buggy worker's 100 KB CPU model made a node's
    part of the scrape 600 KB."""
    text = str(text)
    if len(text) <= LABEL_VALUE_LIMIT:
        return text
    # A digest of the whole keeps two values alike in their first characters (two long node names of ping's
    # peers) two series: the same series twice in one scrape is one sample to Prometheus.
    digest = hashlib.blake2b(text.encode(errors="replace"), digest_size=4).hexdigest()
    return f"{text[: LABEL_VALUE_LIMIT - 12]}...{digest}"


class _Families:
    """A fresh, empty family per metric name (one set per scrape)."""

    def __init__(self) -> None:
        self.health = GaugeMetricFamily(
            HEALTH_CHECKS, HEALTH_HELP, labels=["health", "node", "cpumodel", "gpumodel", "deviceid"]
        )
        self.status = GaugeMetricFamily(
            "autopilot_check_status",
            "Status of the latest result of a check on a node: 1 for the current status "
            "(ok, warn, fail, error, skipped), 0 for the others",
            labels=["node", "check", "status"],
        )
        self.fatal = GaugeMetricFamily(
            "autopilot_check_fatal",
            "1 if the latest result of a check on a node is a fatal failure (the node must not take work), else 0",
            labels=["node", "check"],
        )
        self.duration = GaugeMetricFamily(
            "autopilot_check_duration_seconds",
            "Duration of the latest run of a check on a node, in seconds",
            labels=["node", "check"],
        )
        self.last_run = GaugeMetricFamily(
            "autopilot_check_last_run_timestamp_seconds",
            "Start time of the latest run of a check on a node, in seconds since the Unix epoch",
            labels=["node", "check"],
        )
        self.in_use = GaugeMetricFamily(
            "autopilot_check_gpus_in_use_by_others",
            "GPUs the latest result of a check on a node found in use by others while it measured them: their "
            "figures were not judged (pciebw, gpumem; docs/RESULTS.md)",
            labels=["node", "check"],
        )
        self.verdict = GaugeMetricFamily(
            "autopilot_node_verdict",
            "Health verdict of a node: 1 for the current verdict "
            "(PASS, WARN, EVICT, TESTING, UNKNOWN), 0 for the others",
            labels=["node", "verdict"],
        )
        self.last_seen = GaugeMetricFamily(
            "autopilot_node_last_seen_timestamp_seconds",
            "Time of the node's last worker heartbeat, in seconds since the Unix epoch",
            labels=["node"],
        )
        self.wedged_since = GaugeMetricFamily(
            "autopilot_node_wedged_since_timestamp_seconds",
            "Since when every thread of the node's worker has held its task past what that task may take, in "
            "seconds since the Unix epoch (present only while its worker is wedged; its last_seen stops there)",
            labels=["node"],
        )
        self.clock_offset = GaugeMetricFamily(
            "autopilot_node_clock_offset_seconds",
            "The node's worker's clock minus the results store's (Redis TIME) at its last heartbeat, in seconds "
            "(absent while not measured); taken off its results' stamps when they are judged",
            labels=["node"],
        )
        self.busy = CounterMetricFamily(
            "autopilot_checks_busy",
            "Checks on a node that never started because another GPU check held its GPUs until the run's "
            "deadline (answered busy in the run; no finding, the latest result and the verdict are unchanged)",
            labels=["node", "check"],
        )
        self.confirmation_runs = CounterMetricFamily(
            "autopilot_confirmation_runs",
            "Confirmation runs sent: a check re-run on its node at once because its latest failure was not yet "
            "confirmed, or its recovery not yet complete",
            labels=["node", "check"],
        )
        self.flaps_prevented = CounterMetricFamily(
            "autopilot_verdict_flaps_prevented",
            "Verdict flaps that confirmation held back: a failure not confirmed before a pass, or a failure "
            "during recovery",
            labels=["node", "check"],
        )
        self.remediation_budget = GaugeMetricFamily(
            "autopilot_remediation_budget_nodes",
            "Most nodes remediation may keep cordoned or tainted at once (max_unavailable over the GPU nodes)",
        )
        self.remediation_held = GaugeMetricFamily(
            "autopilot_remediation_held_nodes",
            "Nodes Autopilot holds cordoned or tainted now (its ownership annotation is on the Node)",
        )
        self.remediation_deferred = GaugeMetricFamily(
            "autopilot_remediation_deferred_nodes",
            "Evicted nodes remediation left schedulable because the budget was spent (labelled EVICT only)",
        )
        self.nodes = GaugeMetricFamily(
            "autopilot_nodes",
            "Number of known nodes by state: live (heartbeat recent) or stale",
            labels=["state"],
        )
        self.baseline_median = GaugeMetricFamily(
            "autopilot_baseline_median",
            "Median of a fleet cohort's recent figures (GPU model, driver major, check, metric; unit of the metric)",
            labels=list(BASELINE_LABELS),
        )
        self.baseline_mad = GaugeMetricFamily(
            "autopilot_baseline_mad",
            "Median absolute deviation (x 1.4826, a robust standard deviation) of a fleet cohort's recent figures",
            labels=list(BASELINE_LABELS),
        )
        self.baseline_samples = GaugeMetricFamily(
            "autopilot_baseline_samples",
            "Figures in a fleet cohort's window (below the minimum sample size its baseline judges nobody)",
            labels=list(BASELINE_LABELS),
        )

    def all(self) -> list[Metric]:
        return [
            self.health,
            self.status,
            self.fatal,
            self.duration,
            self.last_run,
            self.in_use,
            self.verdict,
            self.last_seen,
            self.wedged_since,
            self.clock_offset,
            self.busy,
            self.confirmation_runs,
            self.flaps_prevented,
            self.remediation_budget,
            self.remediation_held,
            self.remediation_deferred,
            self.nodes,
            self.baseline_median,
            self.baseline_mad,
            self.baseline_samples,
        ]


def _store_up() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "autopilot_results_store_up",
        "1 if this scrape read the results store, 0 if reading it failed (the other autopilot series are then absent)",
    )


def _flag(condition: bool) -> float:
    return 1.0 if condition else 0.0


def _number(value: float | int | str | None) -> float | None:
    """A finite float from a device value, or None (strings, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _epoch(started_at: str) -> float | None:
    if not started_at:
        return None
    try:
        return results.parse_iso(started_at).timestamp()
    except ValueError:
        return None


__all__ = [
    "HEALTH_CHECKS",
    "NodeInfo",
    "ResultsCollector",
    "Snapshot",
    "build",
    "upstream_samples",
]
