"""scripts/gpu_check.py: the dry run walks every step on a machine without a GPU, and the ratios
it prints come from the programs' and PyTorch's medians."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
GPU_STEPS = ["build", "h2d-sweep", "daxpy-sweep", "dgemm", "checks", "references", "ratios"]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_dry_run_walks_every_step_and_packs_at_most_8_files(tmp_path: Path) -> None:
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["environment", "imports", *GPU_STEPS]
    # The steps that need no GPU run: the checks' code imports with the standard library alone.
    assert steps["environment"]["status"] == "ran"
    assert steps["imports"]["status"] == "ran", steps["imports"]
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skipped"
        assert steps[name]["reason"].startswith("dry run; would run: ")
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["gpu-check.tar.gz", "summary.json", "summary.txt"]
    with tarfile.open(tmp_path / "gpu-check.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu-check/steps.json" in names and "gpu-check/env/imports.txt" in names
    assert "build        skipped" in (tmp_path / "summary.txt").read_text()


def test_ratios_compare_our_medians_with_the_references(tmp_path: Path) -> None:
    gc = load()
    work = tmp_path / "w"
    for rel, doc in {
        "sweep/ap-bandwidth-256MiB.txt": {"devices": [{"h2d": {"median": 54.0}, "d2d": {"median": 4000.0}}]},
        "dgemm/ap-gpumem-sustained.txt": {"devices": [{"daxpy": {"median": 3600.0}, "dgemm": {"median": 50.0}}]},
        "references/torch.txt": {"h2d": {"256": {"median": 55.0}}, "dgemm": {"median": 52.0}, "d2d": {"median": 1}},
    }.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("$ argv\n(exit 0)\n" + json.dumps(doc) + "\n--- stderr\n")
    run = gc.Run(work, dry_run=False, no_gpu="", budget_s=60)
    step = gc.Step("ratios")
    found = gc.ratios(run, step)
    assert found["ratios"] == {
        "h2d_vs_torch_pinned_copy": round(54 / 55, 3),
        "daxpy_vs_d2d_copy": 0.9,
        "dgemm_vs_torch_mm_fp64": round(50 / 52, 3),
    }


def test_without_a_gpu_the_gpu_steps_are_skipped_for_that_reason(tmp_path: Path) -> None:
    gc = load()
    run = gc.Run(tmp_path, dry_run=False, no_gpu="nvidia-smi not found", budget_s=60)
    step = run.step("h2d-sweep", lambda s: None)
    assert (step.status, step.reason) == ("skipped", "no GPU: nvidia-smi not found")


def test_a_command_past_its_timeout_fails_its_step_and_keeps_what_it_printed(tmp_path: Path) -> None:
    # 5 s for the child to start and print on a busy machine; it sleeps 30 s, far past that.
    gc = load()
    run = gc.Run(tmp_path, dry_run=False, no_gpu="", budget_s=60)
    code = "import sys, time; print('partial', flush=True); time.sleep(30)"
    step = run.step("slow", lambda s: run.cmd(s, [sys.executable, "-c", code], "slow.txt", timeout=5), needs_gpu=False)
    assert step.status == "failed" and step.reason.endswith("timed out")
    text = (tmp_path / "slow.txt").read_text()
    assert "(timed out after 5 s)" in text and "partial" in text


def test_no_step_starts_once_the_budget_is_spent(tmp_path: Path) -> None:
    gc = load()
    run = gc.Run(tmp_path, dry_run=False, no_gpu="", budget_s=60)
    run.deadline = 0.0  # as if the budget had run out
    step = run.step("environment", lambda s: None, needs_gpu=False)
    assert (step.status, step.reason) == ("skipped", "time budget spent")


def test_without_the_programs_only_their_steps_are_skipped(tmp_path: Path) -> None:
    gc = load()
    run = gc.Run(tmp_path, dry_run=False, no_gpu="", budget_s=60)
    run.no_programs = "cuda_src programs not built (see the build step)"
    sweep = run.step("h2d-sweep", lambda s: None, programs=True)
    torch = run.step("references", lambda s: None)
    assert (sweep.status, sweep.reason) == ("skipped", "cuda_src programs not built (see the build step)")
    assert torch.status == "ran"
