"""The import rules of ARCHITECTURE.md section 2, and no shell anywhere.

- ``autopilot`` imports none of celery, flask, redis, workers, api;
- inside ``autopilot``, pynvml only in gpus.py and nvml_events.py, kubernetes only in cluster.py, subprocess only
  in commands.py;
- ``workers`` never imports ``api``;
- ``workers.simbroker`` (the simulator's transport, over private parts of kombu) is imported at module level by no
  production module: only inside ``autopilot worker --simulate``'s branch, so a real worker runs kombu as released;
- ``api`` reaches ``workers`` only through the modules listed in ``API_MAY_USE`` (runs through
  ``workers.runs``; never the tasks, the ring coordinator or the broker);
- no subprocess call with the shell option set, and no ``os.system`` or ``os.popen``, in any of our Python files;
- only the Redis stores (``STORES``) import the store's key prefix: the key layout is theirs;
- the check registry's global (``registry.REGISTRY``, reached through ``registry.shipped``) is read only where a
  process is assembled; everything else is handed the registry.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ["autopilot", "workers", "api", "scripts", "bench", "tests"]


def python_files(*packages: str) -> Iterator[Path]:
    for pkg in packages:
        yield from (p for p in (ROOT / pkg).rglob("*.py") if ".venv" not in p.parts)


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_imports_no_framework() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(imports(p) & {"celery", "flask", "redis", "workers", "api", "kombu"})
        for p in python_files("autopilot")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_each_outside_system_has_one_door() -> None:
    # pynvml has two doors: the checks' telemetry, and the passive follower's events and counters.
    doors = {
        "pynvml": ["autopilot/gpus.py", "autopilot/nvml_events.py"],
        "kubernetes": ["autopilot/cluster.py"],
        "subprocess": ["autopilot/commands.py"],
    }
    for module, door in doors.items():
        users = sorted(str(p.relative_to(ROOT)) for p in python_files("autopilot") if module in imports(p))
        assert set(users) <= set(door), f"{module} imported outside {door}: {users}"


def test_workers_do_not_import_api() -> None:
    assert [str(p) for p in python_files("workers") if "api" in imports(p)] == []


def _module_level_imports(path: Path) -> set[str]:
    """``a.b`` and ``a.b.c`` of every import at the module's top level (not inside a function)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
            found.add(node.module)
    return found


def test_no_production_module_loads_the_simulators_transport_at_import() -> None:
    loaders = [
        str(p.relative_to(ROOT))
        for p in python_files("autopilot", "workers", "api")
        if p.name != "simbroker.py" and "workers.simbroker" in _module_level_imports(p)
    ]
    assert loaders == []


# What the API may use of the workers package: runs (create, fan out, gather, report), the
# Celery app, dispatcher and store it is built with, and the read-only views its routes render.
API_MAY_USE = {
    "workers.runs",
    "workers.app",
    "workers.dispatch",
    "workers.store",
    "workers.reconcile",
    "workers.fleet",
    "workers.gpustore",
    "workers.follower",
}


def worker_modules(path: Path) -> set[str]:
    """The ``workers`` modules ``path`` imports (``from workers import x`` counts as ``workers.x``)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "workers")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "workers":
                found.update(f"workers.{a.name}" for a in node.names)
            elif node.module.startswith("workers."):
                found.add(node.module)
    return found


def test_api_uses_only_the_runs_module_and_read_only_views_of_workers() -> None:
    used = {str(p.relative_to(ROOT)): sorted(worker_modules(p) - API_MAY_USE) for p in python_files("api")}
    assert {k: v for k, v in used.items() if v} == {}


def test_no_shell_anywhere() -> None:
    bad: list[str] = []
    for path in python_files(*OURS):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = ast.unparse(func)
                if name in ("os.system", "os.popen"):
                    bad.append(f"{path}:{node.lineno} {name}")
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        bad.append(f"{path}:{node.lineno} shell=")
    assert bad == []


def test_only_the_store_reaches_its_redis_client() -> None:
    # ``ResultsStore.r`` is the store's own client: everything else asks the store (or a store it hands out).
    def reaches(path: Path) -> list[int]:
        tree = ast.parse(path.read_text(), str(path))
        return [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr == "r"
            and (
                (isinstance(node.value, ast.Name) and "store" in node.value.id)
                or (isinstance(node.value, ast.Attribute) and "store" in node.value.attr)
            )
        ]

    found = {str(p.relative_to(ROOT)): reaches(p) for p in python_files("api", "workers")}
    assert {k: v for k, v in found.items() if v and k != "workers/store.py"} == {}
    assert [str(p) for p in python_files("api") if "redis" in imports(p)] == []


# The Redis stores: the results store and the stores it hands out. They alone spell Redis keys.
STORES = {"workers/store.py", "workers/fleet.py", "workers/gpustore.py"}


def test_only_the_stores_spell_redis_keys() -> None:
    # The key prefix ``P`` is the key layout's root: a module that imports it writes keys itself.
    def names_the_prefix(path: Path) -> bool:
        tree = ast.parse(path.read_text(), str(path))
        return any(
            isinstance(node, ast.ImportFrom)
            and node.module == "workers.store"
            and any(a.name in ("P", "RUNS") for a in node.names)
            for node in ast.walk(tree)
        )

    found = [str(p.relative_to(ROOT)) for p in python_files("api", "workers") if names_the_prefix(p)]
    assert sorted(set(found) - STORES) == []


# Where a process is assembled: the CLI, settings loading at process start (it validates check
# names against the shipped checks and the extra modules), the Celery and API app factories, the
# worker and CLI-client entry points, and the benches and scripts that are their own processes.
ASSEMBLE_REGISTRY = {
    "autopilot/registry.py",
    "autopilot/cli.py",
    "autopilot/config.py",
    "workers/app.py",
    "workers/main.py",
    "api/app.py",
    "api/client.py",
    "bench/engine.py",
    "bench/quality.py",
    "bench/detect.py",
    "bench/simnode.py",
    "scripts/gen_api_docs.py",
    "scripts/record_fixtures.py",
}


def registry_reads(path: Path) -> list[int]:
    """Lines of ``path`` that name the global registry or assemble it (``shipped``, ``load_checks``)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name in ("REGISTRY", "shipped", "load_checks"):
            found.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and any(a.name in ("REGISTRY", "shipped") for a in node.names):
            found.append(node.lineno)
    return found


def test_only_the_processes_assembly_reads_the_check_registry_global() -> None:
    found = {str(p.relative_to(ROOT)): registry_reads(p) for p in python_files("autopilot", "workers", "api", "bench")}
    found.update({str(p.relative_to(ROOT)): registry_reads(p) for p in python_files("scripts")})
    assert {k: v for k, v in found.items() if v and k not in ASSEMBLE_REGISTRY} == {}
