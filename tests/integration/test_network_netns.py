"""``ping`` and ``iperf`` across real network stacks: four network namespaces, a real worker in
each, the API in this process with the real Celery dispatcher.

Needs root, ``ip``, ``tc``, ``ping``, ``iperf3`` and ``redis-server``: skipped locally when one is
missing, a failure under CI=true. Every address lives on the lab's bridges and namespaces only
(``tests/integration/netns.py``); everything is torn down in finalizers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from autopilot import config, execution, network, registry
from autopilot.commands import CommandResult, SubprocessRunner
from autopilot.context import CheckContext
from autopilot.peers import Peer, StaticPeers
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeTelemetry, wait_until
from tests.conftest import ROOT, require_binary
from tests.integration.netns import BROKER_ADDRESS, DATA_IF, DATA_NET, NetLab
from tests.integration.netns import ip as netns_ip

pytestmark = pytest.mark.integration

NODES = ("node-a", "node-b", "node-c", "node-d")
T = TypeVar("T")
READY_S = 60.0
DURATION_S = 2


def iperf3_processes() -> list[int]:
    """PIDs of every running ``iperf3`` on this machine (any namespace: /proc sees them all)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "iperf3":
                    found.append(int(entry.name))
    return found


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    found = {name: require_binary(name) for name in ("ip", "tc", "ping", "iperf3", "redis-server")}
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI runs these tests as root)")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def lab(tools: dict[str, str]) -> Iterator[NetLab]:
    net = NetLab(NODES)
    try:
        net.setup()
        yield net
    finally:
        net.teardown()


@pytest.fixture(scope="module")
def broker(lab: NetLab, tools: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module on the control bridge (and loopback)."""
    workdir = tmp_path_factory.mktemp("netns-redis")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [tools["redis-server"], "--port", str(port), "--bind", f"{BROKER_ADDRESS} 127.0.0.1",
            "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(workdir)]  # fmt: skip
    with open(workdir / "redis.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
    url = f"redis://{BROKER_ADDRESS}:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, "redis-server")
        client.close()
        yield url
    finally:
        kill_group(proc)


@pytest.fixture(scope="module")
def workers(
    lab: NetLab, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    logs = tmp_path_factory.mktemp("netns-workers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPILOT_") and k != "NODE_NAME"}
    env.update(
        AUTOPILOT_REDIS_URL=broker,
        AUTOPILOT_NETWORK_INTERFACES=DATA_IF,
        AUTOPILOT_HEARTBEAT_INTERVAL="1s",
        AUTOPILOT_PODINFO_ANNOTATIONS=str(logs / "no-annotations"),
        AUTOPILOT_PERIODIC_INTERVAL="0",
        AUTOPILOT_INVASIVE_INTERVAL="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node in NODES:
            worker = [sys.executable, "-m", "autopilot.cli", "worker", "--node", node]
            # node-d's worker is SIGKILLed mid-ring by the last test, which is about a ring member
            # dying: it never takes the control queue, so it is never the ring's coordinator (a
            # coordinator's death is tests/integration/test_ring_claim.py's case).
            argv = lab.exec_argv(node, [*worker, "--no-control"] if node == "node-d" else worker)
            with open(logs / f"{node}.log", "ab") as out:
                procs.append(
                    subprocess.Popen(
                        argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, process_group=0
                    )
                )
        client = redis.Redis.from_url(broker)

        def all_registered() -> bool:
            for proc in procs:
                assert proc.poll() is None, f"a worker exited {proc.returncode}; logs in {logs}"
            members = {m.decode() for m in client.zrange("ap:nodes", 0, -1)}
            # the broker connection is up once a worker has consumed its queue: the heartbeat
            # shows the worker process is up, and Celery's banner the consumer
            return members >= set(NODES) and all(b"ready." in (logs / f"{n}.log").read_bytes() for n in NODES)

        wait_until(all_registered, READY_S, f"workers to register (logs in {logs})")
        client.close()
        yield dict(zip(NODES, procs, strict=True))
    finally:
        for proc in procs:
            kill_group(proc)


@pytest.fixture(scope="module")
def api(broker: str, workers: dict[str, subprocess.Popen[bytes]]) -> Any:
    from api.app import create_app

    settings = config.Settings(node_name="api", redis_url=broker, network_interfaces=(DATA_IF,), heartbeat_interval_s=1)
    return create_app(settings).test_client()


@pytest.fixture
def healthy(lab: NetLab) -> Iterator[NetLab]:
    """The lab, with every data link restored afterwards whatever the test did."""
    try:
        yield lab
    finally:
        for node in NODES:
            lab.unshape_data_link(node)
            lab.set_data_link(node, up=True)


def get(api: Any, path: str) -> dict[str, Any]:
    response = api.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    report: dict[str, Any] = response.get_json()
    assert report["complete"] is True
    return report


def pairs_of(report: dict[str, Any], check: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for node, entry in report["nodes"].items():
        for result in entry["results"]:
            if result["check"] == check:
                for pair in result["data"].get("pairs", []):
                    out[(node, pair["target"])] = pair
    return out


EVERY_PAIR = {(s, t) for s in NODES for t in NODES if s != t}


def print_matrix(title: str, report: dict[str, Any]) -> None:
    lane = report["network"]["iperf"]["interfaces"][DATA_IF]
    print(f"\n{title}: mean {lane['mean_gbps']} Gb/s, median {lane['median_gbps']} Gb/s")
    for src, row in lane["matrix"].items():
        print(f"  {src}: " + ", ".join(f"{dst} {gbps}" for dst, gbps in row.items()))


def test_every_pair_reachable_and_iperf_measures_every_ring_pair(api: Any, healthy: NetLab) -> None:
    ping = get(api, "/ping?format=json")
    pairs = pairs_of(ping, "ping")
    assert set(pairs) == EVERY_PAIR
    assert {p["status"] for p in pairs.values()} == {"ok"}, pairs
    assert {p["address"] for p in pairs.values()} == {healthy.data_address(n) for n in NODES}
    assert ping["network"]["ping"]["suspects"]["nodes"] == []

    report = get(api, f"/iperf?duration_s={DURATION_S}&format=json")
    print_matrix("iperf, healthy", report)
    ring = pairs_of(report, "iperf")
    assert set(ring) == EVERY_PAIR  # every ring step's pairs (n-1 steps of n pairs)
    assert {p["status"] for p in ring.values()} == {"ok"}, ring
    assert all(p["gbps"] > 0 for p in ring.values())
    assert report["network"]["iperf"]["suspects"]["nodes"] == []
    assert iperf3_processes() == []


def test_a_down_link_fails_exactly_its_pairs_and_names_the_node(api: Any, healthy: NetLab) -> None:
    healthy.set_data_link("node-c", up=False)
    report = get(api, "/ping?host=node-a,node-b,node-c,node-d&format=json")
    pairs = pairs_of(report, "ping")
    failed = {k for k, p in pairs.items() if p["status"] == "fail"}
    assert failed == {k for k in EVERY_PAIR if "node-c" in k}
    assert {p["status"] for k, p in pairs.items() if k not in failed} == {"ok"}, pairs
    assert report["network"]["ping"]["suspects"]["nodes"] == ["node-c"]
    assert report["nodes"]["node-a"]["status"] == "fail"


def test_a_slow_link_is_flagged_by_iperf_and_no_server_is_left(api: Any, healthy: NetLab) -> None:
    healthy.shape_data_link("node-b")
    report = get(api, f"/iperf?duration_s={DURATION_S}&format=json")
    print_matrix("iperf, node-b shaped to 20 Mbit/s", report)
    ring = pairs_of(report, "iperf")
    assert set(ring) == EVERY_PAIR
    slow = {k for k, p in ring.items() if p["status"] == "warn"}
    assert slow == {k for k in EVERY_PAIR if "node-b" in k}, ring
    assert report["network"]["iperf"]["suspects"]["nodes"] == ["node-b"]
    assert iperf3_processes() == []
    # Three nodes, the absolute floor: node-b is in 4 of the 6 pairs, so the run's median is slow
    # itself and only a floor in Gb/s can flag them.
    query = "duration_s=1&host=node-a,node-b,node-c&threshold_gbps=1"
    text = api.get(f"/iperf?{query}").get_data(as_text=True)
    assert "IPERF: suspect node(s): node-b" in text, text
    assert f"{DATA_IF} Average Bandwidth Gb/s" in text
    assert iperf3_processes() == []


def iperf3_binds() -> dict[int, str]:
    """pid -> the address an ``iperf3`` is bound to (``-B``), for every running iperf3."""
    found = {}
    for pid in iperf3_processes():
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            found[pid] = argv[argv.index("-B") + 1] if "-B" in argv else ""
    return found


# Last in the module: it kills node-d's worker for good.
def test_a_worker_sigkilled_mid_ring_is_named_and_the_others_stop_their_servers(
    api: Any, healthy: NetLab, workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    answer: dict[str, Any] = {}

    def run_ring() -> None:
        answer["report"] = api.get(f"/iperf?duration_s={DURATION_S}&format=json").get_json()

    ring = threading.Thread(target=run_ring, daemon=True)
    ring.start()
    victim = healthy.data_address("node-d")
    # Once every node's servers listen, the ring is under way: kill node-d's worker, group and all.
    wait_until(lambda: victim in iperf3_binds().values(), 30, "node-d's iperf3 servers")
    time.sleep(DURATION_S / 2)
    os.killpg(workers["node-d"].pid, signal.SIGKILL)
    ring.join(180)
    assert not ring.is_alive(), "the ring never answered after a worker was killed"
    report = answer["report"]
    assert report["complete"] is True
    # the coordinator answers for the dead node too: its pairs could not run
    assert report["nodes"]["node-d"]["status"] in ("unreachable", "error", "fail"), report["nodes"]["node-d"]
    # Pairs measured before the kill were fine, so node-d is not bad on every pair: the suspects
    # are the pairs that failed, and every one of them involves node-d.
    suspects = report["network"]["iperf"]["suspects"]
    blamed = suspects["nodes"] or [p for pair in suspects["pairs"] for p in (pair["source"], pair["target"])]
    assert blamed and all("node-d" in (pair["source"], pair["target"]) for pair in suspects["pairs"]), suspects
    for node in ("node-a", "node-b", "node-c"):
        assert report["nodes"][node]["status"] in ("ok", "warn", "fail"), report["nodes"][node]
    # Every live node stopped its servers; only the dead worker's may remain, and those end at
    # their lifetime under coreutils timeout (tests/integration/test_fault_ring.py waits for that).
    left = iperf3_binds()
    assert set(left.values()) <= {victim}, left
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class InNamespace:
    """The real command seam, each command run inside one network namespace (``ip netns exec``)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.inner = SubprocessRunner()

    def which(self, name: str) -> str | None:
        return self.inner.which(name)

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        return self.inner.run(["ip", "netns", "exec", self.namespace, *argv], timeout=timeout, env=env)


def test_a_1500_port_on_a_jumbo_path_passes_small_pings_and_fails_the_mtu_probe_naming_the_pair() -> None:
    """Its own namespaces, apart from the module's lab: a switch (a bridge in a namespace of its own,
    so no address or bridge touches the machine's) whose ports to node-a and node-b are at 9000 and
    whose port to node-c is at 1500, every node's interface at 9000; and node-d, whose own interface
    is at 1500. Addresses live only inside the namespaces."""
    require_binary("ip")
    require_binary("ping")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    suffix = f"{os.getpid() % 1000:03d}{secrets.token_hex(1)}"
    nodes = ("node-a", "node-b", "node-c", "node-d")
    spaces = {n: f"apm{suffix}-{i}" for i, n in enumerate(nodes)}
    switch = f"apm{suffix}-sw"
    port_mtu = {"node-a": 9000, "node-b": 9000, "node-c": 1500, "node-d": 9000}
    own_mtu = {"node-a": 9000, "node-b": 9000, "node-c": 9000, "node-d": 1500}
    address = {n: f"{DATA_NET}.{101 + i}" for i, n in enumerate(nodes)}
    created: list[str] = []
    try:
        for ns in (switch, *spaces.values()):
            netns_ip("netns", "add", ns)
            created.append(ns)
        netns_ip("-n", switch, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        netns_ip("-n", switch, "link", "set", "br0", "mtu", "9000", "up")
        for i, node in enumerate(nodes):
            ns, port = spaces[node], f"p{i}"
            netns_ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", DATA_IF, "netns", ns)
            netns_ip("-n", switch, "link", "set", port, "mtu", str(port_mtu[node]), "master", "br0", "up")
            netns_ip("-n", ns, "link", "set", "lo", "up")
            netns_ip("-n", ns, "link", "set", DATA_IF, "mtu", str(own_mtu[node]), "up")
            netns_ip("-n", ns, "addr", "add", f"{address[node]}/24", "dev", DATA_IF)
        directory = StaticPeers(Peer(n, DATA_IF, address[n]) for n in nodes)
        checks = registry.shipped()

        def ping_from(node: str, among: Sequence[str], **params: Any) -> CheckResult:
            settings = config.Settings(node_name=node, network_interfaces=(DATA_IF,))
            ctx = CheckContext(
                node, settings, InNamespace(spaces[node]), FakeTelemetry([]), peers=directory, checks=checks
            )
            result = execution.run_check("ping", ctx, {"nodes": ",".join(among), "count": 2, **params})
            return dataclasses.replace(result, node=node)

        three = ("node-a", "node-b", "node-c")
        # the default ping: every pair answers, the 1500 port unseen
        plain = ping_from("node-a", three)
        assert plain.status is Status.OK, plain.summary
        found = {n: ping_from(n, three, mtu=9000) for n in three}
        a = found["node-a"]
        by_id = {d.id: d for d in a.devices}
        assert by_id["node-b/data0"].status is Status.OK, by_id  # the clean 9000 path passes
        assert by_id["node-c/data0"].status is Status.FAIL and "drops larger frames" in by_id["node-c/data0"].detail
        assert a.data["mtu_faults"] == ["node-c"] and a.data["unreachable"] == []
        assert a.data["local_mtus"] == {DATA_IF: 9000}
        assert found["node-b"].data["mtu_faults"] == ["node-c"]
        assert found["node-c"].data["mtu_faults"] == ["node-a", "node-b"]  # its frames vanish at its port too
        # the fleet names node-c, the node behind the port, as it names a node whose link is down
        assert network.fleet_suspects(found) == {"node-c"}
        # node-d's own interface at 1500: its kernel refuses full-size packets, its own finding
        d = ping_from("node-d", ("node-a", "node-b", "node-d"), mtu=9000)
        mine = {x.id: x for x in d.devices}
        assert mine["node-d/data0"].status is Status.FAIL and mine["node-d/data0"].value == 1500, d.summary
        assert all(mine[f"{n}/data0"].status is Status.OK for n in ("node-a", "node-b")), d.summary
        assert {p["mtu_fault"] for p in d.data["pairs"]} == {"local"}
    finally:
        for ns in reversed(created):
            with contextlib.suppress(Exception):
                netns_ip("netns", "del", ns, check=False)
