"""What a node is: CPU model, GPU model and count, interface addresses. Read through the seams."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from autopilot import errors
from autopilot.commands import CommandRunner
from autopilot.gpus import GpuTelemetry


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    cpu_model: str
    gpu_model: str
    gpu_count: int
    addresses: dict[str, list[str]]


def cpu_model(cpuinfo: str) -> str:
    """The ``model name`` of /proc/cpuinfo, with ``(R)``, ``(TM)`` and repeated spaces removed.

    Upstream removed only the first parenthesis pair; we remove every one of them.
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            cleaned = re.sub(r"\((R|TM|C)\)", "", value, flags=re.IGNORECASE)
            return re.sub(r"\s+", " ", cleaned).strip()
    return "unknown"


def parse_ip_addr_json(text: str) -> dict[str, list[str]]:
    """``ip -j addr show`` -> {interface: [addresses]} without loopback and link-local."""
    out: dict[str, list[str]] = {}
    for link in json.loads(text or "[]"):
        name = link.get("ifname", "")
        if not name or name == "lo":
            continue
        for info in link.get("addr_info", []):
            if info.get("scope") == "link":
                continue
            out.setdefault(name, []).append(str(info.get("local")))
    return out


def collect(commands: CommandRunner, gpus: GpuTelemetry, *, cpuinfo_path: str = "/proc/cpuinfo") -> NodeFacts:
    try:
        cpu = cpu_model(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:
        cpu = "unknown"
    try:
        count = gpus.count()
        model = gpus.identity(0).name if count else ""
    except errors.GpuError:
        count, model = 0, ""
    addresses: dict[str, list[str]] = {}
    if commands.which("ip"):
        try:
            result = commands.run(["ip", "-j", "addr", "show"], timeout=5)
            if result.returncode == 0:
                addresses = parse_ip_addr_json(result.stdout)
        except (errors.ToolError, ValueError):
            addresses = {}
    return NodeFacts(cpu, model, count, addresses)
