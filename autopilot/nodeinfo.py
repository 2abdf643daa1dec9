"""What a node is: CPU model, GPU model and count, interface addresses. Read through the seams.

Addresses come from ``ip -j addr show``. In Kubernetes with Multus, the pod's
``k8s.v1.cni.cncf.io/network-status`` annotation (read from a downward-API annotations file)
names the secondary interfaces; its names and addresses take precedence, so every node reports
its NICs under the names the cluster gave them. Both shapes seen in the wild are handled: one
entry per NIC (``net1-0``, ``net1-1``), or one entry with several IPs (``net1`` with two
addresses, which the network checks treat as ``net1-0`` and ``net1-1``). An entry without an
``interface`` is filed under ``k8s-pod-network``, as upstream did.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from autopilot import config, errors
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


NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
DEFAULT_POD_NETWORK = "k8s-pod-network"


def parse_annotations(text: str) -> dict[str, str]:
    """A downward-API annotations file (``key="quoted value"`` per line) -> {key: value}.

    The values are quoted the way Go's ``%q`` does, which JSON string syntax reads for every
    character a network-status annotation holds; a line that does not parse is skipped.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or not key.strip():
            continue
        raw = raw.strip()
        try:
            value = json.loads(raw) if raw.startswith('"') else raw
        except ValueError:
            continue
        if isinstance(value, str):
            out[key.strip()] = value
    return out


def parse_network_status(text: str) -> dict[str, list[str]]:
    """A Multus network-status value (JSON list of ``{interface, ips, ...}``) -> {interface: [ips]}.

    Entries without ``interface`` go under ``k8s-pod-network``; order and duplicates are kept
    as the annotation gives them (minus repeats). ``ParseError`` for anything that is not that list.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise errors.ParseError(f"network-status is not JSON: {exc}") from None
    if not isinstance(doc, list):
        raise errors.ParseError("network-status is not a JSON list")
    out: dict[str, list[str]] = {}
    for entry in doc:
        if not isinstance(entry, dict):
            raise errors.ParseError("network-status entry is not an object")
        name = entry.get("interface") or DEFAULT_POD_NETWORK
        ips = entry.get("ips") or []
        if not isinstance(name, str) or not isinstance(ips, list):
            raise errors.ParseError(f"network-status entry has a bad interface or ips: {entry!r:.200}")
        bucket = out.setdefault(name, [])
        for ip in ips:
            if isinstance(ip, str) and ip and ip not in bucket:
                bucket.append(ip)
    return {k: v for k, v in out.items() if v}


def merge_addresses(local: dict[str, list[str]], annotated: dict[str, list[str]]) -> dict[str, list[str]]:
    """Local addresses, renamed and ordered by the annotation where it names them.

    An annotated address found locally under another name moves to the annotated name (no
    address is reported twice); addresses the annotation does not mention stay where they are.
    """
    claimed = {ip for ips in annotated.values() for ip in ips}
    merged: dict[str, list[str]] = {}
    for name, ips in local.items():
        rest = [ip for ip in ips if ip not in claimed]
        if rest:
            merged[name] = rest
    for name, ips in annotated.items():
        extra = [ip for ip in merged.pop(name, []) if ip not in ips]
        merged[name] = [*ips, *extra]
    return merged


def read_network_status(path: str) -> dict[str, list[str]]:
    """The network-status annotation of the downward-API file at ``path``; {} when absent or unreadable."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    value = parse_annotations(text).get(NETWORK_STATUS)
    if not value:
        return {}
    try:
        return parse_network_status(value)
    except errors.ParseError:
        return {}


def collect(
    commands: CommandRunner,
    gpus: GpuTelemetry,
    *,
    cpuinfo_path: str = "/proc/cpuinfo",
    annotations_path: str = config.Settings.podinfo_annotations,
) -> NodeFacts:
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
    annotated = read_network_status(annotations_path) if annotations_path else {}
    if annotated:
        addresses = merge_addresses(addresses, annotated)
    return NodeFacts(cpu, model, count, addresses)
