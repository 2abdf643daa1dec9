"""The per-account RBAC table of docs/KUBERNETES.md: generated from the chart's rbac.yaml, and
checked against what the code calls (the scenarios of test_cluster_rbac, through
``KubeClusterClient`` against the stand-in API server): every request allowed, every verb used.
The chart is rendered with every opt-in feature that adds a grant (the pvc check, device taints),
and the scenarios include theirs and beat's remediation pass.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from types import ModuleType

import fakeredis
import pytest

from autopilot.context import CheckContext
from tests.conftest import ROOT
from tests.unit import test_cluster_rbac as measured
from tests.unit.cluster_standin import Backend, make_backend
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
