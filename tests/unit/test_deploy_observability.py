"""The dashboard and the alert rules read only metrics that /metrics exports, and label values that exist.

/metrics here is the API's own ``api.metrics`` over a fakeredis results store populated by
tests/metrics_data.py (healthy nodes and an evicted one), plus one request so that the request
counter and histogram have samples.
"""

from __future__ import annotations

import re

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from autopilot import config
from autopilot.metrics import STATUSES, VERDICTS
from autopilot.registry import shipped as shipped_checks
from tests.metrics_data import make_app, populate
from tests.unit import deploy_helpers as dh
from workers.store import ResultsStore

HEALTH_NAMES = shipped_checks().health_names()  # check -> upstream health value, from the checks' specs


@pytest.fixture(scope="module")
def exported() -> set[str]:
    store = ResultsStore(fakeredis.FakeRedis())
    populate(store, ["gpu-a", "gpu-b", "gpu-c"])
    client = make_app(store, config.Settings(node_name="api")).test_client()
    client.get("/api/v1/nodes/gpu-a")
    text = client.get("/metrics").get_data(as_text=True)
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_the_metric_name_parser_finds_metrics_and_skips_functions_and_labels() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, endpoint) (rate(autopilot_api_request_duration_seconds_bucket[5m]))) "
        '> on(node) group_left() max by (node) (time() - autopilot_node_last_seen_timestamp_seconds{node=~"a|b"})'
    )
    assert dh.metric_names(expr) == {
        "autopilot_api_request_duration_seconds_bucket",
        "autopilot_node_last_seen_timestamp_seconds",
    }


def test_every_alert_reads_only_exported_metrics(exported: set[str]) -> None:
    rules = dh.rule_exprs()
    assert len(rules) >= 6
    for name, expr in rules:
        used = dh.metric_names(expr)
        assert used, f"{name}: no metric found in {expr!r}"
        assert used <= exported, f"{name} reads {sorted(used - exported)}, which /metrics does not export"


def test_every_dashboard_query_reads_only_exported_metrics(exported: set[str]) -> None:
    queries = dh.dashboard_exprs()
    assert len(queries) >= 15
    for where, expr in queries:
        used = dh.metric_names(dh.grafana_placeholders(expr))
        assert used, f"{where}: no metric found in {expr!r}"
        assert used <= exported, f"{where} reads {sorted(used - exported)}, which /metrics does not export"


_LABEL_VALUE = re.compile(r'\b(verdict|status|health)\s*(=~|=|!=|!~)\s*"([^"]*)"')


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_label_values_in_queries_exist(source: str) -> None:
    """Upstream's alerts looked for gpuhealth 'ERR', which never existed; ours name only real values."""
    known = {"verdict": set(VERDICTS), "status": set(STATUSES), "health": set(HEALTH_NAMES.values())}
    exprs = dh.rule_exprs() if source == "alerts" else dh.dashboard_exprs()
    for where, expr in exprs:
        for label, _op, value in _LABEL_VALUE.findall(expr):
            for alternative in value.split("|"):
                assert alternative in known[label], f"{where}: {label}={alternative!r} never exists"


def test_dashboard_covers_every_check_and_the_cluster_view() -> None:
    dash = dh.dashboard()
    exprs = " ".join(e for _, e in dh.dashboard_exprs())
    for health in HEALTH_NAMES.values():
        assert f'health="{health}"' in exprs, f"no panel for {health}"
    for metric in (
        "autopilot_node_verdict",
        "autopilot_check_duration_seconds",
        "autopilot_check_last_run_timestamp_seconds",
        "autopilot_node_last_seen_timestamp_seconds",
        "autopilot_nodes",
    ):
        assert metric in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["title"]


def test_alerts_cover_the_issue() -> None:
    names = {name for name, _ in dh.rule_exprs()}
    assert {
        "AutopilotNodeEvicted",
        "AutopilotNodeWarn",
        "AutopilotResultsStale",
        "AutopilotLowPCIeBandwidth",
        "AutopilotNodeNoHeartbeat",
        "AutopilotInvasiveCheckNotCompleting",
    } <= names
