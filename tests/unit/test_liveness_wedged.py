"""A worker whose every pool thread is stuck in a task: what its node looked like, and what it says now.

``liveness.PoolWatch`` decides (a manual clock); ``workers.app.task_may_take_s`` gives each task its bound from
the registry and settings; Celery's task signals feed the watch; the consumer's mark and the heartbeat's node
records follow the decision, and the node's verdict, label and metric follow its records.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery, Task
from celery import _state as celery_state
from celery.app.trace import build_tracer
from celery.exceptions import Reject, Retry
from rich.console import Console

from api import client
from api.metrics import snapshot_from_store
from autopilot import config, errors, metrics
from autopilot.checks import iperf
from autopilot.cluster import CONDITION_TYPE
from autopilot.context import CheckContext
from autopilot.nodeinfo import NodeFacts
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status, utc_now_iso
from autopilot.testing import FakeClock, FakeCluster, FakeGpu, FakeRunner, FakeTelemetry
from workers import app as worker_app
from workers import host as hosting
from workers import invasive_flow, liveness, main, reconcile, ring, simulate, tasks
from workers.dispatch import RUN_TASK, FakeDispatcher
from workers.store import NodeRecord, ResultsStore

WALL = 1_800_000_000.0
HEALTH = "autopilot.ibm.com/gpuhealth"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class PoolThread(threading.Thread):
    """A thread that stays alive (its identity is the watch's key) and runs what it is handed, in order."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.inbox: queue.SimpleQueue[tuple[Callable[[], None], threading.Event] | None] = queue.SimpleQueue()
        self.start()

    def run(self) -> None:
        while (job := self.inbox.get()) is not None:
            fn, done = job
            fn()
            done.set()

    def do(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        self.inbox.put((fn, done))
        assert done.wait(10)

    def stop(self) -> None:
        self.inbox.put(None)
        self.join(10)


@pytest.fixture
def pool() -> Iterator[tuple[liveness.PoolWatch, Clock, list[PoolThread]]]:
    clock = Clock()
    # Wall time runs with the monotonic clock, WALL - 1000 s apart.
    watch = liveness.PoolWatch(clock=clock, wall=lambda: WALL + clock.t - 1000.0)
    watch.threads = 2
    threads = [PoolThread(), PoolThread()]
    yield watch, clock, threads
    for t in threads:
        t.stop()


def test_every_thread_past_its_bound_is_wedged_since_the_last_one_crossed(
    pool: tuple[liveness.PoolWatch, Clock, list[PoolThread]], caplog: pytest.LogCaptureFixture
) -> None:
    watch, clock, (a, b) = pool
    a.do(lambda: watch.started("autopilot.run_checks", 100.0))
    clock.t += 50
    b.do(lambda: watch.started("autopilot.reconcile", 300.0))
    clock.t += 200  # a is 150 s past its bound; b is 200 s into its 300
    assert watch.wedged_since() is None
    clock.t += 150  # b crossed its bound 50 s ago (at 1350 on the monotonic clock)
    with caplog.at_level(logging.ERROR, logger="workers.liveness"):
        assert watch.wedged_since() == WALL + 350.0
        assert watch.wedged_since() == WALL + 350.0
    [said] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]  # once, not per question
    assert "all 2 pool thread(s)" in said
    assert "autopilot.run_checks for 400 s (may take 100 s)" in said
    assert "autopilot.reconcile for 350 s (may take 300 s)" in said
    # A thread freed: no longer wedged, and said so.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workers.liveness"):
        b.do(watch.finished)
        assert watch.wedged_since() is None
    assert any("no longer wedged" in r.getMessage() for r in caplog.records)


def test_one_free_thread_is_not_wedged(pool: tuple[liveness.PoolWatch, Clock, list[PoolThread]]) -> None:
    watch, clock, (a, _) = pool
    a.do(lambda: watch.started("autopilot.run_checks", 10.0))
    clock.t += 10_000
    assert watch.wedged_since() is None


def test_a_long_task_within_its_bound_is_not_wedged(pool: tuple[liveness.PoolWatch, Clock, list[PoolThread]]) -> None:
    watch, clock, (a, b) = pool
    a.do(lambda: watch.started("autopilot.run_checks", 10.0))
    b.do(lambda: watch.started("autopilot.run_checks", 8_000.0))  # a DCGM run, within its timeout
    clock.t += 7_999
    assert watch.wedged_since() is None
    clock.t += 2
    assert watch.wedged_since() is not None


def test_a_pool_of_no_threads_is_never_wedged(pool: tuple[liveness.PoolWatch, Clock, list[PoolThread]]) -> None:
    watch, clock, (a, b) = pool
    a.do(lambda: watch.started("autopilot.run_checks", 1.0))
    b.do(lambda: watch.started("autopilot.run_checks", 1.0))
    clock.t += 2
    assert watch.wedged_since() is not None
    watch.threads = 0  # not a worker (the API, beat): nothing is judged
    assert watch.wedged_since() is None


# ---------------------------------------------------------------- the bound of each task


@pytest.fixture
def host() -> Iterator[hosting.NodeHost]:
    settings = config.Settings(check_timeouts={"gpumem": 42.0}, wedge_margin_s=30.0, invasive_deadline_s=5000.0)
    node_host = hosting.NodeHost(
        settings,
        ResultsStore(fakeredis.FakeRedis()),
        simulate.contexts(settings, 1, [], checks=shipped_checks()),
    )
    hosting.install(node_host)
    yield node_host
    hosting.install(None)


def run_message(checks: list[str], params: dict[str, Any] | None = None, node: str = "sim-0") -> dict[str, Any]:
    return {"run_id": "0" * 32, "node": node, "checks": checks, "params": params or {}, "deadline": time.time() + 60}


def test_a_runs_task_may_take_its_checks_timeouts_and_the_margin(host: hosting.NodeHost) -> None:
    specs = shipped_checks()
    expected = specs.get("pciebw").timeout_s + specs.get("dcgm").timeout_s + 42.0 + 30.0  # gpumem: its override
    message = run_message(["pciebw", "dcgm", "gpumem", "pciebw", "nosuch"])
    assert worker_app.task_may_take_s(host, RUN_TASK, message) == expected


def test_a_level3_job_may_take_the_invasive_deadline_and_the_watchs_grace(host: hosting.NodeHost) -> None:
    ctx = host.contexts["sim-0"]
    host.contexts["sim-0"] = dataclasses.replace(ctx, cluster=FakeCluster())
    expected = 5000.0 + invasive_flow.longest_wait_s(host.settings) - host.settings.invasive_deadline_s + 30.0
    assert worker_app.task_may_take_s(host, RUN_TASK, run_message(["dcgm"], {"dcgm": {"r": 3}})) == expected
    level2 = shipped_checks().get("dcgm").timeout_s + 30.0
    assert worker_app.task_may_take_s(host, RUN_TASK, run_message(["dcgm"], {"dcgm": {"r": 2}})) == level2


@pytest.mark.parametrize(
    ("task", "message", "expected"),
    [
        (worker_app.RECONCILE_TASK, {}, 30.0),
        (worker_app.FANOUT_TASK, {"kind": "periodic"}, 30.0),
        (RUN_TASK, run_message(["pciebw"], node="elsewhere"), 30.0),  # answered at once: not hosted
        (RUN_TASK, {"node": "sim-0", "checks": "pciebw"}, 30.0),  # refused at once: malformed
        (ring.SERVERS_TASK, {}, 30.0),
        (ring.RING_TASK, {}, 30.0),  # refused at once: malformed
        (ring.CLIENTS_TASK, {}, 30.0),  # refused at once: malformed
    ],
)
def test_other_tasks_may_take_the_margin(
    host: hosting.NodeHost, task: str, message: dict[str, Any], expected: float
) -> None:
    assert worker_app.task_may_take_s(host, task, message) == expected


class AwayClock(FakeClock):
    """A manual clock whose first sleep (the watch's first wait) takes the API server away for good."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(datetime.now(UTC))
        self.cluster = cluster

    def sleep(self, seconds: float) -> None:
        if not self.sleeps:
            self.cluster.fail_next("get_job", 503, times=10_000)
        super().sleep(seconds)


def test_a_level3_run_whose_job_runs_until_the_watch_gives_up_stays_within_its_bound() -> None:
    """The API server away from the Job's first poll on (a control-plane upgrade): the watch asks again until the
    Job's deadline and its grace (3 min) have passed. The task's bound holds that wait, so the margin is left for
    its cluster and store calls. Before, the bound was the deadline alone: a margin under the grace wedged the
    worker (restarted mid-Job, its node UNKNOWN), and the default 5 min left 2 for every call around the Job."""
    settings = config.Settings(
        node_name="gpu-1",
        image="registry.example/autopilot:test",
        cluster="on",
        invasive_deadline_s=600.0,
        wedge_margin_s=60.0,
    )
    cluster = FakeCluster()
    cluster.add_node("gpu-1", {"nvidia.com/gpu.present": "true"}, gpus=2)
    clock = AwayClock(cluster)
    ctx = CheckContext(
        "gpu-1",
        settings,
        FakeRunner(),
        FakeTelemetry([FakeGpu(), FakeGpu()]),
        clock,
        cluster=cluster,
        checks=shipped_checks(),
    )
    node_host = hosting.NodeHost(settings, ResultsStore(fakeredis.FakeRedis()), {"gpu-1": ctx})
    message = run_message(["dcgm"], {"dcgm": {"r": 3}}, node="gpu-1")
    bound = worker_app.task_may_take_s(node_host, RUN_TASK, message)
    assert bound is not None
    started = clock.monotonic()
    [result] = tasks.run_checks(node_host, **message)
    assert result.status is Status.ERROR and "unreadable at its deadline" in result.summary
    assert clock.monotonic() - started + settings.wedge_margin_s <= bound


def test_a_level_past_any_number_is_no_job_and_its_run_is_still_watched(host: hosting.NodeHost) -> None:
    """JSON's ``Infinity`` reaches a message as ``inf``: ``int(inf)`` raised OverflowError out of the level-3 test,
    so the prerun handler failed (Celery logs it and runs the task anyway) and the task ran unwatched. It is no
    Job: the engine refuses the level at once, within the check's timeout."""
    ctx = host.contexts["sim-0"]
    host.contexts["sim-0"] = dataclasses.replace(ctx, cluster=FakeCluster())
    level2 = shipped_checks().get("dcgm").timeout_s + 30.0
    assert worker_app.task_may_take_s(host, RUN_TASK, run_message(["dcgm"], {"dcgm": {"r": math.inf}})) == level2


def clients_message(jobs: int, ports: int, duration_s: int = 10) -> dict[str, Any]:
    job = {"source": "sim-0", "target": "sim-1", "interface": "eth0", "address": "10.0.0.2"}
    listening = list(range(5200, 5200 + ports))
    return {
        "run_id": "0" * 32,
        "node": "sim-0",
        "phase": 0,
        "jobs": [job | {"ports": listening}] * jobs,
        "duration_s": duration_s,
    }


def test_a_clients_phase_may_take_its_waves_of_clients_and_counts_once_past_them(host: hosting.NodeHost) -> None:
    """A clients phase runs its iperf3 clients at most 64 at once, each to its timeout: its message bounds it.
    Before, it had no bound, so a thread stuck in one (a store write that never returns) kept its worker from
    ever counting as wedged, whatever its other threads did."""
    one_wave = iperf.client_timeout_s(10)
    assert worker_app.task_may_take_s(host, ring.CLIENTS_TASK, clients_message(1, 4)) == one_wave + 30.0
    # 80 clients: a wave of 64, then one of 16.
    assert worker_app.task_may_take_s(host, ring.CLIENTS_TASK, clients_message(20, 4)) == 2 * one_wave + 30.0
    clock = Clock()
    watch = liveness.PoolWatch(clock=clock)
    watch.threads = 1
    watch.started(ring.CLIENTS_TASK, worker_app.task_may_take_s(host, ring.CLIENTS_TASK, clients_message(1, 4)))
    clock.t += one_wave + 29
    assert watch.wedged_since() is None  # within its clients' timeouts and the margin
    clock.t += 2
    assert watch.wedged_since() is not None


def test_the_rings_coordinator_may_take_the_rings_estimate_and_counts_once_past_it() -> None:
    """Four members whose servers start and whose clients never answer: the coordinator waits out every step's
    deadline, the longest a ring runs, and that fits its bound. Before, the coordinator had no bound: a thread stuck
    in one (for the hours a large ring takes, or for good) kept its worker from ever counting as wedged."""
    settings = config.Settings(node_name="api", wedge_margin_s=30.0)
    store = ResultsStore(fakeredis.FakeRedis())
    members = ["node-a", "node-b", "node-c", "node-d"]
    store.heartbeat_many(
        NodeRecord(n, {"data0": [f"10.0.0.{i + 1}"]}, last_seen=time.time()) for i, n in enumerate(members)
    )
    node_host = hosting.NodeHost(settings, store, {})

    def servers_start(task: str, node: str, kwargs: dict[str, Any]) -> None:
        if task == ring.SERVERS_TASK:
            ring.post(store, kwargs["run_id"], f"servers|{node}", {"ok": True, "started": 1})

    message = {"run_id": "1" * 32, "nodes": members, "params": {"duration_s": 5}}
    bound = worker_app.task_may_take_s(node_host, ring.RING_TASK, message)
    clock = Clock()
    started = clock.t

    def sleep(seconds: float) -> None:
        clock.t += seconds

    outcome = ring.run_ring(
        store, FakeDispatcher(on_task=servers_start), settings, message["run_id"], members, message["params"],
        clock=clock, sleep=sleep,
    )  # fmt: skip
    assert outcome.pairs and all("no answer" in p["detail"] for p in outcome.pairs)
    assert clock.t - started + settings.wedge_margin_s <= bound
    watch = liveness.PoolWatch(clock=clock)
    watch.threads = 1
    watch.started(ring.RING_TASK, bound)
    clock.t += bound + 1
    assert watch.wedged_since() is not None


def test_the_margin_is_a_setting() -> None:
    assert config.Settings().wedge_margin_s == 300.0
    assert config.Settings.from_env({"AUTOPILOT_WEDGE_MARGIN": "2m"}).wedge_margin_s == 120.0
    with pytest.raises(errors.BadParameter):
        config.Settings.from_env({"AUTOPILOT_WEDGE_MARGIN": "0"})


# ---------------------------------------------------------------- Celery's signals feed the watch


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celery:
    monkeypatch.setattr(celery_state, "_on_app_finalizers", set())
    return Celery("wedge-test", set_as_current=False)


def test_a_task_is_held_from_its_prerun_to_its_postrun(
    app: Celery, host: hosting.NodeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    watch = liveness.PoolWatch(clock=clock)
    watch.threads = 1
    monkeypatch.setattr(liveness, "POOL", watch)
    seen: list[float | None] = []

    @app.task(name="autopilot.reconcile")
    def stuck() -> None:
        clock.t += 31  # past the margin, the bound of a reconcile
        seen.append(watch.wedged_since())

    stuck.apply()
    assert seen[0] is not None  # held while it ran...
    assert watch.wedged_since() is None  # ...and freed after it

    @app.task(name="autopilot.fanout")
    def fails() -> None:
        raise RuntimeError("boom")

    fails.apply()
    assert watch.wedged_since() is None  # freed after an exception too


@pytest.mark.parametrize(
    "ending",
    [Retry("GPUs busy: again in 2 s"), Reject("unusable", requeue=False), RuntimeError("boom"), SystemExit(1)],
    ids=["retry", "reject", "exception", "exit"],
)
def test_a_task_ending_any_way_in_a_worker_frees_its_thread(
    app: Celery, host: hosting.NodeHost, monkeypatch: pytest.MonkeyPatch, ending: BaseException
) -> None:
    """The worker's own tracer (not eager ``apply``): a retry (the busy-GPU hand-back) is a new message with its
    own prerun and postrun, and this execution's postrun comes after the Retry as after a Reject, an exception or
    an exit, so no thread stays held by a task that ended."""
    clock = Clock()
    watch = liveness.PoolWatch(clock=clock)
    watch.threads = 1
    monkeypatch.setattr(liveness, "POOL", watch)
    held: list[bool] = []

    @app.task(name=RUN_TASK, bind=True, ignore_result=True)
    def run(self: Task, **_: Any) -> None:
        clock.t += 10_000  # past any bound: held, so wedged
        held.append(watch.wedged_since() is not None)
        raise ending

    trace = build_tracer(RUN_TASK, run, app=app, eager=False, propagate=False)
    try:
        trace("0" * 32, (), run_message(["pciebw"]), {"delivery_info": {}})
    except SystemExit:
        pass  # a BaseException goes on up, past the postrun
    assert held == [True]
    assert watch.wedged_since() is None


# ---------------------------------------------------------------- what the worker does about it


def wedged_watch() -> liveness.PoolWatch:
    clock = Clock()
    watch = liveness.PoolWatch(clock=clock, wall=lambda: WALL + clock.t - 1000.0)
    watch.threads = 1
    watch.started("autopilot.run_checks", 60.0)  # this (test) thread is the pool's one thread
    clock.t += 100  # past its bound since 40 s ago
    return watch


def test_a_wedged_pool_stops_the_liveness_mark(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    path.write_text("")
    old = time.time() - 3600
    os.utime(path, (old, old))
    liveness.mark(str(path), wedged_watch())
    assert path.stat().st_mtime == old  # the probe will fail on it
    free = liveness.PoolWatch()
    free.threads = 1
    liveness.mark(str(path), free)
    assert path.stat().st_mtime > old


def test_a_starting_worker_marks_the_file_its_wedged_predecessor_left_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a wedge the kubelet restarts the container; the pod's volume keeps the old, stale file. The new process
    marks it as it starts, before its nodes' facts (NVML) and its consumer, so the probe does not restart it again
    while it starts. Here the start ends early (a bad node name), after the mark."""
    path = tmp_path / "alive"
    path.write_text("")
    old = time.time() - 3600
    os.utime(path, (old, old))
    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("AUTOPILOT_LIVENESS_FILE", str(path))
    with pytest.raises(errors.BadParameter):
        main.worker_main(["--node", "Not_A_Node"])
    assert path.stat().st_mtime > old


FACTS = {"gpu-1": NodeFacts(cpu_model="cpu", gpu_model="H100", gpu_count=8, addresses={})}
NOW = datetime.fromtimestamp(WALL, UTC)


def healthy_node(store: ResultsStore, settings: config.Settings) -> None:
    at = NOW - timedelta(minutes=10)
    for check in settings.periodic_checks:
        store.save_result(CheckResult(check, Status.OK, "fine", node="gpu-1", started_at=utc_now_iso(at)))


def test_a_wedged_worker_was_a_live_pass_node_and_now_goes_unknown_with_its_label() -> None:
    settings = config.Settings(periodic_checks=("pciebw", "remapped"), heartbeat_interval_s=15.0)
    checks = shipped_checks()
    later = NOW + timedelta(minutes=5)
    # What a worker whose threads are all stuck looked like before: its heartbeat thread kept writing a fresh
    # record, so its node stayed live, PASS and labelled PASS for as long as its results were fresh (hours).
    free = liveness.PoolWatch()
    free.threads = 1
    store, cluster = ResultsStore(fakeredis.FakeRedis()), FakeCluster()
    cluster.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
    healthy_node(store, settings)
    store.heartbeat_many(main.node_records(FACTS, {}, simulated=False, pool=free, now=later.timestamp()))
    assert reconcile.reconcile_all(store, settings, cluster, now=later, checks=checks) == {"gpu-1": "PASS"}
    assert cluster.get_node("gpu-1").labels[HEALTH] == "PASS"
    before = cluster.get_node("gpu-1").condition(CONDITION_TYPE)
    assert before is not None and before.message == "all periodic checks pass"
    # Now its records say it is wedged, and its last_seen stays where it wedged: lost, UNKNOWN, labelled so.
    store, cluster = ResultsStore(fakeredis.FakeRedis()), FakeCluster()
    cluster.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
    healthy_node(store, settings)
    watch = wedged_watch()
    since = watch.wedged_since()
    assert since == WALL + 60.0
    [record] = main.node_records(FACTS, {}, simulated=False, pool=watch, now=later.timestamp())
    assert (record.last_seen, record.wedged_since) == (since, since)
    store.heartbeat_many([record])
    assert reconcile.reconcile_all(store, settings, cluster, now=later, checks=checks) == {"gpu-1": "UNKNOWN"}
    assert cluster.get_node("gpu-1").labels[HEALTH] == "UNKNOWN"
    after = cluster.get_node("gpu-1").condition(CONDITION_TYPE)
    assert after is not None and "no heartbeat since" in after.message
    assert store.state("gpu-1").reason_list == [f"no heartbeat since {utc_now_iso(datetime.fromtimestamp(since, UTC))}"]
    # ...and the record, the metric and `autopilot nodes` say why.
    assert store.node("gpu-1") == record
    snap = snapshot_from_store(store, settings)
    families = {f.name: f for f in metrics.build(snap, {})}
    [sample] = families["autopilot_node_wedged_since_timestamp_seconds"].samples
    assert (sample.labels, sample.value) == ({"node": "gpu-1"}, since)


def test_autopilot_nodes_says_a_wedged_node_is_not_live_and_since_when() -> None:
    answer = {
        "total": 2,
        "live": 2,
        "nodes": [
            {"name": "gpu-1", "verdict": "PASS", "live": True, "last_seen": WALL - 20, "wedged_since": WALL - 600},
            {"name": "gpu-2", "verdict": "PASS", "live": True, "last_seen": WALL - 20, "wedged_since": 0.0},
        ],
    }
    console = Console(width=200, record=True)
    console.print(client.nodes_table(answer, WALL))
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if "gpu-" in line}
    assert "no: wedged 10m ago" in rows["gpu-1"]
    assert "yes" in rows["gpu-2"] and "wedged" not in rows["gpu-2"]
