"""The ring coordinator over fake nodes that answer its tasks (servers, clients, stop), its
cleanup on every failure path, and the API around it: iperf runs, ping's selection, and the
``network`` part of a run's report (suspects for ping and iperf)."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import fakeredis
import pytest
from flask import Flask

from api.app import create_app
from autopilot import config, errors, network
from autopilot.checks import iperf
from autopilot.commands import CommandResult
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeRunner, FakeTelemetry, wait_until
from workers import ring, tasks
from workers.dispatch import CONTROL_QUEUE, Envelope, FakeDispatcher
from workers.host import NodeHost
from workers.store import NodeRecord, ResultsStore, Run

NODES = ("node-a", "node-b", "node-c", "node-d")
FAST_BPS = 9.4e9
SLOW_BPS = 0.02e9


def address(node: str) -> str:
    return f"192.0.2.{NODES.index(node) + 1}"


def node_of(addr: str) -> str:
    return NODES[int(addr.rsplit(".", 1)[1]) - 1]


def ok_json(bps: float) -> str:
    return json.dumps(
        {
            "start": {"test_start": {"protocol": "TCP"}},
            "end": {"sum_sent": {"bits_per_second": bps}, "sum_received": {"bits_per_second": bps}},
        }
    )


REFUSED = json.dumps(
    {"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: No route to host"}
)


class PairRunner(FakeRunner):
    """A node's runner: ``iperf3 -c`` answers with the bandwidth the ``Net`` gives the pair."""

    def __init__(self, net: Net, node: str) -> None:
        super().__init__(installed=["iperf3"])
        self.net = net
        self.node = node

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        args = list(argv)
        self.calls.append(tuple(args))
        assert args[:2] == ["iperf3", "-c"] and args[args.index("-B") + 1] == address(self.node)
        target = node_of(args[2])
        if self.net.down & {self.node, target}:
            return CommandResult(tuple(args), 1, REFUSED, "")
        slow = self.net.slow & {self.node, target}
        return CommandResult(tuple(args), 0, ok_json(SLOW_BPS if slow else FAST_BPS), "")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclasses.dataclass
class Net:
    """Four nodes with one data interface each, whose workers answer ring tasks inline."""

    nodes: tuple[str, ...] = NODES
    slow: set[str] = dataclasses.field(default_factory=set)
    down: set[str] = dataclasses.field(default_factory=set)  # data link down: pairs refused
    silent: set[str] = dataclasses.field(default_factory=set)  # workers that answer nothing
    raise_on: str | None = None  # a task name whose sending raises (broker trouble)

    def __post_init__(self) -> None:
        self.settings = config.Settings(node_name="api", heartbeat_interval_s=1)
        self.store = ResultsStore(fakeredis.FakeRedis())
        now = time.time()
        self.store.heartbeat_many(
            NodeRecord(n, {"lo": ["127.0.0.1"], "data0": [address(n)]}, last_seen=now) for n in self.nodes
        )
        self.runners = {n: PairRunner(self, n) for n in self.nodes}
        contexts = {
            n: CheckContext(n, self.settings, self.runners[n], FakeTelemetry(), checks=shipped_checks())
            for n in self.nodes
        }
        self.host = NodeHost(self.settings, self.store, contexts)
        self.dispatcher = FakeDispatcher(on_send=self.answer_ping, on_task=self.on_task)
        self.clock = Clock()

    def on_task(self, task: str, node: str, kwargs: dict[str, Any]) -> None:
        if task == self.raise_on:
            raise ConnectionError("broker went away")
        if node in self.silent:
            return
        body = {ring.SERVERS_TASK: tasks.iperf_servers, ring.CLIENTS_TASK: tasks.iperf_clients}.get(task)
        if body is not None:
            body(self.host, **kwargs)
        elif task == ring.STOP_TASK:
            tasks.iperf_stop(self.host, **kwargs)
        elif task == ring.RING_TASK:  # the coordinator, taken from the control queue by a worker
            tasks.iperf_ring(self.store, self.dispatcher, self.settings, **kwargs)

    def answer_ping(self, env: Envelope) -> None:
        """A worker's ping result: every other selected node, failed where a link is down."""
        if env.node in self.silent or "ping" not in env.checks:
            return
        wanted = [n for n in env.params["ping"].get("nodes", "").split(",") if n] or list(self.nodes)
        pairs = [
            {
                "target": t,
                "interface": "data0",
                "address": address(t),
                "status": "fail" if self.down & {env.node, t} or t in self.silent else "ok",
            }
            for t in wanted
            if t != env.node
        ]
        status = Status.FAIL if any(p["status"] == "fail" for p in pairs) else Status.OK
        self.store.save_result(CheckResult("ping", status, "ping", node=env.node, data={"pairs": pairs}), env.run_id)

    def ring(self, **params: Any) -> ring.RingOutcome:
        typed = _validated(params)
        self.run_id = uuid.uuid4().hex  # the worker side remembers stopped runs: never reuse an id
        return ring.run_ring(
            self.store, self.dispatcher, self.settings, self.run_id, self.nodes, typed,
            clock=self.clock, sleep=self.clock.sleep,
        )  # fmt: skip

    def servers(self) -> list[Any]:
        return [p for r in self.runners.values() for p in r.spawned]


def _validated(params: Mapping[str, Any]) -> dict[str, Any]:
    from autopilot import registry

    return registry.REGISTRY.get("iperf").validate(params)


@pytest.fixture(autouse=True)
def no_startup_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring, "STARTUP_CHECK_S", 0.0)


def sent(net: Net, task: str) -> list[str]:
    return [node for name, node, _ in net.dispatcher.tasks if name == task]


# ------------------------------------------------------------------ the coordinator


def test_healthy_ring_measures_every_pair_and_stops_every_server() -> None:
    net = Net()
    outcome = net.ring(pclients=2, duration_s=1)
    assert len(outcome.pairs) == 12  # 4 nodes, 3 steps of 4 pairs
    assert {(p["source"], p["target"]) for p in outcome.pairs} == {(s, t) for s in NODES for t in NODES if s != t}
    assert {p["status"] for p in outcome.pairs} == {"ok"}
    assert [p["gbps"] for p in outcome.pairs] == [pytest.approx(2 * FAST_BPS / 1e9)] * 12
    for node in NODES:
        result = outcome.results[node]
        assert result.status is Status.OK and len(result.devices) == 3
        assert {d.unit for d in result.devices} == {"Gb/s"}
    # servers: one per address and port; every one stopped at the end
    assert len(net.servers()) == 4 * 2 and all(p.terminated for p in net.servers())
    assert sorted(sent(net, ring.STOP_TASK)) == list(NODES)
    assert ring.SERVERS.running() == {}
    assert outcome.summary["data0"]["mean_gbps"] == pytest.approx(18.8)
    # the results are in the run
    assert net.store.run_answered(net.run_id) == {(n, "iperf") for n in NODES}


def test_lo_is_never_a_lane_and_startport_sets_the_ports() -> None:
    net = Net()
    net.ring(startport=6000, pclients=3)
    argvs = [p.argv for p in net.servers()]
    assert {a[a.index("-B") + 1] for a in argvs} == {address(n) for n in NODES}
    assert {a[a.index("-p") + 1] for a in argvs} == {"6000", "6001", "6002"}


def test_a_slow_node_warns_its_pairs_and_is_named() -> None:
    net = Net(slow={"node-c"})
    outcome = net.ring()
    bad = {(p["source"], p["target"]) for p in outcome.pairs if p["status"] != "ok"}
    assert bad == {(s, t) for s in NODES for t in NODES if s != t and "node-c" in (s, t)}
    assert {p["status"] for p in outcome.pairs if (p["source"], p["target"]) in bad} == {"warn"}
    assert network.localise(iperf.pair_results(outcome.pairs)).nodes == ("node-c",)
    assert outcome.results["node-c"].status is Status.WARN
    # its pair to node-c is node-c's finding (the ring's suspect), not node-a's
    assert outcome.results["node-a"].status is Status.OK
    assert outcome.results["node-a"].data["excused"] == ["node-c"]
    assert outcome.summary["data0"]["nodes"]["node-c"]["bad_pairs"] == 6


def test_absolute_threshold_flags_every_pair_below_it() -> None:
    outcome = Net().ring(threshold_gbps=20)
    assert {p["status"] for p in outcome.pairs} == {"warn"}


def test_a_down_link_fails_the_pairs_of_that_node() -> None:
    net = Net(down={"node-b"})
    outcome = net.ring()
    failed = {(p["source"], p["target"]) for p in outcome.pairs if p["status"] == "fail"}
    assert failed == {(s, t) for s in NODES for t in NODES if s != t and "node-b" in (s, t)}
    assert outcome.results["node-b"].status is Status.FAIL
    assert network.localise(iperf.pair_results(outcome.pairs)).nodes == ("node-b",)


def test_a_silent_node_fails_its_pairs_and_the_others_servers_still_stop() -> None:
    net = Net(silent={"node-d"})
    outcome = net.ring()
    bad = {(p["source"], p["target"]) for p in outcome.pairs if p["status"] != "ok"}
    assert bad == {(s, t) for s in NODES for t in NODES if s != t and "node-d" in (s, t)}
    assert outcome.results["node-d"].status is Status.FAIL
    assert "no answer" in outcome.results["node-d"].summary
    assert sorted(sent(net, ring.STOP_TASK)) == list(NODES)
    assert net.servers() and all(p.terminated for p in net.servers())
    # the coordinator waited for the silent node only until the servers deadline
    assert net.clock.now - 1_000_000.0 < ring.SERVERS_WAIT_S + ring.STOP_WAIT_S + 1


def test_a_server_that_cannot_start_is_an_error_and_its_siblings_are_stopped() -> None:
    net = Net()
    argv = tuple(iperf.server_argv(address("node-b"), 5201))
    net.runners["node-b"].exits[argv] = (1, "iperf3: error - unable to start listener: Address already in use")
    outcome = net.ring(pclients=2)
    to_b = [p for p in outcome.pairs if p["target"] == "node-b"]
    assert {p["status"] for p in to_b} == {"error"} and "Address already in use" in to_b[0]["detail"]
    assert "servers did not start" in outcome.results["node-b"].summary
    assert all(p.terminated for p in net.runners["node-b"].spawned)
    # node-b still measured its own pairs as a client
    assert {p["status"] for p in outcome.pairs if p["source"] == "node-b"} == {"ok"}


def test_a_failing_step_still_stops_every_server_and_answers_every_node() -> None:
    net = Net(raise_on=ring.CLIENTS_TASK)
    outcome = net.ring()
    assert sorted(sent(net, ring.STOP_TASK)) == list(NODES)
    assert all(p.terminated for p in net.servers())
    assert {r.status for r in outcome.results.values()} == {Status.ERROR}
    assert "broker went away" in outcome.results["node-a"].summary
    # the claim is released: the next ring runs
    net.raise_on = None
    assert {p["status"] for p in net.ring().pairs} == {"ok"}


def test_one_ring_at_a_time() -> None:
    net = Net()
    assert net.store.lease(ring.CLAIM, "another-run", 60)  # another coordinator's ring is on
    outcome = net.ring()
    assert {r.status for r in outcome.results.values()} == {Status.ERROR}
    assert "another iperf run" in outcome.results["node-a"].summary
    assert net.dispatcher.tasks == []


def test_a_finished_ring_releases_its_claim_and_the_next_starts_at_once() -> None:
    net = Net()
    assert {p["status"] for p in net.ring().pairs} == {"ok"}
    assert {p["status"] for p in net.ring().pairs} == {"ok"}


# Long enough that the next ring is still refused on a busy machine (0.3 s was not: a pause of
# the test's thread that long let it lapse before the refusal was asked), short enough to wait out.
KILLED_TTL_S = 1.0


def test_a_killed_coordinators_claim_lapses_and_the_next_ring_starts_within_its_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The coordinator's process is killed mid-ring: nothing releases its claim, and nothing renews it."""
    monkeypatch.setattr(ring, "CLAIM_TTL_S", KILLED_TTL_S)
    net = Net()

    class Killed(BaseException):
        """The process dies here: no cleanup of ours runs after it (unlike an Exception)."""

    def die_mid_ring(task: str, node: str, kwargs: dict[str, Any]) -> None:
        if task == ring.CLIENTS_TASK:
            raise Killed
        net.on_task(task, node, kwargs)

    net.dispatcher.on_task = die_mid_ring
    coordinator = ring.Coordinator(net.store, net.dispatcher, net.settings)
    # The dying coordinator's finally (its stops) must not release the claim: a SIGKILL runs none.
    monkeypatch.setattr(net.store, "release", lambda name, owner: None)
    with pytest.raises(Killed):
        coordinator.run("dead" * 8, NODES, _validated({"duration_s": 1}))
    monkeypatch.undo()
    monkeypatch.setattr(ring, "CLAIM_TTL_S", KILLED_TTL_S)
    net.dispatcher.on_task = net.on_task
    busy = net.ring(duration_s=1)
    assert "another iperf run" in busy.results["node-a"].summary  # still held, within its expiry
    # It lapses by itself (the dead coordinator renews nothing), within its expiry, not after the ring's bound.
    wait_until(lambda: net.store.lease_holder(ring.CLAIM) is None, 5 * KILLED_TTL_S, "the lease to lapse")
    assert {p["status"] for p in net.ring(duration_s=1).pairs} == {"ok"}


def test_the_ring_runs_as_a_control_queue_task_never_in_the_api_process() -> None:
    net = Net()
    ran: list[str] = []
    worker_side = net.on_task

    def a_worker(task: str, node: str, kwargs: dict[str, Any]) -> None:
        ran.append(f"{task}@{node}")
        worker_side(task, node, kwargs)

    net.dispatcher.on_task = a_worker
    response = api_for(net).test_client().get("/iperf?host=node-a,node-b&duration_s=1&format=json")
    assert response.status_code == 200
    assert f"{ring.RING_TASK}@{CONTROL_QUEUE}" in ran
    assert {r["check"] for n in ("node-a", "node-b") for r in response.get_json()["nodes"][n]["results"]} == {"iperf"}


def test_fewer_than_two_nodes_is_skipped_and_nodes_param_narrows_the_ring() -> None:
    outcome = Net(nodes=("node-a",)).ring()
    assert outcome.results["node-a"].status is Status.SKIPPED
    net = Net()
    outcome = net.ring(nodes="node-a,node-b,node-c")
    assert len(outcome.pairs) == 6
    assert outcome.results["node-d"].status is Status.SKIPPED
    assert "node-d" not in sent(net, ring.SERVERS_TASK)


def test_a_stop_that_overtakes_the_start_prevents_the_servers() -> None:
    runner = FakeRunner(installed=["iperf3"])
    servers = ring.Servers()
    assert servers.stop("x" * 32) == 0
    reply = servers.start(runner, "x" * 32, ["192.0.2.1"], [5200], 30)
    assert reply["ok"] is False and runner.spawned == []


def test_missing_iperf3_is_an_error_reply() -> None:
    reply = ring.Servers().start(FakeRunner(), "y" * 32, ["192.0.2.1"], [5200], 30)
    assert reply["ok"] is False and "not found" in reply["error"]


def test_plan_lanes_for_an_interface_with_several_addresses() -> None:
    from autopilot.peers import Peer

    found = [
        Peer("a", "net1", "192.0.2.1"),
        Peer("a", "net1", "198.51.100.1"),
        Peer("b", "net1", "192.0.2.2"),
        Peer("b", "net1", "198.51.100.2"),
        Peer("c", "eth9", "203.0.113.3"),
    ]
    lanes = ring.lanes(found, ["a", "b", "c"])
    assert [(lane.label, dict(lane.addresses)) for lane in lanes] == [
        ("net1-0", {"a": "192.0.2.1", "b": "192.0.2.2"}),
        ("net1-1", {"a": "198.51.100.1", "b": "198.51.100.2"}),
    ]


# ------------------------------------------------------------------ through the API


def api_for(net: Net) -> Flask:
    return create_app(net.settings, store=net.store, dispatcher=net.dispatcher)


def test_api_iperf_runs_the_ring_and_reports_the_suspect() -> None:
    net = Net(slow={"node-c"})
    client = api_for(net).test_client()
    response = client.get("/iperf?host=node-a,node-b,node-c,node-d&duration_s=1&format=json")
    assert response.status_code == 200
    report = response.get_json()
    assert net.dispatcher.sent == []  # iperf is not sent to the nodes as a check
    assert report["complete"] and report["status"] == "warn"
    assert report["network"]["iperf"]["suspects"]["nodes"] == ["node-c"]
    lane = report["network"]["iperf"]["interfaces"]["data0"]
    assert lane["pairs"] == 12 and lane["matrix"]["node-a"]["node-b"] == pytest.approx(9.4)
    for node in NODES:
        (result,) = report["nodes"][node]["results"]
        assert result["check"] == "iperf" and result["params"]["duration_s"] == 1
    # the same through the runs API
    again = client.get(f"/api/v1/runs/{report['id']}").get_json()
    assert again["network"]["iperf"]["suspects"]["nodes"] == ["node-c"]
    text = client.get("/iperf?host=node-a,node-b,node-c,node-d&duration_s=1").get_data(as_text=True)
    assert "IPERF: suspect node(s): node-c" in text
    assert "data0 Average Bandwidth Gb/s:" in text


def test_the_rings_slow_node_is_its_own_finding_not_every_other_nodes() -> None:
    # sim-6:iperf:slow on 20 nodes: every node's result warned for its pair to sim-6, and the next
    # reconcile turned all 20 WARN. The other nodes' pairs to the suspect are not judged against them.
    net = Net(slow={"node-c"})
    report = api_for(net).test_client().get("/iperf?host=node-a,node-b,node-c,node-d&duration_s=1&format=json")
    body = report.get_json()
    assert body["network"]["iperf"]["suspects"]["nodes"] == ["node-c"]
    (slow,) = body["nodes"]["node-c"]["results"]
    assert slow["status"] == "warn"
    for node in ("node-a", "node-b", "node-d"):
        (result,) = body["nodes"][node]["results"]
        assert result["status"] == "ok", result
        assert "node-c (the ring's suspect, not this node)" in result["summary"]
        to_c = next(d for d in result["devices"] if d["id"] == "node-c/data0")
        assert to_c["status"] == "skipped" and "not judged here: node-c is the ring's suspect" in to_c["detail"]
    # the report still shows every measured pair, the slow ones included
    assert body["network"]["iperf"]["interfaces"]["data0"]["matrix"]["node-a"]["node-c"] < 9.4


def test_a_ring_of_one_node_is_skipped_saying_why_once() -> None:
    # /iperf?host=sim-0 answered "[[ IPERF ]] SKIPPED: skipped: no address shared ...".
    client = api_for(Net()).test_client()
    (result,) = client.get("/iperf?host=node-a&format=json").get_json()["nodes"]["node-a"]["results"]
    assert result["status"] == "skipped"
    assert result["summary"] == "no address shared with another member on the network interfaces"
    text = client.get("/iperf?host=node-a").get_data(as_text=True)
    assert "SKIPPED: no address shared" in text and "skipped: skipped" not in text.lower()


def test_the_status_text_counts_the_average_over_the_measured_pairs_only() -> None:
    from api import text

    def pair(source: str, target: str, gbps: float | None) -> dict[str, Any]:
        status = "ok" if gbps is not None else "fail"
        return {"source": source, "target": target, "interface": "data0", "gbps": gbps, "status": status}

    pairs = [pair("a", "b", 90.0), pair("b", "a", 110.0), pair("a", "c", None), pair("c", "a", None)]
    net = {"iperf": {"bad_pairs": 2, "pairs": 4, "suspects": {"summary": "suspect node(s): c"}}}
    net["iperf"]["interfaces"] = iperf.summarize(pairs)
    lines = text.network_lines(net, shipped_checks())
    # The 100 Gb/s is the mean of two pairs: the two with c have no figure.
    assert "  data0 Average Bandwidth Gb/s: 100.00 over 2 of 4 pairs (the rest N/A)" in lines
    net["iperf"]["interfaces"] = iperf.summarize(pairs[:2])
    assert "  data0 Average Bandwidth Gb/s: 100.00 over 2 pairs" in text.network_lines(net, shipped_checks())


def test_api_rejects_bad_iperf_parameters_before_anything_is_sent() -> None:
    net = Net()
    client = api_for(net).test_client()
    for query, field in (("workload=mesh", "workload"), ("pclients=17", "pclients"), ("startport=80", "startport")):
        response = client.get(f"/iperf?{query}")
        assert response.status_code == 400 and response.get_json()["field"] == field
    assert net.dispatcher.tasks == []


def test_api_run_with_ping_and_iperf_in_the_background() -> None:
    net = Net(down={"node-b"})
    client = api_for(net).test_client()
    body = {"checks": ["ping", "iperf"], "hosts": list(NODES), "params": {"iperf": {"duration_s": 1}}}
    created = client.post("/api/v1/runs", json=body)
    assert created.status_code == 202
    report = client.get(created.get_json()["status_url"] + "?wait=30").get_json()
    assert report["complete"] is True
    assert report["network"]["ping"]["suspects"]["nodes"] == ["node-b"]
    assert report["network"]["iperf"]["suspects"]["nodes"] == ["node-b"]
    # ping went to the nodes with the selection; iperf did not
    assert {e.checks for e in net.dispatcher.sent} == {("ping",)}
    assert net.dispatcher.sent[0].params == {"ping": {"nodes": ",".join(NODES), "count": 3, "wait_s": 1.0}}


def test_api_ping_names_the_down_node_and_only_its_pairs_fail() -> None:
    net = Net(down={"node-a"})
    client = api_for(net).test_client()
    report = client.get("/ping?host=node-a,node-b,node-c&format=json").get_json()
    assert report["network"]["ping"]["suspects"]["nodes"] == ["node-a"]
    assert report["network"]["ping"]["bad_pairs"] == 4 and report["network"]["ping"]["pairs"] == 6
    # each node pinged only the selected others
    assert {e.params["ping"]["nodes"] for e in net.dispatcher.sent} == {"node-a,node-b,node-c"}
    assert "PING: suspect node(s): node-a" in client.get("/ping?host=node-a,node-b,node-c").get_data(as_text=True)


def test_api_ping_over_every_live_node_does_not_pin_the_list() -> None:
    net = Net()
    report = api_for(net).test_client().get("/ping?format=json").get_json()
    assert all(e.params["ping"]["nodes"] == "" for e in net.dispatcher.sent)
    assert report["network"]["ping"]["suspects"] == {"nodes": [], "pairs": [], "summary": "no suspect"}


def test_api_ping_a_node_that_never_answers_counts_as_bad_on_its_side() -> None:
    net = Net(silent={"node-d"})
    client = api_for(net).test_client()
    report = client.get("/ping?host=node-a,node-b,node-c,node-d&deadline=1&format=json").get_json()
    assert report["nodes"]["node-d"]["status"] == "unreachable"
    assert report["network"]["ping"]["suspects"]["nodes"] == ["node-d"]


def test_network_report_needs_no_ring_for_a_plain_dispatcher() -> None:
    # A dispatcher that cannot send named tasks: iperf goes out like any check (a worker skips it).
    net = Net()
    plain = FakeDispatcher(on_send=lambda env: None)
    app = create_app(net.settings, store=net.store, dispatcher=plain)
    app.test_client().get("/iperf?host=node-a&deadline=1")
    assert plain.sent[0].checks == ("iperf",)


def test_gather_network_report_from_stored_results() -> None:
    from workers import runs as gather

    run = Run.new(["ping"], ["a", "b", "c"], {}, 10)
    found = {
        ("a", "ping"): CheckResult("ping", Status.ERROR, "ping not found on PATH", node="a"),
        ("b", "ping"): CheckResult("ping", Status.OK, "ok", node="b", data={"pairs": [
            {"target": "a", "interface": "net1", "status": "fail"},
            {"target": "c", "interface": "net1", "status": "ok"}]}),
        ("c", "ping"): CheckResult("ping", Status.OK, "ok", node="c", data={"pairs": [
            {"target": "a", "interface": "net1", "status": "fail"},
            {"target": "b", "interface": "net1", "status": "ok"}]}),
    }  # fmt: skip
    net = gather.network_report(run, {k: r.to_dict() for k, r in found.items()}, late=())
    assert net["ping"]["suspects"]["nodes"] == ["a"]
    # a's own ping could not run: its side says nothing; the others' pairs to it name it
    assert net["ping"]["pairs"] == 4 and net["ping"]["bad_pairs"] == 2


def test_a_node_whose_ping_could_not_run_makes_no_suspect_of_its_links() -> None:
    # sim-12:ping:error on a live fleet: its 19 pairs were counted bad and the report named 19
    # suspect pairs, while the reconcile (network.ping_pairs) rightly left them out.
    from workers import runs as gather

    def could_not_run(node: str, targets: list[str]) -> CheckResult:
        pairs = [
            {"target": t, "interface": "net1", "status": "error", "detail": "socket: Operation not permitted"}
            for t in targets
        ]
        return CheckResult("ping", Status.ERROR, "ping could not run", node=node, data={"pairs": pairs})

    def reached(node: str, targets: list[str]) -> CheckResult:
        pairs = [{"target": t, "interface": "net1", "status": "ok"} for t in targets]
        return CheckResult("ping", Status.OK, "ok", node=node, data={"pairs": pairs})

    run = Run.new(["ping"], ["a", "b", "c"], {}, 10)
    found = {
        ("a", "ping"): could_not_run("a", ["b", "c"]),
        ("b", "ping"): reached("b", ["a", "c"]),
        ("c", "ping"): reached("c", ["a", "b"]),
    }
    net = gather.network_report(run, {k: r.to_dict() for k, r in found.items()}, late=())
    assert net["ping"]["suspects"] == {"nodes": [], "pairs": [], "summary": "no suspect"}
    assert net["ping"]["pairs"] == 4 and net["ping"]["bad_pairs"] == 0


def test_plan_refuses_ports_past_the_range() -> None:
    net = Net()
    with pytest.raises(errors.BadParameter):
        ring.plan(net.store, net.settings, NODES, {"startport": 65535, "pclients": 4})


# ------------------------------------------------------------------ the gather's side of a dead coordinator


def waiting_gather(net: Net, *, coordinator: Any) -> tuple[Any, Run]:
    """A run of ``iperf`` over node-a and node-b whose ring ``coordinator(polls)`` plays, at each poll's sleep."""
    from workers import runs

    run = Run.new(["iperf"], ["node-a", "node-b"], {"iperf": {}}, 600.0, now=net.clock.now)
    net.store.create_run(run)
    polls = [0]

    def sleep(seconds: float) -> None:
        polls[0] += 1
        coordinator(polls[0], run)
        net.clock.sleep(seconds)

    svc = runs.Services(net.settings, net.store, net.dispatcher, shipped_checks(), clock=net.clock, sleep=sleep)
    return runs.Gather(svc, run, node_deadline_s=600.0, batch=None, without=("iperf",)), run


def ring_result(node: str) -> CheckResult:
    return CheckResult("iperf", Status.OK, "ring ok", node=node)


def test_a_coordinator_that_dies_mid_ring_is_noticed_when_its_lease_lapses_not_at_the_rings_bound() -> None:
    net = Net()

    def dies_after_one_node(poll: int, run: Run) -> None:
        if poll == 1:
            assert net.store.lease(ring.CLAIM, run.id, ring.CLAIM_TTL_S)  # the coordinator starts
        elif poll == 3:
            net.store.save_result(ring_result("node-a"), run.id)
        elif poll == 5:
            net.store.release(ring.CLAIM, run.id)  # as its lease lapsing would, with node-b unanswered

    gather, run = waiting_gather(net, coordinator=dies_after_one_node)
    started = net.clock.now
    assert gather.wait_for_check("iperf", run.deadline) == set()
    assert net.clock.now - started < 5  # the ring's bound was 600 s
    found = net.store.get_run(run.id)
    assert found is not None
    assert found[1][("node-a", "iperf")].status is Status.OK
    lost = found[1][("node-b", "iperf")]
    assert lost.status is Status.ERROR and "coordinator lost" in lost.summary
    assert "iperf" not in net.store.latest("node-b")  # says nothing of the node itself


def test_a_coordinator_that_finishes_or_never_starts_is_not_taken_for_dead() -> None:
    net = Net()

    def finishes(poll: int, run: Run) -> None:
        if poll == 1:
            assert net.store.lease(ring.CLAIM, run.id, ring.CLAIM_TTL_S)
        elif poll == 3:
            net.store.save_many([(ring_result("node-a"), True), (ring_result("node-b"), True)], run.id)
            net.store.release(ring.CLAIM, run.id)  # results first, then the lease (ring.Coordinator.run)

    gather, run = waiting_gather(net, coordinator=finishes)
    assert gather.wait_for_check("iperf", run.deadline) == set()
    found = net.store.get_run(run.id)
    assert found is not None and {r.status for r in found[1].values()} == {Status.OK}

    # Another run's ring holds the lease (this one's coordinator would answer "busy"), or no
    # coordinator ever started: nothing is declared, the wait ends at its deadline.
    other = Net()
    assert other.store.lease(ring.CLAIM, "another-run", 3600)
    gather, run = waiting_gather(other, coordinator=lambda poll, run: None)
    assert gather.wait_for_check("iperf", other.clock.now + 30) == {"node-a", "node-b"}
    found = other.store.get_run(run.id)
    assert found is not None and found[1] == {}


def test_a_ring_writes_its_results_before_it_releases_its_lease() -> None:
    net = Net()
    seen: list[int] = []
    release = net.store.release

    def counted_release(name: str, owner: str) -> None:
        got = net.store.get_run(owner)
        seen.append(len(got[1]) if got else -1)
        release(name, owner)

    net.store.release = counted_release  # type: ignore[method-assign]
    run = Run.new(["iperf"], list(NODES), {}, 600.0)
    net.store.create_run(run)
    ring.run_ring(net.store, net.dispatcher, net.settings, run.id, NODES, _validated({"duration_s": 1}),
                  clock=net.clock, sleep=net.clock.sleep)  # fmt: skip
    assert seen == [len(NODES)]


def test_a_background_run_whose_coordinator_dies_answers_when_its_lease_lapses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ring, "CLAIM_TTL_S", 0.3)
    net = Net()
    worker_side = net.on_task

    def killed_coordinator(task: str, node: str, kwargs: dict[str, Any]) -> None:
        if task == ring.RING_TASK:  # takes the lease, then its worker dies: no result, no release
            assert net.store.lease(ring.CLAIM, kwargs["run_id"], ring.CLAIM_TTL_S)
            return
        worker_side(task, node, kwargs)

    net.dispatcher.on_task = killed_coordinator
    client = api_for(net).test_client()
    body = {"checks": ["iperf"], "hosts": ["node-a", "node-b"], "params": {"iperf": {"duration_s": 1}}}
    created = client.post("/api/v1/runs", json=body)
    assert created.status_code == 202
    # The ring's bound is tens of seconds; the lapsed lease says the coordinator is gone long before.
    report = client.get(created.get_json()["status_url"] + "?wait=20").get_json()
    assert report["complete"] is True
    for node in ("node-a", "node-b"):
        (result,) = report["nodes"][node]["results"]
        assert result["status"] == "error" and "coordinator lost" in result["summary"]


def test_each_ring_task_expires_on_its_members_clock() -> None:
    # Celery drops a task whose ``expires`` has passed by the consuming worker's clock. node-b's worker measured its
    # clock 10 min ahead of the store's, the others on time: its tasks must expire 10 min later by the stamps, the
    # same moment. Before, every task said the coordinator's time: node-b dropped its server and client tasks unrun.
    net = Net()
    now = time.time()
    net.store.heartbeat_many(
        NodeRecord(n, {"lo": ["127.0.0.1"], "data0": [address(n)]}, last_seen=now + (600.0 if n == "node-b" else 0.0),
                   clock_offset=600.0 if n == "node-b" else 0.0)
        for n in net.nodes
    )  # fmt: skip
    sent: list[tuple[str, str, float]] = []
    send_task = net.dispatcher.send_task

    def recording(task: str, node: str, kwargs: Mapping[str, Any], *, expires: float) -> None:
        sent.append((task, node, expires))
        send_task(task, node, kwargs, expires=expires)

    net.dispatcher.send_task = recording  # type: ignore[method-assign]
    outcome = net.ring(duration_s=1)
    # Each member's iperf result is stamped on its own clock, as its reconciles read its stamps (before: all on
    # this host's, so node-b's result read 10 min old at once).
    stamped = {n: datetime.fromisoformat(outcome.results[n].started_at).timestamp() for n in NODES}
    assert round(stamped["node-b"] - stamped["node-a"]) == 600 and stamped["node-c"] == stamped["node-a"]
    stops = {node: expires for task, node, expires in sent if task == ring.STOP_TASK}
    assert set(stops) == set(NODES)
    assert round(stops["node-b"] - stops["node-a"], 3) == 600.0
    servers = [(node, expires) for task, node, expires in sent if task == ring.SERVERS_TASK]
    late = [e for node, e in servers if node == "node-b"]
    on_time = [e for node, e in servers if node != "node-b"]
    assert late and on_time and min(late) - max(on_time) > 590.0
