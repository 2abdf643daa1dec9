"""Bad input is a 400 naming its field, and nothing is enqueued: tables of malformed values for
every parameter of every route (lists, integers, numbers), against the real checks' parameters.

Each row was accepted before (``/ping?nodes=<bad>`` answered 200 and turned every node's ping
into an ``error``; ``host=,,,`` ran everywhere; ``r=0_3`` was 3), so each fails on that code.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from autopilot import errors, registry
from tests.unit.api_helpers import Api, make_api

importlib.import_module("autopilot.checks")

# Integers that Python's int() reads but that nobody writes on purpose.
NON_CANONICAL_INTS = ["0_3", "+3", " 3", "3 ", "\u0663", "\uff13", "3.0", "0x3", "1e1", "-1", "3\n"]
NON_CANONICAL_FLOATS = ["1_0", "nan", "inf", "-inf", "\uff11", " 1", "1 ", "0x1", "1e999"]
BAD_NODE_LISTS = [",,,", "node-a,,node-b", "node-a,", ",node-a", "Node-A", "node_a", "a;b", "../x"]


@pytest.fixture
def api() -> Api:
    return make_api(checks=registry.REGISTRY)


def _rows() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for value in [",,,", " , ", "node-a,,node-b", "node-a,", "all,node-a", "NODE-A"]:
        rows.append((f"/status?host={value}&check=remapped", "host"))
    for value in [",,,", "remapped,,ping", "all,remapped", "remapped,"]:
        rows.append((f"/status?host=node-a&check={value}", "check"))
    for value in NON_CANONICAL_INTS:
        rows.append((f"/status?host=node-a&check=dcgm&r={value}", "r"))
        rows.append((f"/dcgm?host=node-a&r={value}", "r"))
        rows.append((f"/status?host=node-a&check=remapped&batch={value}", "batch"))
        rows.append((f"/ping?host=node-a&count={value}", "count"))
        rows.append((f"/iperf?host=node-a&pclients={value}", "pclients"))
        rows.append((f"/iperf?host=node-a&startport=5{value}", "startport"))
        rows.append((f"/iperf?host=node-a&duration_s={value}", "duration_s"))
    for value in NON_CANONICAL_FLOATS:
        rows.append((f"/ping?host=node-a&wait_s={value}", "wait_s"))
        rows.append((f"/iperf?host=node-a&min_fraction={value}", "min_fraction"))
        rows.append((f"/pciebw?host=node-a&threshold_gbps={value}", "threshold_gbps"))
    for value in ["\uff13s", "1_0", "\u0663"]:
        rows.append((f"/status?host=node-a&check=remapped&deadline={value}", "deadline"))
    for value in BAD_NODE_LISTS:
        rows.append((f"/ping?host=node-a,node-b&nodes={value}", "nodes"))
        rows.append((f"/iperf?host=node-a,node-b&nodes={value}", "nodes"))
        rows.append((f"/status?host=node-a&check=ping,iperf&nodes={value}", "nodes"))
    return rows


def _quote(url: str) -> str:
    path, _, query = url.partition("?")
    from urllib.parse import quote

    parts = [f"{k}={quote(v, safe=',')}" for k, _, v in (p.partition("=") for p in query.split("&"))]
    return f"{path}?{'&'.join(parts)}"


@pytest.mark.parametrize(("url", "field"), _rows())
def test_bad_query_values_are_a_400_naming_the_field_with_nothing_enqueued(api: Api, url: str, field: str) -> None:
    response = api.client.get(_quote(url))
    assert response.status_code == 400, f"{url!r}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    assert response.get_json()["field"] == field, response.get_json()
    assert api.dispatcher.sent == [] and api.dispatcher.tasks == []
    assert api.run_keys() == []


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"checks": ["remapped"], "hosts": ["node-a", ""]}, "hosts"),
    ({"checks": ["remapped"], "hosts": ",,,"}, "hosts"),
    ({"checks": ["remapped"], "hosts": ["all", "node-a"]}, "host"),
    ({"checks": [",,,"], "hosts": ["node-a"]}, "checks"),
    ({"checks": ["remapped"], "hosts": ["node-a"], "batch": "0_3"}, "batch"),
    ({"checks": ["remapped"], "hosts": ["node-a"], "batch": "+3"}, "batch"),
    ({"checks": ["remapped"], "hosts": ["node-a"], "batch": 2.5}, "batch"),
    ({"checks": ["ping"], "hosts": ["node-a"], "params": {"ping": {"nodes": "Bad_Name"}}}, "params.ping.nodes"),
    ({"checks": ["ping"], "hosts": ["node-a"], "params": {"ping": {"nodes": ",,,"}}}, "params.ping.nodes"),
    ({"checks": ["ping"], "hosts": ["node-a"], "params": {"ping": {"nodes": 3}}}, "params.ping.nodes"),
    ({"checks": ["ping"], "hosts": ["node-a"], "params": {"ping": {"count": "0_3"}}}, "params.ping.count"),
    ({"checks": ["ping"], "hosts": ["node-a"], "params": {"ping": {"count": 2.0}}}, "params.ping.count"),
    ({"checks": ["dcgm"], "hosts": ["node-a"], "params": {"dcgm": {"r": "\uff13"}}}, "params.dcgm.r"),
    ({"checks": ["iperf"], "hosts": ["node-a"], "params": {"iperf": {"nodes": "node-a,,x"}}}, "params.iperf.nodes"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_run_bodies_are_a_400_naming_the_field_with_nothing_enqueued(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = api.client.post("/api/v1/runs", json=body)
    assert response.status_code == 400, f"{body!r}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    assert response.get_json()["field"] == field, response.get_json()
    assert api.dispatcher.sent == [] and api.run_keys() == []


@pytest.mark.parametrize("value", NON_CANONICAL_INTS)
def test_node_history_limit_takes_canonical_integers_only(api: Api, value: str) -> None:
    response = api.client.get("/api/v1/nodes/node-a", query_string={"limit": value})
    assert response.status_code == 400 and response.get_json()["field"] == "limit"


def test_good_lists_and_integers_still_work(api: Api) -> None:
    assert api.client.get("/ping?host=node-a,node-b&nodes=node-b, node-a,node-b&count=2").status_code == 200
    sent = api.dispatcher.sent[-1]
    assert sent.params["ping"]["nodes"] == "node-b,node-a" and sent.params["ping"]["count"] == 2
    assert api.client.get("/status?host=node-a&check=dcgm&r=3&batch=007").status_code == 200
    assert api.client.get("/status?host=&check=&format=json").status_code == 200  # blank: the defaults
    assert api.client.get("/status?host=all&check=all&format=json").status_code == 200


def test_the_param_type_itself_rejects_bad_node_lists() -> None:
    spec = registry.REGISTRY.get("ping")
    for value in BAD_NODE_LISTS:
        with pytest.raises(errors.BadParameter) as caught:
            spec.validate({"nodes": value})
        assert caught.value.field == "nodes"
    assert spec.validate({"nodes": ""})["nodes"] == ""
