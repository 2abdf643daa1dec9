"""The alert rules against the real Prometheus tools: ``promtool check/test rules`` and a live alert.

The live test serves /metrics from ``api.metrics`` over a fakeredis results store in which node
gpu-c is EVICT (tests/metrics_data.py), starts a real Prometheus on a free loopback port that
scrapes it and loads the alert rules, and waits (bounded) for ``AutopilotNodeEvicted`` to fire.
The rules it loads are the real file with every ``for:`` set to 0s, so the test need not wait a
minute; the expressions are untouched. The same Prometheus then runs every dashboard query, so a
query that does not parse fails here rather than in Grafana.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import yaml
from werkzeug.serving import BaseWSGIServer, make_server

from autopilot import config
from tests.conftest import ROOT, require_binary
from tests.integration.test_prometheus import free_port, query
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
    app = make_app(store, config.Settings(node_name="api"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="alerts-metrics", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def query_error(port: int, promql: str) -> str:
    """Prometheus' error for an instant query, or "" when it ran (the shared helper hides HTTP 400s)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    return "" if body.get("status") == "success" else str(body.get("error", body))


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
    prometheus = require_binary("prometheus")
    port = free_port()
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(immediate_rules(tmp_path))],
                "scrape_configs": [
                    {
                        "job_name": "autopilot",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_server.server_port}"]}],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    argv = [
        prometheus,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        firing: list[dict[str, Any]] = []
        deadline = time.monotonic() + ALERT_WAIT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            firing = query(port, 'ALERTS{alertname="AutopilotNodeEvicted", alertstate="firing"}')
            if firing:
                break
            time.sleep(0.5)
        assert firing, (
            f"AutopilotNodeEvicted did not fire within {ALERT_WAIT_S:g} s\n"
            + log_path.read_text(errors="replace")[-4000:]
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
