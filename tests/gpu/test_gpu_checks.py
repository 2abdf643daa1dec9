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
from autopilot import config, execution, registry
from autopilot.context import CheckContext
from autopilot.results import Status

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "cuda_src" / "bin"


@pytest.fixture(scope="module")
def ctx() -> CheckContext:
    settings = dataclasses.replace(config.Settings.from_env(os.environ), cuda_bin_dir=str(BIN))
    return CheckContext.default(settings, registry.shipped())


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


@pytest.mark.gpu
@pytest.mark.parametrize("tool", ["ap-bandwidth", "ap-gpumem"])
def test_programs_emit_every_sample_numa_and_counters(tool: str) -> None:
    import json
    import subprocess

    if not (BIN / tool).exists():
        pytest.skip("cuda_src not built (scripts/build-cuda.sh)")
    small = ["--size-mib", "64"] if tool == "ap-bandwidth" else ["--dgemm-n", "2048"]
    proc = subprocess.run([str(BIN / tool), "--device", "0", *small], capture_output=True, text=True, timeout=300)  # noqa: S603
    assert proc.returncode == 0, proc.stdout + proc.stderr
    device = json.loads(proc.stdout)["devices"][0]
    assert len(device["h2d"]["samples"]) >= 10
    assert {"gpu_node", "host_node", "cpu_local"} <= set(device["numa"])
    assert {"before", "after"} <= set(device["counters"])
    if tool == "ap-gpumem":
        assert device["dgemm_mismatches"] == 0 and device["daxpy_mismatches"] == 0
