"""On a machine with NVIDIA GPUs: every GPU check for real (marker ``gpu``; skipped elsewhere).

Builds nothing itself: run ``scripts/build-cuda.sh`` first (``scripts/gpu-check.sh`` does both and
records fixtures). A check that cannot run on real hardware is a bug here, so ``error`` fails.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import autopilot.checks  # noqa: F401 - registers the checks
from autopilot import config, execution
from autopilot.context import CheckContext
from autopilot.results import Status

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "cuda_src" / "bin"


@pytest.fixture(scope="module")
def ctx() -> CheckContext:
    settings = dataclasses.replace(config.Settings.from_env(os.environ), cuda_bin_dir=str(BIN))
    return CheckContext.default(settings)


@pytest.mark.gpu
@pytest.mark.parametrize("check", ["remapped", "gpupower", "pciebw", "gpumem"])
def test_gpu_check_runs_for_real(ctx: CheckContext, check: str) -> None:
    if check in ("pciebw", "gpumem") and not (BIN / ("ap-bandwidth" if check == "pciebw" else "ap-gpumem")).exists():
        pytest.skip("cuda_src not built (scripts/build-cuda.sh)")
    result = execution.run_check(check, ctx)
    assert result.status not in (Status.ERROR, Status.SKIPPED), result.to_json()
    assert result.devices, "a GPU check must report every GPU"


@pytest.mark.gpu
def test_dcgm_level1_for_real(ctx: CheckContext) -> None:
    if ctx.commands.which("dcgmi") is None:
        pytest.skip("dcgmi not installed")
    result = execution.run_check("dcgm", ctx, {"r": 1})
    assert result.status is not Status.SKIPPED, result.to_json()
