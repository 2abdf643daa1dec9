"""Shared fixtures: settings, fake contexts, the path to ../shared/samples, and service gating.

Integration tests skip when a binary they need is missing, unless CI=true, where a missing
binary is an installation bug and fails the test instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autopilot import config, registry
from autopilot.context import CheckContext
from autopilot.testing import FakeClock, FakeGpu, FakeRunner, FakeTelemetry

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
DATA = ROOT / "tests" / "data"


def sample_text(name: str) -> str:
    """A file of ../shared/samples without its ``# source:`` header; skips the test when absent."""
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"sample {name} not available (../shared/samples absent)")
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    if lines and lines[0].startswith("# source:"):
        lines = lines[1:]
    return "".join(lines)


def require_binary(name: str) -> str:
    """Path of ``name``; skips locally, fails under CI=true, when it is missing."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must install it: see .ci/run)")
        pytest.skip(message)
    return path


@pytest.fixture
def settings() -> config.Settings:
    return config.Settings(node_name="node-a")


@pytest.fixture
def make_ctx(settings: config.Settings) -> Callable[..., CheckContext]:
    """Build a CheckContext over fakes: ``make_ctx(commands=FakeRunner(...), gpus=FakeTelemetry(...))``."""

    def make(**overrides: Any) -> CheckContext:
        base: dict[str, Any] = {
            "node": settings.node_name,
            "settings": settings,
            "commands": FakeRunner(),
            "gpus": FakeTelemetry([FakeGpu() for _ in range(2)]),
            "clock": FakeClock(),
            "checks": registry.shipped(),  # the fixtures assemble the test process's checks
        }
        base.update(overrides)
        return CheckContext(**base)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run only where an NVIDIA driver is loaded; ``e2e`` only with a kubeconfig given."""
    has_gpu = Path("/proc/driver/nvidia/version").exists() or os.environ.get("AUTOPILOT_GPU_TESTS") == "1"
    has_cluster = bool(os.environ.get("AUTOPILOT_E2E_KUBECONFIG"))
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs NVIDIA GPUs (marker gpu)"))
        if "e2e" in item.keywords and not has_cluster:
            item.add_marker(pytest.mark.skip(reason="needs AUTOPILOT_E2E_KUBECONFIG (marker e2e)"))
