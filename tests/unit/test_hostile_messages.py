"""Well-formed task messages with hostile or other-release keyword arguments, on the worker side.

A message reaches a worker from beat, confirmation, the ring coordinator, another release of the API,
or anyone holding the Redis password: what it names is refused or answered ``error``, never written
into a Redis key unvalidated, never a crash.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import fakeredis
import pytest

from autopilot import config, errors
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import Status
from autopilot.testing import FakeRunner, FakeTelemetry
from workers import ring, simulate, tasks
from workers.dispatch import FakeDispatcher
from workers.host import NodeHost
from workers.store import ResultsStore

NODE = "sim-0"
RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def host() -> NodeHost:
    settings = config.Settings(node_name="test", redis_url="", periodic_checks=("remapped", "gpupower"))
    return NodeHost(
        settings, ResultsStore(fakeredis.FakeRedis()), simulate.contexts(settings, 1, [], checks=shipped_checks())
    )


def send(host: NodeHost, **changed: Any) -> tasks.Done:
    kwargs: dict[str, Any] = {
        "run_id": RUN,
        "node": NODE,
        "checks": ["remapped"],
        "params": {},
        "deadline": time.time() + 30,
    }
    kwargs.update(changed)
    return tasks.run_checks(host, **kwargs)


def keys(host: NodeHost) -> set[bytes]:
    return set(host.store.r.keys("*"))


@pytest.mark.parametrize("run_id", ["a:b*\nc", "x" * 10_000, 5, "0123456789ABCDEF0123456789ABCDEF", RUN + "\n"])
def test_a_run_id_that_is_not_ours_keys_nothing(host: NodeHost, run_id: Any) -> None:
    before = keys(host)
    assert send(host, run_id=run_id) == []
    assert keys(host) == before


@pytest.mark.parametrize("node", ["a:b*\n", "x" * 300, 7, ""])
def test_a_node_name_that_is_not_a_name_keys_nothing(host: NodeHost, node: Any) -> None:
    before = keys(host)
    assert send(host, node=node) == []
    assert keys(host) == before


@pytest.mark.parametrize("checks", [[{"a": 1}], [1, None], "remapped", {"remapped": 1}])
def test_check_names_that_are_not_a_list_of_strings_are_refused(host: NodeHost, checks: Any) -> None:
    before = keys(host)
    assert send(host, checks=checks) == []
    assert keys(host) == before


def test_a_well_formed_message_still_runs(host: NodeHost) -> None:
    assert [(r.check, r.status) for r in send(host)] == [("remapped", Status.OK)]


@pytest.mark.parametrize(
    "params", [[1, 2], "abc", {"remapped": [1]}, {"remapped": "x"}, {"gpupower": 3}, {"remapped": {"a": 1}, "x": [0]}]
)
def test_params_that_are_not_mappings_answer_the_run_with_errors(host: NodeHost, params: Any) -> None:
    done = send(host, checks=["remapped", "gpupower"], params=params)
    assert [(r.check, r.status) for r in done] == [("remapped", Status.ERROR), ("gpupower", Status.ERROR)]
    assert all("params" in r.summary for r in done)
    assert host.store.run_answered(RUN) == {(NODE, "remapped"), (NODE, "gpupower")}
    assert host.store.latest(NODE) == {}  # a malformed message says nothing about the node


@pytest.mark.parametrize("deadline", [float("nan"), float("inf"), float("-inf"), "soon", None, True, [1]])
def test_a_deadline_that_is_not_a_finite_time_answers_the_run_with_errors(host: NodeHost, deadline: Any) -> None:
    done = send(host, checks=["remapped", "gpupower"], deadline=deadline)
    assert [(r.check, r.status) for r in done] == [("remapped", Status.ERROR), ("gpupower", Status.ERROR)]
    assert all("deadline" in r.summary for r in done)
    assert host.store.latest(NODE) == {}


def test_an_infinite_deadline_never_hands_busy_gpu_checks_back_forever(host: NodeHost) -> None:
    with host.gpu_lock(NODE):
        done = send(host, checks=["remapped"], deadline=float("inf"))
    assert [(r.check, r.status) for r in done] == [("remapped", Status.ERROR)]


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "-huge"])
def test_an_integer_past_floats_range_for_a_float_parameter_is_an_error_not_a_crash(host: NodeHost, value: int) -> None:
    # JSON carries integers of any length: kombu decodes 400 digits into a Python int.
    done = send(host, checks=["pciebw"], params={"pciebw": {"threshold_gbps": value}})
    assert [(r.check, r.status) for r in done] == [("pciebw", Status.ERROR)]
    assert "threshold_gbps" in done[0].summary


@pytest.fixture
def ring_host() -> tuple[NodeHost, FakeRunner]:
    settings = config.Settings(node_name="test", redis_url="")
    runner = FakeRunner(installed=["iperf3"])
    ctx = CheckContext(NODE, settings, runner, FakeTelemetry(), checks=shipped_checks())
    return NodeHost(settings, ResultsStore(fakeredis.FakeRedis()), {NODE: ctx}), runner


SERVERS: dict[str, Any] = {"run_id": RUN, "node": NODE, "binds": ["10.0.0.1"], "ports": [5200], "lifetime_s": 60.0}


@pytest.mark.parametrize(
    "changed",
    [
        {"run_id": "r:*\n"},
        {"node": "a b"},
        {"binds": ["--logfile=/tmp/x"]},
        {"binds": ["-D"]},
        {"binds": ["not-an-address"]},
        {"binds": "10.0.0.1"},
        {"binds": ["10.0.0.1"] * 10_000},
        {"ports": [0]},
        {"ports": [70_000]},
        {"ports": [22]},
        {"ports": [1023]},
        {"ports": ["5200"]},
        {"ports": [True]},
        {"ports": list(range(5200, 15_200))},
        {"ports": []},
        {"lifetime_s": float("nan")},
        {"lifetime_s": float("inf")},
        {"lifetime_s": -1},
        {"lifetime_s": 10**9},
        {"lifetime_s": "60"},
    ],
    ids=repr,
)
def test_a_hostile_servers_message_starts_nothing_and_keys_nothing(
    ring_host: tuple[NodeHost, FakeRunner], changed: dict[str, Any]
) -> None:
    host, runner = ring_host
    reply = tasks.iperf_servers(host, **{**SERVERS, **changed})
    assert reply["ok"] is False and "refused" in reply["error"]
    assert runner.spawned == [] and runner.calls == []
    assert keys(host) == set()


def test_a_well_formed_servers_message_starts_its_servers(ring_host: tuple[NodeHost, FakeRunner]) -> None:
    host, runner = ring_host
    run_id = uuid.uuid4().hex  # ring.SERVERS is the process's: a run it stopped stays refused
    reply = tasks.iperf_servers(host, **{**SERVERS, "run_id": run_id, "ports": [5200, 5201]})
    assert reply == {"ok": True, "started": 2, "error": ""}
    assert [p.argv[3] for p in runner.spawned] == ["5200", "5201"]
    assert tasks.iperf_stop(host, run_id=run_id, node=NODE) == 2


JOB: dict[str, Any] = {
    "source": NODE,
    "target": "sim-1",
    "interface": "data0",
    "address": "10.0.0.2",
    "source_address": "10.0.0.1",
    "ports": [5200],
}


@pytest.mark.parametrize(
    "changed",
    [
        {"run_id": "x" * 10_000},
        {"phase": "0"},
        {"phase": -1},
        {"duration_s": 10**6},
        {"duration_s": 0},
        {"duration_s": 5.5},
        {"jobs": "abc"},
        {"jobs": [JOB] * 10_000},
        {"jobs": [[1]]},
        {"jobs": [{**JOB, "address": "--logfile=/tmp/x"}]},
        {"jobs": [{**JOB, "source_address": "-R"}]},
        {"jobs": [{**JOB, "ports": [70_000]}]},
        {"jobs": [{**JOB, "ports": [80]}]},
        {"jobs": [{**JOB, "ports": list(range(1, 10_001))}]},
        {"jobs": [{**JOB, "target": "a:b"}]},
        {"jobs": [{k: v for k, v in JOB.items() if k != "address"}]},
    ],
    ids=lambda c: repr(c)[:60],
)
def test_a_hostile_clients_message_runs_nothing_and_keys_nothing(
    ring_host: tuple[NodeHost, FakeRunner], changed: dict[str, Any]
) -> None:
    host, runner = ring_host
    message: dict[str, Any] = {"run_id": RUN, "node": NODE, "phase": 0, "jobs": [JOB], "duration_s": 1}
    assert tasks.iperf_clients(host, **{**message, **changed}) == []
    assert runner.calls == []
    assert keys(host) == set()


@pytest.mark.parametrize("changed", [{"run_id": "a*"}, {"node": "-x"}, {"run_id": None}], ids=repr)
def test_a_hostile_stop_message_keys_nothing(ring_host: tuple[NodeHost, FakeRunner], changed: dict[str, Any]) -> None:
    host, _ = ring_host
    assert tasks.iperf_stop(host, **{"run_id": RUN, "node": NODE, **changed}) == 0
    assert keys(host) == set()


@pytest.mark.parametrize(
    "params",
    [{"duration_s": 10**6}, {"duration_s": float("nan")}, {"pclients": 10_000}, {"startport": 22}, {"bogus": 1}, [1]],
    ids=repr,
)
def test_a_ring_message_with_bad_iperf_params_answers_every_node_error(params: Any) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    dispatcher = FakeDispatcher()
    settings = config.Settings(node_name="test", redis_url="")
    got = tasks.iperf_ring(store, dispatcher, settings, run_id=RUN, nodes=["node-a", "node-b"], params=params)
    assert got == {"node-a": "error", "node-b": "error"}
    assert store.run_answered(RUN) == {("node-a", "iperf"), ("node-b", "iperf")}
    assert dispatcher.tasks == []  # no servers asked for
    assert store.latest("node-a") == {}


@pytest.mark.parametrize(
    "changed", [{"run_id": "r:*"}, {"run_id": 3}, {"nodes": ["a:b", "node-a"]}, {"nodes": "node-a"}], ids=repr
)
def test_a_ring_message_with_bad_names_keys_nothing(changed: dict[str, Any]) -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="test", redis_url="")
    message: dict[str, Any] = {"run_id": RUN, "nodes": ["node-a", "node-b"], "params": {}, **changed}
    assert tasks.iperf_ring(store, FakeDispatcher(), settings, **message) == {}
    assert set(store.r.keys("*")) == set()


def test_a_check_named_many_times_runs_once(host: NodeHost) -> None:
    done = send(host, checks=["remapped", "gpupower"] * 5_000)
    assert [r.check for r in done] == ["remapped", "gpupower"]


def test_thousands_of_different_check_names_are_refused(host: NodeHost) -> None:
    assert send(host, checks=[f"c{i}" for i in range(10_000)]) == []
    assert keys(host) == set()


@pytest.mark.parametrize("kind", ["nope", 5, None, ["periodic"]], ids=repr)
def test_a_fanout_of_an_unknown_kind_is_a_bad_parameter(kind: Any) -> None:
    settings = config.Settings(node_name="test", redis_url="")
    store = ResultsStore(fakeredis.FakeRedis())
    with pytest.raises(errors.BadParameter):
        tasks.fanout(store, FakeDispatcher(), settings, shipped_checks(), kind=kind)
    assert set(store.r.keys("*")) == set()


def test_a_check_this_worker_does_not_know_is_answered_in_the_run_only(host: NodeHost) -> None:
    # A newer release's check during a rolling upgrade, or any name at all from a hostile sender: it says
    # nothing about the node, so it neither moves the node's verdict nor adds a field to its latest results.
    done = send(host, checks=["newcheck", "remapped"])
    assert [(r.check, r.status) for r in done] == [("newcheck", Status.ERROR), ("remapped", Status.OK)]
    assert set(host.store.latest(NODE)) == {"remapped"}
    assert host.store.state(NODE).verdict != "WARN"
    assert host.store.run_answered(RUN) == {(NODE, "newcheck"), (NODE, "remapped")}
    assert "unknown to this worker" in done[0].summary


def test_a_deadline_years_ahead_answers_the_run_with_errors(host: NodeHost) -> None:
    # Finite, but as good as the infinite one refused above: busy GPU checks would be handed back for ever.
    done = send(host, checks=["remapped"], deadline=1e12)
    assert [(r.check, r.status) for r in done] == [("remapped", Status.ERROR)]
    assert "deadline" in done[0].summary


def test_a_deadline_months_ahead_is_a_real_runs(host: NodeHost) -> None:
    # A run with the iperf ring of a large fleet waits the ring's estimate: months, for 2,000 nodes on many lanes.
    done = send(host, checks=["remapped"], deadline=time.time() + 200 * 86_400)
    assert [(r.check, r.status) for r in done] == [("remapped", Status.OK)]


def test_the_coordinators_servers_message_for_a_2000_node_ring_is_accepted(
    ring_host: tuple[NodeHost, FakeRunner],
) -> None:
    # What ring.Ring sends each member: its address on every lane and the ring's whole lifetime, which grows
    # with members x lanes (64 lanes: the most binds a servers message may carry; 60 s: iperf's longest).
    host, runner = ring_host
    members = [NODE, *(f"node-{i}" for i in range(1, 2000))]
    lanes = tuple(
        ring.Lane(f"net{k}", {m: f"10.{k}.{i // 250}.{i % 250 + 1}" for i, m in enumerate(members)}) for k in range(64)
    )
    plan = ring.Plan(tuple(members), lanes, (5200,), 60)
    run_id = uuid.uuid4().hex
    reply = tasks.iperf_servers(
        host, run_id=run_id, node=NODE, binds=plan.binds(NODE), ports=list(plan.ports),
        lifetime_s=plan.estimate_s() + ring.LIFETIME_SLACK_S,
    )  # fmt: skip
    try:
        assert reply == {"ok": True, "started": 64, "error": ""}
    finally:
        tasks.iperf_stop(host, run_id=run_id, node=NODE)


def full_servers(host: NodeHost, run_id: str) -> dict[str, Any]:
    """A well-formed servers message at its largest: 64 addresses x 16 ports (1,024 servers)."""
    binds, ports = [f"10.0.{k}.1" for k in range(64)], list(range(5200, 5216))
    return tasks.iperf_servers(host, run_id=run_id, node=NODE, binds=binds, ports=ports, lifetime_s=60)


def test_servers_messages_under_made_up_run_ids_cannot_start_servers_without_end(
    ring_host: tuple[NodeHost, FakeRunner],
) -> None:
    # Each message is well formed (64 addresses x 16 ports); only their number is hostile.
    host, runner = ring_host
    run_ids = [uuid.uuid4().hex for _ in range(5)]
    try:
        replies = [full_servers(host, r) for r in run_ids]
        assert [r["started"] for r in replies] == [1024, 1024, 1024, 1024, 0]
        assert "already run on this node" in replies[-1]["error"]
        assert len(runner.spawned) == 4096
    finally:
        for r in run_ids:
            tasks.iperf_stop(host, run_id=r, node=NODE)


def test_servers_that_lived_out_their_lifetime_do_not_count_against_a_new_ring(
    ring_host: tuple[NodeHost, FakeRunner],
) -> None:
    # Four dead coordinators' rings (no stop message ever came): their servers exited at their lifetime.
    # The node runs none of them any more, so the next real ring must start its servers.
    host, runner = ring_host
    run_ids = [uuid.uuid4().hex for _ in range(5)]
    try:
        for r in run_ids[:4]:
            full_servers(host, r)
        for proc in runner.spawned:
            proc.returncode = 0  # the lifetime timer ended each one
        reply = full_servers(host, run_ids[4])
        assert reply == {"ok": True, "started": 1024, "error": ""}
        assert ring.SERVERS.running().get((run_ids[0], NODE)) is None  # the exited ones are forgotten
    finally:
        for r in run_ids:
            tasks.iperf_stop(host, run_id=r, node=NODE)
