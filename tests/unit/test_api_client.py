"""``autopilot status`` and ``autopilot nodes`` over real HTTP against a live app (werkzeug server)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console
from werkzeug.serving import BaseWSGIServer, make_server

from api import client
from autopilot.results import Status
from tests.unit.api_helpers import Api, make_api


class Served:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, api.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(make_api(deadline_s=1))
    s.api.workers.delay_s = 0.05
    yield s
    s.close()


def test_status_json_over_http(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code = client.status_main(["--url", served.url, "--host", "node-a,node-b", "--check", "pciebw", "--json"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == 0
    assert report["complete"] is True and set(report["nodes"]) == {"node-a", "node-b"}


def test_status_table_and_exit_code_for_a_failure(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.api.workers.outcomes[("node-b", "remapped")] = (Status.FAIL, True, "GPU [3]: remap failed")
    code = client.status_main(["--url", served.url, "--check", "remapped", "--check", "ping", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NODE" in out and "SUMMARY" in out
    assert "node-b" in out and "fail (fatal)" in out and "GPU [3]: remap failed" in out
    assert "3 node(s): 2 ok, 1 fail" in out


def test_status_unreachable_node_exits_3(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.api.workers.silent.add("node-c")
    code = client.status_main(["--url", served.url, "--check", "ping", "--progress"])
    captured = capsys.readouterr()
    assert code == 3
    assert "unreachable" in captured.out


def test_status_params_bare_and_qualified(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code = client.status_main(["--url", served.url, "--host", "node-a", "--check", "dcgm", "--param", "r=3", "--json"])
    assert code == 0
    assert served.api.dispatcher.sent[-1].params == {"dcgm": {"r": 3}}
    code = client.status_main(
        ["--url", served.url, "--host", "node-a", "--check", "iperf", "--param", "iperf.pclients=2", "--json"]
    )
    assert code == 0
    assert served.api.dispatcher.sent[-1].params["iperf"]["pclients"] == 2
    capsys.readouterr()
    assert client.status_main(["--url", served.url, "--check", "ping", "--param", "r=3"]) == 2
    assert "takes a parameter" in capsys.readouterr().err


def test_status_rejected_request_is_a_usage_error(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    code = client.status_main(["--url", served.url, "--check", "nosuch"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "check" in err and "nosuch" in err
    assert served.api.dispatcher.sent == []


def test_status_with_token(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    s = Served(make_api(token="abc"))
    try:
        assert client.status_main(["--url", s.url, "--check", "ping"]) == 2
        assert "unauthorized" in capsys.readouterr().err
        monkeypatch.setenv("AUTOPILOT_API_TOKEN", "abc")
        assert client.status_main(["--url", s.url, "--check", "ping", "--json"]) == 0
        assert client.nodes_main(["--url", s.url, "--token", "abc", "--json"]) == 0
    finally:
        s.close()


def test_connection_refused_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    assert client.status_main(["--url", f"http://127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "connection refused" in err
    assert client.nodes_main(["--url", f"http://127.0.0.1:{port}"]) == 3


def test_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.status_main(["--url", "ftp://x"]) == 2


def test_nodes_table(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.api.store.set_state("node-a", {"verdict": "EVICT", "reasons": json.dumps(["remapped: [bold]x"])})
    assert client.nodes_main(["--url", served.url]) == 0
    out = capsys.readouterr().out
    assert "node-a" in out and "EVICT" in out and "remapped: [bold]x" in out
    assert "3 node(s), 3 live" in out
    assert "8 x H100" in out


def test_exit_codes_follow_autopilot_run() -> None:
    def report(**totals: int) -> dict[str, object]:
        return {"totals": totals}

    assert client.report_exit_code(report(ok=3)) == 0
    assert client.report_exit_code(report(ok=1, warn=1, unreachable=1)) == 1
    assert client.report_exit_code(report(ok=1, error=1)) == 3
    assert client.report_exit_code(report(ok=1, unknown=1)) == 3


@pytest.mark.parametrize("hosts", [",,,", "node-a,,node-b", "node-a,"])
def test_status_with_an_empty_host_entry_asks_for_nothing(
    served: Served, capsys: pytest.CaptureFixture[str], hosts: str
) -> None:
    # before: the empty entries were dropped client-side, and ",,," ran on every live node
    assert client.status_main(["--url", served.url, "--host", hosts, "--check", "ping"]) == 2
    assert "hosts" in capsys.readouterr().err
    assert served.api.dispatcher.sent == []


@pytest.mark.parametrize("make_parser", [client.status_parser, client.nodes_parser])
def test_url_default_comes_from_autopilot_api_url_as_the_help_says(
    make_parser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPILOT_API_URL", "http://api.example:3334")
    parser = make_parser()
    assert parser.parse_args([]).url == "http://api.example:3334"
    assert "AUTOPILOT_API_URL" in " ".join(parser.format_help().split())


def test_the_status_table_shows_each_nodes_verdict_once() -> None:
    def result(check: str, status: str) -> dict[str, object]:
        return {"check": check, "status": status, "summary": f"{check} said {status}"}

    report = {
        "id": "0" * 32,
        "nodes": {
            "node-a": {
                "status": "fail",
                "verdict": "EVICT",
                "results": [result("ping", "ok"), result("remapped", "fail")],
            },
            "node-b": {
                "status": "unknown",
                "verdict": None,
                "detail": "no worker has registered this node",
                "results": [],
            },
        },
    }
    console = Console(width=200, record=True)
    console.print(client.report_table(report))
    lines = console.export_text().splitlines()
    assert "VERDICT" in lines[2]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "node-" in line]
    assert rows == [
        ["node-a", "EVICT", "ping", "ok", "ping said ok"],
        ["node-a", "", "remapped", "fail", "remapped said fail"],
        ["node-b", "-", "-", "unknown", "no worker has registered this node"],
    ]
