"""docs/CONFIGURATION.md and docs/API.md are generated; they fail here when they drift from the code."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from autopilot import config
from tests.conftest import ROOT


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current() -> None:
    gen = _script("gen_config_docs")
    assert (ROOT / "docs" / "CONFIGURATION.md").read_text() == gen.render(), (
        "docs/CONFIGURATION.md is out of date: run .venv/bin/python scripts/gen_config_docs.py"
    )


def test_configuration_reference_documents_every_variable() -> None:
    gen = _script("gen_config_docs")
    text = gen.render()
    docs = gen.field_docs()
    for field, variable, aliases in config.variables():
        assert f"| `{variable}` |" in text
        assert docs.get(field), f"Settings.{field} has no docstring to document it"
        for alias in aliases:
            assert f"`{alias}`" in text


def test_api_reference_is_current() -> None:
    gen = _script("gen_api_docs")
    assert (ROOT / "docs" / "API.md").read_text() == gen.render(), (
        "docs/API.md is out of date: run .venv/bin/python scripts/gen_api_docs.py"
    )


def test_api_reference_lists_every_path() -> None:
    gen = _script("gen_api_docs")
    doc = gen.document()
    text = gen.render(doc)
    for path, methods in doc["paths"].items():
        for method in methods:
            assert f"## `{method.upper()} {path}`" in text
    assert "/api/v1/nodes/{name}/clear" in doc["paths"]


def test_every_install_from_the_source_tree_builds_the_chart_dependencies_first() -> None:
    """The chart declares redis-ha: Helm refuses to install it from the tree until ``helm dependency
    build`` fetched it, and a build from ``Chart.lock`` wants the repository added by name."""
    import re

    import yaml

    chart = yaml.safe_load((ROOT / "helm" / "autopilot" / "Chart.yaml").read_text())
    repos = {d["repository"] for d in chart.get("dependencies", ())}
    assert repos, "the chart declares its dependencies"
    for doc in ("README.md", "docs/INSTALL.md"):
        text = (ROOT / doc).read_text()
        installs = [m.start() for m in re.finditer(r"helm\s+(?:install|upgrade)\s[^`]*?helm/autopilot", text)]
        assert installs, f"{doc} says how to install the chart"
        build = text.find("helm dependency build")
        assert 0 <= build < installs[0], f"{doc}: helm dependency build before the first install"
        for repo in repos:
            added = text.find("helm repo add")
            assert 0 <= added < build and repo in text[added:build], f"{doc}: helm repo add {repo} before the build"
