"""The one GPU run: measure, record, compare with PyTorch, pack into at most 8 files under $OUT.

    python3 scripts/gpu_check.py [--out DIR] [--dry-run] [--budget-s 480]

Written for the GPU machine this project is sometimes lent (one H200 under gVisor, its own
python3 with nvidia-ml-py, nvidia-cublas and PyTorch but no Celery, Redis, Flask, kubernetes or
orjson; 10 minutes a command, 8 files back): it imports nothing beyond the standard library
itself, and runs the checks in a child python3 with a stand-in for orjson when that is missing.

Steps, each with a timeout; a step that cannot run here is skipped with its reason, and every
step stops being started once the time budget (default 480 s) is spent and no command runs more
than 20 s past it, so that the archive is always written inside gpu-check.sh's 9 minutes:

  environment    nvidia-smi -q / topo -m / -L, nvcc, lscpu, NUMA files, /dev/kmsg, python packages
  imports        the checks' code imports with python3 -S (standard library and the orjson stand-in)
  build          scripts/build-cuda.sh against the cuBLAS of python3's nvidia-cublas, for this GPU only
  h2d-sweep      ap-bandwidth, 4 MiB to 1 GiB, every sample (host<->device and device-to-device)
  daxpy-sweep    ap-gpumem --daxpy-only --allow-cache from 1 MiB to 4 GiB working sets: the L2 knee
  dgemm          ap-gpumem with 15 s of sustained DGEMM, nvidia-smi dmon beside it
  checks         every GPU check through the checks' own code, three times, recorded as fixtures
  references     scripts/gpu_reference.py: PyTorch pinned copy_, torch.add as DAXPY, torch.mm FP64
  ratios         our H2D / PyTorch's (goal >= 0.95), our DAXPY / a D2D copy (>= 0.85), our DGEMM /
                 torch.mm (>= 0.95)

Output: $OUT/gpu-check.tar.gz (everything, with steps.json) and $OUT/summary.txt, plus
$OUT/summary.json. ``--dry-run`` (or a machine without nvidia-smi) walks every step, runs the two
that need no GPU (environment, imports) and skips the others, each with its reason.
Exit codes: 0 every step ran or was skipped for a stated reason; 1 a step failed; 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "cuda_src" / "bin"
PY = sys.executable or "python3"
SWEEP_MIB = (4, 16, 64, 256, 1024)
GOALS = {"h2d_vs_torch_pinned_copy": 0.95, "daxpy_vs_d2d_copy": 0.85, "dgemm_vs_torch_mm_fp64": 0.95}


@dataclasses.dataclass
class Step:
    name: str
    status: str = "pending"  # ran, skipped, failed
    reason: str = ""
    seconds: float = 0.0
    files: list[str] = dataclasses.field(default_factory=list)


class Run:
    """The steps of one GPU run, their outputs under ``work`` and what each did or why it did not."""

    def __init__(self, work: Path, *, dry_run: bool, no_gpu: str, budget_s: float) -> None:
        self.work = work
        self.dry_run = dry_run
        self.no_gpu = no_gpu  # why there is no GPU here ("" when there is one)
        self.deadline = time.monotonic() + budget_s  # no step starts after this
        self.hard_deadline = self.deadline + 20.0  # no command runs past this: packing follows
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.env = dict(os.environ)
        self.no_programs = ""  # why the cuda_src programs cannot run ("" when they were built)

    def skip_reason(self, needs_gpu: bool) -> str:
        if self.dry_run and needs_gpu:
            return "dry run"
        if needs_gpu and self.no_gpu:
            return f"no GPU: {self.no_gpu}"
        if time.monotonic() > self.deadline:
            return "time budget spent"
        return ""

    def step(
        self, name: str, fn: Callable[[Step], None], *, needs_gpu: bool = True, programs: bool = False, plan: str = ""
    ) -> Step:
        """Runs ``fn`` as step ``name``, or skips it with the reason; ``programs``: it runs cuda_src's."""
        step = Step(name)
        self.steps.append(step)
        why = self.skip_reason(needs_gpu) or (self.no_programs if programs else "")
        if why:
            step.status, step.reason = "skipped", f"{why}; would run: {plan}" if plan else why
            print(f"--- {name}: skipped ({step.reason})", flush=True)
            return step
        print(f"--- {name} ({time.strftime('%H:%M:%S')})", flush=True)
        t0 = time.monotonic()
        try:
            fn(step)
            if step.status == "pending":
                step.status = "ran"
        except Exception as exc:  # a broken step is reported and the run goes on
            step.status, step.reason = "failed", f"{type(exc).__name__}: {exc}"
        step.seconds = round(time.monotonic() - t0, 1)
        print(f"    {step.status} in {step.seconds} s {step.reason}", flush=True)
        return step

    def cmd(self, step: Step, argv: list[str], out: str, *, timeout: float, env: dict[str, str] | None = None) -> str:
        """Runs ``argv`` (no shell) with a timeout, saving stdout+stderr to ``out``; returns stdout ("" if missing)."""
        path = self.work / out
        path.parent.mkdir(parents=True, exist_ok=True)
        left = max(5.0, self.hard_deadline - time.monotonic())
        try:
            proc = subprocess.run(  # noqa: S603 - argv list, no shell
                argv,
                capture_output=True,
                text=True,
                timeout=min(timeout, left),
                env=env or self.env,
                cwd=ROOT,
            )
        except FileNotFoundError:
            path.write_text(f"$ {' '.join(argv)}\n(not installed)\n")
            note = f"{argv[0]} not installed here"
            if note not in self.notes:
                self.notes.append(note)
            return ""
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            path.write_text(f"$ {' '.join(argv)}\n(timed out after {exc.timeout} s)\n{partial}")
            step.status, step.reason = "failed", f"{os.path.basename(argv[-1] if argv[0] == PY else argv[0])} timed out"
            step.files.append(out)
            return ""
        path.write_text(f"$ {' '.join(argv)}\n(exit {proc.returncode})\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        step.files.append(f"{out} (exit {proc.returncode})")
        return proc.stdout


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return {}


# ---------------------------------------------------------------- steps


def sysfs(path: Path) -> str:
    """A sysfs value, or why there is none (gVisor and containers hide much of /sys)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return "(absent)"
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"


def environment(run: Run, step: Step) -> None:
    for argv, out in (
        (["nvidia-smi", "-L"], "env/nvidia-smi-L.txt"),
        (["nvidia-smi", "-q"], "env/nvidia-smi-q.txt"),
        (["nvidia-smi", "topo", "-m"], "env/nvidia-smi-topo-m.txt"),
        (
            ["nvidia-smi", "--query-gpu=name,pci.bus_id,compute_cap,memory.total,driver_version", "--format=csv"],
            "env/nvidia-smi-query.csv",
        ),
        (["nvcc", "--version"], "env/nvcc.txt"),
        (["lscpu"], "env/lscpu.txt"),
        (["numactl", "--hardware"], "env/numactl-hardware.txt"),
        (["uname", "-a"], "env/uname.txt"),
        ([PY, "-m", "pip", "list", "--disable-pip-version-check"], "env/pip-list.txt"),
    ):
        run.cmd(step, argv, out, timeout=60)
    numa = []
    for dev in sorted(Path("/sys/bus/pci/devices").glob("*")) if Path("/sys/bus/pci/devices").is_dir() else []:
        if sysfs(dev / "vendor") == "0x10de":
            for f in ("numa_node", "local_cpulist", "current_link_speed", "current_link_width"):
                p = dev / f
                numa.append(f"{dev.name} {f}: {sysfs(p)}")
    if not numa:
        run.notes.append("no NVIDIA device under /sys/bus/pci/devices (gVisor has no sysfs PCI tree): NUMA unknown")
    (run.work / "env" / "numa.txt").write_text("\n".join(numa) + "\n")
    if not os.access("/dev/kmsg", os.R_OK):
        run.notes.append("/dev/kmsg not readable here (gVisor): no kernel log (Xid) recorded")
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))
    if nodes:
        lines = [f"{n.name} cpulist: {sysfs(n / 'cpulist')}" for n in nodes]
        (run.work / "env" / "numa-nodes.txt").write_text("\n".join(lines) + "\n")
    else:
        run.notes.append("/sys/devices/system/node absent: NUMA topology unknown")


def imports(run: Run, step: Step) -> None:
    """The checks' code imports with the standard library alone (python3 -S) and the orjson stand-in."""
    env = dict(run.env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "scripts" / "orjson_standin")])
    code = (
        "import sys; import autopilot.checks, autopilot.execution, autopilot.commands, autopilot.testing; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'__main__'}))"
    )
    text = run.cmd(step, [PY, "-S", "-c", code], "env/imports.txt", timeout=60, env=env)
    if text.strip() != "['autopilot', 'orjson']":
        step.status, step.reason = "failed", f"the checks need more than the standard library: {text.strip()!r}"


def cublas_home() -> str:
    """The folder of python3's nvidia-cublas wheel with include/cublas_v2.h (CUDA 13: nvidia/cu13)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return ""
    for base in list(spec.submodule_search_locations or []) if spec else []:
        for header in sorted(Path(base).glob("*/include/cublas_v2.h")):
            return str(header.parent.parent)
    return ""


def build(run: Run, step: Step) -> None:
    env = dict(run.env)
    home = cublas_home()
    if home:
        env["CUBLAS_HOME"] = home
    cap = run.cmd(step, ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], "build/cap.txt", timeout=30)
    first = cap.strip().splitlines()[0].replace(".", "") if cap.strip() else ""
    if first.isdigit():
        # One architecture: three take minutes the run does not have.
        env["GENCODE"] = f"-gencode arch=compute_{first},code=sm_{first}"
    run.cmd(step, ["bash", "scripts/build-cuda.sh"], "build/build.log", timeout=300, env=env)
    missing = [b for b in ("ap-bandwidth", "ap-gpumem") if not (BIN / b).is_file()]
    if missing:
        step.status, step.reason = "failed", f"not built: {', '.join(missing)} (build/build.log)"


@contextlib.contextmanager
def beside(run: Run, step: Step, argv: list[str], out: str) -> Iterator[None]:
    """Runs the monitor ``argv`` in the background while the block runs, its output into ``out``."""
    path = run.work / out
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as sink:
        try:
            proc: subprocess.Popen[str] | None = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv, stdout=sink, stderr=subprocess.STDOUT, text=True
            )
        except FileNotFoundError:
            proc = None
            run.notes.append(f"{argv[0]} not available for {out}")
        try:
            yield
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                step.files.append(out)


# The link and clocks as nvidia-smi sees them while the copies run: an independent look at the
# link state under load beside the programs' own NVML telemetry.
LINK_QUERY = (
    "--query-gpu=timestamp,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,"
    "pcie.link.width.max,clocks.sm,clocks.mem,power.draw,clocks_event_reasons.active"
)


def h2d_sweep(run: Run, step: Step) -> None:
    with beside(run, step, ["nvidia-smi", LINK_QUERY, "--format=csv", "-lms", "200"], "sweep/link-under-load.csv"):
        for mib in SWEEP_MIB:
            copies = max(1, 256 // mib)
            argv = [str(BIN / "ap-bandwidth"), "--device", "0", "--size-mib", str(mib), "--samples", "10"]
            run.cmd(step, [*argv, "--copies", str(copies)], f"sweep/ap-bandwidth-{mib}MiB.txt", timeout=120)


def daxpy_sweep(run: Run, step: Step) -> None:
    elements = 1 << 16  # 1 MiB working set, up to 4 GiB
    while elements <= 1 << 28:
        argv = [str(BIN / "ap-gpumem"), "--device", "0", "--daxpy-only", "--allow-cache", "--samples", "10"]
        iters = str(max(1, (1 << 26) // elements))
        out = f"sweep/daxpy-{elements}.txt"
        run.cmd(step, [*argv, "--elements", str(elements), "--daxpy-iters", iters], out, timeout=120)
        elements *= 4


def dgemm_sustained(run: Run, step: Step) -> None:
    with beside(run, step, ["nvidia-smi", "dmon", "-s", "pucm", "-d", "1"], "dgemm/nvidia-smi-dmon.txt"):
        argv = [str(BIN / "ap-gpumem"), "--device", "0", "--dgemm-seconds", "15", "--samples", "10"]
        run.cmd(step, argv, "dgemm/ap-gpumem-sustained.txt", timeout=180)


def checks_env(run: Run) -> dict[str, str]:
    env = dict(run.env)
    probe = subprocess.run([PY, "-c", "import orjson"], capture_output=True, timeout=60)  # noqa: S603
    if probe.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "scripts" / "orjson_standin"), env.get("PYTHONPATH")])
        )
        run.notes.append("no orjson in this python3: the checks ran with scripts/orjson_standin (stdlib json)")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def checks(run: Run, step: Step) -> None:
    env = checks_env(run)
    for k in (1, 2, 3):
        argv = [
            PY,
            "scripts/record_fixtures.py",
            "--out",
            str(run.work / "recorded" / f"run{k}"),
            "--cuda-bin",
            str(BIN),
        ]
        # No check names: record_fixtures' default, every GPU check (dcgm errors where dcgmi is absent).
        run.cmd(step, argv, f"checks/run{k}.txt", timeout=240, env=env)


def references(run: Run, step: Step) -> None:
    sizes = ",".join(str(m) for m in SWEEP_MIB)
    run.cmd(step, [PY, "scripts/gpu_reference.py", "--sizes-mib", sizes], "references/torch.txt", timeout=240)


def _median(doc: dict[str, Any], *path: str) -> float | None:
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node = node.get("median")
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _device(text: str) -> dict[str, Any]:
    devices = last_json(text).get("devices") or [{}]
    return devices[0] if isinstance(devices[0], dict) else {}


def ratios(run: Run, step: Step) -> dict[str, Any]:
    def read(rel: str) -> str:
        p = run.work / rel
        return p.read_text() if p.exists() else ""

    ours_bw = _device(read("sweep/ap-bandwidth-256MiB.txt"))
    ours_mem = _device(read("dgemm/ap-gpumem-sustained.txt"))
    torch = last_json(read("references/torch.txt"))
    figures = {
        "ours_h2d_256MiB_gbps": _median(ours_bw, "h2d"),
        "torch_h2d_256MiB_gbps": _median(torch, "h2d", "256"),
        "ours_daxpy_gbps": _median(ours_mem, "daxpy"),
        "ours_d2d_gbps": _median(ours_bw, "d2d"),
        "torch_d2d_gbps": _median(torch, "d2d"),
        "torch_daxpy_gbps": _median(torch, "daxpy"),
        "ours_dgemm_tflops": _median(ours_mem, "dgemm"),
        "torch_dgemm_tflops": _median(torch, "dgemm"),
    }

    def ratio(a: str, b: str) -> float | None:
        x, y = figures[a], figures[b]
        return round(x / y, 3) if x is not None and y else None

    found = {
        "h2d_vs_torch_pinned_copy": ratio("ours_h2d_256MiB_gbps", "torch_h2d_256MiB_gbps"),
        "daxpy_vs_d2d_copy": ratio("ours_daxpy_gbps", "ours_d2d_gbps"),
        "dgemm_vs_torch_mm_fp64": ratio("ours_dgemm_tflops", "torch_dgemm_tflops"),
    }
    for name, value in found.items():
        verdict = "n/a" if value is None else ("meets" if value >= GOALS[name] else "BELOW")
        print(f"    ratio {name}: {value} (goal >= {GOALS[name]}): {verdict}", flush=True)
    if all(v is None for v in found.values()):
        step.status, step.reason = "skipped", "no figures to compare (earlier steps skipped or failed)"
    return {"figures": figures, "ratios": found, "goals": GOALS}


# ---------------------------------------------------------------- main


def commands(step: Step) -> str:
    """``5 commands, 2 exited non-zero; `` for the summary line of a step that ran commands."""
    ran = [f for f in step.files if f.endswith(")") and "(exit " in f]
    bad = [f for f in ran if not f.endswith("(exit 0)")]
    if not ran:
        return ""
    return f"{len(ran)} command(s), {len(bad)} exited non-zero; " if bad else f"{len(ran)} command(s); "


def detect_gpu() -> str:
    """Why there is no GPU to measure here ("" when nvidia-smi lists one)."""
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)  # noqa: S603
    except subprocess.TimeoutExpired:
        return "nvidia-smi -L timed out"
    if proc.returncode != 0 or "GPU " not in proc.stdout:
        return f"nvidia-smi -L lists no GPU (exit {proc.returncode})"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "build" / "gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="walk every step, run none of the GPU work")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting steps after this (s)")
    args = parser.parse_args(argv)
    if not 10 <= args.budget_s <= 3600:
        parser.error("--budget-s must be within 10..3600")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "gpu-check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run = Run(work, dry_run=args.dry_run, no_gpu="" if args.dry_run else detect_gpu(), budget_s=args.budget_s)
    run.step("environment", lambda s: environment(run, s), needs_gpu=False, plan="nvidia-smi -q/topo -m, nvcc, lscpu")
    run.step("imports", lambda s: imports(run, s), needs_gpu=False)
    run.step("build", lambda s: build(run, s), plan="scripts/build-cuda.sh (CUBLAS_HOME from nvidia-cublas)")
    if not ((BIN / "ap-bandwidth").is_file() and (BIN / "ap-gpumem").is_file()):
        run.no_programs = "cuda_src programs not built (see the build step)"
    run.step("h2d-sweep", lambda s: h2d_sweep(run, s), programs=True, plan=f"ap-bandwidth --size-mib {list(SWEEP_MIB)}")
    run.step(
        "daxpy-sweep",
        lambda s: daxpy_sweep(run, s),
        programs=True,
        plan="ap-gpumem --daxpy-only --allow-cache, 1 MiB-4 GiB",
    )
    run.step(
        "dgemm",
        lambda s: dgemm_sustained(run, s),
        programs=True,
        plan="ap-gpumem --dgemm-seconds 15 + nvidia-smi dmon",
    )
    # Without the programs the checks still run (and report their error), as on a node.
    run.step("checks", lambda s: checks(run, s), plan="record_fixtures.py (every GPU check), 3 times")
    run.step("references", lambda s: references(run, s), plan="gpu_reference.py (PyTorch)")
    compared: dict[str, Any] = {}

    def do_ratios(s: Step) -> None:
        compared.update(ratios(run, s))

    run.step("ratios", do_ratios, plan="ours / PyTorch and ours / D2D copy")
    summary = {
        "dry_run": args.dry_run,
        "no_gpu": run.no_gpu,
        "steps": [dataclasses.asdict(s) for s in run.steps],
        "notes": run.notes,
        **compared,
    }
    (work / "steps.json").write_text(json.dumps(summary, indent=1) + "\n")
    with tarfile.open(out / "gpu-check.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="gpu-check")
    lines = [f"gpu-check {'(dry run) ' if args.dry_run else ''}{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
    lines += [f"{s.name:12} {s.status:8} {s.seconds:6.1f}s {commands(s)}{s.reason}" for s in run.steps]
    lines += [f"note: {n}" for n in run.notes]
    for name, figure in compared.get("figures", {}).items():
        lines.append(f"figure {name}: {figure}")
    for name, value in compared.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value} (goal >= {GOALS[name]})")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(work)  # everything is in the archive: three files come back
    print("\n".join(lines))
    return 1 if any(s.status == "failed" for s in run.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
