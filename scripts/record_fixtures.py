"""Run the GPU checks for real on this machine and record every tool call as a test fixture.

    python scripts/record_fixtures.py --out DIR [--cuda-bin cuda_src/bin] [CHECK ...]

Writes, under DIR: ``<check>/NN-<argv>.json`` (one ``Recording`` per command, the format
``FakeRunner.from_dir`` replays), ``<check>.result.json`` (the check's result, kept beside the
folder so that ``from_dir`` sees only recordings), ``nvml-snapshot.json`` (``FakeTelemetry.from_json``
loads it) and ``reference/`` (an ``ap-bandwidth --plain`` run per GPU).
Prints one result JSON line per check, then a table comparing the measured PCIe and memory
figures with a plain pinned cudaMemcpy loop and a device-to-device copy on the same GPU.

Exit codes: 0 all checks ran (whatever they found); 3 no GPU / no NVML; 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import autopilot.checks  # noqa: E402,F401 - importing registers every check
from autopilot import config, errors, execution, gpus, testing  # noqa: E402
from autopilot.commands import SubprocessRunner  # noqa: E402
from autopilot.context import CheckContext  # noqa: E402
from autopilot.results import CheckResult  # noqa: E402

GPU_CHECKS = ("pciebw", "remapped", "gpumem", "dcgm", "gpupower")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", default=list(GPU_CHECKS))
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "recorded"))
    parser.add_argument("--cuda-bin", default=str(ROOT / "cuda_src" / "bin"))
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dataclasses.replace(
        config.Settings.from_env(os.environ), cuda_bin_dir=str(Path(args.cuda_bin).resolve())
    )
    telemetry = gpus.NvmlTelemetry()
    try:
        count = telemetry.count()
        snapshot = testing.snapshot(telemetry)
    except errors.GpuUnavailable as exc:
        print(f"record_fixtures: no GPU here: {exc}", file=sys.stderr)
        return 3
    if count == 0:
        print("record_fixtures: NVML sees no GPU", file=sys.stderr)
        return 3
    (out / "nvml-snapshot.json").write_text(json.dumps(snapshot, indent=1) + "\n")
    print(f"# {count} GPU(s), driver {snapshot['driver_version']}: {[g['name'] for g in snapshot['gpus']]}", flush=True)

    results: dict[str, CheckResult] = {}
    for name in args.checks:
        runner = testing.RecordingRunner(SubprocessRunner(), out / name)
        ctx = CheckContext(node=settings.node_name, settings=settings, commands=runner, gpus=telemetry)
        result = execution.run_check(name, ctx)
        results[name] = result
        (out / f"{name}.result.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        print(result.to_json(), flush=True)

    reference = reference_runs(settings, telemetry, count, out / "reference")
    print_comparison(results, reference, count)
    return 0


def reference_runs(settings: config.Settings, telemetry: gpus.GpuTelemetry, count: int, where: Path) -> dict[int, Any]:
    """``ap-bandwidth --plain`` per GPU: the plain pinned cudaMemcpy loop beside the event-timed figures."""
    runner = testing.RecordingRunner(SubprocessRunner(), where)
    path = os.path.join(settings.cuda_bin_dir, "ap-bandwidth")
    found: dict[int, Any] = {}
    for i in range(count):
        try:
            res = runner.run([path, "--device", str(i), "--plain"], timeout=120)
            doc = json.loads(res.stdout.strip().splitlines()[-1])
            found[i] = doc["devices"][0]
        except (errors.ToolError, ValueError, IndexError, KeyError) as exc:
            found[i] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def print_comparison(results: dict[str, CheckResult], reference: dict[int, Any], count: int) -> None:
    def gpu_data(check: str, i: int) -> dict[str, Any]:
        result = results.get(check)
        return dict(result.data.get("gpus", {}).get(str(i), {})) if result else {}

    def fmt(value: Any, digits: int = 1) -> str:
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"

    print("\n# measured vs reference on the same GPU (GB/s = 1e9 bytes/s; d2d counts read + write)")
    header = ("GPU", "pciebw H2D", "plain loop H2D", "D2H pinned", "D2D copy", "gpumem H2D", "DAXPY", "DGEMM TFLOPS")
    print("  ".join(f"{h:>14}" for h in header))
    for i in range(count):
        bw, mem, ref = gpu_data("pciebw", i), gpu_data("gpumem", i), reference.get(i, {})
        row = (
            str(i),
            fmt(bw.get("h2d_pinned_gbps")),
            fmt(ref.get("h2d_plain_gbps")),
            fmt(ref.get("d2h_pinned_gbps")),
            fmt(ref.get("d2d_gbps"), 0),
            fmt(mem.get("h2d_pinned_gbps")),
            fmt(mem.get("daxpy_gbps"), 0),
            fmt(mem.get("dgemm_tflops")),
        )
        print("  ".join(f"{c:>14}" for c in row))
        if "error" in ref:
            print(f"   reference run of GPU {i} failed: {ref['error']}")
    for name, result in results.items():
        print(f"# {name}: {result.status.value}: {result.summary}")


if __name__ == "__main__":
    sys.exit(main())
