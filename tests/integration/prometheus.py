"""A real Prometheus for tests: serve an app's /metrics, start Prometheus on it, query it.

``serve(app)`` puts a Flask app on a free loopback port; ``Prometheus(binary, tmp_path, port,
rule_files)`` starts Prometheus scraping it every second and always stops it (terminate, then
kill); ``query``/``query_error`` use its HTTP API; ``wait_for`` polls with a bound and fails with
Prometheus' own log when it does not get there.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flask
import pytest
import yaml
from werkzeug.serving import BaseWSGIServer, make_server

from workers.up import free_port


@contextlib.contextmanager
def serve(app: flask.Flask) -> Iterator[BaseWSGIServer]:
    """``app`` served over HTTP on a free loopback port (port 0: the kernel picks it)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="metrics-app", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


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


def query_error(port: int, promql: str) -> str:
    """Prometheus' error for an instant query, or "" when it ran (``query`` hides HTTP 400s)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    return "" if body.get("status") == "success" else str(body.get("error", body))


class Prometheus:
    """``with Prometheus(binary, tmp_path, target_port, rule_files) as prom``: prom.port, prom.log()."""

    def __init__(self, binary: str, tmp_path: Path, target_port: int, rule_files: Sequence[Path] = ()) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "prometheus.log"
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in rule_files],
                    "scrape_configs": [
                        {
                            "job_name": "autopilot",
                            "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                        }
                    ],
                }
            )
        )
        self._argv = [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(self._argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_for(
        self, promql: str, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float, what: str
    ) -> list[dict[str, Any]]:
        """Query ``promql`` every half second until ``done(result)``; fails with Prometheus' log."""
        assert self._proc is not None
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self._proc.returncode}:\n{self.log()}")
            found = query(self.port, promql)
            if done(found):
                return found
            time.sleep(0.5)
        pytest.fail(f"{what} within {timeout_s:g} s; last answer {found}\n{self.log()}")
