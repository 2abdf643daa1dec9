"""Network parsers, the ring schedule, localisation, and the ping check over fakes."""

from __future__ import annotations

import dataclasses

import pytest

from autopilot import errors, execution, network
from autopilot.checks import ping
from autopilot.commands import CommandResult
from autopilot.peers import Peer, StaticPeers
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeRunner
from tests.conftest import sample_text

OK_PING = """PING 192.0.2.2 (192.0.2.2) 56(84) bytes of data.

--- 192.0.2.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 2041ms
rtt min/avg/max/mdev = 0.045/0.061/0.082/0.015 ms
"""
LOSSY_PING = """--- 192.0.2.3 ping statistics ---
3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms
rtt min/avg/max/mdev = 0.050/0.070/0.090/0.020 ms
"""
DEAD_PING = """--- 192.0.2.4 ping statistics ---
3 packets transmitted, 0 received, 100% packet loss, time 2050ms
"""
BUSYBOX_PING = """--- 192.0.2.5 ping statistics ---
3 packets transmitted, 3 packets received, 0% packet loss
round-trip min/avg/max = 0.1/0.2/0.3 ms
"""


def test_parse_ping_variants() -> None:
    assert network.parse_ping(OK_PING) == network.PingStats(3, 3, 0.0, 0.061, 0.082)
    assert network.parse_ping(LOSSY_PING).loss_pct == pytest.approx(33.3333)
    assert network.parse_ping(DEAD_PING).received == 0
    assert network.parse_ping(BUSYBOX_PING).received == 3
    with pytest.raises(errors.ParseError):
        network.parse_ping("ping: connect: Network is unreachable\n")


# Summary lines typed from the printf calls that write them: iputils ping_common.c finish()
# (https://github.com/iputils/iputils, "+N duplicates", "+N corrupted", "+N errors" in that order,
# then "pipe N" after the rtt line), busybox networking/ping.c ("N duplicates" without "+", rtt
# min/avg/max with no deviation) and GNU inetutils ping ("round-trip min/avg/max/stddev").
@pytest.mark.parametrize(
    "summary, expected",
    [
        (
            "5 packets transmitted, 3 received, +2 duplicates, +1 errors, 40% packet loss, time 4005ms\n"
            "rtt min/avg/max/mdev = 0.045/0.061/0.082/0.015 ms, pipe 2\n",
            network.PingStats(5, 3, 40.0, 0.061, 0.082),
        ),
        (
            "4 packets transmitted, 4 received, +1 corrupted, 0% packet loss, time 3004ms\n"
            "rtt min/avg/max/mdev = 0.040/0.050/0.060/0.008 ms\n",
            network.PingStats(4, 4, 0.0, 0.05, 0.06),
        ),
        (
            "3 packets transmitted, 3 packets received, 2 duplicates, 0% packet loss\n"
            "round-trip min/avg/max = 0.050/0.060/0.070 ms\n",
            network.PingStats(3, 3, 0.0, 0.06, 0.07),
        ),
        (
            "3 packets transmitted, 3 packets received, 0% packet loss\n"
            "round-trip min/avg/max/stddev = 0.050/0.060/0.070/0.008 ms\n",
            network.PingStats(3, 3, 0.0, 0.06, 0.07),
        ),
    ],
    ids=["iputils-duplicates-errors-pipe", "iputils-corrupted", "busybox-duplicates", "inetutils-stddev"],
)
def test_parse_ping_reads_every_counter_layout(summary: str, expected: network.PingStats) -> None:
    assert network.parse_ping(f"--- 192.0.2.9 ping statistics ---\n{summary}") == expected


def test_a_ping_answered_with_duplicates_is_reachable_not_an_error() -> None:
    out = CommandResult(
        ("ping",),
        0,
        "--- 192.0.2.9 ping statistics ---\n"
        "3 packets transmitted, 3 received, +1 duplicates, 0% packet loss, time 2003ms\n"
        "rtt min/avg/max/mdev = 0.045/0.061/0.082/0.015 ms\n",
        "",
    )
    assert ping.judge_reply(out)[0] is Status.OK
    bare = dataclasses.replace(out, stdout="3 packets transmitted, 3 packets received, 0% packet loss\n")
    assert ping.judge_reply(bare)[:3] == (Status.OK, 0.0, "3 of 3 answered")


def test_iperf3_tcp_and_udp_samples_are_read_in_bits_per_second() -> None:
    tcp = network.parse_iperf3(sample_text("iperf3-J_tcp_success_iperf3.9.json.txt"))
    assert tcp.protocol == "TCP"
    assert tcp.received_bps == pytest.approx(141609919.74312118)
    assert tcp.gbps == pytest.approx(0.1416, abs=1e-4)
    assert tcp.retransmits == 1264
    udp = network.parse_iperf3(sample_text("iperf3-J_udp_success_iperf3.9.json.txt"))
    assert udp.protocol == "UDP" and udp.lost_percent == 0
    assert udp.sent_bps == pytest.approx(1048569.7085817485)


@pytest.mark.parametrize(
    "sample, words",
    [
        ("iperf3-J_error_connection-refused.json.txt", "unable to connect to server: Connection refused"),
        ("iperf3-J_error_auth-failed.json.txt", "test authorization failed"),
    ],
)
def test_iperf3_errors_carry_iperf3_message(sample: str, words: str) -> None:
    with pytest.raises(errors.ToolError, match=words):
        network.parse_iperf3(sample_text(sample))


# iperf3 --json-stream (3.16+): one event per line instead of one document, in the form of the
# example in esnet/iperf#1098; written by hand, figures ours.
_STREAM_START = '{"event":"start","data":{"version":"iperf 3.17","test_start":{"protocol":"TCP","num_streams":1}}}'
_STREAM_INTERVAL = '{"event":"interval","data":{"sum":{"start":0,"end":1,"bits_per_second":9.1e9,"sender":true}}}'
_STREAM_END = (
    '{"event":"end","data":{"sum_sent":{"bits_per_second":9.41e9,"retransmits":3,"sender":true},'
    '"sum_received":{"bits_per_second":9.38e9,"sender":true}}}'
)


def test_iperf3_json_stream_is_read_from_its_end_event() -> None:
    stats = network.parse_iperf3("\n".join([_STREAM_START, _STREAM_INTERVAL, _STREAM_END]) + "\n")
    assert (stats.protocol, stats.sent_bps, stats.received_bps, stats.retransmits) == ("TCP", 9.41e9, 9.38e9, 3)


def test_iperf3_json_stream_error_or_no_end_is_not_a_measurement() -> None:
    with pytest.raises(errors.ToolError, match="Connection refused"):
        network.parse_iperf3('{"event":"error","data":"unable to connect to server: Connection refused"}\n')
    with pytest.raises(errors.ParseError, match="no end summary"):
        network.parse_iperf3("\n".join([_STREAM_START, _STREAM_INTERVAL]) + "\n")  # interrupted


def test_iperf3_garbage_is_a_parse_error() -> None:
    for text in ("", "iperf3: error - unable to connect", "[]", '{"start": {}, "end": {}}'):
        with pytest.raises(errors.ParseError):
            network.parse_iperf3(text)


def test_ring_steps_match_upstream() -> None:
    assert network.ring_steps(["a", "b", "c"]) == [
        [("a", "b"), ("b", "c"), ("c", "a")],
        [("a", "c"), ("b", "a"), ("c", "b")],
    ]
    assert network.ring_steps(["a"]) == []


def pairs_with(bad: set[tuple[str, str]], nodes: str = "abcd") -> list[network.PairResult]:
    return [network.PairResult(s, t, "eth0", (s, t) in bad) for s in nodes for t in nodes if s != t]


def test_localise_names_the_node_whose_every_pair_fails() -> None:
    bad = {(s, t) for s in "abcd" for t in "abcd" if s != t and "c" in (s, t)}
    assert network.localise(pairs_with(bad)).nodes == ("c",)


def test_localise_names_two_down_nodes_of_a_small_fleet() -> None:
    # Two of eight nodes down: every pair of each is bad, and the other's pairs make more than a
    # quarter of the pairs without it bad; the pairs among the six others are all good.
    nodes = "abcdefgh"
    bad = {(s, t) for s in nodes for t in nodes if s != t and ({s, t} & {"e", "f"})}
    assert network.localise(pairs_with(bad, nodes)).nodes == ("e", "f")


def test_localise_names_no_majority_of_nodes() -> None:
    # Three nodes, every pair bad: two may be down or one link; no node is named.
    bad = {(s, t) for s in "abc" for t in "abc" if s != t}
    assert network.localise(pairs_with(bad, "abc")).nodes == ()
    # A node whose every pair is bad only because its peers are the suspects is not named with them.
    found = [network.PairResult(s, t, "eth0", True) for s, t in (("a", "x"), ("x", "a"), ("b", "x"), ("a", "b"))]
    good = [network.PairResult(s, t, "eth0", False) for s in "cdefg" for t in "cdefg" if s != t]
    edges = [network.PairResult(s, t, "eth0", True) for s in "ab" for t in "cdefg"]
    assert network.localise(found + good + edges).nodes == ("a", "b")


def test_localise_falls_back_to_pairs() -> None:
    found = network.localise(pairs_with({("a", "b")}))
    assert found.nodes == () and found.pairs == (("a", "b", "eth0"),)
    assert network.localise(pairs_with(set())).describe() == "no suspect"
    # two nodes: a bad pair cannot tell its ends apart
    assert network.localise(pairs_with({("a", "b"), ("b", "a")}, "ab")).nodes == ()


PEERS = [
    Peer("node-a", "eth0", "192.0.2.1"),
    Peer("node-b", "eth0", "192.0.2.2"),
    Peer("node-c", "eth0", "192.0.2.3"),
    Peer("node-c", "net1", "198.51.100.3"),
    Peer("node-d", "eth0", "192.0.2.4"),
]


def runner_for(outputs: dict[str, tuple[int, str, str]]) -> FakeRunner:
    runner = FakeRunner()
    for address, (rc, out, err) in outputs.items():
        runner.add(ping.ping_argv(address, 3, 1.0), out, returncode=rc, stderr=err)
    return runner


def test_ping_check_judges_each_peer_and_interface(make_ctx) -> None:  # type: ignore[no-untyped-def]
    runner = runner_for(
        {
            "192.0.2.2": (0, OK_PING, ""),
            "192.0.2.3": (1, LOSSY_PING, ""),
            "198.51.100.3": (1, DEAD_PING, ""),
            "192.0.2.4": (2, "", "ping: connect: Network is unreachable"),
        }
    )
    ctx = make_ctx(commands=runner, peers=StaticPeers(PEERS))
    result = execution.run_check("ping", ctx)
    by_id = {d.id: d for d in result.devices}
    assert {k: v.status for k, v in by_id.items()} == {
        "node-b/eth0": Status.OK,
        "node-c/eth0": Status.WARN,
        "node-c/net1": Status.FAIL,
        "node-d/eth0": Status.FAIL,
    }
    assert result.status is Status.FAIL and not result.fatal
    assert result.data["unreachable"] == ["node-c", "node-d"]
    # its own address is never pinged, and every argv is bounded in count and time
    assert all(call[0] == "ping" and "-c" in call and "-w" in call for call in runner.calls)
    assert ping.ping_argv("192.0.2.1", 3, 1.0) not in [list(c) for c in runner.calls]


@pytest.mark.parametrize(
    "said",
    [
        "ping: connect: Network is unreachable",  # iputils (glibc)
        "ping: sendto: Network unreachable",  # busybox on musl (Alpine): no summary follows
        "ping: sendto: Host is unreachable",
    ],
)
def test_ping_refused_by_the_network_is_a_failed_link_not_a_tool_error(said: str) -> None:
    out = CommandResult(("ping",), 1, "PING 192.0.2.4 (192.0.2.4): 56 data bytes\n", said + "\n")
    status, loss, detail, _ = ping.judge_reply(out)
    assert (status, loss, detail) == (Status.FAIL, 100.0, f"unreachable: {said}")


def test_ping_check_honours_node_selection_and_errors(make_ctx) -> None:  # type: ignore[no-untyped-def]
    runner = runner_for({"192.0.2.2": (2, "", "ping: socket: Operation not permitted")})
    ctx = make_ctx(commands=runner, peers=StaticPeers(PEERS))
    result = execution.run_check("ping", ctx, {"nodes": "node-b"})
    assert [(d.id, d.status) for d in result.devices] == [("node-b/eth0", Status.ERROR)]
    assert "Operation not permitted" in result.summary
    bad = execution.run_check("ping", ctx, {"nodes": "node-b;reboot"})
    assert bad.status is Status.ERROR and "nodes" in bad.summary


def test_ping_without_peers_is_skipped(make_ctx) -> None:  # type: ignore[no-untyped-def]
    assert execution.run_check("ping", make_ctx()).status is Status.SKIPPED
    alone = make_ctx(peers=StaticPeers([Peer("node-a", "eth0", "192.0.2.1")]))
    assert execution.run_check("ping", alone).summary == "no other node to ping"


def test_ping_runs_at_most_its_limit_at_once_and_answers_in_order() -> None:
    # The pool is shared by every ping run of the process; each run still keeps to its own limit.
    import threading

    lock = threading.Lock()
    running = [0, 0]  # now, most seen
    together = threading.Barrier(3, timeout=30)  # three at once must happen: the limit is used

    def one(peer: Peer) -> errors.AutopilotError:
        with lock:
            running[0] += 1
            running[1] = max(running)
        together.wait()
        with lock:
            running[0] -= 1
        return errors.ToolError(peer.node)

    peers = [Peer(f"node-{i}", "eth0", f"192.0.2.{i}") for i in range(12)]
    answers = ping._concurrently(one, peers, 3)
    assert [str(a) for a in answers] == [p.node for p in peers]
    assert running[1] == 3


def test_a_forked_child_still_pings_on_a_pool_of_its_own() -> None:
    # The shared pool's threads stay in the parent; a child forked after pings ran gets a new pool.
    import os
    import signal

    peers = [Peer(f"node-{i}", "eth0", f"192.0.2.{i}") for i in range(4)]

    def one(peer: Peer) -> errors.AutopilotError:
        return errors.ToolError(peer.node)

    assert len(ping._concurrently(one, peers, 2)) == 4  # the parent's pool has threads now, idle
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its pings were answered (SIGALRM ends a hang)
        signal.alarm(20)
        answers = ping._concurrently(one, peers, 2)
        os._exit(0 if [str(a) for a in answers] == [p.node for p in peers] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _Instant:
    """A ``commands.InstantRunner`` over a ``FakeRunner`` that notes which thread ran each call."""

    def __init__(self, inner: FakeRunner, at_once: bool) -> None:
        self.inner = inner
        self.at_once = at_once
        self.threads: list[str] = []

    def answers_at_once(self, program: str) -> bool:
        return self.at_once

    def which(self, name: str) -> str | None:
        return self.inner.which(name)

    def run(self, argv, *, timeout, env=None):  # type: ignore[no-untyped-def]
        import threading

        self.threads.append(threading.current_thread().name)
        return self.inner.run(argv, timeout=timeout, env=env)


def test_a_runner_that_answers_at_once_is_pinged_without_threads_and_judged_the_same(make_ctx) -> None:  # type: ignore[no-untyped-def]
    import threading

    outputs = {"192.0.2.2": (0, OK_PING, ""), "192.0.2.3": (1, LOSSY_PING, ""), "198.51.100.3": (1, DEAD_PING, "")}
    outputs["192.0.2.4"] = (2, "", "ping: connect: Network is unreachable")
    params = ping.registry.REGISTRY.get("ping").validate({})
    found = {}
    for at_once in (True, False):
        runner = _Instant(runner_for(outputs), at_once)
        found[at_once] = ping.run(make_ctx(commands=runner, peers=StaticPeers(PEERS)), params)
        if at_once:  # every peer asked from the check's own thread, in order
            assert runner.threads == [threading.current_thread().name] * 4
            assert [c[-1] for c in runner.inner.calls] == ["192.0.2.2", "192.0.2.3", "198.51.100.3", "192.0.2.4"]
        else:  # a runner whose programs take time: the pool's threads, side by side
            assert len(runner.threads) == 4 and all(t.startswith("ping") for t in runner.threads)
    assert found[True].to_dict() | {"duration_s": 0} == found[False].to_dict() | {"duration_s": 0}
    assert found[True].status is Status.FAIL and found[True].data["unreachable"] == ["node-c", "node-d"]


def test_ping_summary_names_the_peers_that_failed_alike_once() -> None:
    # A node whose link is down fails every peer the same way: one finding, every peer named, not the
    # same words once per peer (seven times on eight simulated nodes, once per neighbour on a fleet).
    def reply(i: int, out: str, rc: int = 1) -> tuple[Peer, CommandResult]:
        return Peer(f"node-{i}", "eth0", f"192.0.2.{i}"), CommandResult(("ping",), rc, out, "")

    result = ping.evaluate([reply(1, DEAD_PING), reply(2, OK_PING, 0), reply(3, DEAD_PING), reply(4, LOSSY_PING)])
    dead = next(d.detail for d in result.devices if d.id == "node-1/eth0")
    lossy = next(d.detail for d in result.devices if d.id == "node-4/eth0")
    assert result.summary == f"peers node-1/eth0, node-3/eth0: {dead}; peer node-4/eth0: {lossy}"
    assert [d.status for d in result.devices] == [Status.FAIL, Status.OK, Status.FAIL, Status.WARN]


def _fleet_ping(states: dict[int, str], peers: int = 16) -> CheckResult:
    """A node's ``ping`` of node-1..node-<peers> on eth0: each ``ok`` unless ``states`` says ``dead``,
    ``lossy``, ``noroute`` or ``timeout``."""
    outs = {
        "ok": CommandResult(("ping",), 0, OK_PING, ""),
        "dead": CommandResult(("ping",), 1, DEAD_PING, ""),
        "lossy": CommandResult(("ping",), 1, LOSSY_PING, ""),
        "noroute": CommandResult(("ping",), 2, "", "ping: connect: Network is unreachable\n"),
    }
    replies: list[tuple[Peer, ping.Reply]] = []
    for i in range(1, peers + 1):
        state = states.get(i, "ok")
        out = errors.ToolTimeout("ping", 8.0) if state == "timeout" else outs[state]
        replies.append((Peer(f"node-{i}", "eth0", f"192.0.2.{i}"), out))
    return ping.evaluate(replies)


def test_ping_summary_reads_well_for_one_some_all_and_mixed_findings() -> None:
    dead = ping.judge_reply(CommandResult(("ping",), 1, DEAD_PING, ""))[2]
    assert _fleet_ping({3: "dead"}).summary == f"peer node-3/eth0: {dead}"
    # Several: named once, in natural order (node-2 before node-10).
    assert (
        _fleet_ping({10: "dead", 2: "dead", 5: "dead"}).summary
        == f"peers node-2/eth0, node-5/eth0, node-10/eth0: {dead}"
    )
    # Every peer (this node's own link is down): said so, not 16 names; a few are named with it.
    assert _fleet_ping({i: "dead" for i in range(1, 17)}).summary == f"all 16 peers: {dead}"
    assert _fleet_ping({1: "dead", 2: "dead"}, peers=2).summary == f"all 2 peers (node-1/eth0, node-2/eth0): {dead}"
    # Many but not all: the first eight named and the rest counted, so the finding is never cut off. Before,
    # 999 peers of a 1,000-node fleet were listed, and the summary was cut at 4,096 characters before the finding.
    many = _fleet_ping({i: "dead" for i in range(1, 13)}).summary
    assert many == f"peers {', '.join(f'node-{i}/eth0' for i in range(1, 9))} and 4 more: {dead}"
    big = _fleet_ping({i: "dead" for i in range(1, 1000)}, peers=1000).summary
    assert big.endswith(f"and 991 more: {dead}") and len(big) < 300
    # Mixed: the worst finding first (a summary or a Node condition cut at its limit keeps it); every way a peer
    # is down reads "unreachable: <evidence>".
    mixed = _fleet_ping({4: "lossy", 3: "dead", 9: "noroute", 11: "timeout", 12: "lossy"}).summary
    assert mixed == (
        f"peer node-3/eth0: {dead}; peer node-9/eth0: unreachable: ping: connect: Network is unreachable; "
        "peer node-11/eth0: unreachable: no answer before the deadline; "
        "peers node-4/eth0, node-12/eth0: 33.3% packet loss"
    )


def test_a_peer_down_on_every_address_reads_like_any_peer_down() -> None:
    def reply(node: str, address: str, out: str) -> tuple[Peer, CommandResult]:
        return Peer(node, "eth0", address), CommandResult(("ping",), 0 if out == OK_PING else 1, out, "")

    dead = ping.judge_reply(CommandResult(("ping",), 1, DEAD_PING, ""))[2]
    both = ping.evaluate(
        [
            reply("node-1", "192.0.2.1", DEAD_PING),
            reply("node-1", "2001:db8::1", DEAD_PING),
            reply("node-2", "192.0.2.2", DEAD_PING),
            reply("node-3", "192.0.2.3", OK_PING),
        ]
    )
    # Before: "peer node-1/eth0: 192.0.2.1: unreachable...; peer node-2/eth0: unreachable...", two findings.
    assert both.summary == f"peers node-1/eth0, node-2/eth0: {dead}"
    # Where the addresses differ, the one at fault is named.
    one = ping.evaluate([reply("node-1", "192.0.2.1", OK_PING), reply("node-1", "2001:db8::1", DEAD_PING)])
    assert one.summary == f"peer node-1/eth0: 2001:db8::1: {dead}"


def test_a_runner_whose_answers_at_once_is_blocked_is_pinged_from_the_pool(make_ctx) -> None:  # type: ignore[no-untyped-def]
    class Blocked(_Instant):
        answers_at_once = None  # type: ignore[assignment]  # a protocol method set to None: no InstantRunner

    outputs = {"192.0.2.2": (0, OK_PING, ""), "192.0.2.3": (1, LOSSY_PING, "")}
    outputs |= {"198.51.100.3": (1, DEAD_PING, ""), "192.0.2.4": (0, OK_PING, "")}
    runner = Blocked(runner_for(outputs), True)
    result = ping.run(
        make_ctx(commands=runner, peers=StaticPeers(PEERS)), ping.registry.REGISTRY.get("ping").validate({})
    )
    assert len(runner.threads) == 4 and all(t.startswith("ping") for t in runner.threads)
    assert result.status is Status.FAIL
