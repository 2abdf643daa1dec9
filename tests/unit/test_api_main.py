"""``autopilot api``: bind address choice, gunicorn configuration, and the lazy ``api.wsgi:app``."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from api import main
from autopilot import config


def test_bind_host_defaults_to_loopback_without_a_token() -> None:
    host, why = main.bind_host(config.Settings(node_name="x"), None)
    assert host == "127.0.0.1" and "AUTOPILOT_API_TOKEN" in why


def test_bind_host_opens_up_with_a_token_and_obeys_overrides() -> None:
    assert main.bind_host(config.Settings(node_name="x", api_token="t"), None)[0] == "0.0.0.0"
    assert main.bind_host(config.Settings(node_name="x", api_host="10.0.0.5"), None)[0] == "10.0.0.5"
    assert main.bind_host(config.Settings(node_name="x", api_token="t"), "::1")[0] == "::1"


def test_host_help_names_where_the_default_comes_from() -> None:
    # An operator reading `autopilot api --help` learns the default bind address there, not a pointer to itself.
    text = " ".join(main.parser().format_help().split())
    assert "AUTOPILOT_API_HOST" in text and "127.0.0.1" in text and "AUTOPILOT_API_TOKEN" in text
    assert "see `autopilot api --help`" not in text


def test_gunicorn_uses_threaded_workers() -> None:
    server = main.GunicornServer(lambda: None, {"bind": "127.0.0.1:0", "worker_class": "gthread", "threads": 8})  # type: ignore[arg-type,return-value]
    assert server.cfg.worker_class_str == "gthread"
    assert server.cfg.threads == 8


def test_main_without_redis_url_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUTOPILOT_REDIS_URL", raising=False)
    assert main.main(["--port", "3999"]) == 2
    assert "AUTOPILOT_REDIS_URL" in capsys.readouterr().err


def test_main_bad_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main.main(["--port", "70000"]) == 2


def test_wsgi_app_is_built_on_first_access(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.modules.pop("api.wsgi", None)
    import api.app
    import api.wsgi as wsgi

    built: list[Any] = []

    def fake_create_app() -> str:
        built.append("app")
        return "the-app"

    monkeypatch.setattr(api.app, "create_app", fake_create_app)
    monkeypatch.setattr(wsgi, "_app", None)
    assert built == []
    assert wsgi.app == "the-app"
    assert wsgi.application == "the-app"
    assert built == ["app"]
    with pytest.raises(AttributeError):
        _ = wsgi.nothing
