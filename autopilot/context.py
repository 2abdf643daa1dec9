"""``CheckContext``: the node, the settings, the check registry and the seams a check may touch. Nothing else."""

from __future__ import annotations

import dataclasses

from autopilot import clock, cluster, commands, config, gpus, nodeinfo, peers
from autopilot.registry import CheckRegistry


@dataclasses.dataclass(frozen=True)
class CheckContext:
    """Everything a check's collect step may use. Built once per process by the entry point."""

    node: str
    settings: config.Settings
    commands: commands.CommandRunner
    gpus: gpus.GpuTelemetry
    clock: clock.Clock = dataclasses.field(default_factory=clock.SystemClock)
    cluster: cluster.ClusterClient | None = None
    peers: peers.PeerDirectory | None = None
    gpu_probe: nodeinfo.GpuProbe | None = None
    """Where the GPUs this node should have are read (``autopilot.gpucensus``); None: GPU checks are
    not held to an expectation (simulated nodes, tests)."""
    checks: CheckRegistry = dataclasses.field(kw_only=True)
    """The checks this process runs by name, handed in by whoever assembles the process."""

    @classmethod
    def default(cls, settings: config.Settings, checks: CheckRegistry) -> CheckContext:
        """The production context: real subprocesses, real NVML, the system clock, expected GPUs read
        from this machine (and from its Node, once a cluster client is set)."""
        return cls(
            node=settings.node_name,
            settings=settings,
            commands=commands.SubprocessRunner(),
            gpus=gpus.NvmlTelemetry(),
            gpu_probe=nodeinfo.GpuProbe(setting=settings.expect_gpus),
            checks=checks,
        )

    def timeout_for(self, check: str, default: float) -> float:
        """A check's timeout: the ``AUTOPILOT_CHECK_TIMEOUTS`` override, else the registered one."""
        return float(self.settings.check_timeouts.get(check, default))
