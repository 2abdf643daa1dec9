"""Pure network helpers: ``ping`` (and ``ping -M do``), ``ip -j link`` and ``iperf3 -J`` parsers, the ring
schedule, and localisation.

Localisation turns pair results (source node, destination node, interface, good or bad) into a
suspect: a node all of whose pairs are bad while the pairs that do not involve it are mostly
good is named; otherwise the bad pairs themselves are the suspects.

Attribution (``ping_pairs``, ``fleet_suspects``, ``excuse_ping``): the verdict's use of the same
localisation. A node whose link is down is not answered by anyone who pings it; those failed
pairs are the suspect's finding, not the pinging node's, so a node's ``ping`` result is judged
without its pairs to a suspect the fleet's latest ping results name, each path as its end that pinged
last saw it (docs/RESULTS.md).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from autopilot import errors, jsoncodec, results
from autopilot.results import CheckResult, Status

# Between "received" and the loss, iputils prints ", +N duplicates", ", +N corrupted", ", +N errors" in
# that order (ping_common.c finish()); busybox and inetutils print ", N duplicates" (no "+", and
# inetutils' own typo "duplicateds"). Any of them, in any order, is read past.
_PACKETS = re.compile(
    r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (?:packets )?received"
    r"(?:, \+?\d+ (?:duplicates?|duplicateds|corrupted|errors?))*, (?P<loss>[\d.]+)% packet loss"
)
# iputils "rtt min/avg/max/mdev", BSD/inetutils "round-trip min/avg/max/stddev", busybox
# "round-trip min/avg/max" (three figures, no deviation).
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/(?:mdev|stddev))? = ([\d.]+)/([\d.]+)/([\d.]+)(?:/[\d.]+)? ms")


@dataclasses.dataclass(frozen=True)
class PingStats:
    transmitted: int
    received: int
    loss_pct: float
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None


def parse_ping(stdout: str) -> PingStats:
    """The summary of an iputils or busybox ``ping`` run; ``ParseError`` when there is none."""
    match = _PACKETS.search(stdout)
    if not match:
        raise errors.ParseError(f"no ping summary in output: {stdout.strip()[-200:]!r}")
    rtt = _RTT.search(stdout)
    return PingStats(
        transmitted=int(match["tx"]),
        received=int(match["rx"]),
        loss_pct=float(match["loss"]),
        rtt_avg_ms=float(rtt.group(2)) if rtt else None,
        rtt_max_ms=float(rtt.group(3)) if rtt else None,
    )


# What ``ping -M do -s SIZE`` says besides its summary when a full-size packet cannot go. This node's
# kernel refusing it: iputils "ping: local error: message too long, mtu=1500" (IPv4 and IPv6; "Message"
# capitalised in older releases), or "ping: sendmsg: Message too long" when the socket's error queue held
# nothing; a hop refusing it: iputils "From 10.0.0.1 icmp_seq=1 Frag needed and DF set (mtu = 1500)"
# (ICMP type 3 code 4) or "From 2001:db8::1 icmp_seq=1 Packet too big: mtu=1500" (ICMPv6 type 2).
_LOCAL_TOO_LONG = re.compile(r"local error: message too long, mtu ?[=:] ?(\d+)", re.IGNORECASE)
_SEND_TOO_LONG = re.compile(r"send(?:msg|to): message too long", re.IGNORECASE)
_HOP_TOO_BIG = re.compile(
    r"From (?P<hop>\S+?):? (?:icmp_seq=\d+ )?(?:Frag needed and DF set \(mtu = (?P<v4>\d+)\)|"
    r"Packet too big: mtu=(?P<v6>\d+))",
    re.IGNORECASE,
)
# A ping that does not know ``-M`` (busybox, inetutils): getopt's or argp's complaint about the option.
_NO_DF = re.compile(r"(?:invalid|unrecognized|unknown) option|invalid argument.*-M|usage:", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class DfPing:
    """What a ``ping -M do -s SIZE`` run said about why a full-size packet did not go (beyond its summary)."""

    local_too_long: bool = False
    """This node's kernel refused to send it (``local error: message too long`` or ``sendmsg: Message too long``)."""
    local_mtu: int | None = None
    """The MTU the kernel named for the route: the interface's, or a path MTU a hop taught it earlier."""
    hop: str | None = None
    """The address of the hop that answered "fragmentation needed" / "packet too big"."""
    hop_mtu: int | None = None
    no_df: bool = False
    """The ping on PATH cannot set Don't-Fragment (no ``-M``): nothing it says about size is evidence."""


def parse_df_ping(text: str) -> DfPing:
    """The MTU evidence in ``ping -M do -s SIZE`` output (stdout and stderr together); all None when none."""
    local = _LOCAL_TOO_LONG.search(text)
    hop = _HOP_TOO_BIG.search(text)
    return DfPing(
        local_too_long=bool(local or _SEND_TOO_LONG.search(text)),
        local_mtu=int(local.group(1)) if local else None,
        hop=hop["hop"] if hop else None,
        hop_mtu=int(hop["v4"] or hop["v6"]) if hop else None,
        no_df=bool(_NO_DF.search(text)) and not _PACKETS.search(text),
    )


def json_list(text: str, what: str) -> list[Any]:
    """``text`` as a JSON list (a tool's or an annotation's); ``ParseError`` naming ``what`` for anything else."""
    try:
        doc = jsoncodec.loads(text)
    except ValueError as exc:
        raise errors.ParseError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise errors.ParseError(f"{what} is not a JSON list")
    return doc


def parse_ip_link_mtus(text: str) -> dict[str, int]:
    """``ip -j link show`` -> {interface: MTU}; ``ParseError`` when it is not ip's JSON list.

    Entries without a name or a whole-number MTU are left out; a name's ``@peer`` suffix (``ip`` prints
    it for veth and VLAN links in text, not in JSON, but a wrapper may) is dropped."""
    out: dict[str, int] = {}
    for link in json_list(text, "ip -j link"):
        if not isinstance(link, dict):
            continue
        name, mtu = link.get("ifname"), link.get("mtu")
        if isinstance(name, str) and name and isinstance(mtu, int) and not isinstance(mtu, bool) and mtu > 0:
            out[name.split("@", 1)[0]] = mtu
    return out


@dataclasses.dataclass(frozen=True)
class IperfStats:
    """One ``iperf3 -c ... -J`` client run: receiver bits per second is the figure that counts."""

    protocol: str
    sent_bps: float
    received_bps: float
    retransmits: int | None = None
    lost_percent: float | None = None

    @property
    def gbps(self) -> float:
        """Gigabits per second (10^9 bits/s) as received."""
        return self.received_bps / 1e9


def parse_iperf3(text: str) -> IperfStats:
    """``iperf3 -J`` client JSON -> stats. Bits per second are read as such: no unit guessing.

    ``ParseError`` for text that is not iperf3 JSON; ``ToolError`` carrying iperf3's own ``error``
    (connection refused, authorization failed, ...).
    """
    doc, end = _first_json_object(text)
    if not isinstance(doc, dict):
        raise errors.ParseError("iperf3 output is not a JSON object")
    if "event" in doc and "data" in doc:
        doc = _from_stream(text)
        error = doc.get("error")
    else:
        error = doc.get("error") or iperf3_late_error(text[end:])
    if error:
        raise errors.ToolError(f"iperf3: {error}")
    try:
        return _iperf_stats(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A summary missing a figure or holding a non-number: unreadable, never a crash.
        raise errors.ParseError(f"iperf3 end summary unreadable: {type(exc).__name__}: {exc}") from None


def _iperf_stats(doc: dict[str, Any]) -> IperfStats:
    end = doc.get("end") or {}
    protocol = str(((doc.get("start") or {}).get("test_start") or {}).get("protocol", "TCP")).upper()
    if "sum_received" in end and "sum_sent" in end:
        received = end["sum_received"]
        # iperf3 3.11+ adds sum_sent/sum_received to UDP runs too (esnet/iperf#1174); the loss is there.
        lost = received.get("lost_percent") if protocol == "UDP" else None
        return IperfStats(
            protocol,
            sent_bps=float(end["sum_sent"]["bits_per_second"]),
            received_bps=float(received["bits_per_second"]),
            retransmits=end["sum_sent"].get("retransmits"),
            lost_percent=None if lost is None else float(lost),
        )
    if "sum" in end:  # UDP: one sum, with loss
        total = end["sum"]
        return IperfStats(
            protocol if protocol != "TCP" else "UDP",
            sent_bps=float(total["bits_per_second"]),
            received_bps=float(total["bits_per_second"]) * (1 - float(total.get("lost_percent", 0) or 0) / 100),
            lost_percent=float(total.get("lost_percent", 0) or 0),
        )
    raise errors.ParseError("iperf3 JSON has no end summary (run interrupted?)")


def _from_stream(text: str) -> dict[str, Any]:
    """The one document ``iperf3 --json-stream`` (3.16+, esnet/iperf#1098) spreads over one event per
    line (``{"event": "start" | "interval" | "end" | "error", "data": ...}``): its start, end and error."""
    doc: dict[str, Any] = {}
    for line in text.splitlines():
        if not line.strip().startswith("{"):
            continue
        try:
            event = jsoncodec.loads(line)
        except ValueError as exc:
            raise errors.ParseError(f"iperf3 --json-stream line is not JSON: {exc}") from None
        if isinstance(event, dict) and event.get("event") in ("start", "end", "error"):
            doc[str(event["event"])] = event.get("data")
    return doc


def _first_json_object(text: str) -> tuple[Any, int]:
    """The first JSON document of ``iperf3 -J`` output and where it ends. iperf3 writes warnings to
    stdout ahead of the document ("warning: UDP block size ... exceeds TCP MSS", esnet/iperf#1223), and
    3.16/3.17 print the whole document twice (esnet/iperf#1688, #1716): neither makes a run unreadable."""
    try:
        return jsoncodec.first_document_and_end(text)
    except ValueError as exc:
        raise errors.ParseError(f"iperf3 output is not JSON: {exc}") from None


# iperf3's own words for a run that ended on an error, once its -J document is out: iperf_err/iperf_errexit
# (iperf_error.c) add "error" to the document while it is open, and after it was printed (json_top
# freed) write "iperf3: error - ..." (or "iperf3: interrupt - ..." on a signal) to stderr or the log.
_LATE_ERROR = re.compile(r"^\s*iperf3: ((?:error|interrupt) - .*?)\s*$", re.MULTILINE)


def iperf3_late_error(text: str) -> str:
    """The error iperf3 reported after its ``-J`` document, in ``text`` (the rest of stdout, or stderr);
    "" when none. A later document's ``error`` (3.16/3.17 print the document again, with the error
    added, when the run fails after it) or an ``iperf3: error - ...`` line: the run failed after its
    summary was written, so that summary is not a measurement (esnet/iperf#1143: a complete client
    document, then "iperf3: error - unable to send control message: Broken pipe")."""
    line = _LATE_ERROR.search(text)
    if line:
        return line.group(1)
    start = text.find("{")
    while start >= 0:
        if start == 0 or text[start - 1] == "\n":
            try:
                doc = jsoncodec.first_document(text[start:])
            except ValueError:
                return ""
            if isinstance(doc, dict) and doc.get("error"):
                return str(doc["error"])
        start = text.find("{", start + 1)
    return ""


def ring_steps(nodes: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Upstream's ring: for t in 1..n-1, node i sends to node (i+t) mod n; all pairs of a step at once."""
    return [ring_step(nodes, t) for t in range(1, len(nodes))]


def ring_step(nodes: Sequence[str], t: int) -> list[tuple[str, str]]:
    """Step ``t`` (1..n-1) of ``ring_steps`` alone: a ring of n members has n(n-1) pairs, 36 million at
    6,000, so its coordinator makes each step when it runs it rather than all of them at once."""
    n = len(nodes)
    return [(nodes[i], nodes[(i + t) % n]) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class PairResult:
    source: str
    target: str
    interface: str
    bad: bool


@dataclasses.dataclass(frozen=True)
class Suspects:
    nodes: tuple[str, ...]
    pairs: tuple[tuple[str, str, str], ...]

    def describe(self) -> str:
        if self.nodes:
            return "suspect node(s): " + ", ".join(self.nodes)
        if self.pairs:
            return "suspect pair(s): " + ", ".join(f"{s}->{t} ({i})" for s, t, i in self.pairs)
        return "no suspect"

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "pairs": [{"source": s, "target": t, "interface": i} for s, t, i in self.pairs],
            "summary": self.describe(),
        }


def localise(pairs: Iterable[PairResult], *, others_bad_max: float = 0.25) -> Suspects:
    """Name the node(s) (or pairs) to blame for bad pair results.

    The suspects are nodes every pair of which is bad, fewer than half the nodes, such that at most
    ``others_bad_max`` of the pairs that involve none of them are bad (with three or more nodes; with
    two, a bad pair cannot tell its ends apart, so the pair is the suspect). Each is judged against
    the pairs without any of them, not only without itself: otherwise two down nodes of a small
    fleet (two of eight) hid each other, the other's pairs making more than a quarter bad. A node
    whose every pair is with the suspects already named (taken most bad pairs first) is not named.
    """
    found = list(pairs)
    bad = [p for p in found if p.bad]
    if not bad:
        return Suspects((), ())
    # One pass over the pairs (a fleet that pings every node has n^2 of them): per node, the pairs
    # that involve it, how many of those are bad, and its peers.
    mine: collections.Counter[str] = collections.Counter()
    mine_bad: collections.Counter[str] = collections.Counter()
    peers: dict[str, set[str]] = collections.defaultdict(set)
    for p in found:
        peers[p.source].add(p.target)
        peers[p.target].add(p.source)
        for node in {p.source, p.target}:
            mine[node] += 1
            mine_bad[node] += p.bad
    suspects: set[str] = set()
    if len(mine) >= 3:
        for node in sorted((n for n in mine if mine_bad[n] == mine[n]), key=lambda n: (-mine_bad[n], n)):
            if peers[node] - suspects - {node}:
                suspects.add(node)
    if suspects and 2 * len(suspects) < len(mine):
        others = [p for p in found if p.source not in suspects and p.target not in suspects]
        others_bad = sum(p.bad for p in others) / len(others) if others else 0.0
        if others_bad <= others_bad_max:
            return Suspects(tuple(sorted(suspects)), ())
    return Suspects((), tuple(sorted((p.source, p.target, p.interface) for p in bad)))


def ping_pairs(latest: Mapping[str, CheckResult]) -> list[PairResult]:
    """The pairs of nodes' ``ping`` results (node -> its result): ``data["pairs"]`` of each.

    A pair whose ping could not run (``error``) says nothing about the link and is left out. Older
    measurements that newer ones have replaced are left out too (by each result's ``started_at``):

    - a ping is a round trip, so ``a -> b`` and ``b -> a`` on one interface measure the same path: where
      both ends' results hold it and one started later, the earlier end's measurement is left out;
    - a node whose latest result failed to every peer it pinged (two or more) could reach nobody then: the
      others' pings to it from results that started before that say nothing of it since.

    Right after a node's link dies the fleet still holds its older passing pings to it (and, while its own
    worker cannot report, its own older passing pings); without this, those kept it from being named until
    every one of them was replaced, and its peers ``WARN`` meanwhile (docs/RESULTS.md, "Ping").
    """
    measured: dict[str, list[tuple[str, str, bool]]] = {}  # node -> its (target, interface, bad)
    started: dict[str, float | None] = {}
    for node, result in latest.items():
        if result.check != "ping":
            continue
        started[node] = _started(result)
        mine = measured[node] = []
        for pair in result.data.get("pairs") or ():
            if not isinstance(pair, Mapping) or pair.get("status") not in ("ok", "warn", "fail"):
                continue
            target, interface = pair.get("target"), pair.get("interface")
            if isinstance(target, str) and isinstance(interface, str) and target != node:
                mine.append((target, interface, pair["status"] != "ok"))
    paths: dict[str, set[tuple[str, str]]] = {}  # node -> the (target, interface) it measured, as needed

    def measured_by(node: str) -> set[tuple[str, str]]:
        if node not in paths:
            paths[node] = {(target, interface) for target, interface, _ in measured[node]}
        return paths[node]

    # Nodes whose latest result reached none of two or more peers: down, as of when it started.
    cut_off = {
        node
        for node, pairs in measured.items()
        if len({target for target, _, _ in pairs}) >= 2 and all(bad for _, _, bad in pairs)
    }
    out: list[PairResult] = []
    for node, pairs in measured.items():
        since = started[node]
        for target, interface, bad in pairs:
            theirs = started.get(target)
            if (
                since is not None
                and theirs is not None
                and theirs > since
                and (target in cut_off or (node, interface) in measured_by(target))
            ):
                continue  # measured again, later, from the other end; or the target said it reached nobody since
            out.append(PairResult(node, target, interface, bad))
    return out


def _started(result: CheckResult) -> float | None:
    """When ``result`` started (epoch s); None when it does not say (such a result's pairs are never superseded)."""
    try:
        return results.parse_iso(result.started_at).timestamp() if result.started_at else None
    except ValueError:
        return None


def fleet_suspects(latest: Mapping[str, CheckResult]) -> frozenset[str]:
    """The nodes the fleet's latest ``ping`` results blame (``localise`` over all their pairs)."""
    return frozenset(localise(ping_pairs(latest)).nodes)


def excuse_ping(result: CheckResult, suspects: Collection[str]) -> CheckResult:
    """``result`` (a node's ``ping``) without its failed pairs to a suspect of the fleet.

    Those peers' devices become ``skipped`` with the reason; the rest is judged as before, so a
    node whose only failures are pings to the suspect passes, and a node with another failed peer
    still fails. The suspect itself is never excused: its own pairs go to nodes that are not suspects.
    """
    if result.check != "ping":
        return result
    return excuse_pairs(result, suspects, by="the fleet's suspect", ok_words="every peer reachable", what="peer")


def excuse_pairs(result: CheckResult, suspects: Collection[str], *, by: str, ok_words: str, what: str) -> CheckResult:
    """``result`` (a ``ping`` or ``iperf`` result, one device per ``peer/interface``) with its bad
    devices to a node of ``suspects`` made ``skipped`` (``not judged here: <peer> is <by>``)."""
    if not result.is_bad or not suspects:
        return result
    devices = []
    excused: set[str] = set()
    for d in result.devices:
        peer = d.id.split("/", 1)[0]
        if d.status in (Status.FAIL, Status.WARN) and peer in suspects and peer != result.node:
            excused.add(peer)
            why = f"{d.detail or d.status.value}; not judged here: {peer} is {by}"
            d = dataclasses.replace(d, status=Status.SKIPPED, detail=why)
        devices.append(d)
    if not excused:
        return result
    named = ", ".join(sorted(excused))
    folded = results.from_devices(
        result.check,
        devices,
        ok_summary=f"{ok_words} but {named} ({by}, not this node)",
        data={**result.data, "excused": sorted(excused)},
        what=what,
        group=True,
        # This node's own short interface (``mtu``) is named as ``ping.evaluate`` named it, not as a peer.
        what_of={d.id: "interface" for d in devices if d.id.split("/", 1)[0] == result.node},
    )
    return dataclasses.replace(
        result, status=folded.status, summary=folded.summary, devices=folded.devices, data=folded.data
    )


def attribute(latest: Mapping[str, CheckResult], suspects: Collection[str]) -> dict[str, CheckResult]:
    """A node's results with its ``ping`` result judged without its pairs to ``suspects``."""
    out = dict(latest)
    if "ping" in out:
        out["ping"] = excuse_ping(out["ping"], suspects)
    return out
