"""The follower: sources under a supervisor, folding, the store sink with its reconcile, injection, metrics."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import fakeredis
import pytest

from autopilot import config, errors, results
from autopilot.events import follower as follower_mod
from autopilot.events import kmsg
from autopilot.events.catalogue import Action
from autopilot.events.counters import CounterPoller, IbPort, read_infiniband
from autopilot.events.metrics import EventsSnapshot, families
from autopilot.events.model import Event
from autopilot.nvml_events import GpuCounters, NvmlEvent
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeCluster, FakeGpu, FakeTelemetry, wait_until
from tests.conftest import sample_text
from workers import follower as glue
from workers import simulate
from workers.store import NodeRecord, ResultsStore

GPUS = {"0000:91:00.0": "3", "0000:38:00.0": "1"}
XID79 = "NVRM: Xid (PCI:0000:91:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
XID13 = "NVRM: Xid (PCI:0000:38:00): 13, pid=77, name=python, Graphics SM Warp Exception"
XID119 = "NVRM: Xid (PCI:0000:91:00): 119, pid=1, name=x, Timeout after 6s of waiting for RPC response"


class ListSink:
    """Records what the follower writes; keeps the kmsg position like the store does."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.counted: list[Event] = []
        self.timed: list[Event] = []
        self.position: tuple[str, int] | None = None
        self.fail = False

    def emit(self, node: str, result: CheckResult | None, counted: Sequence[Event], timed: Sequence[Event]) -> None:
        if self.fail:
            raise ConnectionError("store down")
        if result is not None:
            self.results.append(result)
        self.counted.extend(counted)
        self.timed.extend(timed)

    def last_result(self, node: str) -> CheckResult | None:
        return self.results[-1] if self.results else None

    def kmsg_position(self, node: str) -> tuple[str, int] | None:
        return self.position

    def save_kmsg_position(self, node: str, boot: str, seq: int) -> None:
        self.position = (boot, seq)


def make(sink: ListSink, **kw: Any) -> follower_mod.Follower:
    kw.setdefault("boot_id", lambda: "boot-1")
    kw.setdefault("clock", lambda: 1000.0)
    return follower_mod.Follower("node-a", sink, gpu_index=GPUS, **kw)


def codes(result: CheckResult) -> set[tuple[str, str, str]]:
    return {(f["gpu"], f["code"], f["action"]) for f in result.data["findings"]}


# ---------------------------------------------------------------- results and folding


def test_an_evicting_xid_is_a_fatal_fail_for_its_gpu() -> None:
    sink = ListSink()
    make(sink).feed_kmsg(XID79, written_at=1000.0)
    [result] = sink.results
    assert (result.check, result.status, result.fatal) == ("events", Status.FAIL, True)
    assert [(d.id, d.status) for d in result.devices] == [("3", Status.FAIL)]
    assert [e.device for e in sink.timed] == ["3"]


def test_an_application_xid_writes_no_result_but_is_counted() -> None:
    sink = ListSink()
    f = make(sink)
    for _ in range(50):
        f.feed_kmsg(XID13)
    assert sink.results == []
    assert len(sink.counted) == 50
    assert {(e.device, e.code, e.action) for e in sink.counted} == {("1", "xid.13", Action.IGNORE)}


def test_a_storm_is_one_result_with_a_count_written_at_the_flush() -> None:
    sink = ListSink()
    f = make(sink, clock=lambda: 1000.0)
    for i in range(10):
        f.feed_kmsg(XID119, written_at=1000.0 + i)
    assert len(sink.results) == 1  # the first at once; the rest wait for the flush
    f.flush()
    assert len(sink.results) == 2
    [finding] = sink.results[-1].data["findings"]
    assert (finding["code"], finding["count"], finding["action"]) == ("xid.119", 10, "reset")
    f.flush()
    assert len(sink.results) == 2  # nothing new: nothing written


def test_a_worse_event_on_the_same_gpu_is_written_at_once_and_earlier_findings_stay() -> None:
    sink = ListSink()
    f = make(sink, clock=lambda: 1000.0)
    f.feed_kmsg(XID119, written_at=1000.0)
    f.feed_kmsg(XID79, written_at=1001.0)
    assert len(sink.results) == 2
    assert codes(sink.results[-1]) == {("3", "xid.119", "reset"), ("3", "xid.79", "evict")}
    assert sink.results[-1].fatal


def test_findings_survive_a_worker_restart_through_the_stored_result() -> None:
    sink = ListSink()
    make(sink, clock=lambda: 1000.0).feed_kmsg(XID119, written_at=1000.0)
    again = make(sink, clock=lambda: 1010.0)  # a new worker: its follower starts empty
    again.feed_kmsg("NVRM: Xid (PCI:0000:38:00): 95, pid=1, name=x, Uncontained", written_at=1010.0)
    assert codes(sink.results[-1]) == {("3", "xid.119", "reset"), ("1", "xid.95", "reset")}


def test_a_store_outage_keeps_the_finding_for_the_next_flush() -> None:
    sink = ListSink()
    f = make(sink)
    sink.fail = True
    f.feed_kmsg(XID79)
    sink.fail = False
    f.flush()
    assert [r.fatal for r in sink.results] == [True]


# ---------------------------------------------------------------- kmsg: gaps, crashes, restarts


def run_until(f: follower_mod.Follower, condition: Any) -> None:
    f.start()
    try:
        wait_until(condition, 10, "the follower")
    finally:
        f.stop()


def test_a_kmsg_overrun_is_reported_as_a_gap_with_the_records_lost() -> None:
    dev = kmsg.FakeKmsg(capacity=4)
    sink = ListSink()
    f = make(sink, kmsg_device=dev)
    f.last_seq = -1  # as if it had read from the start: now it falls behind
    for i in range(10):
        dev.write(f"filler {i}")
    dev.write(XID79)
    run_until(f, lambda: any(r.fatal for r in sink.results))
    gaps = [e for e in sink.counted if e.code == "kmsg.gap"]
    assert [(g.count, g.action) for g in gaps] == [(7, Action.WARN)]  # records 0..6 overwritten


def test_a_follower_crash_is_reported_and_loses_no_event() -> None:
    class Flaky(kmsg.FakeKmsg):
        crashes = 1

        def read(self, timeout_s: float) -> bytes | None:
            record = super().read(timeout_s)
            if record is not None and b"boom" in record and self.crashes:
                self.crashes -= 1
                raise RuntimeError("parser exploded")
            return record

    dev = Flaky()
    sink = ListSink()
    f = make(sink, kmsg_device=dev)
    f.stop_event.clear()
    f.start()
    try:
        wait_until(lambda: dev.opened == 1, 5, "the follower")
        dev.write("boom")
        dev.write(XID79)
        wait_until(lambda: any(r.fatal for r in sink.results), 10, "the follower")
    finally:
        f.stop()
    assert f.restarts == {"kmsg": 1}
    assert any(e.code == "source.restart" for e in sink.counted)
    assert dev.opened == 2


def test_a_worker_restart_reads_on_where_the_last_one_stopped() -> None:
    dev = kmsg.FakeKmsg(capacity=100)
    sink = ListSink()
    first = make(sink, kmsg_device=dev)
    run_until(first, lambda: dev.opened == 1)
    dev.write("seen by the first worker")
    sink.position = ("boot-1", 0)
    dev.write(XID79)  # written while no worker ran
    second = make(sink, kmsg_device=dev)
    run_until(second, lambda: any(r.fatal for r in sink.results))
    assert not any(e.code == "kmsg.gap" for e in sink.counted)


def test_a_worker_restart_after_the_buffer_wrapped_reports_the_gap() -> None:
    dev = kmsg.FakeKmsg(capacity=3)
    sink = ListSink()
    sink.position = ("boot-1", 0)
    for i in range(6):
        dev.write(f"line {i}")
    dev.write(XID79)
    run_until(make(sink, kmsg_device=dev), lambda: any(r.fatal for r in sink.results))
    assert [e.count for e in sink.counted if e.code == "kmsg.gap"] == [3]  # 1..3 were overwritten


def test_another_boot_starts_at_the_end() -> None:
    dev = kmsg.FakeKmsg()
    dev.write(XID79)  # this boot's old line: not replayed
    sink = ListSink()
    sink.position = ("boot-0", 99)
    f = make(sink, kmsg_device=dev)
    run_until(f, lambda: dev.opened == 1)
    assert sink.results == []


def test_an_unreadable_kmsg_is_reported_not_retried(tmp_path: Any) -> None:
    sink = ListSink()
    f = make(sink, kmsg_device=kmsg.DevKmsg(str(tmp_path / "missing")))
    run_until(f, lambda: f.sources.get("kmsg", "").startswith("unavailable"))
    assert [e.code for e in sink.counted] == ["source.unavailable"]
    assert f.restarts == {}


# ---------------------------------------------------------------- NVML events and counters


class FakeNvmlEvents:
    def __init__(self, events: list[NvmlEvent]) -> None:
        self.events = events
        self.closed = threading.Event()

    def open(self) -> None:
        pass

    def wait(self, timeout_s: float) -> NvmlEvent | None:
        return self.events.pop(0) if self.events else None

    def close(self) -> None:
        self.closed.set()


def test_nvml_xid_and_ecc_events_become_findings_and_fold_with_the_kernel_line() -> None:
    sink = ListSink()
    nvml = FakeNvmlEvents([NvmlEvent("xid", "00000000:91:00.0", 79), NvmlEvent("ecc.dbe", "00000000:38:00.0"),
                           NvmlEvent("ecc.sbe", "00000000:38:00.0")])  # fmt: skip
    f = make(sink, nvml=nvml)
    run_until(f, lambda: len(sink.counted) == 3)
    f.feed_kmsg(XID79)  # the same fault from the kernel log: folded, not a second finding
    assert codes(sink.results[-1]) == {("3", "xid.79", "evict"), ("1", "ecc.dbe", "reset")}
    assert nvml.closed.is_set()


def test_an_nvml_xid_154_takes_the_recovery_action_read_with_it() -> None:
    """NVML's Xid 154 carries no message: the action read from the field names it (NODE_REBOOT evicts,
    DRAIN_P2P warns); unread, it is the generic row's warn."""
    sink = ListSink()
    nvml = FakeNvmlEvents([NvmlEvent("xid", "00000000:91:00.0", 154, 2), NvmlEvent("xid", "00000000:38:00.0", 154, 3)])
    f = make(sink, nvml=nvml)
    run_until(f, lambda: len(sink.counted) == 2)
    assert codes(sink.results[-1]) == {("3", "xid.154", "evict"), ("1", "xid.154", "warn")}
    assert sink.results[-1].fatal
    assert "0x2 (Node Reboot Required)" in sink.counted[0].message
    unread = follower_mod.nvml_event(NvmlEvent("xid", "00000000:91:00.0", 154), 0.0)
    assert (unread.code, unread.action) == ("xid.154", Action.WARN)


def test_a_recovery_action_back_to_none_is_counted_and_the_finding_ages_out_as_others_do() -> None:
    """NODE_REBOOT, then NONE: the NONE is counted (metrics) and writes nothing, so the evicting finding
    stays until the hold ends, as a remap that is no longer pending does."""
    now = [1000.0]
    actions = iter([2, 0])
    sink = ListSink()
    f = make(sink, clock=lambda: now[0], hold_s=600.0)
    poller = CounterPoller(lambda: [GpuCounters("00000000:91:00.0", recovery_action=next(actions))], now=lambda: now[0])
    f.submit(poller.poll())
    assert codes(sink.results[-1]) == {("3", "xid.154", "evict")}
    now[0] += 60.0
    f.submit(poller.poll())
    assert len(sink.results) == 1
    assert [(e.code, e.action, e.source) for e in sink.counted][-1] == ("xid.154", Action.IGNORE, "counters")
    assert "to 0x0 (None)" in sink.counted[-1].message
    assert codes(f.findings.result("node-a", now[0] + 600.0, {})) == set()  # past the hold


def test_counters_report_rises_not_totals() -> None:
    reads = iter([
        [GpuCounters("00000000:91:00.0", ecc_uncorrected_volatile=7, nvlink_up=(True, True), nvlink_crc=100)],
        [GpuCounters("00000000:91:00.0", ecc_uncorrected_volatile=7, nvlink_up=(True, False), nvlink_crc=130)],
        [GpuCounters("00000000:91:00.0", ecc_uncorrected_volatile=9, nvlink_up=(True, False), nvlink_crc=5)],
    ])  # fmt: skip
    poller = CounterPoller(lambda: next(reads))
    assert poller.poll() == []  # the baseline
    second = {(e.code, e.count) for e in poller.poll()}
    assert second == {("nvlink.crc", 30), ("nvlink.down", 1)}
    third = {(e.code, e.count) for e in poller.poll()}
    assert third == {("ecc.dbe", 2)}  # the CRC counter went back (driver reload): no event


def test_a_bad_state_is_reported_once_until_it_clears() -> None:
    states = iter([True, True, False, True])
    poller = CounterPoller(lambda: [GpuCounters("0000:91:00.0", remap_pending=next(states))])
    found = [[e.code for e in poller.poll()] for _ in range(4)]
    assert found == [["remap.pending"], [], [], ["remap.pending"]]


def test_each_poll_names_the_states_still_bad_without_an_event() -> None:
    """``standing``: every state bad at the last poll, reported or not (a port or link already down at the
    first poll is no event, but it is named, so a finding an earlier follower wrote is held)."""
    reads = iter([
        [GpuCounters("0000:91:00.0", remap_pending=True, recovery_action=2, nvlink_up=(True, False))],
        [GpuCounters("0000:91:00.0", remap_pending=True, recovery_action=2, nvlink_up=(True, False))],
        [GpuCounters("0000:91:00.0", remap_pending=False, recovery_action=0, nvlink_up=(True, True))],
    ])  # fmt: skip
    poller = CounterPoller(
        lambda: next(reads), lambda: [IbPort("mlx5_0/1", "DOWN", {}), IbPort("mlx5_1/1", "ACTIVE", {})]
    )
    standing = {("0000:91:00.0", "remap.pending"), ("0000:91:00.0", "xid.154"), ("0000:91:00.0", "nvlink.down"),
                ("mlx5_0/1", "ib.down")}  # fmt: skip
    assert {e.code for e in poller.poll()} == {"remap.pending", "xid.154"}
    assert poller.standing == standing
    assert poller.poll() == [] and poller.standing == standing
    assert [e.action for e in poller.poll()] == [Action.IGNORE]  # the action back to NONE
    assert poller.standing == {("mlx5_0/1", "ib.down")}


def test_a_node_without_gpus_still_polls_its_infiniband_ports() -> None:
    def no_driver() -> list[GpuCounters]:
        raise errors.GpuUnavailable("NVML Shared Library Not Found")

    states = iter(["ACTIVE", "DOWN"])
    poller = CounterPoller(no_driver, lambda: [IbPort("mlx5_0/1", next(states), {})])
    assert poller.poll() == []
    assert [(e.code, e.device) for e in poller.poll()] == [("ib.down", "mlx5_0/1")]


def _ibstat_ports(text: str) -> list[IbPort]:
    ports, ca = [], ""
    for line in text.splitlines():
        if line.startswith("CA '"):
            ca = line.split("'")[1]
        elif line.strip().startswith("Port ") and line.strip().endswith(":"):
            port = line.strip()[5:-1]
        elif line.strip().startswith("State:"):
            ports.append(IbPort(f"{ca}/{port}", line.split(":")[1].strip().upper(), {}))
    return ports


def _write_sysfs(root: Any, ports: list[IbPort], counters: dict[str, int]) -> None:
    for p in ports:
        ca, port = p.name.split("/")
        d = root / ca / "ports" / port
        (d / "counters").mkdir(parents=True, exist_ok=True)
        (d / "state").write_text(f"{4 if p.state == 'ACTIVE' else 1}: {p.state}\n")
        for name, value in counters.items():
            (d / "counters" / name).write_text(f"{value}\n")


def test_infiniband_ports_from_sysfs_going_down_as_in_the_ibstat_sample(tmp_path: Any) -> None:
    good = _ibstat_ports(sample_text("ibstat_h100_all-active.txt"))
    bad = _ibstat_ports(sample_text("ibstat_h100_some-ports-down.txt"))
    _write_sysfs(tmp_path, good, {"link_downed": 0, "symbol_error": 3})
    poller = CounterPoller(None, lambda: read_infiniband(str(tmp_path)))
    assert poller.poll() == []
    _write_sysfs(tmp_path, bad, {"link_downed": 1, "symbol_error": 3})
    events = poller.poll()
    down = {e.device for e in events if e.code == "ib.down"}
    assert down == {p.name for p in bad if p.state != "ACTIVE"} and down
    assert {e.device for e in events if e.code == "ib.link_downed"} == {p.name for p in bad}


def test_nvlink_links_going_inactive_as_in_the_nvidia_smi_samples() -> None:
    good = sample_text("nvidia-smi-nvlink-status_a100_good.txt")
    bad = sample_text("nvidia-smi-nvlink-status_a100_all-inactive.txt")
    links = tuple(True for line in good.splitlines() if "Link " in line and "GB/s" in line)
    after = () if "all links are inactive" in bad else links
    polls = iter([[GpuCounters("0000:07:00.0", nvlink_up=links)], [GpuCounters("0000:07:00.0",
                  nvlink_up=tuple(False for _ in links) if not after else after)]])  # fmt: skip
    poller = CounterPoller(lambda: next(polls))
    poller.poll()
    assert len([e for e in poller.poll() if e.code == "nvlink.down"]) == len(links) > 0


# ---------------------------------------------------------------- states that stay bad

HOLD_S, POLL_S = 600.0, 60.0
# kind -> (device, code, action) of its finding and the status of the result that holds it
STANDING = {
    "remap": (("3", "remap.pending", "warn"), Status.WARN),
    "ib": (("mlx5_0/1", "ib.down", "warn"), Status.WARN),
    "recovery": (("3", "xid.154", "evict"), Status.FAIL),
}


def standing_poller(kind: str, bad: list[bool], now: list[float]) -> CounterPoller:
    """A poller whose state is ``bad[0]``: a pending remap, a port down, or the action NODE_REBOOT."""
    if kind == "ib":
        return CounterPoller(None, lambda: [IbPort("mlx5_0/1", "DOWN" if bad[0] else "ACTIVE", {})], now=lambda: now[0])
    if kind == "recovery":
        return CounterPoller(lambda: [GpuCounters("00000000:91:00.0", recovery_action=2 if bad[0] else 0)],
                             now=lambda: now[0])  # fmt: skip
    return CounterPoller(lambda: [GpuCounters("00000000:91:00.0", remap_pending=bad[0])], now=lambda: now[0])


def turned_bad(kind: str, sink: Any, now: list[float]) -> tuple[follower_mod.Follower, list[bool]]:
    """A follower that has just seen the state turn bad (a port is news when it goes down, so it is up first)."""
    bad = [kind != "ib"]
    f = make(sink, clock=lambda: now[0], hold_s=HOLD_S, poller=standing_poller(kind, bad, now))
    f.poll_counters()
    if not bad[0]:
        now[0] += POLL_S
        bad[0] = True
        f.poll_counters()
    return f, bad


def step(f: follower_mod.Follower, now: list[float]) -> None:
    """One poll, then the flush the worker runs every second."""
    now[0] += POLL_S
    f.poll_counters()
    f.flush()


def written_age(sink: ListSink, now: float) -> float:
    return now - results.parse_iso(sink.results[-1].started_at).timestamp()


@pytest.mark.parametrize("kind", sorted(STANDING))
def test_a_state_that_stays_bad_keeps_its_finding_past_the_hold_with_one_event(kind: str) -> None:
    """A remap still pending, a port still down, a recovery action still NODE_REBOOT: the finding stays in
    the written result past the hold, with count 1, one counted event, and a rewrite per half hold, not per poll."""
    (found, status), now, sink = STANDING[kind], [1000.0], ListSink()
    f, _ = turned_bad(kind, sink, now)
    since = now[0]
    while now[0] < since + HOLD_S + 5 * POLL_S:
        step(f, now)
        assert written_age(sink, now[0]) <= HOLD_S  # the written result never goes stale in the verdict
    written = sink.results[-1]
    assert codes(written) == {found}
    assert written.status is status and [d.value for d in written.devices] == [1]
    [finding] = written.data["findings"]
    assert finding["count"] == 1 and finding["first_at"] == since and finding["last_at"] > since + HOLD_S
    assert [(e.device, e.code, e.action.value) for e in sink.counted] == [found]  # not one per poll
    assert len(sink.timed) == 1
    assert len(sink.results) <= 1 + (now[0] - since) // (HOLD_S / 2)


@pytest.mark.parametrize("kind", sorted(STANDING))
def test_a_state_that_cleared_ages_out_a_hold_after_its_last_sighting(kind: str) -> None:
    (found, _), now, sink = STANDING[kind], [1000.0], ListSink()
    f, bad = turned_bad(kind, sink, now)
    for _ in range(int(HOLD_S / POLL_S) + 3):
        step(f, now)
    last_seen, written = now[0], len(sink.results)
    bad[0] = False  # cleared (the action back to NONE: an ignore event, counted, never written)
    while now[0] + POLL_S < last_seen + HOLD_S:
        step(f, now)
    assert len(sink.results) == written  # clearing writes nothing: the finding shows for the hold
    assert codes(f.findings.result("node-a", last_seen + HOLD_S, {})) == {found}
    assert codes(f.findings.result("node-a", last_seen + HOLD_S + 1, {})) == set()
    assert [e.action for e in sink.counted][1:] == ([Action.IGNORE] if kind == "recovery" else [])


def test_a_restarted_follower_keeps_holding_a_port_still_down() -> None:
    """The port is down at the new follower's first poll (no event: a port is news when it goes down), so
    the finding comes back from the stored result and is held from there."""
    now, sink = [1000.0], ListSink()
    f, bad = turned_bad("ib", sink, now)
    for _ in range(3):
        step(f, now)
    again = make(sink, clock=lambda: now[0], hold_s=HOLD_S, poller=standing_poller("ib", bad, now))
    restarted = now[0]
    while now[0] < restarted + 2 * HOLD_S:
        step(again, now)
        assert written_age(sink, now[0]) <= HOLD_S
    assert codes(sink.results[-1]) == {STANDING["ib"][0]}
    assert len(sink.counted) == 1


def test_a_flush_that_could_not_write_is_tried_again() -> None:
    sink = ListSink()
    f = make(sink)
    f.feed_kmsg(XID119, written_at=1000.0)
    f.feed_kmsg(XID119, written_at=1001.0)  # folded: waits for the flush
    sink.fail = True
    with pytest.raises(ConnectionError):
        f.flush()
    sink.fail = False
    f.flush()
    assert [r.data["findings"][0]["count"] for r in sink.results] == [1, 2]


# ---------------------------------------------------------------- the store sink: result, reconcile, metrics


@pytest.fixture
def stack() -> tuple[ResultsStore, FakeCluster, config.Settings, glue.StoreSink]:
    from autopilot.context import CheckContext
    from autopilot.testing import FakeRunner

    store = ResultsStore(fakeredis.FakeRedis())
    cluster = FakeCluster()
    cluster.add_node("node-a", gpus=8)
    settings = config.Settings(node_name="node-a", periodic_checks=())
    ctx = CheckContext(
        "node-a", settings, FakeRunner(), FakeTelemetry([FakeGpu()]), cluster=cluster, checks=shipped_checks()
    )
    return store, cluster, settings, glue.StoreSink(store, settings, {"node-a": ctx}, checks=shipped_checks())


def test_an_event_is_on_the_node_as_label_and_condition_at_once(stack: Any) -> None:
    store, cluster, settings, sink = stack
    f = follower_mod.Follower("node-a", sink, gpu_index=GPUS)
    f.feed_kmsg(XID13)
    assert store.latest("node-a") == {}
    assert cluster.nodes["node-a"].labels.get("autopilot.ibm.com/gpuhealth") in (None, "PASS")
    f.feed_kmsg(XID79)
    node = cluster.nodes["node-a"]
    assert node.labels["autopilot.ibm.com/gpuhealth"] == "EVICT"
    assert node.conditions and store.state("node-a").verdict == "EVICT"
    snap = store.events().snapshot()
    assert snap.counts[("node-a", "3", "kmsg", "xid.79", "evict")] == 1
    assert snap.counts[("node-a", "1", "kmsg", "xid.13", "ignore")] == 1
    assert sum(snap.buckets.values()) == 1


def test_a_standing_fault_counts_one_event_and_adds_no_kubernetes_event_per_poll(stack: Any) -> None:
    """A remap still pending past the hold, through the worker's sink: the verdict stays WARN, the metrics
    count one event, and the Node gets no Event beyond the first one's."""
    store, cluster, settings, sink = stack
    now, bad = [time.time()], [True]
    poller = standing_poller("remap", bad, now)
    f = follower_mod.Follower("node-a", sink, gpu_index=GPUS, clock=lambda: now[0], hold_s=HOLD_S, poller=poller)
    f.poll_counters()
    assert store.state("node-a").verdict == "WARN"
    node_events = len(cluster.events)
    for _ in range(int(HOLD_S / POLL_S) + 5):
        step(f, now)
    assert store.state("node-a").verdict == "WARN"
    assert codes(store.latest("node-a")["events"]) == {STANDING["remap"][0]}
    assert store.events().snapshot().counts == {("node-a", "3", "counters", "remap.pending", "warn"): 1.0}
    assert len(cluster.events) == node_events


def test_an_application_xid_changes_no_verdict(stack: Any) -> None:
    store, cluster, settings, sink = stack
    f = follower_mod.Follower("node-a", sink, gpu_index=GPUS)
    f.feed_kmsg("NVRM: Xid (PCI:0000:91:00): 119, pid=1, name=x, Timeout")
    before = store.state("node-a").verdict
    for line in (XID13, "NVRM: Xid (PCI:0000:38:00): 43, pid=9, name=python, Ch 00000008",
                 "NVRM: Xid (PCI:0000:38:00): 31, pid=9, name=python, MMU Fault"):  # fmt: skip
        f.feed_kmsg(line)
    assert store.state("node-a").verdict == before == "WARN"


def test_the_metric_families() -> None:
    snap = EventsSnapshot({("n", "3", "kmsg", "xid.79", "evict"): 2.0}, {"0.1": 3.0, "+Inf": 1.0}, 12.0)
    events, latency = families(snap)
    assert events.name == "autopilot_gpu_events"
    assert [s.value for s in events.samples if s.name.endswith("_total")] == [2.0]
    buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}
    assert (buckets["0.05"], buckets["0.1"], buckets["1.0"], buckets["+Inf"]) == (0.0, 3.0, 3.0, 4.0)


# ---------------------------------------------------------------- simulator and inject


def test_xid_faults_parse_and_others_are_untouched() -> None:
    nodes = simulate.node_names(4)
    assert simulate.parse_xid_fault("sim-2:xid:79") == simulate.XidFault("sim-2", 79, 0, 0.0)
    assert simulate.parse_xid_fault("sim-2:xid:48:5@30s", nodes) == simulate.XidFault("sim-2", 48, 5, 30.0)
    assert simulate.parse_faults(["sim-1:xid:13", "sim-1:remapped"], nodes) == {"sim-1": {"remapped": "pending"}}
    for bad in ("sim-2:xid:abc", "sim-2:xid:79:8", "sim-9:xid:79", "sim-2:xid", "sim-2:xid:79@soon"):
        with pytest.raises(errors.BadParameter):
            simulate.parse_xid_fault(bad, nodes)


def test_a_simulated_xid_names_the_simulated_gpu() -> None:
    telemetry = simulate.build_seam(config.Settings(), {}, checks=shipped_checks())[1]
    index = {telemetry.identity(i).pci_bus_id: str(i) for i in range(telemetry.count())}
    sink = ListSink()
    follower_mod.Follower("sim-0", sink, gpu_index=index).feed_kmsg(simulate.xid_message(79, 5))
    assert [d.id for d in sink.results[-1].devices] == ["5"]


def test_inject_only_into_simulated_nodes(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    server = fakeredis.FakeServer()
    store = ResultsStore(fakeredis.FakeRedis(server=server))
    store.heartbeat(NodeRecord("sim-1", simulated=True, last_seen=1.0))
    store.heartbeat(NodeRecord("gpu-7", simulated=False, last_seen=1.0))
    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "redis://fake:1/0")
    monkeypatch.setattr(glue.redis.Redis, "from_url", staticmethod(lambda *a, **k: fakeredis.FakeRedis(server=server)))
    assert glue.inject_main(["gpu-7", "xid", "79"]) == 2
    assert "real node" in capsys.readouterr().err
    assert glue.inject_main(["sim-1", "xid", "79", "--gpu", "9"]) == 2
    assert glue.inject_main(["sim-1", "xid", "79", "--gpu", "2"]) == 0
    got = store.events().next_injected(["sim-1"], 1)
    assert got is not None and got[0] == "sim-1"
    item = json.loads(got[1])
    assert item["message"] == simulate.xid_message(79, 2)


def test_the_simulated_inbox_feeds_the_follower() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    sink = ListSink()
    followers = {"sim-0": follower_mod.Follower("sim-0", sink, gpu_index={"0000:02:00.0": "2"})}
    stop = threading.Event()
    thread = threading.Thread(target=glue._inbox_loop, args=(store, followers, stop), daemon=True)
    thread.start()
    try:
        glue.inject(store, "sim-0", 79, 2)
        wait_until(lambda: bool(sink.results), 10, "the follower")
    finally:
        stop.set()
        thread.join(5)
    assert [(d.id, d.status) for d in sink.results[-1].devices] == [("2", Status.FAIL)]


def test_the_follower_is_off_when_the_setting_says_so() -> None:
    settings = dataclasses.replace(config.Settings(), events_follower=False)
    assert (
        glue.start(ResultsStore(fakeredis.FakeRedis()), settings, {}, simulated=True, checks=shipped_checks()) is None
    )
    assert config.Settings.from_env({"AUTOPILOT_EVENTS_FOLLOWER": "false"}).events_follower is False
