"""Simulated GPU nodes: ``contexts()`` builds ``sim-<i>`` nodes whose GPU seam replays recordings.

Each simulated node is a ``CheckContext`` over a ``SimTelemetry`` (8 fake H100s) and a
``SimRunner`` that replays the synthetic recordings in ``workers/simdata/`` for the programs the
GPU checks run (``ap-bandwidth``, ``ap-gpumem``, ``dcgmi diag``). The real checks, the real
engine and the real worker/task code run on top; only the seam is fake.

Faults (``--fault NODE:CHECK[:KIND]``) change what one node's seam answers for one check:

- a KIND of the check's own (``FAULTS``; the first is the default, ``fatal`` its node-killing one);
- ``hang``: the tool (or the NVML call) sleeps past its timeout;
- ``error``: the tool fails (or NVML answers an error), so the check reports ``error``.

Simulated nodes have no network: their peer directory is empty, so ``ping`` and ``iperf`` report
``skipped`` ("no other node") rather than reading every node's record on every run.

Memory: a process may host 1,000 nodes, so nodes with the same faults share one runner and one
telemetry (both immutable), and every node shares the settings, the clock and the recordings. A
node costs its ``CheckContext`` and little else. ``SimRunner`` is written here rather than reusing
``testing.FakeRunner`` because a long-running simulator must not keep a log of every call, must
answer whatever parameters a request carries (``--runs 3``, ``-r 2``), and must make ``hang``
cancellable by the engine's watchdog.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from autopilot import clock, commands, config, errors, gpuident, gpus, peers, registry
from autopilot.context import CheckContext
from autopilot.testing import FakeGpu, FakeTelemetry, Recording

SIMDATA = Path(__file__).with_name("simdata")
GPU_COUNT = 8
GPU_NAME = "NVIDIA H100 80GB HBM3"
PREFIX = "sim-"
MAX_NODES = 100_000
GENERIC_KINDS = ("hang", "error")

# Where each check meets the seam: the program it runs, or the NVML call it makes.
TOOL_OF = {"pciebw": "ap-bandwidth", "gpumem": "ap-gpumem", "dcgm": "dcgmi"}
NVML_OF = {"remapped": "remapped_rows", "gpupower": "clock_event_reasons"}

# check -> kind -> what it simulates. The first kind is the check's default (its typical failure).
FAULTS: dict[str, dict[str, str]] = {
    "pciebw": {
        "low": "GPU 3 measures 2.1 GB/s host-to-device (below the floor: fail)",
        "narrow": "GPU 3 link trained at x8 of x16, 26 GB/s (warn)",
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
        "mismatch": "GPU 2 DAXPY computed wrong numbers (4096 mismatches; fail)",
    },
}
_GENERIC_HELP = {"hang": "the tool (or NVML call) sleeps past its timeout (error)", "error": "the tool fails (error)"}

# Telemetry changes per (check, kind): GPU index -> FakeGpu fields.
_TELEMETRY: dict[tuple[str, str], dict[int, dict[str, object]]] = {
    ("pciebw", "narrow"): {3: {"link": gpus.PcieLink(5, 5, 8, 16)}},
    ("remapped", "pending"): {2: {"remapped": gpus.RemappedRows(0, 1, True, False)}},
    ("remapped", "fatal"): {5: {"remapped": gpus.RemappedRows(0, 3, False, True)}},
    ("gpupower", "brake"): {6: {"reasons": frozenset({"hw_slowdown", "hw_power_brake_slowdown"})}},
    ("gpupower", "thermal"): {6: {"reasons": frozenset({"sw_thermal_slowdown"})}},
}
# NVML error answered for ``error`` faults of NVML-only checks (NVML_ERROR_UNKNOWN).
_NVML_ERROR_GPU, _NVML_ERROR_CODE = 4, 999


@dataclasses.dataclass(frozen=True)
class Fault:
    node: str
    check: str
    kind: str

    def describe(self) -> str:
        return f"{self.node}:{self.check}:{self.kind}: {kinds(self.check)[self.kind]}"


def kinds(check: str) -> dict[str, str]:
    """The fault kinds of ``check`` and what each simulates (first: the default)."""
    return {**FAULTS[check], **_GENERIC_HELP}


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
    known = kinds(check)
    kind = parts[2] if len(parts) == 3 else next(iter(FAULTS[check]))
    if kind not in known:
        note = f"{check} has no fatal failure; " if kind == "fatal" else ""
        choices = ", ".join(known)
        raise errors.BadParameter("--fault", f"{note}unknown kind {kind[:64]!r} for {check} (kinds: {choices})")
    return Fault(node, check, kind)


def parse_faults(specs: Iterable[str], nodes: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """node -> check -> kind; a second fault for the same node and check is an error."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        fault = parse_fault(spec, nodes)
        if fault.check in out.get(fault.node, {}):
            raise errors.BadParameter("--fault", f"two faults for {fault.node}:{fault.check}")
        out.setdefault(fault.node, {})[fault.check] = fault.kind
    return out


def contexts(settings: config.Settings, n: int, faults: Sequence[str], offset: int = 0) -> dict[str, CheckContext]:
    """Contexts of ``sim-<offset>`` .. ``sim-<offset+n-1>``, with ``faults`` applied."""
    if not 1 <= n <= MAX_NODES:
        raise errors.BadParameter("--simulate", f"must be between 1 and {MAX_NODES}, got {n}")
    if offset < 0:
        raise errors.BadParameter("--simulate-offset", f"must be >= 0, got {offset}")
    names = node_names(n, offset)
    by_node = parse_faults(faults, names)
    # The simulated seam answers ap-bandwidth, not NVIDIA's bandwidthTest.
    sim_settings = dataclasses.replace(settings, bandwidthtest_path="")
    shared_clock = clock.SystemClock()
    # Simulated nodes have no network: an empty peer directory makes ``ping`` and ``iperf`` say
    # "no other node" at once, instead of every node reading every other node's record (O(N^2)).
    no_peers = peers.StaticPeers(())
    seams: dict[frozenset[tuple[str, str]], tuple[SimRunner, SimTelemetry]] = {}
    out: dict[str, CheckContext] = {}
    for name in names:
        profile = frozenset(by_node.get(name, {}).items())
        if profile not in seams:
            seams[profile] = build_seam(sim_settings, dict(profile))
        runner, telemetry = seams[profile]
        out[name] = CheckContext(name, sim_settings, runner, telemetry.for_node(name), shared_clock, peers=no_peers)
    return out


def build_seam(settings: config.Settings, faults: Mapping[str, str]) -> tuple[SimRunner, SimTelemetry]:
    """The runner and telemetry of a node with ``faults`` (check -> kind)."""
    table: dict[tuple[str, ...], Recording] = {}
    for name in TOOL_OF.values():
        table.update(_recordings(name, "ok"))
    hang_tools: set[str] = set()
    devices: dict[int, dict[str, object]] = {i: {"name": GPU_NAME} for i in range(GPU_COUNT)}
    nvml_faults: dict[str, tuple[str, float]] = {}
    for check, kind in faults.items():
        tool = TOOL_OF.get(check)
        if kind == "hang" and tool:
            hang_tools.add(tool)
        elif kind == "hang":
            nvml_faults[NVML_OF[check]] = ("hang", _timeout(settings, check) + 2.0)
        elif tool:
            table.update(_recordings(tool, kind))
        elif kind == "error":
            nvml_faults[NVML_OF[check]] = ("error", 0.0)
        for index, fields in _TELEMETRY.get((check, kind), {}).items():
            devices[index].update(fields)
    gpu_list = [FakeGpu(**fields, pci_bus_id=f"00000000:{i:02X}:00.0") for i, fields in devices.items()]  # type: ignore[arg-type]
    return SimRunner(table, frozenset(hang_tools)), SimTelemetry(gpu_list, nvml_faults)


def _timeout(settings: config.Settings, check: str) -> float:
    default = registry.REGISTRY.get(check).timeout_s if check in registry.REGISTRY else 60.0
    return float(settings.check_timeouts.get(check, default))


@functools.cache
def _recordings(tool: str, scenario: str) -> dict[tuple[str, ...], Recording]:
    """The recordings of ``workers/simdata/<tool>.<scenario>.json`` by replay key (read once per process)."""
    raw = json.loads((SIMDATA / f"{tool}.{scenario}.json").read_text())
    return {replay_key(r.argv): r for r in (Recording.from_dict(item) for item in raw["recordings"])}


def replay_key(argv: Sequence[str]) -> tuple[str, ...]:
    """What an answer depends on: the program and the GPU (``--device``) or level (``-r``) asked for.

    Sizes and repeat counts (``--size-mib``, ``--runs``) only change how long a real run takes,
    so a request with other values still gets the recorded answer.
    """
    args = [str(a) for a in argv]
    key = [os.path.basename(args[0])]
    for flag in ("--device", "-r"):
        if flag in args[:-1]:
            key += [flag, args[args.index(flag) + 1]]
    return tuple(key)


class SimRunner:
    """The command seam of simulated nodes: answers from an immutable table of recordings."""

    def __init__(
        self,
        table: Mapping[tuple[str, ...], Recording],
        hang_tools: frozenset[str] = frozenset(),
        scope: commands.ProcessScope | None = None,
    ) -> None:
        self._table = table
        self._tools = frozenset(k[0] for k in table)
        self._hang = hang_tools
        self._scope = scope

    def bind(self, scope: commands.ProcessScope) -> SimRunner:
        """This runner inside a check run, so the watchdog's cancel ends a ``hang``."""
        return SimRunner(self._table, self._hang, scope)

    def which(self, name: str) -> str | None:
        return name if os.path.basename(name) in self._tools else None

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> commands.CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of strings, never a shell string")
        key = replay_key(argv)
        tool = key[0]
        if tool not in self._tools:
            raise errors.ToolNotFound(f"{argv[0]}: not found on PATH (simulated node)")
        if tool in self._hang:
            self._sleep(timeout)
            raise errors.ToolTimeout(tool, timeout)
        rec = self._table.get(key)
        if rec is None:
            # A GPU or level the node does not have: the usage error the real program gives.
            said = f"{tool}: simulated node has no answer for {list(key[1:])}\n"
            return commands.CommandResult(tuple(str(a) for a in argv), 2, "", said)
        return commands.CommandResult(tuple(str(a) for a in argv), rec.returncode, rec.stdout, rec.stderr)

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

    def for_node(self, node: str) -> SimTelemetry:
        """This telemetry (devices and faults shared) with the stable fake UUIDs and serials of ``node``'s GPUs."""
        mine = copy.copy(self)
        mine._node = node
        return mine

    def identity(self, index: int) -> gpus.GpuIdentity:
        ident = super().identity(index)
        if not self._node:
            return ident
        return dataclasses.replace(
            ident, uuid=gpuident.sim_uuid(self._node, index), serial=gpuident.sim_serial(self._node, index)
        )

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
        for i, (kind, what) in enumerate(kinds(check).items()):
            lines.append(f"{check}:{kind}{' (default)' if i == 0 else ''}  {what}")
    return "\n".join(lines)
