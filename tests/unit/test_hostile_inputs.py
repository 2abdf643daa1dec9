"""Hostile and odd inputs at the public surfaces: the API's durations, its text answer, settings from
the environment, and the CLI client against an API that answers garbage.

Each case was mishandled before: a deadline of ``"5" + 31 spaces + "x"`` ran as 5 s (the value was
cut to 32 characters, then read), a 400-digit interval was infinity and crashed beat, a Redis URL
that is not one started every process, the client printed a ``--url`` password, raised a traceback
on an answer of the wrong shape and passed ESC sequences from an answer to the terminal.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from api import client
from autopilot import cli, config, errors
from autopilot.results import Status
from tests.unit.api_helpers import Api, make_api

RUN_ID = "a" * 32
CREATED = {"id": RUN_ID, "status_url": f"/api/v1/runs/{RUN_ID}", "nodes": ["node-a"], "deadline_s": 5}
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x9b31m"


@pytest.fixture
def api() -> Api:
    return make_api()


# ------------------------------------------------------------------ API: durations as sent


@pytest.mark.parametrize("value", ["5" + " " * 31 + "x", " 5", "5 ", "5\n"])
def test_a_deadline_is_read_whole_and_as_sent(api: Api, value: str) -> None:
    response = api.client.get("/status", query_string={"host": "node-a", "check": "remapped", "deadline": value})
    assert response.status_code == 400 and response.get_json()["field"] == "deadline", response.get_data()
    response = api.client.post("/api/v1/runs", json={"checks": ["remapped"], "hosts": ["node-a"], "deadline": value})
    assert response.status_code == 400 and response.get_json()["field"] == "deadline", response.get_data()
    assert api.dispatcher.sent == [] and api.run_keys() == []


def test_a_json_number_deadline_is_range_checked_as_a_number(api: Api) -> None:
    response = api.client.post("/api/v1/runs", json={"checks": ["remapped"], "hosts": ["node-a"], "deadline": 1e-05})
    assert response.status_code == 400 and "between" in response.get_json()["detail"]
    ok = api.client.post("/api/v1/runs", json={"checks": ["remapped"], "hosts": ["node-a"], "deadline": 2.5})
    assert ok.status_code == 202 and ok.get_json()["deadline_s"] > 2


@pytest.mark.parametrize("value", ["5" + " " * 31 + "x", " 1", "1 "])
def test_a_run_wait_is_read_whole_and_as_sent(api: Api, value: str) -> None:
    created = api.client.post("/api/v1/runs", json={"checks": ["remapped"], "hosts": ["node-a"]}).get_json()
    response = api.client.get(created["status_url"], query_string={"wait": value})
    assert response.status_code == 400 and response.get_json()["field"] == "wait"
    assert api.client.get(created["status_url"], query_string={"wait": "1"}).status_code == 200


class StalledBody(io.BytesIO):
    """A request body whose client stopped sending: the socket read times out (api.main's client timeout)."""

    def read(self, *args: Any) -> bytes:
        raise TimeoutError("timed out")

    def readline(self, *args: Any) -> bytes:
        raise TimeoutError("timed out")

    def readinto(self, *args: Any) -> int:
        raise TimeoutError("timed out")


def test_a_body_that_stops_arriving_is_a_408_not_a_500(api: Api) -> None:
    response = api.client.post(
        "/api/v1/runs",
        content_type="application/json",
        input_stream=StalledBody(),
        environ_overrides={"CONTENT_LENGTH": "100"},  # as declared; the stream says nothing came
    )
    assert response.status_code == 408 and response.get_json()["field"] == "body"
    assert api.dispatcher.sent == []


class TimedSocket:
    def __init__(self) -> None:
        self.timeout: float | None = 10.0

    def settimeout(self, value: float | None) -> None:
        self.timeout = value


def test_the_read_timeout_is_lifted_before_the_answer_is_written(api: Api) -> None:
    sock = TimedSocket()  # as api.main's worker left it: 10 s for the client to send its request
    response = api.client.get("/api/v1/checks", environ_overrides={"gunicorn.socket": sock})
    assert response.status_code == 200 and sock.timeout is None


@pytest.mark.parametrize("value", ["nan", "0", "-1", "inf"])
def test_the_api_client_timeout_flag_is_checked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "redis://127.0.0.1:1/0")
    from api import main

    assert main.main(["--client-timeout", value]) == 2
    assert "--client-timeout" in capsys.readouterr().err


def test_the_text_status_writes_control_characters_out(api: Api) -> None:
    api.workers.outcomes[("node-a", "remapped")] = (Status.WARN, False, f"GPU 3 {ESCAPES} pending")
    body = api.client.get("/status?host=node-a&check=remapped").get_data(as_text=True)
    assert "\x1b" not in body and "\x07" not in body and "\x9b" not in body
    assert "GPU 3 \\x1b]0;owned\\x07\\x1b[2J\\x9b31m pending" in body


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AUTOPILOT_PERIODIC_INTERVAL", "9" * 400),  # read as inf: beat's timedelta overflowed
        ("AUTOPILOT_HEARTBEAT_INTERVAL", "99999999999999"),
        ("AUTOPILOT_RUN_TTL", "9" * 40 + "d"),
        ("AUTOPILOT_NODE_DEADLINE", "0"),  # every node unreachable at once
        ("AUTOPILOT_NODE_DEADLINE", "3d"),  # a request naming no deadline would wait 3 days
        ("AUTOPILOT_REDIS_URL", "notaurl"),
        ("AUTOPILOT_REDIS_URL", "http://127.0.0.1:6379/0"),
        ("AUTOPILOT_API_HOST", "0.0.0.0;rm -rf /"),
        ("AUTOPILOT_API_URL", "ftp://api:3333"),
        ("AUTOPILOT_API_URL", "http://[::1"),
        ("PVC_TEST_STORAGE_CLASS", "fast ssd; rm"),  # every pvc check said error, hours later
    ],
)
def test_malformed_settings_stop_the_start_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.Settings.from_env({variable: value})
    assert variable in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("AUTOPILOT_REDIS_URL", "http://:s3cretpw@redis:6379/0", "s3cretpw"),
        ("AUTOPILOT_API_URL", "http://admin:s3cretpw@api:3333", "s3cretpw"),
        ("AUTOPILOT_API_TOKEN", "s3cret\npw", "s3cret"),
    ],
)
def test_a_malformed_secret_is_refused_without_being_shown(variable: str, value: str, secret: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.Settings.from_env({variable: value})
    assert variable in str(caught.value) and secret not in str(caught.value)


def test_good_addresses_are_kept() -> None:
    s = config.Settings.from_env(
        {
            "AUTOPILOT_REDIS_URL": "sentinel://a:26379;sentinel://b:26379/0",
            "AUTOPILOT_API_HOST": "::",
            "AUTOPILOT_API_URL": "http://[::1]:3333/",
            "AUTOPILOT_NODE_DEADLINE": "2h",
        }
    )
    assert (s.api_host, s.api_url, s.node_deadline_s) == ("::", "http://[::1]:3333/", 7200.0)


def test_the_cli_says_which_setting_is_bad_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "notaurl")
    assert cli.main(["checks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "AUTOPILOT_REDIS_URL" in err and "Traceback" not in err


# ------------------------------------------------------------------ the CLI client against odd APIs


Answer = tuple[int, bytes]


class OddApi:
    """An HTTP server answering what ``answer(method, path)`` says; counts the requests it got."""

    def __init__(self, answer: Callable[[str, str], Answer]) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                outer.requests.append(f"{self.command} {self.path}")
                code, body = answer(self.command, self.path)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def odd() -> Iterator[Callable[[Callable[[str, str], Answer]], OddApi]]:
    made: list[OddApi] = []

    def make(answer: Callable[[str, str], Answer]) -> OddApi:
        made.append(OddApi(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _run_then(report: Any) -> Callable[[str, str], Answer]:
    def answer(method: str, path: str) -> Answer:
        return (202, json.dumps(CREATED).encode()) if method == "POST" else (200, json.dumps(report).encode())

    return answer


GARBAGE: list[tuple[str, Callable[[str, str], Answer]]] = [
    ("a list", lambda m, p: (200, b"[]")),
    ("null", lambda m, p: (200, b"null")),
    ("an empty object", lambda m, p: (202, b"{}")),
    ("a run whose deadline is text", lambda m, p: (202, json.dumps({**CREATED, "deadline_s": "x"}).encode())),
    ("a run elsewhere", lambda m, p: (202, json.dumps({**CREATED, "status_url": "http://elsewhere/x"}).encode())),
    ("totals that are a number", _run_then({"totals": 5})),
    ("a report that is a list", _run_then([1])),
    ("a report without nodes", _run_then({"complete": True, "id": "x", "totals": {"answered": 1}})),
]


@pytest.mark.parametrize(("what", "answer"), GARBAGE, ids=[g[0] for g in GARBAGE])
@pytest.mark.parametrize("command", ["status", "nodes"])
def test_an_answer_of_the_wrong_shape_is_one_line_and_exit_3(
    odd: Callable[[Callable[[str, str], Answer]], OddApi],
    capsys: pytest.CaptureFixture[str],
    what: str,
    answer: Callable[[str, str], Answer],
    command: str,
) -> None:
    server = odd(answer)
    main = client.status_main if command == "status" else client.nodes_main
    assert main(["--url", server.url, "--no-progress"] if command == "status" else ["--url", server.url]) == 3
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "unexpected shape" in captured.err, captured.err
    assert captured.out == ""


def test_an_api_that_does_not_speak_http_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def babble() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    threading.Thread(target=babble, daemon=True).start()
    try:
        assert client.nodes_main(["--url", f"http://127.0.0.1:{listener.getsockname()[1]}"]) == 3
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP" in err


def test_control_characters_from_the_api_never_reach_the_terminal(
    odd: Callable[[Callable[[str, str], Answer]], OddApi], capsys: pytest.CaptureFixture[str]
) -> None:
    rejected = {"error": "bad_request", "field": f"host{ESCAPES}", "detail": f"bad {ESCAPES}"}
    server = odd(lambda m, p: (400, json.dumps(rejected).encode()))
    assert client.status_main(["--url", server.url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x9b" not in err and "\\x1b]0;owned\\x07" in err

    entry = {"status": "ok", "results": [{"check": f"ping{ESCAPES}", "status": "ok", "summary": f"fine{ESCAPES}"}]}
    report = {"complete": True, "id": RUN_ID, "runtime_s": 1.0, "nodes": {f"n{ESCAPES}": entry}}
    report["totals"] = {"answered": 1, "nodes": 1, "ok": 1}
    server = odd(_run_then(report))
    assert client.status_main(["--url", server.url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "fine\\x1b" in out

    nodes = {"nodes": [{"name": f"n{ESCAPES}", "verdict": "PASS", "reasons": [ESCAPES]}], "total": 1, "live": 1}
    server = odd(lambda m, p: (200, json.dumps(nodes).encode()))
    assert client.nodes_main(["--url", server.url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "n\\x1b" in out


@pytest.mark.parametrize(
    ("flags", "shown"),
    [
        (["--url", "http://admin:s3cretpw@127.0.0.1:1"], "--url"),
        (["--url", "http://[::1"], "--url"),
        (["--url", "http://api\x00:3333"], "--url"),
        (["--token", "s3cretpw\nX-Injected: 1"], "--token"),
    ],
)
def test_bad_url_or_token_flags_are_a_usage_error_that_never_shows_a_secret(
    odd: Callable[[Callable[[str, str], Answer]], OddApi],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    shown: str,
) -> None:
    server = odd(lambda m, p: (200, b"{}"))
    argv = ["--url", server.url, *flags]
    assert client.status_main(argv) == 2
    assert client.nodes_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and shown in err and "s3cretpw" not in err and "\x00" not in err
    assert server.requests == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309"])
def test_a_deadline_that_json_cannot_carry_is_a_usage_error_naming_the_flag(
    odd: Callable[[Callable[[str, str], Answer]], OddApi], capsys: pytest.CaptureFixture[str], value: str
) -> None:
    server = odd(lambda m, p: (202, json.dumps(CREATED).encode()))
    assert client.status_main(["--url", server.url, f"--deadline={value}"]) == 2
    assert "--deadline" in capsys.readouterr().err
    assert server.requests == []


@pytest.mark.parametrize("flag", ["--nodelabel", "--job"])
def test_an_empty_selector_flag_selects_nothing_rather_than_everything(
    odd: Callable[[Callable[[str, str], Answer]], OddApi], capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    server = odd(lambda m, p: (202, json.dumps(CREATED).encode()))
    assert client.status_main(["--url", server.url, flag, " "]) == 2  # the API would have run on every node
    assert flag in capsys.readouterr().err
    assert server.requests == []


def test_python_dash_m_autopilot_is_the_cli() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "autopilot", "evaluate", "nosuch", "-"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "nosuch" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ the CLI's own inputs


def test_evaluate_reads_a_bounded_amount_of_an_endless_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["evaluate", "dcgm", "/dev/zero"]) == 2  # read until memory ran out before
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/zero" in err and "MiB" in err


def test_an_unknown_log_level_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--log-level", "LOUD", "checks", "--json"]) == 2  # was WARNING, without a word
    assert "--log-level" in capsys.readouterr().err


@pytest.mark.parametrize("host", [";rm", "a b", "10.0.0.1;reboot"])
def test_the_api_bind_address_flag_is_checked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    from api import main

    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main.main(["--host", host]) == 2  # gunicorn retried the name, then exited 1
    err = capsys.readouterr().err
    assert "--host: not an IP address or host name" in err and "listening" not in err


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--port=-5"], "--port"),
        (["--port=99999"], "--port"),
        (["--port=abc"], "--port"),
        (["--address=;rm"], "--address"),
    ],
)
def test_flower_port_and_address_are_checked(argv: list[str], field: str) -> None:
    from workers.main import flower_args

    with pytest.raises(errors.ConfigError) as caught:
        flower_args(config.Settings(node_name="x", flower_basic_auth="u:p"), argv, {})
    assert field in str(caught.value)


def test_a_misspelt_setting_is_named_at_start(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "AUTOPILOT_PERIODIC_INTERVALL": "5m",
        "AUTOPILOT_FOO": "1",
        "AUTOPILOT_E2E_NODE": "n",
        "AUTOPILOT_DCGM_LEVEL": "2",
    }
    with caplog.at_level("WARNING", logger="autopilot.config"):
        settings = config.Settings.from_env(env)
    assert settings.dcgm_level == 2
    said = caplog.text
    assert (
        "AUTOPILOT_PERIODIC_INTERVALL is not a setting" in said and "did you mean AUTOPILOT_PERIODIC_INTERVAL?" in said
    )
    assert "AUTOPILOT_FOO is not a setting and is ignored\n" in said
    assert "AUTOPILOT_E2E_NODE" not in said and "AUTOPILOT_DCGM_LEVEL" not in said


def test_a_child_of_up_does_not_name_a_misspelt_setting_again(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="autopilot.config"):
        config.Settings.from_env({"AUTOPILOT_FOO": "1", config.UP_CHILD: "1"})
    assert "AUTOPILOT_FOO" not in caplog.text
    assert config.UP_CHILD not in caplog.text
