"""cuda_src builds (and links against cuBLAS) wherever nvcc exists, so build breaks show up in CI.

The programs need a GPU to measure anything; without one they must still start (every shared
library resolves) and say so in their JSON line with exit code 3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "cuda_src" / "bin"

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


@pytest.fixture(scope="module")
def built() -> Path:
    env = dict(os.environ)
    env.setdefault("PIP", str(ROOT / ".venv" / "bin" / "pip"))
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        ["bash", str(ROOT / "scripts" / "build-cuda.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"build-cuda.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return BIN


@pytest.mark.timeout(900)
def test_both_binaries_are_built(built: Path) -> None:
    for name in ("ap-bandwidth", "ap-gpumem", "ap-selftest"):
        path = built / name
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["ap-bandwidth", "ap-gpumem"])
def test_binaries_start_and_print_one_json_line(built: Path, name: str) -> None:
    # Small sizes: on a GPU machine this really measures, and should be quick.
    small = (
        ["--size-mib", "8", "--samples", "10"]
        if name == "ap-bandwidth"
        else ["--elements", "67108864", "--dgemm-n", "256", "--samples", "10"]
    )
    proc = subprocess.run([str(built / name), *small], capture_output=True, text=True, timeout=240)  # noqa: S603
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    doc = json.loads(lines[0])
    assert doc["tool"] == name and doc["version"] == 2
    if proc.returncode == 3:
        assert doc["devices"] == [] and doc["error"]
    else:
        assert proc.returncode == 0, doc
        assert doc["devices"] and "error" not in doc["devices"][0]


@pytest.mark.timeout(300)
def test_usage_error_exits_2_with_json(built: Path) -> None:
    proc = subprocess.run([str(built / "ap-bandwidth"), "--samples", "9"], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"].startswith("usage: --samples")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("ap-bandwidth", ["--warmup-ms", "199"], "usage: --warmup-ms"),
        ("ap-gpumem", ["--warmup-ms", "100"], "usage: --warmup-ms"),
        ("ap-gpumem", ["--pci-bus-id", "00:19;rm"], "usage: --pci-bus-id"),
        ("ap-bandwidth", ["--device", "0", "--pci-bus-id", "0000:19:00.0"], "usage: --device and --pci-bus-id"),
    ],
)
def test_measurement_rules_are_refused_below_their_minimum(
    built: Path, name: str, argv: list[str], message: str
) -> None:
    # Warm-up of at least 200 ms, at least 10 samples, one way to name the GPU.
    proc = subprocess.run([str(built / name), *argv], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"].startswith(message)


@pytest.mark.timeout(300)
def test_host_side_rules_of_the_programs(built: Path) -> None:
    # The parts of cuda_src that need no GPU, run here: which CUDA errors are hardware findings,
    # the sample statistics (the same as the checks recompute), cpulist and bus-id parsing.
    from autopilot.checks._cuda import series_of

    proc = subprocess.run([str(built / "ap-selftest")], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["error_kinds"] == {
        "cudaErrorECCUncorrectable": "hardware",
        "cudaErrorLaunchFailure": "hardware",
        "cudaErrorIllegalAddress": "hardware",
        "cudaErrorMemoryAllocation": "setup",
        "cudaErrorInsufficientDriver": "setup",
        "cudaErrorNoKernelImageForDevice": "setup",
        "cudaErrorInvalidValue": "cuda",
    }
    assert doc["failure"] == {"kind": "hardware", "name": "cudaErrorECCUncorrectable"}
    expected = series_of([10.0, 12.0, 11.0, 30.0])
    assert doc["series"]["median"] == expected.median == 11.5
    assert (doc["series"]["min"], doc["series"]["max"]) == (10.0, 30.0)
    assert doc["series"]["cv"] == pytest.approx(expected.cv, abs=1e-5)
    assert doc["series_one"]["cv"] == 0.0
    assert doc["cpulist"] == [0, 1, 2, 3, 8, 10, 11] and doc["cpulist_bad"] == []
    assert doc["sysfs_bus_nvml"] == doc["sysfs_bus_cuda"] == "0000:3b:00.0"
