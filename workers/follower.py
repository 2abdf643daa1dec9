"""The follower in the worker: starts it with the worker and writes what it finds (``autopilot.events``).

- ``StoreSink``: an ``events`` result gets its GPUs' UUIDs (``gpuident.attach``, so per-GPU verdicts,
  labels, device taints and history see it), goes to the store and the node is reconciled at once
  (labels and condition on the Node), in the follower's thread, not at beat's next tick; event counts and the
  event-to-label latency go to ``ap:events:counts`` / ``ap:events:latency`` for the API's /metrics;
  the kernel log's position to ``ap:kmsg:<node>`` so a restarted worker reads on where it stopped.
- ``start``: a real node gets the kernel log, NVML events and counters; simulated nodes get one
  thread that takes injected kernel messages from ``ap:inject:<node>`` (``--fault NODE:xid:CODE``
  and ``autopilot inject``) and feeds them through the real classification.
- ``inject_main``: ``autopilot inject NODE xid CODE [--gpu N]``, simulated nodes only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import redis

from autopilot import config, errors, gpuident, names
from autopilot import gpus as gpus_mod
from autopilot.context import CheckContext
from autopilot.events import counters as counters_mod
from autopilot.events import follower as follower_mod
from autopilot.events import kmsg
from autopilot.events.model import Event
from autopilot.nvml_events import EventSource, GpuCounters
from autopilot.registry import CheckRegistry
from autopilot.results import CheckResult
from workers import reconcile
from workers import simulate as simulate_mod
from workers.store import ResultsStore

log = logging.getLogger(__name__)

_FLUSH_S = 1.0
_INBOX_WAIT_S = 1


class StoreSink:
    """The follower's sink in a worker: results store, reconcile, metrics counts."""

    def __init__(
        self,
        store: ResultsStore,
        settings: config.Settings,
        contexts: Mapping[str, CheckContext],
        checks: CheckRegistry,
    ) -> None:
        self.store = store
        self.settings = settings
        self.contexts = contexts
        self.checks = checks
        self.events = store.events()
        self._identities: dict[str, dict[int, gpus_mod.GpuIdentity]] = {}

    def identities(self, node: str) -> dict[int, gpus_mod.GpuIdentity]:
        """Index -> identity of ``node``'s GPUs: read now, over the last ones known, so a GPU that fell off
        the bus (NVML no longer identifies it) keeps the UUID it had when it last answered."""
        ctx = self.contexts.get(node)
        known = self._identities.get(node, {})
        if ctx is None:
            return known
        merged = {**known, **gpuident.read(ctx.gpus)}
        self._identities[node] = merged
        return merged

    def emit(self, node: str, result: CheckResult | None, counted: Sequence[Event], timed: Sequence[Event]) -> None:
        if result is not None:
            # Findings name GPUs by index (the follower maps bus ids); other devices (NICs, bridges) stay as named.
            result = gpuident.attach(result, self.identities(node), unknown_bus=False)
            view = self.store.save_many([(result, True)], view=node)
            ctx = self.contexts.get(node)
            reconcile.reconcile_node(
                self.store, node, self.settings, cluster=ctx.cluster if ctx else None, view=view, checks=self.checks
            )
        if not counted and not timed:
            return
        self.events.record(node, counted, timed, time.time())

    def last_result(self, node: str) -> CheckResult | None:
        return self.store.latest(node).get(follower_mod.CHECK)

    def kmsg_position(self, node: str) -> tuple[str, int] | None:
        return self.events.kmsg_position(node)

    def save_kmsg_position(self, node: str, boot: str, seq: int) -> None:
        self.events.save_kmsg_position(node, boot, seq)


def _gpu_index(ctx: CheckContext) -> dict[str, str]:
    """Bus id -> GPU index of a node's GPUs (empty without GPUs: events then name the bus id). A GPU NVML
    will not identify (one out of service) is left out alone: its events name its bus id, the others'
    still their index."""
    try:
        count = ctx.gpus.count()
    except errors.GpuError as exc:
        log.info("events: no GPU list for %s (%s): events name bus ids", ctx.node, exc)
        return {}
    found: dict[str, str] = {}
    for i in range(count):
        try:
            found[ctx.gpus.identity(i).pci_bus_id] = str(i)
        except errors.GpuUnavailable as exc:
            log.info("events: no GPU list for %s (%s): events name bus ids", ctx.node, exc)
            return {}
        except errors.GpuError as exc:
            log.info("events: GPU %d of %s not identified (%s): its events name its bus id", i, ctx.node, exc)
    return found


@dataclasses.dataclass
class Running:
    """What ``start`` started; ``stop()`` ends it."""

    followers: dict[str, follower_mod.Follower]
    stop_event: threading.Event

    def stop(self) -> None:
        self.stop_event.set()
        for f in self.followers.values():
            f.stop(timeout_s=2.0)


def start(
    store: ResultsStore,
    settings: config.Settings,
    contexts: Mapping[str, CheckContext],
    *,
    simulated: bool,
    xid_faults: Sequence[simulate_mod.XidFault] = (),
    checks: CheckRegistry,
) -> Running | None:
    """Start the follower of every node this worker hosts (None when ``AUTOPILOT_EVENTS_FOLLOWER`` is off)."""
    if not settings.events_follower:
        log.info("events: the follower is off (AUTOPILOT_EVENTS_FOLLOWER)")
        return None
    sink = StoreSink(store, settings, contexts, checks)
    for node in contexts:
        sink.identities(node)  # known before any GPU can fall off the bus
    common = {"storm_window_s": settings.events_storm_window_s, "hold_s": settings.stale_after_s}
    followers: dict[str, follower_mod.Follower] = {}
    stop = threading.Event()
    if simulated:
        index = _gpu_index(next(iter(contexts.values())))
        for node in contexts:
            followers[node] = follower_mod.Follower(node, sink, gpu_index=index, **common)  # type: ignore[arg-type]
        threading.Thread(target=_inbox_loop, args=(store, followers, stop), daemon=True, name="events-inbox").start()
        for fault in xid_faults:
            timer = threading.Timer(fault.after_s, inject, args=(store, fault.node, fault.code, fault.gpu))
            timer.daemon = True
            timer.start()
    else:
        for node, ctx in contexts.items():
            f = follower_mod.Follower(
                node,
                sink,
                gpu_index=_gpu_index(ctx),
                kmsg_device=kmsg.DevKmsg(settings.kmsg_path),
                nvml=_nvml_events(ctx),
                poller=counters_mod.CounterPoller(
                    _nvml_counters(ctx), lambda: counters_mod.read_infiniband(settings.infiniband_sysfs)
                ),
                poll_interval_s=settings.events_poll_interval_s,
                **common,  # type: ignore[arg-type]
            )
            f.start()
            followers[node] = f
    threading.Thread(target=_flush_loop, args=(followers, stop), daemon=True, name="events-flush").start()
    return Running(followers, stop)


def _nvml_events(ctx: CheckContext) -> EventSource | None:
    """NVML events only where the GPU seam is NVML (a fake seam has no driver to wait on)."""
    if not isinstance(ctx.gpus, gpus_mod.NvmlTelemetry):
        return None
    from autopilot import nvml_events

    return nvml_events.NvmlEvents()


def _nvml_counters(ctx: CheckContext) -> Callable[[], list[GpuCounters]] | None:
    if not isinstance(ctx.gpus, gpus_mod.NvmlTelemetry):
        return None
    from autopilot import nvml_events

    return nvml_events.NvmlCounters().read


def _flush_loop(followers: Mapping[str, follower_mod.Follower], stop: threading.Event) -> None:
    while not stop.wait(_FLUSH_S):
        for f in followers.values():
            try:
                f.flush()
            except Exception as exc:  # noqa: BLE001 - a store outage: the next flush tries again
                log.warning("events of %s: flush failed: %s", f.node, exc)


def _inbox_loop(store: ResultsStore, followers: Mapping[str, follower_mod.Follower], stop: threading.Event) -> None:
    """Simulated nodes: one BLPOP over every node's inbox feeds the injected kernel messages."""
    events = store.events()
    while not stop.is_set():
        try:
            got = events.next_injected(list(followers), _INBOX_WAIT_S)
        except (errors.StoreUnavailable, redis.RedisError) as exc:
            log.warning("events: reading injected events failed (retrying): %s", exc)
            stop.wait(1.0)
            continue
        if not got:
            continue
        node, raw = got
        try:
            item = json.loads(raw)
            followers[node].feed_kmsg(str(item["message"]), float(item["written_at"]))
        except Exception as exc:  # noqa: BLE001 - one bad message must not end the loop
            log.warning("events: injected event for %s not taken: %s", node, exc)


def inject(store: ResultsStore, node: str, code: int, gpu: int = 0) -> None:
    """Queue an Xid for a simulated node's follower, as the driver would print it."""
    message = simulate_mod.xid_message(code, gpu)
    store.events().inject(node, message, time.time())


def inject_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="autopilot inject", description="Inject a GPU event into a simulated node's follower (simulated only)."
    )
    parser.add_argument("node", help="a simulated node (sim-<i>)")
    parser.add_argument("kind", choices=["xid"], help="what to inject")
    parser.add_argument("code", help="the Xid code (any, e.g. 79; an unknown code is warn)")
    parser.add_argument("--gpu", default="0", help=f"GPU index 0..{simulate_mod.GPU_COUNT - 1} (default 0)")
    args = parser.parse_args(list(argv))
    try:
        node = names.node_name(args.node, field="node")
        code = simulate_mod.parse_xid_code(args.code, field="code")
        gpu = simulate_mod.parse_gpu(args.gpu, field="--gpu")
        settings = config.Settings.from_env(os.environ)
        if not settings.redis_url:
            raise errors.ConfigError(
                "AUTOPILOT_REDIS_URL is not set (the stack's Redis, e.g. redis://localhost:6379/0)"
            )
        from workers import app as app_mod  # the Celery app: loaded by this command only

        # The stack's own client: its password (AUTOPILOT_REDIS_PASSWORD, as compose sets it), TLS CA, Sentinel.
        store = app_mod.make_store(settings)
        record = store.node(node)
        if record is None:
            raise errors.BadParameter("node", f"no node {node!r} has sent a heartbeat")
        if not record.simulated:
            raise errors.BadParameter("node", f"{node!r} is a real node: only simulated nodes take injected events")
        inject(store, node, code, gpu)
    except (errors.AutopilotError, redis.RedisError) as exc:
        print(f"autopilot inject: {exc}", file=sys.stderr)
        return 2
    print(f"injected Xid {code} on {node} GPU {gpu}")
    return 0
