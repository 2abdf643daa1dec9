"""Simulated GPU nodes: ``contexts()`` builds ``sim-<i>`` nodes whose GPU seam replays recordings.

Each simulated node is a ``CheckContext`` over a ``SimTelemetry`` (8 fake H100s) and a
``SimRunner`` that replays the synthetic recordings in ``workers/simdata/`` for the programs the
GPU checks run (``ap-bandwidth``, ``ap-gpumem``, ``dcgmi diag``). The real checks, the real
engine and the real worker/task code run on top; only the seam is fake.

Faults (``--fault NODE:CHECK[:KIND]``) change what one node's seam answers for one check:

- a KIND of the check's own (``FAULTS``; the first is the default, ``fatal`` its node-killing one;
  ``busy``, for ``pciebw`` and ``gpumem``, is no fault: a training job shares one GPU, whose
  figure is low and must be skipped, not judged: ``NOT_FAULTS``);
- ``hang``: the tool (or the NVML call) sleeps past its timeout;
- ``error``: the tool fails (or NVML answers an error), so the check reports ``error``.

The simulated network: each node has one address on interface ``sim0`` in 198.18.0.0/15 (the
RFC 2544 benchmarking range, never a real peer), ``sim-<i>`` at 198.18.0.0 + i + 1. Its worker
heartbeats it in the node record, where the ``iperf`` ring finds it; ``ping`` finds its peers
through ``SimPeers`` (the live simulated nodes, or its next ``NEIGHBOURS`` of them in a large
simulation). Both run their real code; the command seam answers ``ping`` and ``iperf3`` from a
link matrix (``SimNetwork``): every link is up at ``LINK_GBPS`` except those touching a node
with a network fault. ``NODE:ping:down``: NODE answers nothing and sends nothing (every pair
with it loses all packets, and iperf3 cannot connect); ``NODE:iperf:slow``: every link of NODE
carries ``SLOW_GBPS``; ``NODE:ping:mtu`` (opt-in, ``OPT_IN_FAULTS``): NODE's switch port is at
``SHORT_MTU`` while the fabric carries jumbo frames, so small pings pass and full-size Don't-Fragment
probes (``ping``'s ``mtu``) to or from it vanish. The gather's localisation then names NODE, as it
would on a real fleet.
A fault on a link touches both ends, so every simulator process must know every network fault:
``autopilot up`` hands each process the network faults of the others (``link_faults``).

Memory: a process may host 1,000 nodes, so nodes with the same faults share one runner and one
telemetry (both immutable), and every node shares the settings, the clock and the recordings. A
node costs its ``CheckContext`` and little else. ``SimRunner`` is written here rather than reusing
``testing.FakeRunner`` because a long-running simulator must not keep a log of every call, must
answer whatever parameters a request carries (``--samples 30``, ``-r 2``), and must make ``hang``
cancellable by the engine's watchdog.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from autopilot import clock, commands, config, errors, gpuident, gpus, parsing, peers
from autopilot.context import CheckContext
from autopilot.registry import CheckRegistry
from autopilot.testing import FakeGpu, FakeTelemetry, Recording
from workers import simnoise

SIMDATA = Path(__file__).with_name("simdata")
GPU_COUNT = 8
GPU_NAME = "NVIDIA H100 80GB HBM3"
PREFIX = "sim-"
MAX_NODES = 100_000
GENERIC_KINDS = ("hang", "error")
NOISE_SEED = 1  # the live simulator's fleet (``--sim-noise``): the same device factors on every start
_SIM_NAME = re.compile(re.escape(PREFIX) + r"(0|[1-9][0-9]{0,5})")

# Where each check meets the seam: the program it runs, or the NVML call it makes.
TOOL_OF = {"pciebw": "ap-bandwidth", "gpumem": "ap-gpumem", "dcgm": "dcgmi"}
NVML_OF = {"remapped": "remapped_rows", "gpupower": "clock_event_reasons"}
# The network checks' programs: answered from the link matrix, not from recordings.
NET_TOOL_OF = {"ping": "ping", "iperf": "iperf3"}
_NET_TOOLS = frozenset(NET_TOOL_OF.values())

INTERFACE = "sim0"
FABRIC = ipaddress.IPv4Network("198.18.0.0/15")
LINK_GBPS = 100.0
SLOW_GBPS = 8.0  # far below half the median, so the ring grades every pair of a slow node ``warn``
NEIGHBOURS = 16  # peers a simulated node pings when no node list is given (see SimPeers)
SHORT_MTU = 1500  # the MTU of a ``ping:mtu`` node's switch port
PING_HEADERS = 28  # IPv4 + ICMP header bytes in front of a ping's payload (simulated addresses are IPv4)
RTT_MS = (0.041, 0.052, 0.067, 0.009)  # min/avg/max/mdev of a healthy simulated link

# check -> kind -> what it simulates. The first kind is the check's default (its typical failure).
FAULTS: dict[str, dict[str, str]] = {
    "pciebw": {
        "low": "GPU 3 measures 2.1 GB/s host-to-device (below the floor: fail)",
        "narrow": "GPU 3 link trained at x8 of x16, 26 GB/s (under the Gen5 x16 floor: fail)",
        "busy": "a training job uses GPU 3 (61 GiB allocated, kernels 97% of the time), which measures "
        "21.3 GB/s: skipped as in use by others, not judged",
    },
    "remapped": {
        "pending": "GPU 2 has a pending row remap (warn)",
        "fatal": "GPU 5 row remapping failed (fatal fail: EVICT)",
    },
    "dcgm": {
        "persistence": "DCGM software test fails: persistence mode disabled on GPU 4 (fail, not fatal)",
        "fatal": "DCGM pcie test fails on GPU 1 (fatal fail: EVICT)",
    },
    "gpupower": {
        "brake": "GPU 6 in HW slowdown from the power brake (fail)",
        "thermal": "GPU 6 in SW thermal slowdown (warn)",
    },
    "gpumem": {
        "slow": "GPU 2 DGEMM at 9.7 TFLOPS (below the floor)",
        "mismatch": "GPU 2 DAXPY computed wrong numbers (4096 mismatches; fatal fail: EVICT)",
        "busy": "a training job uses GPU 2 (61 GiB allocated, kernels 97% of the time), which measures "
        "DAXPY 1466 GB/s, DGEMM 21 TFLOPS: skipped as in use by others, not judged",
    },
    "ping": {
        "down": "the node's link is down: no ping to or from it is answered, iperf3 cannot connect (fail; "
        "the gather names the node as the suspect)",
    },
    "iperf": {
        "slow": f"every link of the node carries {SLOW_GBPS:g} of {LINK_GBPS:g} Gb/s (the ring's pairs with it warn "
        "below threshold_gbps, or below half the median when most pairs are fast; the ring names the node)",
    },
}
# Kinds a check shows only with an option on: ``ping:mtu`` is seen by the full-size probe of
# ``AUTOPILOT_PING_MTU`` alone, and a node with it passes the default ping. ``--fault`` accepts them and the
# help lists them; ``kinds()`` leaves them out, so bench.quality's mix (every kind of ``kinds()``, run with
# default settings) is unchanged until it asks for them with the option set.
OPT_IN_FAULTS: dict[str, dict[str, str]] = {
    "ping": {
        "mtu": f"the node's switch port is at MTU {SHORT_MTU} on a jumbo-frame fabric: small pings pass, full-size "
        "Don't-Fragment probes to or from it vanish (fail with AUTOPILOT_PING_MTU set; the gather names the node)",
    },
}
# Kinds that are no fault: the verdict must stay as it is (a GPU in use by others is skipped, not judged).
NOT_FAULTS = frozenset({("pciebw", "busy"), ("gpumem", "busy")})
_GENERIC_HELP = {"hang": "the tool (or NVML call) sleeps past its timeout (error)", "error": "the tool fails (error)"}

# A training job on a GPU, as NVML shows it to our pod: its memory and kernel time, not its
# process (the driver lists only the processes of the caller's PID namespace; autopilot.gpus).
_TRAINING_JOB = gpus.GpuActivity(processes=0, memory_used_bytes=61 << 30, utilization_pct=97.0)
_TRAINING_SAMPLE = gpus.GpuSample(64.0, 612.0, 1980.0, 97.0)
# Telemetry changes per (check, kind): GPU index -> FakeGpu fields.
_TELEMETRY: dict[tuple[str, str], dict[int, dict[str, object]]] = {
    ("pciebw", "narrow"): {3: {"link": gpus.PcieLink(5, 5, 8, 16)}},
    ("remapped", "pending"): {2: {"remapped": gpus.RemappedRows(0, 1, True, False)}},
    ("remapped", "fatal"): {5: {"remapped": gpus.RemappedRows(0, 3, False, True)}},
    ("gpupower", "brake"): {6: {"reasons": frozenset({"hw_slowdown", "hw_power_brake_slowdown"})}},
    ("gpupower", "thermal"): {6: {"reasons": frozenset({"sw_thermal_slowdown"})}},
    ("pciebw", "busy"): {3: {"activity": _TRAINING_JOB, "sample": _TRAINING_SAMPLE}},
    ("gpumem", "busy"): {2: {"activity": _TRAINING_JOB, "sample": _TRAINING_SAMPLE}},
}
# NVML error answered for ``error`` faults of NVML-only checks (NVML_ERROR_UNKNOWN).
_NVML_ERROR_GPU, _NVML_ERROR_CODE = 4, 999


@dataclasses.dataclass(frozen=True)
class Fault:
    node: str
    check: str
    kind: str

    def describe(self) -> str:
        return f"{self.node}:{self.check}:{self.kind}: {kinds(self.check, opt_in=True)[self.kind]}"


def kinds(check: str, *, opt_in: bool = False) -> dict[str, str]:
    """The fault kinds of ``check`` and what each simulates (first: the default); ``opt_in``: with the
    kinds only an option shows (``OPT_IN_FAULTS``)."""
    return {**FAULTS[check], **_GENERIC_HELP, **(OPT_IN_FAULTS.get(check, {}) if opt_in else {})}


def node_names(n: int, offset: int = 0) -> list[str]:
    return [f"{PREFIX}{i}" for i in range(offset, offset + n)]


def parse_fault(spec: str, nodes: Sequence[str] | None = None) -> Fault:
    """``NODE:CHECK[:KIND]`` -> ``Fault``; ``BadParameter("--fault")`` naming what is wrong."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise errors.BadParameter("--fault", f"expected NODE:CHECK[:KIND], got {spec[:80]!r}")
    node, check = parts[0], parts[1]
    if nodes is not None and node not in nodes:
        shown = f"{nodes[0]}..{nodes[-1]}" if nodes else "none"
        raise errors.BadParameter("--fault", f"unknown simulated node {node[:64]!r} (simulated: {shown})")
    if check not in FAULTS:
        raise errors.BadParameter("--fault", f"unknown check {check[:64]!r} (simulated: {', '.join(FAULTS)})")
    known = kinds(check, opt_in=True)
    kind = parts[2] if len(parts) == 3 else next(iter(FAULTS[check]))
    if kind not in known:
        note = f"{check} has no fatal failure; " if kind == "fatal" else ""
        choices = ", ".join(known)
        raise errors.BadParameter("--fault", f"{note}unknown kind {kind[:64]!r} for {check} (kinds: {choices})")
    return Fault(node, check, kind)


def address(node: str, *, field: str = "node") -> str:
    """The simulated address of ``sim-<i>``: 198.18.0.0 + i + 1."""
    if not _is_sim(node):
        raise errors.BadParameter(field, f"not a simulated node: {node[:64]!r}")
    return _address_of(node)


# Both directions cached: every simulated ping asks them once per peer (16 per node per fan-out),
# and ``ipaddress`` parsing was a fifth of a simulated ping's CPU (PERFORMANCE.md, round 5). Pure
# functions of their argument; the bound keeps a 1,000-node simulator's fleet in each.
@functools.lru_cache(maxsize=2048)
def _address_of(node: str) -> str:
    return str(FABRIC[_index(node) + 1])


@functools.lru_cache(maxsize=2048)
def node_at(addr: str) -> str | None:
    """The simulated node answering on ``addr``, or None for an address off the simulated fabric."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip not in FABRIC or not 1 <= int(ip) - int(FABRIC.network_address) <= MAX_NODES:
        return None
    return f"{PREFIX}{int(ip) - int(FABRIC.network_address) - 1}"


def addresses(node: str) -> dict[str, list[str]]:
    """What a simulated node reports as its interfaces in its node record."""
    return {INTERFACE: [address(node)]}


def parse_faults(specs: Iterable[str], nodes: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """node -> check -> kind; a second fault for the same node and check is an error."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        if is_xid_fault(spec):
            parse_xid_fault(spec, nodes)  # validated here, injected by the follower (workers/follower.py)
            continue
        fault = parse_fault(spec, nodes)
        if fault.check in out.get(fault.node, {}):
            raise errors.BadParameter("--fault", f"two faults for {fault.node}:{fault.check}")
        out.setdefault(fault.node, {})[fault.check] = fault.kind
    return out


# ---------------------------------------------------------------- passive events (--fault NODE:xid:CODE[@WHEN])
# An Xid fault is no seam change: the worker's follower gets the driver's line for it, at once or
# WHEN (a duration, e.g. 30s) after the worker started, as `autopilot inject` does while it runs.

XID_MAX = 65535


@dataclasses.dataclass(frozen=True)
class XidFault:
    node: str
    code: int
    gpu: int = 0
    after_s: float = 0.0


def is_xid_fault(spec: str) -> bool:
    return spec.split(":")[1:2] == ["xid"]


def parse_xid_code(text: str, *, field: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) <= XID_MAX:
        raise errors.BadParameter(field, f"an Xid code is a number 0..{XID_MAX}, got {text[:20]!r}")
    return int(text)


def parse_gpu(text: str, *, field: str) -> int:
    if not text.strip().isdigit() or not 0 <= int(text) < GPU_COUNT:
        raise errors.BadParameter(field, f"a simulated GPU is 0..{GPU_COUNT - 1}, got {text[:20]!r}")
    return int(text)


def parse_xid_fault(spec: str, nodes: Sequence[str] | None = None) -> XidFault:
    """``NODE:xid:CODE[:GPU][@WHEN]`` -> ``XidFault``; ``BadParameter("--fault")`` naming what is wrong."""
    body, _, when = spec.partition("@")
    parts = body.split(":")
    if len(parts) not in (3, 4) or parts[1] != "xid":
        raise errors.BadParameter("--fault", f"expected NODE:xid:CODE[:GPU][@WHEN], got {spec[:80]!r}")
    if nodes is not None and parts[0] not in nodes:
        raise errors.BadParameter("--fault", f"unknown simulated node {parts[0][:64]!r}")
    gpu = parse_gpu(parts[3], field="--fault") if len(parts) == 4 else 0
    after = parsing.parse_duration(when, field="--fault") if when else 0.0
    return XidFault(parts[0], parse_xid_code(parts[2], field="--fault"), gpu, after)


def xid_faults(specs: Iterable[str], nodes: Sequence[str] | None = None) -> list[XidFault]:
    return [parse_xid_fault(s, nodes) for s in specs if is_xid_fault(s)]


def xid_message(code: int, gpu: int) -> str:
    """The kernel line the driver prints for Xid ``code`` on simulated GPU ``gpu`` (bus ``0000:<gpu>:00``)."""
    return f"NVRM: Xid (PCI:0000:{gpu:02x}:00): {code}, pid='<unknown>', name=<unknown>, simulated Xid {code}"


def network_faults(specs: Iterable[str]) -> list[str]:
    """The specs of ``specs`` that fault a link (``ping``/``iperf``): every process needs them."""
    return [s for s in specs if s.split(":")[1:2] and s.split(":")[1] in NET_TOOL_OF]


def contexts(
    settings: config.Settings,
    n: int,
    faults: Sequence[str],
    offset: int = 0,
    *,
    live_nodes: Callable[[], Sequence[str]] | None = None,
    link_faults: Sequence[str] = (),
    noise: float = 0.0,
    checks: CheckRegistry,
) -> dict[str, CheckContext]:
    """Contexts of ``sim-<offset>`` .. ``sim-<offset+n-1>``, with ``faults`` applied.

    ``noise`` (``--sim-noise``): 0 replays the recordings as they are; above 0 every node's
    bandwidth figures get the spread of ``workers.simnoise`` (per-device variation from a published
    study, its run-to-run noise scaled by ``noise``), seeded by ``NOISE_SEED`` and the node's name.

    ``link_faults``: network faults of simulated nodes hosted by other processes (any ``sim-<i>``),
    which change only what this process's nodes measure towards them. ``live_nodes``: the names
    of the live nodes (the worker reads them from the store), where ``ping`` finds the other
    simulated nodes (``SimPeers``); without it, ``ping`` has no peers and says ``skipped``.
    """
    if not 1 <= n <= MAX_NODES:
        raise errors.BadParameter("--simulate", f"must be between 1 and {MAX_NODES}, got {n}")
    if offset < 0:
        raise errors.BadParameter("--simulate-offset", f"must be >= 0, got {offset}")
    check_noise(noise)
    names = node_names(n, offset)
    by_node = parse_faults(faults, names)
    remote = parse_faults(link_faults)
    for node, faulted in remote.items():
        address(node, field="--link-fault")
        if any(check not in NET_TOOL_OF for check in faulted):
            raise errors.BadParameter("--link-fault", f"only {' and '.join(NET_TOOL_OF)} faults touch other nodes")
    network = SimNetwork.of({**remote, **by_node})
    # The simulated seam answers ap-bandwidth, not NVIDIA's bandwidthTest.
    sim_settings = dataclasses.replace(settings, bandwidthtest_path="")
    shared_clock = clock.SystemClock()
    live = _Cached(live_nodes, settings.heartbeat_interval_s) if live_nodes is not None else None
    seams: dict[frozenset[tuple[str, str]], tuple[SimRunner, SimTelemetry]] = {}
    out: dict[str, CheckContext] = {}
    for name in names:
        profile = frozenset(by_node.get(name, {}).items())
        if profile not in seams:
            seams[profile] = build_seam(sim_settings, dict(profile), network, checks=checks)
        runner, telemetry = seams[profile]
        directory = SimPeers(name, live) if live is not None else peers.StaticPeers(())
        seam: commands.CommandRunner = runner
        if noise > 0:
            seam = simnoise.NoisyRunner(runner, name, NOISE_SEED, noise=noise)
        out[name] = CheckContext(
            name, sim_settings, seam, telemetry.for_node(name), shared_clock, peers=directory, checks=checks
        )
    return out


def check_noise(noise: float) -> None:
    """``--sim-noise`` is a finite scale in 0..``simnoise.MAX_NOISE``."""
    if not 0 <= noise <= simnoise.MAX_NOISE:
        raise errors.BadParameter("--sim-noise", f"must be between 0 and {simnoise.MAX_NOISE:g}, got {noise!r}")


class _Cached:
    """``fetch()``'s answer, fetched again once ``ttl_s`` has passed: every node of a simulator
    asks for the live nodes on every ping, and one store read per heartbeat serves them all."""

    def __init__(self, fetch: Callable[[], Sequence[str]], ttl_s: float) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: tuple[str, ...] = ()
        self._at = float("-inf")

    def __call__(self) -> tuple[str, ...]:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl_s:
                self._value = tuple(self._fetch())
                self._at = time.monotonic()
            return self._value


class SimPeers:
    """The peer directory of one simulated node: simulated nodes at their simulated addresses.

    Named nodes (an explicit selection) are all returned. Without names, the node's ``NEIGHBOURS``
    next live simulated nodes in ring order (all of them in a small simulation): a real fleet
    pings every node, but N simulated nodes pinging each other in one or a few processes is
    O(N^2) work (a million pings per round at 1,000 nodes) for no more insight, and a bounded
    ring still puts every node in 2 x NEIGHBOURS pairs, enough for localisation to single out a
    node whose every pair is bad. Real nodes are never peers: they cannot reach this fabric.
    """

    def __init__(self, node: str, live: Callable[[], Sequence[str]]) -> None:
        self.node = node
        self._live = live

    def peers(self, nodes: Sequence[str] | None = None) -> list[peers.Peer]:
        if nodes is not None:
            chosen = [n for n in dict.fromkeys(nodes) if _is_sim(n)]
        else:
            ring, at_of = _ring(tuple(self._live()))
            if self.node in at_of:
                at = at_of[self.node]
            else:
                ring = tuple(sorted({*ring, self.node}, key=_index))
                at = ring.index(self.node)
            chosen = [ring[(at + k) % len(ring)] for k in range(1, min(NEIGHBOURS, len(ring) - 1) + 1)]
        return [peers.Peer(n, INTERFACE, address(n)) for n in chosen]


@functools.lru_cache(maxsize=8)
def _ring(live: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, int]]:
    """The live simulated nodes in ring order, and each one's place. Cached: every node of a
    simulator asks with the same live list (``_Cached``), and sorting every live name per ping
    was a tenth of a simulated node's CPU at 250 nodes, growing with the fleet (PERFORMANCE.md,
    round 4). Callers never change what it returns."""
    ring = tuple(sorted(set(filter(_is_sim, live)), key=_index))
    return ring, {n: i for i, n in enumerate(ring)}


def _is_sim(node: str) -> bool:
    return bool(_SIM_NAME.fullmatch(node)) and _index(node) < MAX_NODES


def _index(node: str) -> int:
    return int(node[len(PREFIX) :])


def build_seam(
    settings: config.Settings, faults: Mapping[str, str], network: SimNetwork | None = None, *, checks: CheckRegistry
) -> tuple[SimRunner, SimTelemetry]:
    """The runner and telemetry of a node with ``faults`` (check -> kind) on ``network``."""
    table: dict[tuple[str, ...], Recording] = {}
    for name in TOOL_OF.values():
        table.update(_recordings(name, "ok"))
    hang_tools: set[str] = set()
    broken_tools: set[str] = set()
    devices: dict[int, dict[str, object]] = {i: {"name": GPU_NAME} for i in range(GPU_COUNT)}
    nvml_faults: dict[str, tuple[str, float]] = {}
    for check, kind in faults.items():
        tool = TOOL_OF.get(check) or NET_TOOL_OF.get(check)
        if kind == "hang" and tool:
            hang_tools.add(tool)
        elif check in NET_TOOL_OF:
            if kind == "error":
                broken_tools.add(NET_TOOL_OF[check])
            # down and slow live in the network's link matrix, which knows every node's faults
        elif kind == "hang":
            nvml_faults[NVML_OF[check]] = ("hang", _timeout(settings, checks, check) + 2.0)
        elif tool:
            table.update(_recordings(tool, kind))
        elif kind == "error":
            nvml_faults[NVML_OF[check]] = ("error", 0.0)
        for index, fields in _TELEMETRY.get((check, kind), {}).items():
            devices[index].update(fields)
    gpu_list = [FakeGpu(**fields, pci_bus_id=f"00000000:{i:02X}:00.0") for i, fields in devices.items()]  # type: ignore[arg-type]
    down = faults.get("ping") == "down"
    slow = faults.get("iperf") == "slow"
    short = faults.get("ping") == "mtu"
    links = NetworkSeam(network or SimNetwork(), frozenset(broken_tools), down=down, slow=slow, short=short)
    return SimRunner(table, frozenset(hang_tools), links=links), SimTelemetry(gpu_list, nvml_faults)


def _timeout(settings: config.Settings, checks: CheckRegistry, check: str) -> float:
    default = checks.get(check).timeout_s if check in checks else 60.0
    return float(settings.check_timeouts.get(check, default))


@functools.cache
def _recordings(tool: str, scenario: str) -> dict[tuple[str, ...], Recording]:
    """The recordings of ``workers/simdata/<tool>.<scenario>.json`` by replay key (read once per process)."""
    raw = json.loads((SIMDATA / f"{tool}.{scenario}.json").read_text())
    return {replay_key(r.argv): r for r in (Recording.from_dict(item) for item in raw["recordings"])}


def replay_key(argv: Sequence[str]) -> tuple[str, ...]:
    """What an answer depends on: the program and the GPU (``--device``, ``--pci-bus-id``) or level
    (``-r``) asked for.

    Sizes and repeat counts (``--size-mib``, ``--samples``) only change how long a real run takes,
    so a request with other values still gets the recorded answer.
    """
    args = [str(a) for a in argv]
    key = [os.path.basename(args[0])]
    for flag in ("--device", "--pci-bus-id", "-r"):
        if flag in args[:-1]:
            key += [flag, args[args.index(flag) + 1]]
    return tuple(key)


@dataclasses.dataclass(frozen=True)
class SimNetwork:
    """The link matrix of the simulated fabric: which nodes are down, slow, or behind a short port.

    A link is down when either end is down, and slow when either end is slow; a link with an end in
    ``short`` drops packets above ``SHORT_MTU``; every other link answers pings at ``RTT_MS`` and
    carries ``LINK_GBPS``.
    """

    down: frozenset[str] = frozenset()
    slow: frozenset[str] = frozenset()
    short: frozenset[str] = frozenset()

    @classmethod
    def of(cls, faults: Mapping[str, Mapping[str, str]]) -> SimNetwork:
        """From node -> check -> kind (the parsed faults of every simulated node)."""
        return cls(
            frozenset(n for n, f in faults.items() if f.get("ping") == "down"),
            frozenset(n for n, f in faults.items() if f.get("iperf") == "slow"),
            frozenset(n for n, f in faults.items() if f.get("ping") == "mtu"),
        )


@dataclasses.dataclass(frozen=True)
class NetworkSeam:
    """What one node (or the nodes sharing its faults) measures on ``network``: its own faults
    (``down``, ``slow``, ``broken`` tools) and the far end's, which the matrix knows."""

    network: SimNetwork
    broken: frozenset[str] = frozenset()
    down: bool = False
    slow: bool = False
    short: bool = False

    def answer(self, argv: tuple[str, ...]) -> commands.CommandResult:
        tool = os.path.basename(argv[0])
        if tool in self.broken:
            said = f"{tool}: socket: Operation not permitted (simulated error)\n"
            return commands.CommandResult(argv, 2, "", said)
        target = node_at(argv[-1] if tool == "ping" else _flag(argv, "-c"))
        if target is None:
            return commands.CommandResult(argv, 2, "", f"{tool}: connect: Network is unreachable\n")
        cut = self.down or target in self.network.down
        if tool == "ping":
            size = int(_flag(argv, "-s") or 56)
            # A frame above the port's MTU is dropped silently, as a switch does (no ICMP from a switch).
            dropped = size + PING_HEADERS > SHORT_MTU and (self.short or target in self.network.short)
            return _ping_output(argv, int(_flag(argv, "-c") or 1), answered=not (cut or dropped), size=size)
        if cut:
            error = "unable to connect to server - server may have stopped running: Connection timed out"
            return commands.CommandResult(argv, 1, json.dumps({"start": {}, "end": {}, "error": error}), "")
        gbps = SLOW_GBPS if self.slow or target in self.network.slow else LINK_GBPS
        return commands.CommandResult(argv, 0, _iperf_output(gbps, int(_flag(argv, "-t") or 5)), "")


def _flag(argv: Sequence[str], flag: str) -> str:
    return str(argv[argv.index(flag) + 1]) if flag in argv[:-1] else ""


def _ping_output(argv: tuple[str, ...], count: int, *, answered: bool, size: int = 56) -> commands.CommandResult:
    """What iputils ``ping -n -q -c COUNT [-s SIZE]`` prints for a link that answers or not."""
    addr = argv[-1]
    head = f"PING {addr} ({addr}) {size}({size + PING_HEADERS}) bytes of data.\n\n--- {addr} ping statistics ---\n"
    if not answered:
        stats = f"{count} packets transmitted, 0 received, 100% packet loss, time {max(0, count - 1) * 1000}ms\n"
        return commands.CommandResult(argv, 1, head + stats, "")
    lo, avg, hi, mdev = RTT_MS
    stats = (
        f"{count} packets transmitted, {count} received, 0% packet loss, time {max(0, count - 1) * 1000}ms\n"
        f"rtt min/avg/max/mdev = {lo:.3f}/{avg:.3f}/{hi:.3f}/{mdev:.3f} ms\n"
    )
    return commands.CommandResult(argv, 0, head + stats, "")


def _iperf_output(gbps: float, duration_s: int) -> str:
    """The parts of ``iperf3 -c ... -J`` that ``network.parse_iperf3`` reads."""
    bps = gbps * 1e9
    return json.dumps(
        {
            "start": {"test_start": {"protocol": "TCP", "duration": duration_s}},
            "end": {
                "sum_sent": {"seconds": duration_s, "bits_per_second": bps * 1.002, "retransmits": 0},
                "sum_received": {"seconds": duration_s, "bits_per_second": bps},
            },
        }
    )


class SimServer:
    """A simulated ``iperf3 -s``: runs until terminated or its lifetime ends; never a process."""

    pid = 0

    def __init__(self, lifetime_s: float) -> None:
        self._end = time.monotonic() + lifetime_s
        self._stopped = threading.Event()

    def poll(self) -> int | None:
        return 0 if self._stopped.is_set() or time.monotonic() >= self._end else None

    def output(self) -> str:
        return ""

    def terminate(self, grace_s: float = 2.0) -> None:
        self._stopped.set()


class SimRunner:
    """The command seam of simulated nodes: answers from an immutable table of recordings, and
    ``ping``/``iperf3`` from the simulated network."""

    def __init__(
        self,
        table: Mapping[tuple[str, ...], Recording],
        hang_tools: frozenset[str] = frozenset(),
        scope: commands.ProcessScope | None = None,
        *,
        links: NetworkSeam | None = None,
    ) -> None:
        self._table = table
        self._links = links
        self._tools = frozenset(k[0] for k in table) | (frozenset(NET_TOOL_OF.values()) if links else frozenset())
        self._hang = hang_tools
        self._scope = scope

    def bind(self, scope: commands.ProcessScope) -> SimRunner:
        """This runner inside a check run, so the watchdog's cancel ends a ``hang``."""
        # The table and tool set shared, not rebuilt for every check; built without ``copy.copy``'s
        # reduce protocol, which was most of binding (five binds per simulated node per fan-out).
        bound = type(self).__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound._scope = scope
        return bound

    def spawn(
        self, argv: Sequence[str], *, lifetime_s: float, env: Mapping[str, str] | None = None
    ) -> commands.Background:
        """An ``iperf3`` server of the ring: nothing to start, the link matrix answers the clients."""
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        if self._links is None or os.path.basename(str(argv[0])) != NET_TOOL_OF["iperf"]:
            raise errors.ToolNotFound(f"{argv[0]}: cannot be started on a simulated node")
        return SimServer(lifetime_s)

    def which(self, name: str) -> str | None:
        return name if os.path.basename(name) in self._tools else None

    def answers_at_once(self, program: str) -> bool:
        """``commands.InstantRunner``: every answer is computed here at once, except a ``hang``
        fault's, which sleeps (its callers keep their threads, so each hung call keeps its own
        timeout)."""
        tool = os.path.basename(program)
        return tool in self._tools and tool not in self._hang

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> commands.CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        # The argv as strings once, and no replay key for the network tools (16 pings per node per
        # fan-out), which the link matrix answers: both were most of this seam's CPU.
        args = tuple(str(a) for a in argv)
        tool = os.path.basename(args[0])
        if tool not in self._tools:
            raise errors.ToolNotFound(f"{argv[0]}: not found on PATH (simulated node)")
        if tool in self._hang:
            self._sleep(timeout)
            raise errors.ToolTimeout(tool, timeout)
        if self._links is not None and tool in _NET_TOOLS:
            return self._links.answer(args)
        key = replay_key(args)
        rec = self._table.get(key)
        if rec is None:
            # A GPU or level the node does not have: the usage error the real program gives.
            said = f"{tool}: simulated node has no answer for {list(key[1:])}\n"
            return commands.CommandResult(args, 2, "", said)
        return commands.CommandResult(args, rec.returncode, rec.stdout, rec.stderr)

    def _sleep(self, timeout: float) -> None:
        # Poll rather than one long sleep: the watchdog cancels the scope when the check's own
        # timeout is shorter than the tool's, and a real killed program returns at once.
        end = time.monotonic() + timeout
        while time.monotonic() < end and not (self._scope is not None and self._scope.cancelled):
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))


class SimTelemetry(FakeTelemetry):
    """``FakeTelemetry`` whose NVML calls named in ``faults`` hang or fail (method -> (kind, seconds))."""

    def __init__(self, devices: Sequence[FakeGpu], faults: Mapping[str, tuple[str, float]] | None = None) -> None:
        super().__init__(devices)
        self._faults = dict(faults or {})
        self._node = ""
        self._names: dict[int, tuple[str, str]] = {}  # index -> the node's fake (UUID, serial)

    def for_node(self, node: str) -> SimTelemetry:
        """This telemetry (devices and faults shared) with the stable fake UUIDs and serials of ``node``'s GPUs."""
        mine = copy.copy(self)
        mine._node = node
        mine._names = {}
        return mine

    def identity(self, index: int) -> gpus.GpuIdentity:
        ident = super().identity(index)  # raises as the device does (a lost GPU)
        if not self._node:
            return ident
        # The fake UUID and serial hashed once per GPU, not on each of the ~20 reads of a node's task.
        names = self._names.get(index)
        if names is None:
            names = self._names[index] = (gpuident.sim_uuid(self._node, index), gpuident.sim_serial(self._node, index))
        return gpus.GpuIdentity(ident.index, ident.name, names[0], ident.pci_bus_id, names[1])

    def _maybe_fail(self, method: str, index: int) -> None:
        fault = self._faults.get(method)
        if fault is None:
            return
        kind, seconds = fault
        if kind == "hang":
            time.sleep(seconds)
            raise errors.GpuError(f"GPU {index} {method}: NVML did not answer in {seconds:g} s")
        if index == _NVML_ERROR_GPU:
            raise errors.GpuError(f"GPU {index} {method}: Unknown Error", _NVML_ERROR_CODE)

    def remapped_rows(self, index: int) -> gpus.RemappedRows:
        self._maybe_fail("remapped_rows", index)
        return super().remapped_rows(index)

    def clock_event_reasons(self, index: int) -> frozenset[str]:
        self._maybe_fail("clock_event_reasons", index)
        return super().clock_event_reasons(index)


def help_text() -> str:
    """The fault catalogue, for ``--help`` and the README."""
    lines = []
    for check in FAULTS:
        for i, (kind, what) in enumerate(kinds(check, opt_in=True).items()):
            lines.append(f"{check}:{kind}{' (default)' if i == 0 else ''}  {what}")
    lines.append("xid:CODE[:GPU][@WHEN]  the driver logs Xid CODE on GPU (default 0), now or WHEN (30s) after start")
    return "\n".join(lines)
