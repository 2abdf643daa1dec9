"""The alert rules against the real Prometheus tools: ``promtool check/test rules`` and a live alert.

The live test serves /metrics from ``api.metrics`` over a fakeredis results store in which node
gpu-c is EVICT (tests/metrics_data.py), starts a real Prometheus on a free loopback port that
scrapes it and loads the alert rules, and waits (bounded) for ``AutopilotNodeEvicted`` to fire.
The rules it loads are the real file with every ``for:`` set to 0s, so the test need not wait a
minute; the expressions are untouched. The same Prometheus then runs every dashboard query, so a
query that does not parse fails here rather than in Grafana.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import yaml
from werkzeug.serving import BaseWSGIServer

from autopilot import config
from tests.conftest import ROOT, require_binary
from tests.integration import prometheus as prom
from tests.integration.prometheus import query, query_error
from tests.metrics_data import make_app, populate
from tests.unit import deploy_helpers as dh
from workers.store import ResultsStore

pytestmark = pytest.mark.integration

NODES = ["gpu-a", "gpu-b", "gpu-c"]  # populate() makes the last one EVICT
ALERT_WAIT_S = 60.0  # bound on Prometheus starting, scraping, evaluating and firing


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", "alerts/autopilot-rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_rules() -> None:
    done = _promtool("test", "rules", "alerts/tests.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_prometheus_rule_copy_passes_promtool() -> None:
    done = _promtool("check", "rules", "helm/autopilot/files/autopilot-rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def metrics_server() -> Iterator[BaseWSGIServer]:
    store = ResultsStore(fakeredis.FakeRedis())
    populate(store, NODES)
    with prom.serve(make_app(store, config.Settings(node_name="api"))) as server:
        yield server


def immediate_rules(tmp_path: Path) -> Path:
    """The real rules with ``for: 0s``: same expressions, no waiting period."""
    doc = yaml.safe_load(dh.RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_prometheus_fires_evict_for_the_evicted_node(metrics_server: BaseWSGIServer, tmp_path: Path) -> None:
    rules = [immediate_rules(tmp_path)]
    with prom.Prometheus(require_binary("prometheus"), tmp_path, metrics_server.server_port, rules) as prometheus:
        port = prometheus.port
        firing = prometheus.wait_for(
            'ALERTS{alertname="AutopilotNodeEvicted", alertstate="firing"}',
            bool,
            ALERT_WAIT_S,
            "AutopilotNodeEvicted firing",
        )
        assert [s["metric"]["node"] for s in firing] == ["gpu-c"]
        assert firing[0]["metric"]["severity"] == "critical"
        # The healthy nodes fire nothing of the kind, and nothing fires for a value that never exists.
        assert query(port, 'ALERTS{alertname="AutopilotNodeWarn"}') == []
        assert query_error(port, "sum(") != ""  # a broken query is reported, so the loop below means something
        for where, expr in dh.dashboard_exprs():
            error = query_error(port, dh.grafana_placeholders(expr))
            assert error == "", f"dashboard {where}: {error}"
        pcie = query(port, dh.grafana_placeholders(next(e for w, e in dh.dashboard_exprs() if "PCIe" in w)))
        assert {s["metric"]["node"] for s in pcie} == set(NODES)
