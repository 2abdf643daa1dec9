"""``iperf``: network bandwidth between nodes, upstream's ring workload (on demand only).

The ring needs every selected node at once, so it is not a per-node check: the API's gather
runs the coordinator (``workers.ring``), which starts ``iperf3`` servers on every node, runs each
ring step's pairs concurrently, stops every server afterwards, and writes one ``iperf`` result
per node (devices ``target/interface``, Gb/s). Run on one machine (``autopilot run iperf``) the
check says it is skipped. This module holds the pure parts both sides share: parameters,
command lines, judging a client's output, grading pairs and the run summary.

Units: ``iperf3 -J`` reports bits per second; Gb/s here is 10^9 bits per second. A pair is
``fail`` when its clients could not connect (or got no answer before their deadline), ``error``
when ``iperf3`` could not run or its output was unreadable, ``warn`` when its bandwidth is below
``threshold_gbps`` (when set) or below ``min_fraction`` of the median of its interface's pairs.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autopilot import errors, network, registry, results
from autopilot.commands import CommandResult
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status

WORKLOADS = ("ring",)
MAX_PCLIENTS = 16
PORT_RANGE = (1024, 65000)
CONNECT_TIMEOUT_MS = 3000
# Server-side guard against a stuck test (iperf3 restarts a server idle this long).
IDLE_TIMEOUT_S = 30
# What iperf3 (or the kernel, through it) says when the network would not let it connect.
_CONNECT_WORDS = (
    "unable to connect",
    "connection refused",
    "no route to host",
    "network is unreachable",
    "connection timed out",
    "host is unreachable",
    "unable to receive control message",
    "control socket has closed unexpectedly",
)


class _Lowered(registry.Param):
    """A string parameter compared case-insensitively (upstream upper-cased ``workload``)."""

    def parse(self, raw: Any) -> Any:
        return super().parse(str(raw).strip().lower())


PARAMS = (
    _Lowered("workload", str, "ring", "traffic pattern (only the ring of upstream)", choices=WORKLOADS),
    registry.Param("pclients", int, 1, "parallel clients per pair, one server port each", minimum=1, maximum=16),
    registry.Param(
        "startport",
        int,
        5200,
        "first server port; servers use startport..startport+pclients-1",
        minimum=1024,
        maximum=65000,
    ),
    registry.Param("duration_s", int, 5, "seconds each client sends", minimum=1, maximum=60),
    registry.Param(
        "threshold_gbps", float, 0.0, "a pair below this many Gb/s warns (0: off)", minimum=0, maximum=10000
    ),
    registry.Param(
        "min_fraction",
        float,
        0.5,
        "a pair below this fraction of its interface's median warns (0: off)",
        minimum=0,
        maximum=1,
    ),
    registry.NodeList(
        "nodes",
        str,
        "",
        "comma-separated ring members, DNS-1123 node names, no empty entry (default: every selected node)",
    ),
)


def ports(startport: int, pclients: int) -> list[int]:
    """The server ports of one address; ``BadParameter`` if they would leave the port range."""
    if not 1 <= pclients <= MAX_PCLIENTS:
        raise errors.BadParameter("pclients", f"must be between 1 and {MAX_PCLIENTS}, got {pclients}")
    if not PORT_RANGE[0] <= startport or startport + pclients - 1 > 65535:
        raise errors.BadParameter("startport", f"ports {startport}..{startport + pclients - 1} leave 1024..65535")
    return list(range(startport, startport + pclients))


def server_argv(address: str, port: int, idle_timeout_s: int = IDLE_TIMEOUT_S) -> list[str]:
    return ["iperf3", "-s", "-p", str(port), "-B", address, "--idle-timeout", str(idle_timeout_s)]


def client_argv(address: str, port: int, duration_s: int, source: str | None = None) -> list[str]:
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(duration_s), "-J", "-Z"]
    argv += ["--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if source:
        # Leave through the interface under test, not whichever the routing table prefers.
        argv += ["-B", source]
    return argv


def client_timeout_s(duration_s: int) -> float:
    """A client's hard deadline: its run, the connect timeout, and time to exchange results."""
    return duration_s + CONNECT_TIMEOUT_MS / 1000 + 7


@dataclasses.dataclass(frozen=True)
class Measure:
    """What one pair's clients gave: a status among ok/fail/error, the summed Gb/s, a detail."""

    status: Status
    gbps: float | None
    detail: str


def judge_client(out: CommandResult | errors.AutopilotError) -> Measure:
    """One ``iperf3 -c ... -J`` run -> ok with its received Gb/s, fail (no connection) or error."""
    if isinstance(out, errors.ToolTimeout):
        return Measure(Status.FAIL, None, "no result before the deadline")
    if isinstance(out, errors.AutopilotError):
        return Measure(Status.ERROR, None, str(out))
    try:
        stats = network.parse_iperf3(out.stdout)
        late = network.iperf3_late_error(out.stderr or "")
        if late:  # the document is out and iperf3 then failed (its error on stderr): no measurement
            raise errors.ToolError(f"iperf3: {late}")
    except errors.ToolError as exc:
        message = str(exc)
        if any(word in message.lower() for word in _CONNECT_WORDS):
            return Measure(Status.FAIL, None, message)
        return Measure(Status.ERROR, None, message)
    except errors.ParseError as exc:
        # iperf3's own line ("iperf3: error - ...", "iperf3: unrecognized option '--connect-timeout'" from
        # 3.0/3.1, which predate the option) says why; the usage text it prints after it does not.
        lines = [ln.strip() for ln in (out.stderr or "").splitlines() if ln.strip()]
        said = next((ln for ln in lines if ln.startswith("iperf3:")), lines[-1] if lines else str(exc))
        if any(word in said.lower() for word in _CONNECT_WORDS):
            return Measure(Status.FAIL, None, said)
        return Measure(Status.ERROR, None, f"iperf3 output unreadable: {said[:200]}")
    if not stats.received_bps > 0:
        if stats.sent_bps > 0:
            # The client sent and the server received nothing (TCP) or lost it all (UDP): the test ran,
            # the path carried none of its data (an MTU black hole passes the small control messages).
            return Measure(
                Status.FAIL, None, f"sent {stats.sent_bps / 1e9:.3g} Gb/s, received nothing: the path drops the data"
            )
        # A summary that counts nothing sent or received measured nothing: never a pass at 0 Gb/s.
        return Measure(Status.ERROR, None, f"iperf3 reported {stats.received_bps:g} bits/s received")
    return Measure(Status.OK, stats.gbps, f"{stats.gbps:.2f} Gb/s")


def judge_pair(outs: Sequence[CommandResult | errors.AutopilotError]) -> Measure:
    """A pair's clients together: the sum of their Gb/s; any client that failed decides the status."""
    judged = [judge_client(o) for o in outs]
    if not judged:
        return Measure(Status.ERROR, None, "no client ran")
    status = results.worst(m.status for m in judged)
    if status is not Status.OK:
        bad = next(m for m in judged if m.status is status)
        failed = sum(1 for m in judged if m.status is not Status.OK)
        return Measure(
            status, None, bad.detail if len(judged) == 1 else f"{failed}/{len(judged)} clients: {bad.detail}"
        )
    total = sum(m.gbps or 0.0 for m in judged)
    return Measure(Status.OK, total, f"{total:.2f} Gb/s" + (f" ({len(judged)} clients)" if len(judged) > 1 else ""))


def pair(source: str, target: str, interface: str, address: str, measure: Measure) -> dict[str, Any]:
    """One pair as it travels in results and reports (JSON)."""
    return {
        "source": source,
        "target": target,
        "interface": interface,
        "address": address,
        "status": measure.status.value,
        "gbps": None if measure.gbps is None else round(measure.gbps, 4),
        "detail": measure.detail,
    }


def grade(pairs: Iterable[Mapping[str, Any]], *, threshold_gbps: float, min_fraction: float) -> list[dict[str, Any]]:
    """Measured pairs with slow ones turned ``warn``: below the absolute floor, or below
    ``min_fraction`` of the median of the measured pairs on the same interface."""
    out = [dict(p) for p in pairs]
    medians = lane_medians(out)
    for p in out:
        if p["status"] != Status.OK.value or p["gbps"] is None:
            continue
        median = medians.get(p["interface"])
        reasons = []
        if threshold_gbps > 0 and p["gbps"] < threshold_gbps:
            reasons.append(f"below {threshold_gbps:g} Gb/s")
        if min_fraction > 0 and median and p["gbps"] < min_fraction * median:
            reasons.append(f"below {min_fraction:g} x the median {median:.2f} Gb/s")
        if reasons:
            p["status"] = Status.WARN.value
            p["detail"] = f"{p['gbps']:.2f} Gb/s, " + " and ".join(reasons)
    return out


def lane_medians(pairs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    by_lane: dict[str, list[float]] = {}
    for p in pairs:
        if p["gbps"] is not None and p["status"] in (Status.OK.value, Status.WARN.value):
            by_lane.setdefault(p["interface"], []).append(float(p["gbps"]))
    return {lane: statistics.median(values) for lane, values in by_lane.items()}


def evaluate(node: str, pairs: Sequence[Mapping[str, Any]], *, note: str = "") -> CheckResult:
    """The ``iperf`` result of ``node``: one device per pair it sent (``target/interface``)."""
    mine = sorted((p for p in pairs if p["source"] == node), key=lambda p: (p["interface"], p["target"]))
    devices = [
        DeviceResult(f"{p['target']}/{p['interface']}", Status(p["status"]), p["gbps"], "Gb/s", p["detail"])
        for p in mine
    ]
    measured = [p["gbps"] for p in mine if p["gbps"] is not None]
    mean = sum(measured) / len(measured) if measured else None
    received = [p["gbps"] for p in pairs if p["target"] == node and p["gbps"] is not None]
    data = {
        "pairs": [dict(p) for p in mine],
        "sent_mean_gbps": None if mean is None else round(mean, 4),
        "received_mean_gbps": round(sum(received) / len(received), 4) if received else None,
    }
    result = results.from_devices(
        "iperf",
        devices,
        ok_summary=f"{len(devices)} pair(s), mean {mean or 0:.2f} Gb/s",
        data=data,
        what="pair",
    )
    if note:
        result = dataclasses.replace(result, summary=f"{note}; {result.summary}")
    return dataclasses.replace(result, node=node)


def summarize(pairs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per interface: the pair matrix (source -> target -> Gb/s, None where it failed), each
    node's mean sent and received Gb/s, and the mean and median over the measured pairs."""
    lanes: dict[str, list[Mapping[str, Any]]] = {}
    for p in pairs:
        lanes.setdefault(p["interface"], []).append(p)
    out: dict[str, Any] = {}
    for lane in sorted(lanes):
        items = lanes[lane]
        matrix: dict[str, dict[str, float | None]] = {}
        for p in items:
            matrix.setdefault(p["source"], {})[p["target"]] = p["gbps"]
        nodes: dict[str, dict[str, Any]] = {}
        for name in sorted({p["source"] for p in items} | {p["target"] for p in items}):
            sent = [p["gbps"] for p in items if p["source"] == name and p["gbps"] is not None]
            got = [p["gbps"] for p in items if p["target"] == name and p["gbps"] is not None]
            nodes[name] = {
                "sent_mean_gbps": round(sum(sent) / len(sent), 4) if sent else None,
                "received_mean_gbps": round(sum(got) / len(got), 4) if got else None,
                "bad_pairs": sum(1 for p in items if name in (p["source"], p["target"]) and p["status"] != "ok"),
            }
        measured = [float(p["gbps"]) for p in items if p["gbps"] is not None]
        out[lane] = {
            "pairs": len(items),
            "bad_pairs": sum(1 for p in items if p["status"] != "ok"),
            "mean_gbps": round(sum(measured) / len(measured), 4) if measured else None,
            "median_gbps": round(statistics.median(measured), 4) if measured else None,
            "matrix": {src: dict(sorted(row.items())) for src, row in sorted(matrix.items())},
            "nodes": nodes,
        }
    return out


def pair_results(pairs: Iterable[Mapping[str, Any]]) -> list[network.PairResult]:
    """Pairs for ``network.localise``: anything but ``ok`` is bad (slow, unconnected, unmeasurable)."""
    return [
        network.PairResult(p["source"], p["target"], p["interface"], p["status"] != Status.OK.value)
        for p in pairs
        if p["status"] != Status.SKIPPED.value
    ]


def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    return CheckResult(
        "iperf",
        Status.SKIPPED,
        "multi-node workload: run it through the API (/iperf or POST /api/v1/runs), which coordinates the ring",
    )


registry.check(
    "iperf",
    description="network bandwidth between nodes: upstream's iperf3 ring, coordinated by the API (on demand)",
    params=PARAMS,
    timeout_s=30,
    tag="IPERF",
    ring=True,
)(run)
