"""The API's /metrics against the real Prometheus tools: ``promtool check metrics`` and a live scrape.

The API here is a bare Flask app with ``api.metrics`` over a fakeredis results store holding
three nodes (tests/metrics_data.py); what is under test is the exposition and the scrape, not
the store. Prometheus runs as a child process on a free loopback port with its storage in
``tmp_path`` and is always stopped (terminate, then kill) when the test ends.
"""

from __future__ import annotations

import json
import socket
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
import flask
import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from autopilot import config
from tests.conftest import require_binary
from tests.metrics_data import make_app, populate
from workers.store import ResultsStore

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
    """The app served over HTTP on a free loopback port (port 0: the kernel picks it)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="metrics-api", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    """Instant query through Prometheus' HTTP API; [] while it is not ready yet."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_every_node(api_server: BaseWSGIServer, tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    port = free_port()
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: autopilot\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{api_server.server_port}']\n"
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
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            found = query(port, "autopilot_health_checks")
            if {s["metric"].get("node") for s in found} >= set(NODES):
                break
            time.sleep(0.5)
        nodes = {s["metric"].get("node") for s in found}
        assert nodes == set(NODES), (
            f"no autopilot_health_checks for {sorted(set(NODES) - nodes)} within {SCRAPE_WAIT_S:g} s\n"
            + log_path.read_text(errors="replace")[-4000:]
        )
        sample = next(
            s
            for s in found
            if s["metric"]["node"] == "gpu-c" and s["metric"]["health"] == "remapped" and s["metric"]["deviceid"] == "1"
        )
        assert float(sample["value"][1]) == 1.0
        assert {s["metric"]["job"] for s in found} == {"autopilot"}
        up = query(port, 'up{job="autopilot"}')
        assert [float(s["value"][1]) for s in up] == [1.0]
        evicted = query(port, 'autopilot_node_verdict{verdict="EVICT"} == 1')
        assert [s["metric"]["node"] for s in evicted] == ["gpu-c"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
