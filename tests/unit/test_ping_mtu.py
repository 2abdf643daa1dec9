"""``ping``'s opt-in path MTU probe: full-size Don't-Fragment pings, this node's own short interface,
and the attribution of a port left at 1500 to its node. Outputs are iputils' (20221126, as printed on
this project's lab namespaces), busybox's usage error, and the ICMP lines of iputils' source."""

from __future__ import annotations

import dataclasses
import json

import pytest

from autopilot import config, errors, execution, network
from autopilot.checks import ping
from autopilot.commands import CommandResult
from autopilot.peers import Peer, StaticPeers
from autopilot.registry import shipped
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeRunner
from tests.unit.api_helpers import make_api

MTU = 9000
ANSWERED = """PING {a} ({a}) 56(84) bytes of data.

--- {a} ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 2041ms
rtt min/avg/max/mdev = 0.045/0.061/0.082/0.015 ms
"""
SILENT = """PING {a} ({a}) 56(84) bytes of data.

--- {a} ping statistics ---
3 packets transmitted, 0 received, 100% packet loss, time 2044ms
"""
FULL_ANSWERED = """PING {a} ({a}) 8972(9000) bytes of data.
8980 bytes from {a}: icmp_seq=1 ttl=64 time=0.061 ms
8980 bytes from {a}: icmp_seq=2 ttl=64 time=0.052 ms
8980 bytes from {a}: icmp_seq=3 ttl=64 time=0.049 ms

--- {a} ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 2030ms
rtt min/avg/max/mdev = 0.049/0.054/0.061/0.005 ms
"""
FULL_SILENT = """PING {a} ({a}) 8972(9000) bytes of data.

--- {a} ping statistics ---
3 packets transmitted, 0 received, 100% packet loss, time 2044ms

"""
# A router between 9000 and 1500 links answers ICMP "fragmentation needed"; later packets meet the
# kernel's cached path MTU.
FRAG_NEEDED = """PING {a} ({a}) 8972(9000) bytes of data.
From 192.0.2.254 icmp_seq=1 Frag needed and DF set (mtu = 1500)

--- {a} ping statistics ---
3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2031ms

"""
FRAG_NEEDED_ERR = "ping: local error: message too long, mtu=1500\nping: local error: message too long, mtu=1500\n"
# This node's own interface at 1500: the kernel refuses the first packet, ping gives up after it.
LOCAL_OUT = """PING {a} ({a}) 8972(9000) bytes of data.

--- {a} ping statistics ---
1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms

"""
LOCAL_ERR = (
    "ping: local error: message too long, mtu=1500\n"
    "ping: sendmsg: No buffer space available\nping: sendmsg: No buffer space available\n"
)
BUSYBOX_NO_M = (
    "ping: invalid option -- 'M'\nBusyBox v1.36.1 (2023-07-27 17:12:24 UTC) multi-call binary.\n\n"
    "Usage: ping [OPTIONS] HOST\n"
)

PEERS = [
    Peer("node-b", "eth1", "192.0.2.2"),  # clean 9000 path
    Peer("node-c", "eth1", "192.0.2.3"),  # a 1500 port on the way: full-size frames vanish
    Peer("node-d", "eth1", "192.0.2.4"),  # down
    Peer("node-e", "eth1", "192.0.2.5"),  # behind a router to a 1500 link
]


def ip_link(**mtus: int) -> str:
    links = [{"ifindex": 1, "ifname": "lo", "mtu": 65536}]
    links += [{"ifindex": i + 2, "ifname": name, "mtu": mtu} for i, (name, mtu) in enumerate(mtus.items())]
    return json.dumps(links)


def runner(
    small: dict[str, tuple[int, str]], full: dict[str, tuple[int, str, str]], *, links: str | None = None
) -> FakeRunner:
    """Small pings and full-size probes answered per address; a probe not listed is never expected
    (the fake runner fails the test on an unknown command)."""
    fake = FakeRunner()
    for address, (rc, out) in small.items():
        fake.add(ping.ping_argv(address, 3, 1.0), out.format(a=address), returncode=rc)
    for address, (rc, out, err) in full.items():
        fake.add(ping.df_ping_argv(address, 3, 1.0, MTU), out.format(a=address), returncode=rc, stderr=err)
    if links is not None:
        fake.add(["ip", "-j", "link", "show"], links)
    return fake


def test_the_probe_fills_the_mtu_exactly_with_dont_fragment() -> None:
    v4 = ping.df_ping_argv("192.0.2.2", 3, 1.0, 9000)
    v6 = ping.df_ping_argv("2001:db8::2", 3, 1.0, 9000)
    assert v4[v4.index("-M") + 1] == "do" and v4[v4.index("-s") + 1] == "8972"  # 9000 - 20 IP - 8 ICMP
    assert v6[v6.index("-s") + 1] == "8952"  # 9000 - 40 IPv6 - 8 ICMPv6
    assert "-c" in v4 and "-w" in v4 and v4[-1] == "192.0.2.2"


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        (LOCAL_ERR, network.DfPing(local_too_long=True, local_mtu=1500)),
        ("ping: local error: Message too long, mtu=1400\n", network.DfPing(local_too_long=True, local_mtu=1400)),
        ("ping: sendmsg: Message too long\n", network.DfPing(local_too_long=True)),
        (FRAG_NEEDED.format(a="192.0.2.5"), network.DfPing(hop="192.0.2.254", hop_mtu=1500)),
        (
            "From 2001:db8:100::64 icmp_seq=1 Packet too big: mtu=1300\n",
            network.DfPing(hop="2001:db8:100::64", hop_mtu=1300),
        ),
        (BUSYBOX_NO_M, network.DfPing(no_df=True)),
        (FULL_SILENT.format(a="192.0.2.3"), network.DfPing()),
    ],
)
def test_df_ping_output_is_read_for_its_mtu_evidence(said: str, expected: network.DfPing) -> None:
    assert network.parse_df_ping(said) == expected


def test_ip_link_json_gives_each_interface_mtu() -> None:
    assert network.parse_ip_link_mtus(ip_link(eth0=1500, eth1=9000)) == {"lo": 65536, "eth0": 1500, "eth1": 9000}
    assert network.parse_ip_link_mtus('[{"ifname": "x"}, {"mtu": 9000}, 3]') == {}
    with pytest.raises(errors.ParseError):
        network.parse_ip_link_mtus("Device not found")


def test_a_pair_that_answers_small_pings_but_not_full_size_ones_fails_as_a_path_mtu_fault(make_ctx) -> None:  # type: ignore[no-untyped-def]
    fake = runner(
        {
            "192.0.2.2": (0, ANSWERED),
            "192.0.2.3": (0, ANSWERED),
            "192.0.2.4": (1, SILENT),  # no full-size probe is sent to a down peer
            "192.0.2.5": (0, ANSWERED),
        },
        {
            "192.0.2.2": (0, FULL_ANSWERED, ""),
            "192.0.2.3": (1, FULL_SILENT, ""),
            "192.0.2.5": (1, FRAG_NEEDED, FRAG_NEEDED_ERR),
        },
        links=ip_link(eth0=1500, eth1=9000),
    )
    ctx = make_ctx(commands=fake, peers=StaticPeers(PEERS))
    result = execution.run_check("ping", ctx, {"mtu": MTU})
    by_id = {d.id: d for d in result.devices}
    assert {k: d.status for k, d in by_id.items()} == {
        "node-b/eth1": Status.OK,
        "node-c/eth1": Status.FAIL,
        "node-d/eth1": Status.FAIL,
        "node-e/eth1": Status.FAIL,
    }
    assert "drops larger frames" in by_id["node-c/eth1"].detail
    assert "path MTU 1500 < 9000" in by_id["node-e/eth1"].detail and "192.0.2.254" in by_id["node-e/eth1"].detail
    assert "unreachable" in by_id["node-d/eth1"].detail  # the down case, as before
    assert result.data["unreachable"] == ["node-d"] and result.data["mtu_faults"] == ["node-c", "node-e"]
    assert result.data["reached"] == ["node-b", "node-c", "node-e"]
    # only the interfaces pinged are looked at: eth0 at 1500 is another network's business
    assert result.data["local_mtus"] == {"eth1": 9000}
    pairs = {p["target"]: p for p in result.data["pairs"]}
    assert pairs["node-c"]["status"] == "fail" and pairs["node-c"]["mtu_fault"] == "path"
    assert pairs["node-e"]["path_mtu"] == 1500
    assert pairs["node-b"]["status"] == "ok" and pairs["node-b"]["mtu_status"] == "ok"


def test_this_nodes_short_interface_is_its_own_finding_not_a_peer_down(make_ctx) -> None:  # type: ignore[no-untyped-def]
    fake = runner(
        {"192.0.2.2": (0, ANSWERED), "192.0.2.3": (0, ANSWERED)},
        {"192.0.2.2": (1, LOCAL_OUT, LOCAL_ERR), "192.0.2.3": (1, LOCAL_OUT, LOCAL_ERR)},
        links=ip_link(eth1=1500),
    )
    ctx = make_ctx(commands=fake, peers=StaticPeers(PEERS[:2]))
    result = execution.run_check("ping", ctx, {"mtu": MTU})
    by_id = {d.id: d for d in result.devices}
    assert by_id["node-a/eth1"].status is Status.FAIL and by_id["node-a/eth1"].value == 1500
    assert "eth1 has MTU 1500, below the expected 9000" in by_id["node-a/eth1"].detail
    # the peers answered: their devices blame no one, and say why no full-size packet went
    for peer in ("node-b/eth1", "node-c/eth1"):
        assert by_id[peer].status is Status.OK and "its own finding" in by_id[peer].detail
    assert result.status is Status.FAIL and "node-a/eth1" in result.summary
    # named as this node's interface, not as a peer
    assert "interface node-a/eth1: " in result.summary and "peer node-a" not in result.summary
    # and still so once its failed pairs to a suspect of the fleet are set aside: node-b down, here
    down = CommandResult(("ping",), 1, SILENT.format(a="192.0.2.2"), "")
    up = CommandResult(("ping",), 0, ANSWERED.format(a="192.0.2.3"), "")
    probe = CommandResult(("ping",), 1, LOCAL_OUT.format(a="192.0.2.3"), LOCAL_ERR)
    found = ping.evaluate(
        [(PEERS[0], down), (PEERS[1], up)], mtu=MTU, df_replies=[None, probe], short={"eth1": 1500}, node="node-a"
    )
    excused = network.excuse_ping(dataclasses.replace(found, node="node-a"), {"node-b"})
    assert excused.data["excused"] == ["node-b"] and excused.status is Status.FAIL
    assert excused.summary.startswith("interface node-a/eth1: ") and "peer node-a" not in excused.summary
    assert result.data["unreachable"] == []
    # the pairs still cannot carry full-size frames: bad for the fleet's attribution, which names this node
    assert {p["status"] for p in result.data["pairs"]} == {"fail"}
    assert {p["mtu_fault"] for p in result.data["pairs"]} == {"local"}


def test_a_ping_that_cannot_set_dont_fragment_is_an_error_never_a_pass(make_ctx) -> None:  # type: ignore[no-untyped-def]
    fake = runner({"192.0.2.2": (0, ANSWERED)}, {"192.0.2.2": (1, "", BUSYBOX_NO_M)}, links=ip_link(eth1=9000))
    result = execution.run_check("ping", make_ctx(commands=fake, peers=StaticPeers(PEERS[:1])), {"mtu": MTU})
    assert result.status is Status.ERROR
    assert "cannot set Don't-Fragment" in result.summary and "invalid option" in result.summary


def test_a_full_size_probe_past_its_deadline_fails_and_unreadable_local_mtus_are_noted(make_ctx) -> None:  # type: ignore[no-untyped-def]
    fake = runner({"192.0.2.2": (0, ANSWERED)}, {})
    fake.add(ping.df_ping_argv("192.0.2.2", 3, 1.0, MTU), raises="timeout")
    result = execution.run_check("ping", make_ctx(commands=fake, peers=StaticPeers(PEERS[:1])), {"mtu": MTU})
    assert result.status is Status.FAIL and "unanswered before the deadline" in result.summary
    assert result.data["local_mtus"] is None and result.data["local_mtus_unread"] == "ip not found on PATH"


def test_each_small_ping_is_read_once_for_its_probe_and_its_verdict(make_ctx, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Before, an answered small ping's output was parsed to decide on its full-size probe, then again
    # for the pair's verdict. Every output is read once now: small pings once each, probes once each.
    fake = runner(
        {"192.0.2.2": (0, ANSWERED), "192.0.2.3": (0, ANSWERED), "192.0.2.4": (1, SILENT)},
        {"192.0.2.2": (0, FULL_ANSWERED, ""), "192.0.2.3": (1, FULL_SILENT, "")},
        links=ip_link(eth1=9000),
    )
    read: list[str] = []
    real = network.parse_ping

    def counted(stdout: str) -> network.PingStats:
        read.append(stdout)
        return real(stdout)

    monkeypatch.setattr(network, "parse_ping", counted)
    result = execution.run_check("ping", make_ctx(commands=fake, peers=StaticPeers(PEERS[:3])), {"mtu": MTU})
    assert {d.id: d.status for d in result.devices} == {
        "node-b/eth1": Status.OK,
        "node-c/eth1": Status.FAIL,
        "node-d/eth1": Status.FAIL,
    }
    small = [ANSWERED.format(a="192.0.2.2"), ANSWERED.format(a="192.0.2.3"), SILENT.format(a="192.0.2.4")]
    assert sorted(o for o in read if o in small) == sorted(small)
    assert len(read) == 5  # three small pings and two full-size probes


def test_why_local_mtus_are_unread_is_part_of_what_evaluate_folds() -> None:
    replies = [(PEERS[0], CommandResult(("ping",), 0, ANSWERED.format(a="192.0.2.2"), ""))]
    probe = CommandResult(("ping",), 0, FULL_ANSWERED.format(a="192.0.2.2"), "")
    found = ping.evaluate(replies, mtu=MTU, df_replies=[probe], node="node-a", local_mtus_unread="ip not found on PATH")
    assert found.status is Status.OK
    assert found.data["local_mtus"] is None and found.data["local_mtus_unread"] == "ip not found on PATH"
    # read, nothing to say: no key; without an MTU there is no MTU data at all
    assert "local_mtus_unread" not in ping.evaluate(replies, mtu=MTU, df_replies=[probe], local_mtus={}).data
    assert "local_mtus_unread" not in ping.evaluate(replies, local_mtus_unread="ignored").data


def test_without_an_mtu_nothing_changes(make_ctx) -> None:  # type: ignore[no-untyped-def]
    fake = runner({"192.0.2.2": (0, ANSWERED)}, {})  # a full-size probe or an ip call would fail the test
    result = execution.run_check("ping", make_ctx(commands=fake, peers=StaticPeers(PEERS[:1])))
    assert result.status is Status.OK and "mtu" not in result.data
    assert [c[0] for c in fake.calls] == ["ping"]


def test_the_setting_is_the_default_and_the_parameter_replaces_it(make_ctx, settings) -> None:  # type: ignore[no-untyped-def]
    fake = runner({"192.0.2.2": (0, ANSWERED)}, {"192.0.2.2": (0, FULL_ANSWERED, "")}, links=ip_link(eth1=9000))
    on = dataclasses.replace(settings, ping_mtu=MTU)
    result = execution.run_check("ping", make_ctx(settings=on, commands=fake, peers=StaticPeers(PEERS[:1])))
    assert result.status is Status.OK and result.data["mtu"] == MTU and "9000-byte packets pass" in result.summary
    fake.calls.clear()
    off = execution.run_check("ping", make_ctx(settings=on, commands=fake, peers=StaticPeers(PEERS[:1])), {"mtu": 0})
    assert off.status is Status.OK and [c[0] for c in fake.calls] == ["ping"]


@pytest.mark.parametrize("bad", ["100", "575", "65536", "-1", "9k"])
def test_an_mtu_outside_0_or_576_to_65535_is_refused(bad: str) -> None:
    spec = shipped().get("ping")
    mtu = next(p for p in spec.params if p.name == "mtu")
    with pytest.raises(errors.BadParameter, match="mtu"):
        mtu.parse(bad)
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_PING_MTU"):
        config.Settings.from_env({"AUTOPILOT_PING_MTU": bad})
    assert mtu.parse("0") == 0 and mtu.parse("9000") == 9000
    assert config.Settings.from_env({"AUTOPILOT_PING_MTU": "4200"}).ping_mtu == 4200


FLEET = ("gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4", "gpu-5")


def test_one_port_left_at_1500_is_named_as_its_nodes_finding_like_a_down_link() -> None:
    def result_of(node: str) -> CheckResult:
        replies, probes = [], []
        for i, other in enumerate(FLEET):
            if other == node:
                continue
            address = f"192.0.2.{i + 1}"
            replies.append((Peer(other, "eth1", address), CommandResult(("ping",), 0, ANSWERED.format(a=address), "")))
            through = "gpu-3" in (node, other)  # gpu-3's switch port is at 1500: full-size frames vanish
            out = FULL_SILENT if through else FULL_ANSWERED
            probes.append(CommandResult(("ping",), int(through), out.format(a=address), ""))
        found = ping.evaluate(replies, mtu=MTU, df_replies=probes, node=node, local_mtus={"eth1": 9000})
        return dataclasses.replace(found, node=node)

    fleet = {node: result_of(node) for node in FLEET}
    assert fleet["gpu-1"].status is Status.FAIL
    suspects = network.fleet_suspects(fleet)
    assert suspects == {"gpu-3"}
    assert network.excuse_ping(fleet["gpu-1"], suspects).status is Status.OK
    assert network.excuse_ping(fleet["gpu-3"], suspects).status is Status.FAIL


def test_the_api_refuses_a_bad_mtu_naming_it_and_carries_a_good_one_to_the_nodes() -> None:
    api = make_api(checks=shipped(), deadline_s=0.2)
    response = api.client.get("/ping?host=node-a&mtu=100&format=json")
    assert response.status_code == 400 and response.get_json()["field"] == "mtu"
    assert api.dispatcher.sent == []
    api.client.get("/ping?host=node-a&mtu=9000&format=json")
    assert [e.params["ping"]["mtu"] for e in api.dispatcher.sent] == [9000]
