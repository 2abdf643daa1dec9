"""One clock for every reconcile: the store's (Redis ``TIME``). A worker measures its own clock's offset to it at
each heartbeat; its node's stamps are judged with that offset taken off, its heartbeat on the store's clock. So a
worker's task reconcile, beat's tick and the API say the same whatever that worker's clock reads."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from api import client
from api.app import create_app
from autopilot import config, errors
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status, utc_now_iso
from tests.unit.api_helpers import make_api
from tests.unit.test_api_client import Served
from workers import main, reconcile, runs, tasks
from workers.app import create_celery
from workers.dispatch import CeleryDispatcher, Envelope, FakeDispatcher
from workers.peers import StorePeers
from workers.store import NodeRecord, ResultsStore

NODE = "gpu-1"
CHECKS = ("pciebw", "remapped")
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
TEN_MINUTES = 600.0


def make_settings(**overrides: object) -> config.Settings:
    # Results stay fresh for 6 min (three 2-min intervals): shorter than the 10 min the clocks here are off by,
    # so a result judged on the wrong clock reads stale (behind) or placed nowhere (ahead).
    base: dict[str, object] = {
        "node_name": "beat",
        "periodic_checks": CHECKS,
        "periodic_interval_s": 120.0,
        "heartbeat_interval_s": 15.0,
    }
    return config.Settings(**{**base, **overrides})  # type: ignore[arg-type]


class Fleet:
    """A store whose clock (``TIME``) is ``self.at``, and one node whose worker's clock runs ``skew_s`` off it."""

    def __init__(self, skew_s: float, *, measured: bool = True) -> None:
        self.at = T0.timestamp()
        self.store = ResultsStore(fakeredis.FakeRedis(), server_clock=lambda: self.at)
        self.skew_s = skew_s
        self.measured = measured  # False: a worker of the release before the offset (it sends none)

    def worker_clock(self) -> float:
        return self.at + self.skew_s

    def heartbeat(self) -> None:
        offset = main.clock_offset(self.store, self.worker_clock) if self.measured else None
        self.store.heartbeat(NodeRecord(NODE, gpu_count=8, last_seen=self.worker_clock(), clock_offset=offset))

    def task(self, settings: config.Settings) -> str:
        """A periodic task on the node, as ``tasks.run_checks`` ends it: its results written and the node read
        back in one MULTI, then the node's reconcile given that view and no time."""
        stamp = utc_now_iso(datetime.fromtimestamp(self.worker_clock() - 5, UTC))
        done = [(CheckResult(c, Status.OK, "fine", node=NODE, started_at=stamp), True) for c in CHECKS]
        view = self.store.save_many(done, view=NODE)
        decision = reconcile.reconcile_node(self.store, NODE, settings, view=view, checks=shipped_checks())
        return decision.verdict.value

    def tick(self, settings: config.Settings) -> str:
        """Beat's tick, which reads the time from the store."""
        return reconcile.reconcile_all(self.store, settings, checks=shipped_checks())[NODE]


# ---------------------------------------------------------------- the offset a worker measures


@pytest.mark.parametrize("skew_s", [TEN_MINUTES, -TEN_MINUTES, 0.0])
def test_the_clock_offset_is_this_hosts_clock_minus_the_stores(skew_s: float) -> None:
    store = ResultsStore(fakeredis.FakeRedis(), server_clock=lambda: 1_000_000.0)
    # this host's clock is read either side of the store's: the store's answer is placed at the middle
    readings = iter([1_000_000.0 + skew_s - 0.2, 1_000_000.0 + skew_s + 0.2])
    assert main.clock_offset(store, lambda: next(readings)) == skew_s


def test_every_heartbeat_carries_the_offset_and_is_scored_on_the_stores_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    monkeypatch.setattr(main, "clock_offset", lambda _store: -TEN_MINUTES)
    stop = threading.Event()

    def records() -> list[NodeRecord]:
        stop.set()  # one beat
        return [NodeRecord(NODE, gpu_count=8, last_seen=1000.0)]

    main.heartbeat_loop(store, records, 60.0, stop)
    record = store.node(NODE)
    assert record is not None and (record.last_seen, record.clock_offset) == (1000.0, -TEN_MINUTES)
    assert store.last_seen() == {NODE: 1000.0 + TEN_MINUTES}


def test_a_worker_whose_clock_is_off_pings_the_live_nodes_by_the_stores_clock() -> None:
    # before: the live peers were those heard since this host's clock less 45 s; 10 min ahead it found none
    # (nothing to ping), 10 min behind it also pinged nodes lost in those 10 min (false failures)
    fleet = Fleet(0.0)
    fleet.store.heartbeat_many(
        [
            NodeRecord("gpu-2", addresses={"eth0": ["10.0.0.2"]}, last_seen=fleet.at - 10),
            NodeRecord("gpu-3", addresses={"eth0": ["10.0.0.3"]}, last_seen=fleet.at - 300),  # lost 4 min ago
        ]
    )
    directory = StorePeers(fleet.store, make_settings())
    assert [p.node for p in directory.peers()] == ["gpu-2"]


# ---------------------------------------------------------------- the reconciles agree


@pytest.mark.parametrize("skew_s", [-TEN_MINUTES, TEN_MINUTES])
def test_a_skewed_nodes_fresh_ping_takes_part_in_the_fleets_localisation(skew_s: float) -> None:
    # before: judged on the store's clock as stamped, its ping read 10 min old (or 10 min ahead): left out of the
    # fleet's pings that name a suspect, while its own verdict judged it fresh
    fleet, settings = Fleet(skew_s), make_settings()
    fleet.heartbeat()
    stamp = utc_now_iso(datetime.fromtimestamp(fleet.worker_clock() - 5, UTC))
    fleet.store.save_result(CheckResult("ping", Status.OK, "fine", node=NODE, started_at=stamp))
    now = datetime.fromtimestamp(fleet.at, UTC)
    assert set(reconcile.fleet_pings(fleet.store, settings, now)) == {NODE}
    fleet.at += 400  # past three 2-min intervals of its own clock: stale
    later = datetime.fromtimestamp(fleet.at, UTC)
    assert reconcile.fleet_pings(fleet.store, settings, later) == {}


@pytest.mark.parametrize("skew_s", [-TEN_MINUTES, TEN_MINUTES])
def test_a_node_whose_clock_is_off_stays_pass_by_its_own_task_and_by_beats_tick(skew_s: float) -> None:
    # before: 10 min behind, beat found its heartbeat lost and its results stale (UNKNOWN) while its own task
    # reconcile found them fresh (PASS), and the node flipped between the two; 10 min ahead, its results were
    # placed nowhere in time (UNKNOWN) by either
    fleet, settings = Fleet(skew_s), make_settings()
    for _ in range(6):
        fleet.heartbeat()
        assert fleet.task(settings) == "PASS"
        after_task = fleet.store.state(NODE).reason_list
        fleet.at += 20  # beat's tick, 20 s on (the worker heartbeats every 15 s: heard 5 s ago)
        fleet.heartbeat()
        fleet.at += 5
        assert fleet.tick(settings) == "PASS"
        assert fleet.store.state(NODE).reason_list == after_task  # the two judge the same
        fleet.at += 35


def test_a_worker_that_sends_no_offset_is_judged_by_its_stamps_as_before() -> None:
    settings = make_settings()
    on_time = Fleet(0.0, measured=False)
    on_time.heartbeat()
    assert on_time.task(settings) == "PASS" and on_time.tick(settings) == "PASS"
    # 10 min behind and not measured: its heartbeat reads 10 min old, by its task's reconcile too (one clock)
    behind = Fleet(-TEN_MINUTES, measured=False)
    behind.heartbeat()
    assert behind.task(settings) == "UNKNOWN" and behind.tick(settings) == "UNKNOWN"
    since = utc_now_iso(datetime.fromtimestamp(behind.worker_clock(), UTC))
    assert behind.store.state(NODE).reason_list == [f"no heartbeat since {since}"]


@pytest.mark.parametrize(
    "skew_s, warn_s, noted",
    [
        (400.0, 300.0, "its clock runs 400 s ahead of the store's (more than 300 s)"),
        (-400.0, 300.0, "its clock runs 400 s behind the store's (more than 300 s)"),
        (200.0, 300.0, None),
        (-300.0, 300.0, None),  # not more than the setting
        (10_000.0, 0.0, None),  # 0: never said
    ],
)
def test_a_clock_off_by_more_than_the_setting_is_noted_and_the_verdict_does_not_move(
    skew_s: float, warn_s: float, noted: str | None
) -> None:
    fleet, settings = Fleet(skew_s), make_settings(clock_skew_warn_s=warn_s)
    fleet.heartbeat()
    assert fleet.task(settings) == "PASS" and fleet.tick(settings) == "PASS"
    said = [r for r in fleet.store.state(NODE).reason_list if "its clock runs" in r]
    if noted is None:
        assert said == []
    else:
        assert said == [f"{noted}; its results are judged with that taken off"]


# ---------------------------------------------------------------- the API says what the reconciles say


def test_live_follows_the_reconciles_lost_rule_on_the_stores_clock() -> None:
    api = make_api()
    now = api.store.server_time()
    # a worker of an older release (no offset) whose clock runs an hour ahead, and which stopped: the same stamp
    # first heard two minutes ago by the store's clock
    api.store.heartbeat(NodeRecord("node-ahead", gpu_count=8, last_seen=now + 3600))
    first = datetime.fromtimestamp(now - 120, UTC)
    reconcile.reconcile_node(api.store, "node-ahead", api.settings, first, checks=shipped_checks())
    assert api.store.state("node-ahead").heard_ahead is not None
    # a worker 10 min behind that heartbeats
    api.store.heartbeat(NodeRecord("node-behind", gpu_count=8, last_seen=now - 600, clock_offset=-600.0))
    listed = {n["name"]: n for n in api.client.get("/api/v1/nodes").get_json()["nodes"]}
    gone = f"no heartbeat since {utc_now_iso(first)}"
    assert (listed["node-ahead"]["live"], listed["node-ahead"]["reasons"]) == (False, [gone])
    assert listed["node-ahead"]["verdict"] == "UNKNOWN"
    assert (listed["node-behind"]["live"], listed["node-behind"]["clock_offset"]) == (True, -600.0)
    # when it was heard, on the store's clock (its record keeps its own stamp)
    assert listed["node-behind"]["last_seen_at"] == runs.iso_time(now)
    assert listed["node-behind"]["last_seen"] == now - 600
    assert listed["node-ahead"]["clock_offset"] is None
    ahead = api.client.get("/api/v1/nodes/node-ahead").get_json()
    assert (ahead["live"], ahead["verdict"], ahead["reasons"]) == (False, "UNKNOWN", [gone])
    behind = api.client.get("/api/v1/nodes/node-behind").get_json()
    assert behind["live"] is True and behind["record"]["clock_offset"] == -600.0
    assert behind["last_seen_at"] == runs.iso_time(now)
    # beat, at the store's time, says the same
    decided = reconcile.reconcile_all(api.store, api.settings, checks=shipped_checks())
    assert decided["node-ahead"] == "UNKNOWN" and api.store.state("node-ahead").reason_list[0] == gone


def test_a_run_report_calls_a_node_lost_by_heard_ahead_unreachable_since_it_was_first_heard() -> None:
    # before: the report judged its stamp as it was (an hour ahead: "just now"), so it read "no answer within the
    # deadline" with the stored verdict, while /api/v1/nodes said lost
    api = make_api(nodes=("node-a",), deadline_s=1)
    now = api.store.server_time()
    api.store.heartbeat(NodeRecord("node-ahead", gpu_count=8, last_seen=now + 3600))
    first = datetime.fromtimestamp(now - 120, UTC)
    reconcile.reconcile_node(api.store, "node-ahead", api.settings, first, checks=shipped_checks())
    api.workers.silent.add("node-ahead")
    response = api.client.get("/status?host=node-a,node-ahead&check=pciebw&format=json")
    entry = response.get_json()["nodes"]["node-ahead"]
    gone = f"no heartbeat since {utc_now_iso(first)}"
    assert (entry["status"], entry["detail"]) == ("unreachable", gone)
    assert (entry["verdict"], entry["reasons"]) == ("UNKNOWN", [gone])


def test_a_run_of_every_node_sends_nothing_to_a_node_lost_by_heard_ahead() -> None:
    # before: the selection judged that node's stamp on the API's clock (an hour ahead: "just now") and sent it
    # the run's work, which nobody took; it was "unreachable" only at the deadline
    api = make_api(nodes=("node-a",), deadline_s=30)
    now = api.store.server_time()
    api.store.heartbeat(NodeRecord("node-ahead", gpu_count=8, last_seen=now + 3600))
    first = datetime.fromtimestamp(now - 120, UTC)
    reconcile.reconcile_node(api.store, "node-ahead", api.settings, first, checks=shipped_checks())
    report = api.client.get("/status?check=pciebw&format=json").get_json()
    assert [e.node for e in api.dispatcher.sent] == ["node-a"]
    gone = f"no heartbeat since {utc_now_iso(first)}"
    assert (report["nodes"]["node-ahead"]["status"], report["nodes"]["node-ahead"]["detail"]) == ("unreachable", gone)
    assert report["nodes"]["node-a"]["status"] == "ok"


@pytest.mark.parametrize("api_off_s", [3600.0, -3600.0])
def test_the_api_hosts_clock_does_not_decide_which_nodes_are_lost(api_off_s: float) -> None:
    # before: the selection and the report judged the heartbeats (scored on the store's clock) on the API host's
    # clock: an hour ahead, every node was lost, sent nothing and "unreachable"; an hour behind, a node lost for
    # half an hour was sent work and waited on to the deadline
    api = make_api(nodes=("node-a",), deadline_s=1)
    now = api.store.server_time()
    api.store.heartbeat(NodeRecord("node-gone", gpu_count=8, last_seen=now - 1800))
    services = api.app.extensions["autopilot"]
    wall = services.clock
    services.clock = lambda: wall() + api_off_s
    report = api.client.get("/status?check=pciebw&format=json").get_json()
    assert [e.node for e in api.dispatcher.sent] == ["node-a"]
    assert report["nodes"]["node-a"]["status"] == "ok"
    gone = f"no heartbeat since {utc_now_iso(datetime.fromtimestamp(now - 1800, UTC))}"
    assert (report["nodes"]["node-gone"]["status"], report["nodes"]["node-gone"]["detail"]) == ("unreachable", gone)
    assert (report["nodes"]["node-a"]["verdict"], report["nodes"]["node-a"]["reasons"]) == (None, [])  # not lost


def test_metrics_export_the_clock_offset_and_judge_lost_as_the_reconcile() -> None:
    api = make_api()
    now = api.store.server_time()
    api.store.heartbeat(NodeRecord("node-behind", gpu_count=8, last_seen=now - 600, clock_offset=-600.0))
    for node in ("node-a", "node-behind"):
        api.store.set_state(node, {"verdict": "PASS"})
    text = api.client.get("/metrics").get_data(as_text=True)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    offsets = {s.labels["node"]: s.value for s in samples if s.name == "autopilot_node_clock_offset_seconds"}
    assert offsets == {"node-behind": -600.0}  # the others measured none
    shown = {s.labels["node"]: s.labels["verdict"] for s in samples if s.name == "autopilot_node_verdict" and s.value}
    assert shown["node-behind"] == "PASS"  # heard just now on the store's clock: not lost


def test_autopilot_nodes_shows_the_clock_offset_and_last_seen_on_the_stores_clock() -> None:
    wall = 2_000_000.0
    answer = {
        "total": 3,
        "live": 3,
        "nodes": [
            {"name": "gpu-1", "verdict": "PASS", "live": True, "last_seen": wall - 600 - 20, "clock_offset": -600.0},
            {"name": "gpu-2", "verdict": "PASS", "live": True, "last_seen": wall + 7200 - 20, "clock_offset": 7200.0},
            {"name": "gpu-3", "verdict": "PASS", "live": True, "last_seen": wall - 20, "clock_offset": None},
            # wedged 2 min ago by the store's clock, on a worker's clock 10 min ahead (before: "wedged 0s ago")
            {
                "name": "gpu-4",
                "verdict": "UNKNOWN",
                "live": False,
                "last_seen": wall + 600 - 120,
                "wedged_since": wall + 600 - 120,
                "clock_offset": 600.0,
            },
        ],
    }
    console = Console(width=200, record=True)
    console.print(client.nodes_table(answer, wall))
    text = console.export_text()
    rows = {line.split()[1]: line for line in text.splitlines() if "gpu-" in line}
    assert "CLOCK" in text
    assert "20s ago" in rows["gpu-1"] and "-10m behind" in rows["gpu-1"]
    assert "20s ago" in rows["gpu-2"] and "+2.0h ahead" in rows["gpu-2"]
    assert "20s ago" in rows["gpu-3"] and " ? " in rows["gpu-3"]
    assert "no: wedged 2m ago" in rows["gpu-4"]


@pytest.mark.parametrize("skew", [timedelta(hours=2), -timedelta(hours=2)])
def test_an_operators_clear_is_recorded_on_the_nodes_clock(skew: timedelta) -> None:
    fleet, settings = Fleet(skew.total_seconds()), make_settings()
    fleet.heartbeat()
    evicted = utc_now_iso(datetime.fromtimestamp(fleet.worker_clock() - 60, UTC))
    fleet.store.set_state(NODE, {"verdict": "EVICT", "evicted_at": evicted})
    reconcile.clear_evict(fleet.store, NODE, settings, by="api:10.0.0.1", checks=shipped_checks())
    state = fleet.store.state(NODE)
    # after the eviction it lifts, on the same clock (the node's), and a fresh task then passes
    assert state.evicted_at is None and state.cleared_at == utc_now_iso(T0 + skew)
    assert fleet.task(settings) == "PASS"


# ---------------------------------------------------------------- the deadline a worker reads in its message


def _sent(envelope: Envelope) -> Any:
    """The message the Celery dispatcher publishes for ``envelope`` (memory broker), as a worker reads it."""
    app = create_celery(config.Settings(node_name="x", redis_url="redis://127.0.0.1:1/0"))
    app.conf.broker_url = "memory://"
    try:
        CeleryDispatcher(app).send_many([envelope])
        with app.connection_for_read() as conn:
            simple = conn.SimpleQueue(f"autopilot.node.{envelope.node}")
            message = simple.get(timeout=1)
            simple.close()
        return message
    finally:
        app.close()


def _left_on_worker_clock(message: Any, worker_now: float) -> tuple[float, float]:
    """(seconds to ``expires``, seconds to the task's ``deadline``) as the worker's clock reads them: Celery drops
    the message once its clock passes ``expires`` (``Request.maybe_expire``), the task judges its deadline there."""
    expires = datetime.fromisoformat(message.headers["expires"]).timestamp()
    return round(expires - worker_now, 3), round(message.payload[1]["deadline"] - worker_now, 3)


@pytest.mark.parametrize("skew_s", [TEN_MINUTES, -TEN_MINUTES])
def test_a_periodic_message_gives_a_skewed_worker_the_time_the_tick_gave_it(skew_s: float) -> None:
    # Beat's tick makes its deadlines on the store's clock. Before, the message said that deadline as it was: a
    # worker 10 min ahead read it as already past and Celery dropped every periodic message unrun (its results went
    # stale: UNKNOWN, whatever its GPUs), one 10 min behind held GPU checks back 10 min past the run's end.
    fleet = Fleet(skew_s)
    fleet.heartbeat()
    sent = FakeDispatcher()
    run = tasks.fanout(fleet.store, sent, make_settings(), shipped_checks(), kind="periodic")
    assert run is not None and [e.node for e in sent.sent] == [NODE]
    given = round(run.deadline - fleet.at, 3)
    assert given > 0
    assert _left_on_worker_clock(_sent(sent.sent[0]), fleet.worker_clock()) == (given, given)


def test_a_run_from_the_api_gives_a_skewed_worker_its_node_deadline() -> None:
    # The API's gather makes deadlines on its own host's clock (here 5 min behind the store's); the node's worker
    # runs 10 min ahead of the store. Its message must leave it the node deadline by its own clock.
    fleet = Fleet(TEN_MINUTES)
    fleet.heartbeat()
    settings = make_settings(node_name="api-host")
    svc = runs.Services(settings, fleet.store, FakeDispatcher(), shipped_checks(), clock=lambda: fleet.at - 300.0)
    run = runs.create_run(svc, runs.RunRequest(("remapped",), hosts=(NODE,), deadline_s=60.0), runs.Selection((NODE,)))
    runs.Gather(svc, run, node_deadline_s=60.0, batch=None).send_ready()
    sent = svc.dispatcher.sent  # type: ignore[attr-defined]
    assert [e.node for e in sent] == [NODE]
    assert _left_on_worker_clock(_sent(sent[0]), fleet.worker_clock()) == (60.0, 60.0)


@pytest.mark.parametrize(
    ("api_ahead_s", "after_s", "status"), [(TEN_MINUTES, 0.0, "pending"), (-TEN_MINUTES, 180.0, "unreachable")]
)
def test_a_stored_periodic_run_is_read_on_the_clock_its_deadline_was_made_on(
    api_ahead_s: float, after_s: float, status: str
) -> None:
    # Beat's tick makes the run's deadline on the store's clock (2 min ahead here). The API host's clock runs
    # 10 min ahead of the store's (behind, and the run is read 3 min after the tick). Before, the API read the run
    # on its own clock: over at once, the node "unreachable" while it had 2 min left (ahead), or still "pending"
    # a minute after its deadline (behind).
    fleet = Fleet(0.0)
    fleet.at = time.time() - api_ahead_s
    fleet.heartbeat()
    settings = make_settings()
    run = tasks.fanout(fleet.store, FakeDispatcher(), settings, shipped_checks(), kind="periodic")
    assert run is not None and run.deadline - fleet.at == 120.0
    fleet.at += after_s
    fleet.heartbeat()
    app = create_app(settings, store=fleet.store, dispatcher=FakeDispatcher(), checks=shipped_checks())
    body = app.test_client().get(f"/api/v1/runs/{run.id}").get_json()
    assert body["nodes"][NODE]["status"] == status


def test_the_apis_store_clock_asks_the_store_once_a_minute_and_keeps_its_offset_when_it_is_away() -> None:
    asked: list[float] = []
    away = False

    class Store:
        def server_time(self) -> float:
            if away:
                raise errors.StoreUnavailable("redis: connection refused")
            asked.append(1.0)
            return 1_000.0 + 60.0 * (len(asked) - 1)  # the store's clock, 600 s behind this host's

    wall = [1_600.0]
    clock = runs.StoreClock(Store(), wall=lambda: wall[0])  # type: ignore[arg-type]
    assert [clock(), clock()] == [1_000.0, 1_000.0] and len(asked) == 1
    wall[0] += 30.0
    assert clock() == 1_030.0 and len(asked) == 1
    wall[0] += 30.0
    assert clock() == 1_060.0 and len(asked) == 2
    away = True
    wall[0] += 90.0
    assert clock() == 1_150.0  # the offset measured last, not this host's clock


def test_autopilot_nodes_counts_ages_from_the_stores_clock_not_the_readers(capsys: pytest.CaptureFixture[str]) -> None:
    # The store's clock (and the fleet's) runs an hour behind the laptop that runs ``autopilot nodes``. Before,
    # LAST SEEN counted from the laptop's clock: a node heard 20 s ago read "1.0h ago".
    at = time.time() - 3600.0
    store = ResultsStore(fakeredis.FakeRedis(), server_clock=lambda: at)
    store.heartbeat(NodeRecord(NODE, gpu_count=8, last_seen=at - 20, clock_offset=0.0))
    app = create_app(
        make_settings(node_name="api-host"), store=store, dispatcher=FakeDispatcher(), checks=shipped_checks()
    )
    served = Served(SimpleNamespace(app=app))  # type: ignore[arg-type]
    try:
        assert client.nodes_main(["--url", served.url]) == 0
    finally:
        served.close()
    row = next(line for line in capsys.readouterr().out.splitlines() if NODE in line)
    assert "20s ago" in row


@pytest.mark.parametrize("skew_s", [-TEN_MINUTES, TEN_MINUTES])
def test_the_dcgm_level_label_is_on_the_stores_clock_whatever_the_nodes_clock_reads(skew_s: float) -> None:
    # before: the label carried the worker's stamp, 10 min off the store's (and every other node's) clock
    settings = make_settings(periodic_checks=("dcgm",))
    fleet = Fleet(skew_s)
    fleet.heartbeat()
    started = datetime.fromtimestamp(fleet.worker_clock() - 5, UTC)  # the worker's stamp of its run
    done = CheckResult("dcgm", Status.OK, "fine", node=NODE, params={"r": 1}, started_at=utc_now_iso(started))
    view = fleet.store.save_many([(done, True)], view=NODE)
    reconcile.reconcile_node(fleet.store, NODE, settings, view=view, checks=shipped_checks())
    on_store = datetime.fromtimestamp(fleet.at - 5, UTC)
    assert fleet.store.labels(NODE)["autopilot.ibm.com/dcgm.level.1"] == on_store.strftime("PASS_%Y-%m-%d_%H.%M.%SUTC")
