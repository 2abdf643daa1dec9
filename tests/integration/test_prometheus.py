"""The API's /metrics against the real Prometheus tools: ``promtool check metrics`` and a live scrape.

The API here is a bare Flask app with ``api.metrics`` over a fakeredis results store holding
three nodes (tests/metrics_data.py); what is under test is the exposition and the scrape, not
the store. Prometheus runs as a child process on a free loopback port with its storage in
``tmp_path`` and is always stopped (terminate, then kill) when the test ends.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import flask
import pytest
from werkzeug.serving import BaseWSGIServer

from autopilot import config
from autopilot.results import CheckResult, DeviceResult, Status, utc_now_iso
from tests.conftest import require_binary
from tests.integration import prometheus as prom
from tests.metrics_data import make_app, populate
from workers.store import NodeRecord, ResultsStore

pytestmark = pytest.mark.integration

NODES = ["gpu-a", "gpu-b", "gpu-c"]
SCRAPE_WAIT_S = 30.0  # bound on waiting for Prometheus to start, scrape and answer


@pytest.fixture
def app() -> flask.Flask:
    store = ResultsStore(fakeredis.FakeRedis())
    populate(store, NODES)
    return make_app(store, config.Settings(node_name="api"))


@pytest.fixture
def api_server(app: flask.Flask) -> Iterator[BaseWSGIServer]:
    with prom.serve(app) as server:
        yield server


def test_promtool_accepts_the_metrics_page(app: flask.Flask) -> None:
    promtool = require_binary("promtool")
    client = app.test_client()
    client.get("/api/v1/nodes/gpu-a")  # so the request counter and histogram have samples too
    text = client.get("/metrics").get_data(as_text=True)
    assert "autopilot_health_checks{" in text and "autopilot_api_requests_total{" in text
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    # promtool exits 0 with no output when the text parses and every lint passes (3 on lint problems).
    assert done.returncode == 0, f"promtool rc={done.returncode}\n{done.stdout}{done.stderr}"
    assert done.stdout.strip() == "" and done.stderr.strip() == ""


def test_prometheus_scrapes_every_node(api_server: BaseWSGIServer, tmp_path: Path) -> None:
    with prom.Prometheus(require_binary("prometheus"), tmp_path, api_server.server_port) as prometheus:
        found = prometheus.wait_for(
            "autopilot_health_checks",
            lambda got: {s["metric"].get("node") for s in got} >= set(NODES),
            SCRAPE_WAIT_S,
            "autopilot_health_checks for every node",
        )
        sample = next(
            s
            for s in found
            if s["metric"]["node"] == "gpu-c" and s["metric"]["health"] == "remapped" and s["metric"]["deviceid"] == "1"
        )
        assert float(sample["value"][1]) == 1.0
        assert {s["metric"]["job"] for s in found} == {"autopilot"}
        up = prom.query(prometheus.port, 'up{job="autopilot"}')
        assert [float(s["value"][1]) for s in up] == [1.0]
        evicted = prom.query(prometheus.port, 'autopilot_node_verdict{verdict="EVICT"} == 1')
        assert [s["metric"]["node"] for s in evicted] == ["gpu-c"]


def test_promtool_accepts_label_values_from_hostile_workers_and_tools() -> None:
    """Quotes, backslashes, newlines, escape sequences and a 100 KB CPU model from a worker's heartbeat
    and a tool's device ids: the page stays valid and each label value from data stays short."""
    promtool = require_binary("promtool")
    store = ResultsStore(fakeredis.FakeRedis())
    weird = 'q"uo\\te\nline\x1b[31m\u202e'
    store.heartbeat(NodeRecord("gpu-a", cpu_model=weird + "C" * 100_000, gpu_model=weird, last_seen=time.time()))
    devices = tuple(DeviceResult(f"{weird}{i}", Status.OK, 12.5, "GB/s", weird) for i in range(3))
    store.save_result(CheckResult("pciebw", Status.OK, weird, node="gpu-a", devices=devices, started_at=utc_now_iso()))
    text = make_app(store, config.Settings(node_name="api")).test_client().get("/metrics").get_data(as_text=True)
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"promtool rc={done.returncode}\n{done.stdout}{done.stderr}"
    health = [line for line in text.splitlines() if line.startswith("autopilot_health_checks{")]
    assert len(health) == 3 and all(len(line) < 1000 for line in health)
