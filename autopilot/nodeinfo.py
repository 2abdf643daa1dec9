"""What a node is: CPU model, GPU model and count, interface addresses, expected GPUs. Read through the seams.

Expected GPUs (``expected_gpus``, ``GpuProbe``) are what the node *should* have, whatever NVML
says: the Node's allocatable ``nvidia.com/gpu`` (cluster seam), NVIDIA display-class PCI
functions in sysfs (vendor ``0x10de``, class ``0x03xxxx``), ``/dev/nvidia<N>`` device nodes, and
``AUTOPILOT_EXPECT_GPUS``. The Node's count is of physical GPUs (shared GPUs and MIG devices are
not counted as GPUs). The largest count wins; sysfs also gives the bus ids, so a GPU
missing from NVML can be named. The sysfs and /dev roots are parameters, so tests use a tree
in a temporary directory.

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
import logging
import re
from pathlib import Path

from autopilot import config, errors, network
from autopilot.cluster import ClusterClient, NodeInfo
from autopilot.commands import CommandRunner
from autopilot.gpus import GpuTelemetry
from autopilot.names import bus_id

log = logging.getLogger(__name__)

NVIDIA_VENDOR = 0x10DE
DISPLAY_CLASS = 0x03  # PCI base class "display controller": VGA (0x0300) and 3D (0x0302) GPUs
_DEV_NODE = re.compile(r"nvidia[0-9]+")


@dataclasses.dataclass(frozen=True)
class NodeFacts:
    cpu_model: str
    gpu_model: str
    gpu_count: int
    addresses: dict[str, list[str]]
    driver_version: str = ""


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
    """``ip -j addr show`` -> {interface: [addresses]} without loopback and link-local.

    iproute2 4.20 (Debian 10) prints empty objects among the links (``[{}, {"ifname": ...}, {}]``,
    greshake/i3status-rust#997); an entry that is not a link, or an address entry without a
    ``local`` address, is skipped rather than read as the address ``"None"`` that peers would ping.
    ``ValueError`` for text that is not a JSON list.
    """
    links = json.loads(text or "[]")
    if not isinstance(links, list):
        raise ValueError("ip -j addr: not a JSON list")
    out: dict[str, list[str]] = {}
    for link in links:
        name = link.get("ifname", "") if isinstance(link, dict) else ""
        if not isinstance(name, str) or not name or name == "lo":
            continue
        infos = link.get("addr_info")
        for info in infos if isinstance(infos, list) else ():
            local = info.get("local") if isinstance(info, dict) else None
            if not isinstance(local, str) or not local or info.get("scope") == "link":
                continue
            out.setdefault(name, []).append(local)
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
    out: dict[str, list[str]] = {}
    for entry in network.json_list(text, "network-status"):
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
    except errors.GpuError:
        count = 0
    # The model of the first GPU NVML identifies: GPU 0 out of service (lost, requires a reset) leaves
    # the node's count and model as they are, not "0 GPUs".
    model = ""
    for index in range(count):
        try:
            model = gpus.identity(index).name
        except errors.GpuUnavailable:
            break
        except errors.GpuError:
            continue
        break
    try:
        driver = gpus.driver_version() if count else ""
    except errors.GpuError:
        driver = ""
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
    return NodeFacts(cpu, model, count, addresses, driver)


def nvidia_pci_functions(sys_root: str = "/sys") -> tuple[str, ...]:
    """Bus ids of the NVIDIA GPUs the kernel enumerated (``<sys_root>/bus/pci/devices/*``), sorted.

    Only display-class functions count: an NVSwitch (bridge class) or a GPU's audio function is
    no GPU. Unreadable entries are left out; a missing tree (not Linux, no sysfs) gives ().
    """
    found: list[str] = []
    try:
        entries = sorted(Path(sys_root, "bus", "pci", "devices").iterdir())
    except OSError:
        return ()
    for entry in entries:
        try:
            vendor = int(entry.joinpath("vendor").read_text().strip(), 16)
            klass = int(entry.joinpath("class").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if vendor == NVIDIA_VENDOR and klass >> 16 == DISPLAY_CLASS:
            found.append(bus_id(entry.name))
    return tuple(found)


def nvidia_device_nodes(dev_root: str = "/dev") -> int:
    """How many ``/dev/nvidia<N>`` GPU device nodes exist (``nvidiactl``, ``nvidia-uvm`` are not GPUs)."""
    try:
        return sum(1 for p in Path(dev_root).iterdir() if _DEV_NODE.fullmatch(p.name))
    except OSError:
        return 0


@dataclasses.dataclass(frozen=True)
class ExpectedGpus:
    """The GPUs a node should have. ``count`` 0: nothing says it has any."""

    count: int = 0
    bus_ids: tuple[str, ...] = ()
    """Bus ids (``bus_id`` spelling) of the NVIDIA GPUs in sysfs; may be fewer than ``count``."""
    sources: tuple[str, ...] = ()
    """What said so, in words: ``Node allocatable nvidia.com/gpu=8``, ``8 NVIDIA PCI functions``."""

    def describe(self) -> str:
        return "; ".join(self.sources) or "nothing"


def expected_gpus(
    *, setting: int = 0, node: tuple[int, str] = (0, ""), sys_root: str = "/sys", dev_root: str = "/dev"
) -> ExpectedGpus:
    """What every source says about this node's GPUs, folded: the largest count wins.

    ``node``: (physical GPUs, in words) from the Node object (``node_gpus``); (0, "") without one.
    """
    pci = nvidia_pci_functions(sys_root)
    nodes = nvidia_device_nodes(dev_root)
    said = [
        node,
        (len(pci), f"{len(pci)} NVIDIA PCI functions in {sys_root}/bus/pci/devices"),
        (nodes, f"{nodes} {dev_root}/nvidia<N> device nodes"),
        (setting, f"AUTOPILOT_EXPECT_GPUS={setting}"),
    ]
    counted = [(n, why) for n, why in said if n > 0]
    return ExpectedGpus(max((n for n, _ in counted), default=0), pci, tuple(why for _, why in counted))


# GPU Feature Discovery's labels: with time-slicing or MPS the device plugin advertises
# physical GPUs x replicas, and with the MIG "single" strategy one nvidia.com/gpu per MIG device.
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
COUNT_LABEL = "nvidia.com/gpu.count"


def node_gpus(info: NodeInfo) -> tuple[int, str]:
    """Physical GPUs the Node advertises, in words: allocatable ``nvidia.com/gpu``, divided by
    ``nvidia.com/gpu.replicas`` when GPUs are shared; under the MIG ``single`` strategy
    (allocatable counts MIG devices) GFD's ``nvidia.com/gpu.count``, else just "at least 1"."""
    allocatable = info.allocatable_gpus
    words = f"Node allocatable nvidia.com/gpu={allocatable}"
    if allocatable <= 0:
        return 0, ""
    if info.labels.get(MIG_STRATEGY_LABEL) == "single":
        count = _positive(info.labels.get(COUNT_LABEL))
        if count:
            return count, f"{words} (MIG single; {COUNT_LABEL}={count})"
        return 1, f"{words} (MIG single: at least 1 GPU)"
    replicas = _positive(info.labels.get(REPLICAS_LABEL)) or 1
    if replicas > 1:
        return max(1, allocatable // replicas), f"{words} / {REPLICAS_LABEL}={replicas}"
    return allocatable, words


def _positive(text: str | None) -> int:
    try:
        value = int(str(text or "").strip())
    except ValueError:
        return 0
    return max(0, value)


@dataclasses.dataclass(frozen=True)
class GpuProbe:
    """Where a node's expected GPUs are read from; ``read`` reads them again on every call."""

    setting: int = 0
    sys_root: str = "/sys"
    dev_root: str = "/dev"

    def read(self, cluster: ClusterClient | None, node: str) -> ExpectedGpus:
        """Expected GPUs now; the Node object is asked when there is a cluster (a failed read there
        only drops that source: the others still count)."""
        said: tuple[int, str] = (0, "")
        if cluster is not None:
            try:
                said = node_gpus(cluster.get_node(node))
            except errors.ClusterError as exc:
                log.warning("expected GPUs: reading Node %s failed, its allocatable GPUs not counted: %s", node, exc)
        return expected_gpus(setting=self.setting, node=said, sys_root=self.sys_root, dev_root=self.dev_root)
