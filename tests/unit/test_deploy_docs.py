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
