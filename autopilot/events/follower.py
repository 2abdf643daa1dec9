"""The follower: supervised threads that read the event sources of one node and emit ``events`` results.

One check name, ``events``, for every source: the verdict reads the latest result per check, so a
result per source would let a quiet source's old result stand beside a new one for no gain, and
the same fault seen twice (Xid 79 in the kernel log and as an NVML event) must fold into one
finding whichever source saw it first. The result lists every finding still held (the hold is
the verdict's own freshness window), one device per GPU, details in ``data["findings"]``.

Actions become statuses: ``evict`` a fatal ``fail`` (the node is ``EVICT``), ``reset`` a ``fail``,
``warn`` a ``warn``; ``ignore`` (application Xids among them) is counted in metrics and never
written, so it changes no verdict. Storms fold: the same code on the same device within the storm
window raises the finding's count; the first one is written at once, the rest at the next flush.

A finding is held ``hold_s`` after it was last seen. A polled state reported once as it turned bad
(a remap pending, a port down, a recovery action other than NONE) is seen again at every poll that
still finds it bad (``CounterPoller.standing``): that sighting moves the finding's ``last_at`` and
nothing else (no count, no metric, no write of its own), so a fault that stands stays in the result
and a cleared one ages out ``hold_s`` after its last sighting. The result is rewritten for a held
finding only once the written one is half a hold old (at the next flush), so the stored result never
goes stale in the verdict while the fault stands: one write per change, plus one per half hold.

Each source runs in its own thread under a supervisor: an exception is logged, reported as a
``source.restart`` finding (events may have been missed), and the source starts again after a
back-off. The kernel log's position survives a restart of the source (and, through the sink, of
the worker): records already read are skipped, records lost meanwhile are a ``kmsg.gap`` finding.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from autopilot import errors, results
from autopilot.events import catalogue, kmsg
from autopilot.events.catalogue import Action
from autopilot.events.counters import CounterPoller
from autopilot.events.model import Event
from autopilot.names import bus_id
from autopilot.nvml_events import ECC_DBE, ECC_SBE, RECOVERY, XID, XID_RECOVERY_ACTION, EventSource, NvmlEvent
from autopilot.results import CheckResult, DeviceResult, Status

log = logging.getLogger(__name__)

CHECK = "events"
_STATUS = {Action.EVICT: Status.FAIL, Action.RESET: Status.FAIL, Action.WARN: Status.WARN}
_WAIT_S = 0.5  # how long a source blocks before it looks at the stop flag
_POSITION_EVERY_S = 2.0
MAX_BACKOFF_S = 30.0


class Sink(Protocol):
    """Where a follower's output goes (the worker's store and reconcile, or a test's list)."""

    def emit(self, node: str, result: CheckResult | None, counted: Sequence[Event], timed: Sequence[Event]) -> None:
        """Write ``result`` (None: nothing to write) and reconcile the node; count ``counted`` in the
        metrics and time ``timed`` (the events this result is the first to show) from source to label."""

    def last_result(self, node: str) -> CheckResult | None:
        """The node's latest ``events`` result (seeds the findings after a worker restart)."""

    def kmsg_position(self, node: str) -> tuple[str, int] | None:
        """(boot id, last sequence number read) saved by an earlier follower of this node."""

    def save_kmsg_position(self, node: str, boot: str, seq: int) -> None: ...


@dataclasses.dataclass
class Finding:
    """One (device, code) held in the ``events`` result."""

    device: str
    gpu: str
    code: str
    action: Action
    owner: str
    source: str
    meaning: str
    message: str
    count: int
    first_at: float
    last_at: float

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "action": self.action.value, "message": self.message[:300]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Finding:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        values["action"] = Action(values["action"])
        return cls(**values)


class Findings:
    """The fold: (device, code) -> ``Finding``, kept ``hold_s`` after it was last seen."""

    def __init__(self, *, storm_window_s: float, hold_s: float) -> None:
        self.storm_window_s = storm_window_s
        self.hold_s = hold_s
        self.items: dict[tuple[str, str], Finding] = {}
        self.dirty = False
        self.written_at = float("-inf")  # when ``result`` last made the result to write

    def add(self, event: Event, gpu: str) -> bool:
        """Fold ``event`` in; True when it must be written now (new, a new episode, or worse)."""
        key = (event.device, event.code)
        old = self.items.get(key)
        at = event.written_at
        if old is None or at - old.last_at > self.storm_window_s or event.action.rank > old.action.rank:
            first = old.first_at if old is not None and at - old.last_at <= self.storm_window_s else at
            count = (old.count if old is not None and first == old.first_at else 0) + event.count
            self.items[key] = Finding(
                event.device, gpu, event.code, event.action, event.entry.owner, event.source,
                event.entry.mnemonic or event.entry.meaning, event.message, count, first, max(at, first),
            )  # fmt: skip
            return True
        old.count += event.count
        old.last_at = max(old.last_at, at)
        self.dirty = True
        return False

    def hold(self, standing: Iterable[tuple[str, str]], now: float) -> None:
        """The states in ``standing`` are still bad at ``now``: their findings (those there are; a sighting
        creates none) were last seen now. The result is due again (``dirty``) only once the written one is
        half a hold old, so a standing fault costs no write per poll and never goes stale in the verdict."""
        held = False
        for key in standing:
            finding = self.items.get(key)
            if finding is not None and now > finding.last_at:
                finding.last_at = now
                held = True
        if held and now - self.written_at >= self.hold_s / 2:
            self.dirty = True

    def prune(self, now: float) -> None:
        for key in [k for k, f in self.items.items() if now - f.last_at > self.hold_s]:
            del self.items[key]

    def seed(self, result: CheckResult | None, now: float) -> None:
        """Take back the findings of a stored result (after a worker restart) still within the hold."""
        if result is None:
            return
        for raw in result.data.get("findings") or ():
            try:
                finding = Finding.from_dict(raw)
            except (KeyError, TypeError, ValueError):
                continue
            if now - finding.last_at <= self.hold_s:
                self.items.setdefault((finding.device, finding.code), finding)

    def result(self, node: str, now: float, sources: Mapping[str, str]) -> CheckResult:
        self.dirty = False
        self.written_at = now
        self.prune(now)
        by_device: dict[str, list[Finding]] = {}
        for finding in sorted(self.items.values(), key=lambda f: (f.gpu, f.code)):
            by_device.setdefault(finding.gpu, []).append(finding)
        devices = []
        for gpu, found in by_device.items():
            worst = max(found, key=lambda f: f.action.rank)
            detail = "; ".join(f"{f.code} {f.meaning}: {f.action.value}" + (f" x{f.count}" if f.count > 1 else "")
                               for f in found)  # fmt: skip
            devices.append(DeviceResult(gpu, _STATUS[worst.action], sum(f.count for f in found), "events", detail))
        data = {"findings": [f.to_dict() for f in self.items.values()], "sources": dict(sources)}
        if not devices:
            return CheckResult(CHECK, Status.OK, "no GPU events", node=node, data=data,
                               started_at=results.utc_now_iso(_utc(now)))  # fmt: skip
        fatal = any(f.action is Action.EVICT for f in self.items.values())
        folded = results.from_devices(CHECK, devices, ok_summary="no GPU events", fatal=fatal, data=data, what="device")
        return dataclasses.replace(folded, node=node, started_at=results.utc_now_iso(_utc(now)))


def _utc(epoch: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


class Follower:
    """The follower of one node. Sources are optional: a simulated node has none and is fed by
    ``feed_kmsg``/``submit``; a real node has the kernel log, NVML events and counters."""

    def __init__(
        self,
        node: str,
        sink: Sink,
        *,
        gpu_index: Mapping[str, str] | None = None,
        kmsg_device: kmsg.KmsgDevice | None = None,
        nvml: EventSource | None = None,
        poller: CounterPoller | None = None,
        poll_interval_s: float = 5.0,
        storm_window_s: float = 60.0,
        hold_s: float = 3 * 3600.0,
        boot_id: Callable[[], str] = kmsg.boot_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.sink = sink
        self.gpu_index = {bus_id(k): v for k, v in (gpu_index or {}).items()}
        self.kmsg_device = kmsg_device
        self.nvml = nvml
        self.poller = poller
        self.poll_interval_s = poll_interval_s
        self.findings = Findings(storm_window_s=storm_window_s, hold_s=hold_s)
        self.sources: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.stop_event = threading.Event()
        self._boot_id = boot_id
        self._clock = clock
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.last_seq: int | None = None
        self._since_us: int | None = None  # monotonic µs of the first open, while no record was read
        self._processing: int | None = None  # the record being handled: if it crashes us, skipped on retry
        self._overrun = False
        self._seeded = False

    # ------------------------------------------------------------------ input

    def gpu_of(self, device: str) -> str:
        """The GPU index of a bus id when it is one of this node's GPUs, else the device itself. A part of
        a GPU (its NVLink: ``<bus id>/nvlink<n>``) is that GPU's, so the GPU's own verdict sees it."""
        gpu = self.gpu_index.get(device) or self.gpu_index.get(device.split("/", 1)[0])
        return gpu or device

    def submit(self, events: Sequence[Event]) -> None:
        """Fold ``events`` in; write the result at once when one of them is news."""
        if not events:
            return
        with self._lock:
            self._seed()
            timed = [e for e in events if e.action is not Action.IGNORE and self.findings.add(e, self.gpu_of(e.device))]
            result = self.findings.result(self.node, self._clock(), self.sources) if timed else None
            labelled = [dataclasses.replace(e, device=self.gpu_of(e.device)) for e in events]
            timed_labelled = [dataclasses.replace(e, device=self.gpu_of(e.device)) for e in timed]
            try:
                self.sink.emit(self.node, result, labelled, timed_labelled)
            except Exception as exc:  # noqa: BLE001 - the store is down: the findings stay, the flush retries
                self.findings.dirty = self.findings.dirty or result is not None
                log.warning("events of %s: writing the result failed (the next flush retries): %s", self.node, exc)

    def feed_kmsg(self, message: str, written_at: float | None = None) -> None:
        """One kernel message (the simulator's injection path: the real classification runs)."""
        self.submit(kmsg.classify(message, written_at=self._clock() if written_at is None else written_at))

    def flush(self) -> None:
        """Write the folded counts of a storm (called every second or so)."""
        with self._lock:
            if not self.findings.dirty:
                return
            result = self.findings.result(self.node, self._clock(), self.sources)
            try:
                self.sink.emit(self.node, result, (), ())
            except Exception:
                self.findings.dirty = True  # not written: the next flush tries again
                raise

    def poll_counters(self) -> None:
        """One counter poll: its events folded in (``submit``), then the findings of the states still bad
        held (``Findings.hold``)."""
        poller = self.poller
        assert poller is not None
        self.submit(poller.poll())
        with self._lock:
            self._seed()  # a finding an earlier worker wrote is held too, though this poll reported nothing
            self.findings.hold(poller.standing, self._clock())

    def _seed(self) -> None:
        if not self._seeded:
            self._seeded = True
            try:
                self.findings.seed(self.sink.last_result(self.node), self._clock())
            except Exception as exc:  # noqa: BLE001 - a store outage must not stop the follower
                log.warning("events of %s: could not read the last result: %s", self.node, exc)

    def _follower_event(self, code: str, device: str, message: str, count: int = 1) -> Event:
        return Event("follower", catalogue.counter(code), device, message, self._clock(), count=count)

    # ------------------------------------------------------------------ threads

    def start(self) -> None:
        bodies: list[tuple[str, Callable[[], None]]] = []
        if self.kmsg_device is not None:
            bodies.append(("kmsg", self._run_kmsg))
        if self.nvml is not None:
            bodies.append(("nvml", self._run_nvml))
        if self.poller is not None and self.poll_interval_s > 0:
            bodies.append(("counters", self._run_counters))
        for name, body in bodies:
            thread = threading.Thread(target=self.supervise, args=(name, body), daemon=True, name=f"events-{name}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def supervise(self, name: str, body: Callable[[], None]) -> None:
        """Run ``body`` until stopped; after an exception report it and start it again (back-off)."""
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                self.sources[name] = "following"
                body()
                if self.stop_event.is_set():
                    return
                raise RuntimeError("returned without being stopped")
            except (errors.GpuUnavailable, FileNotFoundError, PermissionError) as exc:
                # Nothing to follow here (no GPU, no NVML, no kmsg access): said once, then left.
                self.sources[name] = f"unavailable: {exc}"
                log.warning("events of %s: %s cannot be followed: %s", self.node, name, exc)
                self.submit([self._follower_event("source.unavailable", name, f"{name}: {exc}")])
                return
            except Exception as exc:  # noqa: BLE001 - the supervisor's whole job
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.sources[name] = f"restarted {self.restarts[name]} times; last error: {exc}"
                log.exception("events of %s: %s failed (restarting in %g s)", self.node, name, backoff)
                self.submit([self._follower_event("source.restart", name, f"{name} failed and restarted: {exc}")])
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _run_kmsg(self) -> None:
        device = self.kmsg_device
        assert device is not None
        boot = self._boot_id()
        if self.last_seq is None:
            saved = self.sink.kmsg_position(self.node)
            if saved is not None and boot and saved[0] == boot:
                self.last_seq = saved[1]
        # Resume after what was read (this thread or an earlier worker). Nothing read yet: the end the
        # first time; after a crash, from the oldest record, skipping those older than the first start.
        if self.last_seq is None and self._since_us is None:
            self._since_us = int(time.monotonic() * 1e6)
            device.open(at_end=True)
        else:
            device.open(at_end=False)
        saved_seq, saved_at = self.last_seq, time.monotonic()
        try:
            while not self.stop_event.is_set():
                try:
                    raw = device.read(_WAIT_S)
                except kmsg.Overrun:
                    self._overrun = True
                    continue
                if raw is not None:
                    self._kmsg_record(raw)
                if (
                    self.last_seq is not None
                    and self.last_seq != saved_seq
                    and boot
                    and (raw is None or time.monotonic() - saved_at > _POSITION_EVERY_S)
                ):
                    self.sink.save_kmsg_position(self.node, boot, self.last_seq)
                    saved_seq, saved_at = self.last_seq, time.monotonic()
        finally:
            device.close()
            if self.last_seq is not None and self.last_seq != saved_seq and boot:
                self.sink.save_kmsg_position(self.node, boot, self.last_seq)

    def _kmsg_record(self, raw: bytes) -> None:
        record = kmsg.parse_record(raw)
        if record is None:
            return
        found: list[Event] = []
        last = self.last_seq
        if last is not None and record.seq <= last:
            return  # read before this restart
        if last is None and self._since_us is not None and record.seq != self._processing:
            if record.ts_us < self._since_us:
                return  # older than the first start (reopened from the oldest record after a crash)
        if record.seq == self._processing:
            # Handling this record crashed the follower once (reported as source.restart): skip it.
            self.last_seq, self._processing = record.seq, None
            return
        self._processing = record.seq
        if last is not None and record.seq > last + 1:
            lost = record.seq - last - 1
            found.append(self._follower_event("kmsg.gap", "kmsg", f"{lost} kernel-log records lost", lost))
        elif self._overrun:
            found.append(self._follower_event("kmsg.gap", "kmsg", "kernel-log records lost (count unknown)"))
        self._overrun = False
        # The record's monotonic timestamp, on the wall clock: when the kernel wrote it.
        age = max(0.0, time.monotonic() - record.ts_us / 1e6)
        found.extend(kmsg.classify(record.message, written_at=self._clock() - age))
        self.submit(found)
        self.last_seq, self._processing = record.seq, None

    def _run_nvml(self) -> None:
        source = self.nvml
        assert source is not None
        source.open()
        try:
            while not self.stop_event.is_set():
                event = source.wait(_WAIT_S)
                if event is not None:
                    self.submit([nvml_event(event, self._clock())])
        finally:
            source.close()

    def _run_counters(self) -> None:
        while not self.stop_event.is_set():
            self.poll_counters()
            if self.stop_event.wait(self.poll_interval_s):
                return


def nvml_event(event: NvmlEvent, at: float) -> Event:
    """An NVML event as a follower event (an Xid is classified as the kernel's line would be). An Xid 154
    or a recovery-action event takes the action of the recovery action read with it; unread, the
    generic Xid 154 row (``warn``)."""
    device = bus_id(event.bus_id)
    if event.kind == RECOVERY or (event.kind == XID and event.data == XID_RECOVERY_ACTION):
        what = "NVML Xid 154" if event.kind == XID else "NVML GPU recovery action event"
        if event.action is None:
            generic = catalogue.lookup("xid", str(XID_RECOVERY_ACTION))
            return Event("nvml", generic, device, f"{what}: recovery action unread", at)
        named = catalogue.recovery_label(event.action)
        return Event("nvml", catalogue.recovery_action(event.action), device, f"{what}: recovery action {named}", at)
    if event.kind == XID:
        entry = catalogue.classify_xid(event.data)
        return Event("nvml", entry, device, f"NVML Xid {event.data}", at)
    code = "ecc.dbe" if event.kind == ECC_DBE else "ecc.sbe"
    assert event.kind in (ECC_DBE, ECC_SBE)
    return Event("nvml", catalogue.counter(code), device, f"NVML {code} event", at)
