"""The per-account RBAC table of docs/KUBERNETES.md: generated from the chart's rbac.yaml, and
checked against what the code calls (the scenarios of test_cluster_rbac, through
``KubeClusterClient`` against the stand-in API server): every request allowed, every verb used.
The chart is rendered with every opt-in feature that adds a grant (the pvc check, device taints),
and the scenarios include theirs and beat's remediation pass.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable, Iterator
from types import ModuleType

import fakeredis
import pytest

from autopilot.context import CheckContext
from tests.conftest import ROOT
from tests.unit import test_cluster_rbac as measured
from tests.unit.cluster_standin import Backend, Request, make_backend
from tests.unit.test_deploy_files import _permissions
from tests.unit.test_remediation import evict, pass_the_gate
from tests.unit.test_remediation import settings as remediation_settings
from workers import remediating
from workers.store import ResultsStore

Permission = tuple[str, str, str, str | None]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_rbac_docs", ROOT / "scripts" / "gen_rbac_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def kube() -> Iterator[Backend]:
    yield from make_backend("kube")


def test_the_table_in_kubernetes_md_is_current() -> None:
    gen = _script()
    current = (ROOT / "docs" / "KUBERNETES.md").read_text()
    assert gen.render(current) == current, (
        "docs/KUBERNETES.md's rbac table is out of date: run scripts/gen_rbac_docs.py"
    )
    assert "| worker | namespace `RELEASE_NS` | batch | jobs | any | create, delete, get |" in current


def _chart(account: str) -> set[Permission]:
    gen = _script()
    granted = _permissions(gen.rbac_objects(), f"autopilot-{account}")
    return {(g, r, v, "autopilot" if ns == gen.NAMESPACE else ns) for g, r, v, ns in granted}


def _calls(kube: Backend, account: str, make_ctx: Callable[..., CheckContext]) -> set[Permission]:
    api = kube.standin
    assert api is not None
    api.add_node("gpu-1", {"pool": "a"}, gpus=8)
    api.add_storage_class("local", "WaitForFirstConsumer")
    if account == "worker":
        measured.worker_scenario(kube, make_ctx)
    else:
        measured.publish_scenario(kube)
    if account == "api":
        kube.client.list_nodes("pool=a")
        kube.client.nodes_running("train", "job=llm")
    if account == "beat":
        # Remediation (opt-in, beat only): cordon and taint an evicted node, then uncordon it after the gate.
        store = ResultsStore(fakeredis.FakeRedis())
        evict(store, "gpu-1")
        remediating.run(store, kube.client, remediation_settings())
        pass_the_gate(store, "gpu-1")
        remediating.run(store, kube.client, remediation_settings())
        assert not api.nodes["gpu-1"]["spec"].get("unschedulable")
    measured.devicetaint_scenario(kube)
    return {measured.needed(r) for r in api.requests if not measured.is_discovery(r)}


@pytest.mark.parametrize("account", ["worker", "api", "beat"])
def test_each_account_may_do_what_its_code_calls_and_nothing_it_does_not(
    account: str, kube: Backend, make_ctx: Callable[..., CheckContext]
) -> None:
    granted = _chart(account)
    calls = _calls(kube, account, make_ctx)
    assert sorted(c for c in calls if not measured.permits(granted, c)) == [], "the code would be refused"
    used = {(g, r, v) for g, r, v, _ in calls}
    unused = sorted({(g, r, v) for g, r, v, _ in granted} - used)
    assert unused == KNOWN_UNUSED[account], unused


# Granted but not called, each for a stated reason (docs/KUBERNETES.md); anything else fails above.
# nodes list lives in the ClusterRole all three share (deploy/rbac, kept equal to the chart); only
# the API's nodelabel selection and beat's remediation pass list nodes.
KNOWN_UNUSED: dict[str, list[tuple[str, str, str]]] = {
    "worker": [("", "nodes", "list")],
    "api": [],
    "beat": [],
}


def _client_calls() -> set[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) ``KubeClusterClient`` can ask for, read from its source: each
    ``_call``/``_once`` (method, path), ``_list`` (list) and ``_delete`` (delete) with a literal path."""
    tree = ast.parse((ROOT / "autopilot" / "cluster.py").read_text())

    def path_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
        return None  # a variable (the DRA paths, discovered at run time)

    found: set[tuple[str, str, str]] = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
        name = call.func.attr
        if not (isinstance(call.func.value, ast.Name) and call.func.value.id == "self") or not call.args:
            continue
        if name in ("_call", "_once") and len(call.args) >= 2 and isinstance(call.args[0], ast.Constant):
            method, path = str(call.args[0].value), path_of(call.args[1])
        elif name in ("_list", "_delete"):
            method, path = ("GET" if name == "_list" else "DELETE"), path_of(call.args[0])
        else:
            continue
        if path is None or not path.startswith("/"):
            continue
        request = Request(method, path, {}, "", None)
        if measured.is_discovery(request):
            continue
        group, resource, verb, _ = measured.needed(request)
        found.add((group, resource, verb))
    return found


def test_every_call_the_client_can_make_is_measured_against_the_grants(
    kube: Backend, make_ctx: Callable[..., CheckContext]
) -> None:
    """The accounts' scenarios above measure the grants by what they call; a call the client gained that no
    scenario makes would go unmeasured (and be a 403 in a cluster). So each call in the client's source must
    be among those the scenarios make."""
    made: set[tuple[str, str, str]] = set()
    for account in ("worker", "api", "beat"):
        for backend in make_backend("kube"):
            made |= {(g, r, v) for g, r, v, _ in _calls(backend, account, make_ctx)}
    static = _client_calls()
    assert ("", "nodes/status", "patch") in static and ("", "pods/log", "get") in static  # the reader reads
    assert sorted(static - made) == []
