"""Run the GPU checks for real on this machine and record every tool call as a test fixture.

    python scripts/record_fixtures.py --out DIR [--cuda-bin cuda_src/bin] [CHECK ...]

Writes, under DIR: ``<check>/NN-<argv>.json`` (one ``Recording`` per command, the format
``FakeRunner.from_dir`` replays), ``<check>.result.json`` (the check's result, kept beside the
folder so that ``from_dir`` sees only recordings) and ``nvml-snapshot.json``
(``FakeTelemetry.from_json`` loads it). Prints one result JSON line per check, then a table of
the measured medians per GPU (the independent references are scripts/gpu_reference.py's).
Runs with the standard library and nvidia-ml-py alone (scripts/gpu_check.py adds an orjson
stand-in where orjson is missing).

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
from autopilot import config, errors, execution, gpus, registry, testing  # noqa: E402
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
        ctx = CheckContext(
            node=settings.node_name, settings=settings, commands=runner, gpus=telemetry, checks=registry.shipped()
        )
        result = execution.run_check(name, ctx)
        results[name] = result
        (out / f"{name}.result.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        print(result.to_json(), flush=True)

    print_comparison(results, count)
    return 0


def print_comparison(results: dict[str, CheckResult], count: int) -> None:
    def gpu_data(check: str, i: int) -> dict[str, Any]:
        result = results.get(check)
        return dict(result.data.get("gpus", {}).get(str(i), {})) if result else {}

    def med(entry: dict[str, Any], key: str, digits: int = 1) -> str:
        value = entry.get(key, {}).get("median") if isinstance(entry.get(key), dict) else None
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"

    print("\n# medians per GPU (GB/s = 1e9 bytes/s; d2d counts read + write; DGEMM in TFLOPS)")
    header = ("GPU", "pciebw H2D", "pciebw D2H", "D2D copy", "gpumem H2D", "DAXPY", "DGEMM")
    print("  ".join(f"{h:>12}" for h in header))
    for i in range(count):
        bw, mem = gpu_data("pciebw", i), gpu_data("gpumem", i)
        row = (
            str(i),
            med(bw, "h2d"),
            med(bw, "d2h"),
            med(bw, "d2d", 0),
            med(mem, "h2d"),
            med(mem, "daxpy", 0),
            med(mem, "dgemm"),
        )
        print("  ".join(f"{c:>12}" for c in row))
    for name, result in results.items():
        print(f"# {name}: {result.status.value}: {result.summary}")


if __name__ == "__main__":
    sys.exit(main())
