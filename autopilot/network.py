"""Pure network helpers: ping and ``iperf3 -J`` parsers, the ring schedule, and localisation.

Localisation turns pair results (source node, destination node, interface, good or bad) into a
suspect: a node all of whose pairs are bad while the pairs that do not involve it are mostly
good is named; otherwise the bad pairs themselves are the suspects.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from autopilot import errors

_PACKETS = re.compile(
    r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (?:packets )?received"
    r"(?:, \+(?P<errors>\d+) errors)?(?:, \+\d+ duplicates)?, (?P<loss>[\d.]+)% packet loss"
)
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max/(?:mdev|stddev) = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


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
    try:
        doc: Any = json.loads(text)
    except ValueError as exc:
        raise errors.ParseError(f"iperf3 output is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise errors.ParseError("iperf3 output is not a JSON object")
    if doc.get("error"):
        raise errors.ToolError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    protocol = str(((doc.get("start") or {}).get("test_start") or {}).get("protocol", "TCP")).upper()
    if "sum_received" in end and "sum_sent" in end:
        return IperfStats(
            protocol,
            sent_bps=float(end["sum_sent"]["bits_per_second"]),
            received_bps=float(end["sum_received"]["bits_per_second"]),
            retransmits=end["sum_sent"].get("retransmits"),
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


def ring_steps(nodes: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Upstream's ring: for t in 1..n-1, node i sends to node (i+t) mod n; all pairs of a step at once."""
    n = len(nodes)
    return [[(nodes[i], nodes[(i + t) % n]) for i in range(n)] for t in range(1, n)]


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
    """Name the node (or pairs) to blame for bad pair results.

    A node is a suspect when every pair that involves it is bad and at most ``others_bad_max``
    of the pairs that do not involve it are bad (with three or more nodes; with two, a bad pair
    cannot tell its ends apart, so the pair is the suspect).
    """
    found = list(pairs)
    bad = [p for p in found if p.bad]
    if not bad:
        return Suspects((), ())
    nodes = sorted({p.source for p in found} | {p.target for p in found})
    suspects: list[str] = []
    if len(nodes) >= 3:
        for node in nodes:
            mine = [p for p in found if node in (p.source, p.target)]
            others = [p for p in found if node not in (p.source, p.target)]
            if mine and all(p.bad for p in mine):
                others_bad = sum(p.bad for p in others) / len(others) if others else 0.0
                if others_bad <= others_bad_max:
                    suspects.append(node)
    if suspects:
        return Suspects(tuple(suspects), ())
    return Suspects((), tuple(sorted((p.source, p.target, p.interface) for p in bad)))
