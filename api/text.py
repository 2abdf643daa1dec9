"""The plain-text answer of ``/status``, shaped like upstream's remote-path response.

One block per node (``Autopilot Endpoint``, ``Node``, ``Response:`` with one
``[[ CHECK ]] SUCCESS|WARN|FAIL|ABORT|SKIPPED: summary`` line per check, ``Node Status: ...``, a
dashed separator), then ``Node Summary:`` with one line per node and ``runtime: <s> sec``. The
check tags are upstream's (``PCIEBW``, ``REMAPPED ROWS``, ``GPU POWER``...) so scripts that grep
for ``FAIL`` or ``ABORT`` next to a tag keep working; unlike upstream, a node summary is plain
lines, not a Python dict. A run with ``ping`` or ``iperf`` ends with a ``Network:`` block: the
suspects of each, and per iperf interface the mean bandwidth and the pair matrix in Gb/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autopilot import names
from autopilot.registry import CheckRegistry
from autopilot.results import printable

SEPARATOR = "-" * 67


WORDS = {"ok": "SUCCESS", "warn": "WARN", "fail": "FAIL", "error": "ABORT", "skipped": "SKIPPED", "busy": "BUSY"}
PROBLEM = {"warn": "Warning", "fail": "Failed", "error": "Aborted", "busy": "Busy (not run)"}


def tag(check: str, checks: CheckRegistry) -> str:
    """Upstream's tag of ``check`` (its spec's ``upstream_tag``); a name not held here, in capitals."""
    return checks.get(check).upstream_tag if check in checks else check.upper()


def _one_line(text: str) -> str:
    """One line of printable text: a summary is a tool's words, and must not drive a curl user's terminal."""
    return printable(" ".join(str(text).split()))


def node_status_line(entry: Mapping[str, Any], checks: CheckRegistry) -> str:
    status = entry["status"]
    if status == "unreachable":
        return "Unreachable: no answer within the deadline"
    if status == "unknown":
        return "Unknown node: no worker has registered it"
    if status == "pending":
        return "Pending"
    if status == "skipped":
        return "Skipped: no check applied to this node, so nothing says it is healthy"
    problems = [
        f"{tag(r['check'], checks)} {PROBLEM[r['status']]}" + (" (fatal)" if r.get("fatal") else "")
        for r in entry["results"]
        if r["status"] in PROBLEM
    ]
    return ", ".join(problems) or "OK"


def render(report: Mapping[str, Any], checks: CheckRegistry) -> str:
    lines: list[str] = []
    nodes: Mapping[str, Mapping[str, Any]] = report["nodes"]
    lines.append(
        f"Autopilot status: checks {', '.join(report['checks'])} on {len(nodes)} node(s)  (run {report['id']})"
    )
    lines.append("")
    for node, entry in nodes.items():
        endpoint = names.QUEUE_PREFIX + node
        lines.append(f"Autopilot Endpoint: {endpoint}")
        lines.append(f"Node: {node}")
        lines.append("Response:")
        for r in entry["results"]:
            fatal = " (fatal)" if r.get("fatal") else ""
            lines.append(
                f"[[ {tag(r['check'], checks)} ]] {WORDS.get(r['status'], r['status'].upper())}{fatal}: "
                f"{_one_line(r.get('summary', ''))}"
            )
        if not entry["results"]:
            lines.append(f"({_one_line(entry.get('detail', 'no results'))})")
        lines.append(f"Node Status: {node_status_line(entry, checks)}")
        if entry.get("verdict"):
            lines.append(f"Verdict: {entry['verdict']}")
        lines.append(SEPARATOR)
    lines.append("")
    lines.append("Node Summary:")
    width = max((len(n) for n in nodes), default=0)
    for node, entry in nodes.items():
        lines.append(f"  {node.ljust(width)}  {node_status_line(entry, checks)}")
    if report.get("network"):
        lines.append("")
        lines.extend(network_lines(report["network"], checks))
    lines.append("")
    lines.append(f"runtime: {report['runtime_s']:.2f} sec")
    return "\n".join(lines) + "\n"


def _gbps(value: Any) -> str:
    return "N/A" if value is None else f"{value:.2f}"


def network_lines(net: Mapping[str, Any], checks: CheckRegistry) -> list[str]:
    lines = ["Network:"]
    for check in ("ping", "iperf"):
        if check not in net:
            continue
        entry = net[check]
        counted = f"({entry['bad_pairs']} of {entry['pairs']} pairs bad)"
        lines.append(f"  {tag(check, checks)}: {entry['suspects']['summary']} {counted}")
    for lane, info in net.get("iperf", {}).get("interfaces", {}).items():
        # The mean is of the measured pairs only: a pair that could not connect has no figure.
        measured = sum(1 for row in info["matrix"].values() for gbps in row.values() if gbps is not None)
        over = (
            f"{measured} pairs" if measured == info["pairs"] else f"{measured} of {info['pairs']} pairs (the rest N/A)"
        )
        lines.append(f"  {lane} Average Bandwidth Gb/s: {_gbps(info['mean_gbps'])} over {over}")
        names_ = sorted(info["nodes"])
        width = max([len(n) for n in names_] + [8])
        lines.append("    " + " " * width + "".join(f"  {n[:width].rjust(width)}" for n in names_))
        for src in names_:
            row = info["matrix"].get(src, {})
            cells = "".join(f"  {(_gbps(row[dst]) if dst in row else '-').rjust(width)}" for dst in names_)
            lines.append(f"    {src.ljust(width)}{cells}")
    return lines
