"""What the tests of our CUDA programs' checks (pciebw, gpumem) share: settings with the programs'
directory, and a check context over fake tools and fake NVML."""

from __future__ import annotations

from typing import Any

from autopilot import config
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.testing import FakeClock, FakeRunner, FakeTelemetry

BIN = "/opt/autopilot/bin"


def settings(**kw: Any) -> config.Settings:
    return config.Settings(node_name="node-a", cuda_bin_dir=BIN, **kw)


def ctx_for(runner: FakeRunner, telemetry: FakeTelemetry, **kw: Any) -> CheckContext:
    return CheckContext(
        node="node-a",
        settings=settings(**kw),
        commands=runner,
        gpus=telemetry,
        clock=FakeClock(),
        checks=shipped_checks(),
    )
