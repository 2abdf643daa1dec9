"""Interface discovery for the network checks: the Multus network-status annotation (both
shapes), merging it with ``ip addr``, the store-backed peer directory, and hosted contexts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fakeredis
import pytest

from autopilot import config, errors, nodeinfo
from autopilot.context import CheckContext
from autopilot.peers import Peer
from autopilot.registry import shipped as shipped_checks
from autopilot.testing import FakeRunner, FakeTelemetry
from workers.host import NodeHost
from workers.peers import StorePeers
from workers.store import NodeRecord, ResultsStore

# One entry per NIC (multi-nic-cni style names), with the primary network first.
PER_NIC = [
    {"name": "k8s-pod-network", "ips": ["10.128.2.10"], "default": True, "dns": {}},
    {"name": "autopilot/multi-nic", "interface": "net1-0", "ips": ["192.0.2.10"], "mac": "aa:bb:cc:00:00:01"},
    {"name": "autopilot/multi-nic", "interface": "net1-1", "ips": ["198.51.100.10"], "mac": "aa:bb:cc:00:00:02"},
]
# One entry holding several IPs (what upstream's iperf assumed), primary with an interface name.
ONE_ENTRY = [
    {"name": "ovn-kubernetes", "interface": "eth0", "ips": ["10.128.2.11"], "default": True},
    {"name": "autopilot/multi-nic", "interface": "net1", "ips": ["192.0.2.11", "198.51.100.11"]},
]


def annotations_file(tmp_path: Path, status: object) -> Path:
    # The downward API writes key="value" lines, the value quoted like Go's %q.
    path = tmp_path / "annotations"
    path.write_text(
        'kubernetes.io/config.seen="2026-11-29T22:00:00Z"\n'
        f"{nodeinfo.NETWORK_STATUS}={json.dumps(json.dumps(status, indent=4))}\n"
        'other="a=b"\n'
    )
    return path


def test_per_nic_shape_and_entries_without_interface(tmp_path: Path) -> None:
    assert nodeinfo.read_network_status(str(annotations_file(tmp_path, PER_NIC))) == {
        "k8s-pod-network": ["10.128.2.10"],
        "net1-0": ["192.0.2.10"],
        "net1-1": ["198.51.100.10"],
    }


def test_one_entry_with_several_ips(tmp_path: Path) -> None:
    assert nodeinfo.read_network_status(str(annotations_file(tmp_path, ONE_ENTRY))) == {
        "eth0": ["10.128.2.11"],
        "net1": ["192.0.2.11", "198.51.100.11"],
    }


def test_annotations_file_absent_or_broken_is_ignored(tmp_path: Path) -> None:
    assert nodeinfo.read_network_status(str(tmp_path / "missing")) == {}
    (tmp_path / "bad").write_text(f'{nodeinfo.NETWORK_STATUS}="not json"\n')
    assert nodeinfo.read_network_status(str(tmp_path / "bad")) == {}
    with pytest.raises(errors.ParseError):
        nodeinfo.parse_network_status('{"interface": "net1"}')
    with pytest.raises(errors.ParseError):
        nodeinfo.parse_network_status('[{"interface": "net1", "ips": "192.0.2.1"}]')


def test_parse_annotations_reads_go_quoting() -> None:
    text = 'a="x\\"y\\nz"\nb=plain\nnonsense\nc="unterminated\n'
    assert nodeinfo.parse_annotations(text) == {"a": 'x"y\nz', "b": "plain"}


def test_merge_renames_by_the_annotation_and_keeps_the_rest() -> None:
    local = {"eth0": ["10.128.2.10"], "net1": ["192.0.2.10"], "net2": ["198.51.100.10"], "docker0": ["172.17.0.1"]}
    annotated = {"k8s-pod-network": ["10.128.2.10"], "net1-0": ["192.0.2.10"], "net1-1": ["198.51.100.10"]}
    assert nodeinfo.merge_addresses(local, annotated) == {
        "docker0": ["172.17.0.1"],
        "k8s-pod-network": ["10.128.2.10"],
        "net1-0": ["192.0.2.10"],
        "net1-1": ["198.51.100.10"],
    }


IP_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "scope": "host"}]},
        {"ifname": "eth0", "addr_info": [{"local": "10.128.2.10", "scope": "global"}]},
        {
            "ifname": "net1",
            "addr_info": [{"local": "192.0.2.10", "scope": "global"}, {"local": "fe80::1", "scope": "link"}],
        },
    ]
)


def test_collect_merges_the_annotation_into_the_addresses(tmp_path: Path) -> None:
    runner = FakeRunner()
    runner.add(["ip", "-j", "addr", "show"], IP_JSON)
    path = annotations_file(tmp_path, [PER_NIC[0], {"interface": "net1-0", "ips": ["192.0.2.10"]}])
    facts = nodeinfo.collect(runner, FakeTelemetry(), cpuinfo_path=str(tmp_path / "none"), annotations_path=str(path))
    assert facts.addresses == {"k8s-pod-network": ["10.128.2.10"], "net1-0": ["192.0.2.10"]}
    plain = nodeinfo.collect(runner, FakeTelemetry(), annotations_path=str(tmp_path / "none"))
    assert plain.addresses == {"eth0": ["10.128.2.10"], "net1": ["192.0.2.10"]}


def test_ip_addr_json_with_empty_objects_gives_only_real_addresses() -> None:
    # iproute2 4.20 (Debian 10) prints empty objects among the links (greshake/i3status-rust#997);
    # an address entry without "local" was read as the address "None".
    text = json.dumps(
        [
            {},
            {
                "ifindex": 2,
                "ifname": "eth0",
                "addr_info": [{}, {"family": "inet", "local": "10.0.0.5", "scope": "global"}],
            },
            {},
            {"ifindex": 3, "ifname": "net1", "addr_info": [{"family": "inet6", "local": "fe80::1", "scope": "link"}]},
        ]
    )
    assert nodeinfo.parse_ip_addr_json(text) == {"eth0": ["10.0.0.5"]}
    with pytest.raises(ValueError):
        nodeinfo.parse_ip_addr_json('{"ifname": "eth0"}')


def test_setting_names_the_annotations_file() -> None:
    assert config.Settings().podinfo_annotations == "/etc/podinfo/annotations"
    s = config.Settings.from_env({"AUTOPILOT_PODINFO_ANNOTATIONS": "/run/podinfo/annotations"})
    assert s.podinfo_annotations == "/run/podinfo/annotations"


# ------------------------------------------------------------------ StorePeers and the host


def store_with(records: list[NodeRecord]) -> ResultsStore:
    store = ResultsStore(fakeredis.FakeRedis())
    store.heartbeat_many(records)
    return store


def test_store_peers_live_nodes_without_loopback() -> None:
    now = time.time()
    store = store_with(
        [
            NodeRecord("node-a", {"lo": ["127.0.0.1"], "data0": ["192.0.2.1"]}, last_seen=now),
            NodeRecord("node-b", {"data0": ["192.0.2.2", "::1"], "ctl0": ["198.51.100.2"]}, last_seen=now),
            NodeRecord("node-old", {"data0": ["192.0.2.9"]}, last_seen=now - 3600),
        ]
    )
    directory = StorePeers(store, config.Settings(heartbeat_interval_s=15))
    assert directory.peers() == [
        Peer("node-a", "data0", "192.0.2.1"),
        Peer("node-b", "data0", "192.0.2.2"),
        Peer("node-b", "ctl0", "198.51.100.2"),
    ]
    # named nodes are returned live or not: a dead node that was asked for must show as a failure
    assert directory.peers(["node-old"]) == [Peer("node-old", "data0", "192.0.2.9")]
    assert directory.peers(["ghost"]) == []


def test_node_host_gives_every_context_a_peer_directory() -> None:
    store = store_with([NodeRecord("node-a", {"data0": ["192.0.2.1"]}, last_seen=time.time())])
    settings = config.Settings(node_name="node-a")
    ctx = CheckContext("node-a", settings, FakeRunner(), FakeTelemetry(), checks=shipped_checks())
    host = NodeHost(settings, store, {"node-a": ctx})
    hosted = host.context("node-a")
    assert hosted is not None and isinstance(hosted.peers, StorePeers)
    assert hosted.peers.peers() == [Peer("node-a", "data0", "192.0.2.1")]
