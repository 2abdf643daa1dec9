"""The API's selection when the Kubernetes API refuses or does not answer its lookups.

``nodelabel`` and ``job`` ask the cluster (nodes list, pods list). Through ``KubeClusterClient``
against the stand-in API server, which answers as the real one: a 403 worded as the RBAC authorizer
words it when the API's ServiceAccount lacks the grant, a 503 while it is away. The request is
answered naming the field and the server's words (502, or 503 with Retry-After); nothing is sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit import test_cluster_rbac as rbac
from tests.unit.api_helpers import Api, make_api
from tests.unit.cluster_standin import Backend, StandInApi, make_backend

USER = "system:serviceaccount:autopilot:autopilot-api"


@pytest.fixture
def kube() -> Iterator[Backend]:
    yield from make_backend("kube")


def _api(kube: Backend) -> tuple[Api, StandInApi]:
    server = kube.standin
    assert server is not None
    server.add_node("node-a", {"pool": "x"})
    server.add_pod("team", "llm-0", "node-b", labels={"app": "llm"})
    return make_api(cluster=kube.client), server


@pytest.mark.parametrize(
    ("query", "field", "refused"),
    [
        ("nodelabel=pool=x", "nodelabel", 'cannot list resource "nodes" in API group "" at the cluster scope'),
        ("job=team:app=llm", "job", 'cannot list resource "pods" in API group "" in the namespace "team"'),
    ],
)
def test_a_lookup_rbac_refuses_is_a_502_in_the_servers_words(
    kube: Backend, query: str, field: str, refused: str
) -> None:
    api, server = _api(kube)
    server.authorize(USER, set())  # a ServiceAccount bound to nothing
    response = api.client.get(f"/status?{query}&check=ping&format=json")
    assert response.status_code == 502, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["error"], body["field"]) == ("cluster_error", field)
    assert f'is forbidden: User "{USER}" {refused}' in body["detail"]
    assert api.dispatcher.sent == []


def test_with_the_charts_grants_the_same_lookups_select_their_nodes(kube: Backend) -> None:
    api, server = _api(kube)
    server.authorize(USER, rbac.allowed("autopilot-api"))
    response = api.client.get("/status?nodelabel=pool=x&job=team:app=llm&check=ping&format=json")
    assert response.status_code == 200, response.get_json()
    assert list(response.get_json()["nodes"]) == ["node-a", "node-b"]


@pytest.mark.parametrize(("query", "field", "op"), [("nodelabel=pool=x", "nodelabel", "list_nodes"),
                                                    ("job=team:app=llm", "job", "nodes_running")])  # fmt: skip
def test_a_lookup_the_api_server_does_not_answer_is_a_503_with_retry_after(
    kube: Backend, query: str, field: str, op: str
) -> None:
    api, server = _api(kube)
    server.fail_next(op, 503, times=4)  # every attempt of the seam's retries
    response = api.client.post("/api/v1/runs", json={"checks": ["ping"], **_body(query)})
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["error"], body["field"]) == ("cluster_unavailable", field)
    assert int(response.headers["Retry-After"]) > 0
    assert api.dispatcher.sent == []


def _body(query: str) -> dict[str, str]:
    key, _, value = query.partition("=")
    return {key: value}
