"""The simulated network: simulated nodes have addresses and a link matrix, so ``ping`` and the
``iperf`` ring run their real code on simulated measurements, and a network fault
(``NODE:ping:down``, ``NODE:iperf:slow``) is localised to its node, as on a real fleet.

Also: a node whose every check was skipped is not counted as healthy in a run's summary.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any

import fakeredis
import pytest

from api.app import create_app
from autopilot import config, errors, execution, network, registry
from autopilot.checks import iperf
from autopilot.registry import shipped as shipped_checks
from autopilot.results import Status
from tests.unit.api_helpers import make_api
from workers import ring, simulate, up
from workers.dispatch import Envelope, FakeDispatcher
from workers.peers import StorePeers
from workers.store import NodeRecord, ResultsStore

importlib.import_module("autopilot.checks")

SETTINGS = config.Settings(node_name="api-host", node_deadline_s=10.0)


def _store() -> ResultsStore:
    return ResultsStore(fakeredis.FakeRedis(), history_len=10, run_ttl_s=600)


def _fleet(store: ResultsStore, n: int, faults: list[str], **kw: Any) -> dict[str, Any]:
    """``n`` simulated nodes heartbeating their simulated addresses, as the worker does."""
    ctxs = simulate.contexts(SETTINGS, n, faults, live_nodes=store.node_names, checks=shipped_checks(), **kw)
    now = time.time()
    store.heartbeat_many(
        NodeRecord(name, addresses=simulate.addresses(name), simulated=True, last_seen=now) for name in ctxs
    )
    store.heartbeat_many([NodeRecord("gpu-real", addresses={"eth0": ["10.0.0.5"]}, last_seen=now)])
    return ctxs


def test_addresses_are_on_the_benchmarking_fabric_and_map_back() -> None:
    assert simulate.address("sim-0") == "198.18.0.1" and simulate.address("sim-300") == "198.18.1.45"
    assert simulate.node_at(simulate.address("sim-99999")) == "sim-99999"
    assert simulate.node_at("10.0.0.1") is None and simulate.node_at("not-an-ip") is None
    for bad in ("sim-01", "sim-+1", "node-1", "sim-100000", "sim-\uff11"):
        with pytest.raises(errors.BadParameter):
            simulate.address(bad)


def test_ping_runs_its_real_code_between_simulated_nodes() -> None:
    store = _store()
    ctxs = _fleet(store, 3, [])
    result = execution.run_check("ping", ctxs["sim-0"])
    assert result.status is Status.OK, result.summary
    assert [d.id for d in result.devices] == ["sim-1/sim0", "sim-2/sim0"]
    assert result.data["reached"] == ["sim-1", "sim-2"]


def test_a_down_node_fails_every_ping_pair_it_is_in() -> None:
    store = _store()
    ctxs = _fleet(store, 4, ["sim-2:ping:down"])
    healthy = execution.run_check("ping", ctxs["sim-0"])
    assert healthy.status is Status.FAIL and healthy.data["unreachable"] == ["sim-2"]
    assert execution.run_check("ping", ctxs["sim-2"]).data["unreachable"] == ["sim-0", "sim-1", "sim-3"]


def test_a_network_fault_of_another_process_reaches_this_ones_links() -> None:
    store = _store()
    ctxs = _fleet(store, 2, [], link_faults=["sim-1:ping:down"])
    assert execution.run_check("ping", ctxs["sim-0"]).data["unreachable"] == ["sim-1"]
    with pytest.raises(errors.BadParameter) as caught:
        simulate.contexts(SETTINGS, 2, [], link_faults=["sim-7:dcgm:fatal"], checks=shipped_checks())
    assert caught.value.field == "--link-fault"


def test_a_node_behind_a_1500_port_passes_the_default_ping_and_fails_the_mtu_probe_named_by_the_fleet() -> None:
    store = _store()
    ctxs = _fleet(store, 4, ["sim-2:ping:mtu"])
    assert execution.run_check("ping", ctxs["sim-0"]).status is Status.OK  # small pings pass
    found = {node: execution.run_check("ping", ctx, {"mtu": 9000}) for node, ctx in ctxs.items()}
    first = found["sim-0"]
    assert first.status is Status.FAIL and first.data["mtu_faults"] == ["sim-2"] and first.data["unreachable"] == []
    assert {d.id: d.status for d in first.devices}["sim-2/sim0"] is Status.FAIL
    assert found["sim-2"].data["mtu_faults"] == ["sim-0", "sim-1", "sim-3"]
    assert network.fleet_suspects({n: dataclasses.replace(r, node=n) for n, r in found.items()}) == {"sim-2"}
    # opt-in: --fault takes it and the help lists it, while the kinds bench.quality mixes stay as they were
    assert simulate.parse_fault("sim-2:ping:mtu") == simulate.Fault("sim-2", "ping", "mtu")
    assert "ping:mtu" in simulate.help_text() and "mtu" not in simulate.kinds("ping")


def test_ping_and_error_faults_of_the_tool_are_errors_not_findings() -> None:
    store = _store()
    ctxs = _fleet(store, 2, ["sim-0:ping:error"])
    result = execution.run_check("ping", ctxs["sim-0"])
    assert result.status is Status.ERROR, result.summary


def _dispatcher(store: ResultsStore, ctxs: dict[str, Any]) -> FakeDispatcher:
    """A dispatcher that runs each envelope's checks on the simulated node, as its worker would."""

    def run(env: Envelope) -> None:
        for check in env.checks:
            result = execution.run_check(check, ctxs[env.node], env.params.get(check, {}))
            store.save_result(result, env.run_id)

    return FakeDispatcher(on_send=run)


def test_the_api_names_the_down_node_as_the_suspect() -> None:
    store = _store()
    ctxs = _fleet(store, 4, ["sim-3:ping:down"])
    app = create_app(SETTINGS, store=store, dispatcher=_dispatcher(store, ctxs), checks=registry.REGISTRY)
    report = app.test_client().get("/ping?host=sim-0,sim-1,sim-2,sim-3&format=json").get_json()
    assert report["network"]["ping"]["suspects"]["nodes"] == ["sim-3"], report["network"]
    assert {n: e["status"] for n, e in report["nodes"].items()} == {f"sim-{i}": "fail" for i in range(4)}
    text = app.test_client().get("/ping?host=sim-0,sim-1,sim-2,sim-3").get_data(as_text=True)
    assert "suspect node(s): sim-3" in text


def test_the_ring_on_simulated_links_names_the_slow_node() -> None:
    store = _store()
    ctxs = _fleet(store, 4, ["sim-1:iperf:slow"])
    names = list(ctxs)
    pairs: list[dict[str, Any]] = []
    for step in network.ring_steps(names):
        for source, target in step:
            job = {
                "source": source,
                "target": target,
                "interface": simulate.INTERFACE,
                "address": simulate.address(target),
                "source_address": simulate.address(source),
                "ports": [5200, 5201],
            }
            pairs += ring.run_clients(ctxs[source].commands, [job], duration_s=1)
    graded = iperf.grade(pairs, threshold_gbps=0, min_fraction=0.5)
    slow = {(p["source"], p["target"]) for p in graded if p["status"] == "warn"}
    assert slow == {(s, t) for s in names for t in names if s != t and "sim-1" in (s, t)}
    assert network.localise(iperf.pair_results(graded)).nodes == ("sim-1",)
    fast = next(p for p in graded if p["status"] == "ok")
    assert fast["gbps"] == pytest.approx(2 * simulate.LINK_GBPS)  # two clients, one per port


def test_iperf_servers_start_and_stop_on_simulated_nodes() -> None:
    runner = simulate.contexts(SETTINGS, 1, [], checks=shipped_checks())["sim-0"].commands
    server = runner.spawn(iperf.server_argv(simulate.address("sim-0"), 5200), lifetime_s=30)
    assert server.poll() is None
    server.terminate()
    assert server.poll() == 0
    with pytest.raises(errors.ToolNotFound):
        runner.spawn(["sh", "-c", "true"], lifetime_s=1)


def test_a_down_node_cannot_be_reached_by_iperf_either() -> None:
    ctxs = simulate.contexts(SETTINGS, 2, ["sim-1:ping:down"], checks=shipped_checks())
    job = {
        "source": "sim-0",
        "target": "sim-1",
        "interface": "sim0",
        "address": simulate.address("sim-1"),
        "ports": [5200],
    }
    (pair,) = ring.run_clients(ctxs["sim-0"].commands, [job], duration_s=1)
    assert pair["status"] == "fail" and "unable to connect" in pair["detail"]


def test_a_large_simulation_pings_a_bounded_ring_of_neighbours_and_still_localises() -> None:
    store = _store()
    ctxs = _fleet(store, 40, ["sim-7:ping:down"])
    pairs: list[network.PairResult] = []
    for name, ctx in ctxs.items():
        result = execution.run_check("ping", ctx)
        assert len(result.devices) == simulate.NEIGHBOURS
        pairs += [
            network.PairResult(name, p["target"], p["interface"], p["status"] != "ok") for p in result.data["pairs"]
        ]
    assert {p.target for p in pairs if p.source == "sim-39"} == {f"sim-{i}" for i in range(16)}  # the ring wraps
    assert network.localise(pairs).nodes == ("sim-7",)
    # an explicit list is pinged whole, real nodes left out (they cannot reach the fabric)
    named = ctxs["sim-0"].peers.peers(["sim-1", "sim-39", "gpu-real"])
    assert [(p.node, p.address) for p in named] == [("sim-1", "198.18.0.2"), ("sim-39", "198.18.0.40")]


def test_simulated_nodes_read_the_live_nodes_once_per_heartbeat_not_once_per_ping() -> None:
    calls: list[int] = []

    def live() -> list[str]:
        calls.append(1)
        return ["sim-0", "sim-1", "sim-2"]

    ctxs = simulate.contexts(SETTINGS, 3, [], live_nodes=live, checks=shipped_checks())
    for ctx in ctxs.values():
        assert execution.run_check("ping", ctx).status is Status.OK
    assert len(calls) == 1


def test_real_and_simulated_nodes_never_ping_each_other() -> None:
    store = _store()
    now = time.time()
    store.heartbeat_many(
        [
            NodeRecord("gpu-real", addresses={"eth0": ["10.0.0.5"]}, last_seen=now),
            NodeRecord("sim-0", addresses=simulate.addresses("sim-0"), simulated=True, last_seen=now),
        ]
    )
    assert [p.node for p in StorePeers(store, SETTINGS, simulated=True).peers()] == ["sim-0"]
    assert [p.node for p in StorePeers(store, SETTINGS, simulated=False).peers()] == ["gpu-real"]
    assert len(StorePeers(store, SETTINGS).peers()) == 2  # the ring's planner sees both


def test_up_hands_every_simulator_the_network_faults_of_the_others() -> None:
    specs = ["sim-1:ping:down", "sim-4:iperf:slow", "sim-4:dcgm:fatal"]
    assert up.link_faults_for(specs, 0, 3) == ["sim-4:iperf:slow"]
    assert up.link_faults_for(specs, 3, 3) == ["sim-1:ping:down"]
    assert up.faults_for(specs, 3, 3) == ["sim-4:iperf:slow", "sim-4:dcgm:fatal"]


def test_fault_kinds_of_the_network_checks() -> None:
    assert simulate.parse_fault("sim-0:ping") == simulate.Fault("sim-0", "ping", "down")
    assert simulate.parse_fault("sim-0:iperf") == simulate.Fault("sim-0", "iperf", "slow")
    assert "ping:down (default)" in simulate.help_text() and "iperf:slow (default)" in simulate.help_text()


def test_a_node_whose_checks_were_all_skipped_is_not_counted_healthy() -> None:
    api = make_api()
    api.workers.outcomes.update(
        {("node-a", c): (Status.SKIPPED, False, "no GPU here") for c in ("remapped", "gpupower")}
    )
    report = api.client.get("/status?host=node-a&check=remapped,gpupower&format=json").get_json()
    assert report["nodes"]["node-a"]["status"] == "skipped"
    assert report["totals"]["ok"] == 0 and report["totals"]["skipped"] == 1
    assert report["status"] == "skipped"
    both = api.client.get("/status?host=node-a,node-b&check=remapped,gpupower&format=json").get_json()
    assert both["totals"]["ok"] == 1 and both["totals"]["skipped"] == 1 and both["status"] == "ok"
    text = api.client.get("/status?host=node-a&check=remapped,gpupower").get_data(as_text=True)
    assert "Node Status: Skipped" in text


def test_the_ring_of_neighbours_follows_the_live_nodes_as_they_change() -> None:
    # The ring is cached per live list (simulate._ring): a node that joins or leaves moves the
    # neighbours at once, and a node missing from the list still finds its place in the ring.
    live = [f"sim-{i}" for i in range(20)]
    directory = simulate.SimPeers("sim-5", lambda: tuple(live))
    assert [p.node for p in directory.peers()][:2] == ["sim-6", "sim-7"]
    live.remove("sim-6")
    assert [p.node for p in directory.peers()][:2] == ["sim-7", "sim-8"]
    live.append("sim-6")
    assert [p.node for p in directory.peers()][:2] == ["sim-6", "sim-7"]
    assert [p.node for p in simulate.SimPeers("sim-25", lambda: tuple(live)).peers()][:2] == ["sim-0", "sim-1"]


def test_simulated_pings_are_answered_at_once_but_a_hung_ping_keeps_its_threads() -> None:
    from autopilot import commands
    from workers import simnoise

    store = _store()
    ctxs = _fleet(store, 3, ["sim-1:ping:hang"])
    healthy, hung = ctxs["sim-0"].commands, ctxs["sim-1"].commands
    assert isinstance(healthy, commands.InstantRunner) and healthy.answers_at_once("ping")
    assert healthy.answers_at_once("/usr/bin/iperf3") and not healthy.answers_at_once("nvidia-smi")
    # A hang sleeps each call to its timeout: those calls must keep running side by side.
    assert not hung.answers_at_once("ping") and hung.answers_at_once("iperf3")  # type: ignore[attr-defined]
    noisy = simnoise.NoisyRunner(hung, "sim-1", 1)
    assert isinstance(noisy, commands.InstantRunner) and not noisy.answers_at_once("ping")
    assert simnoise.NoisyRunner(healthy, "sim-0", 1).answers_at_once("ping")
    assert execution.run_check("ping", ctxs["sim-0"]).data["reached"] == ["sim-1", "sim-2"]  # its own ping is not hung
