"""Redis as the chart and docker-compose configure it refuses clients without the password, and
every Autopilot connection (results store, Celery broker) authenticates; TLS (``rediss://``)
against a real ``redis-server`` with a throwaway CA made at test time.
"""

from __future__ import annotations

import base64
import re
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flask.testing
import pytest
import redis
import yaml

from autopilot import config
from autopilot.testing import wait_until
from tests.conftest import ROOT, require_binary
from tests.integration.conftest import START_S, Procs, stop_process
from tests.unit import deploy_helpers as dh
from workers import app as celery_app
from workers.up import free_port


class Server:
    """One redis-server from an argv; stopped by the fixture that made it."""

    def __init__(self, argv: Sequence[str], workdir: Path) -> None:
        self.log = workdir / "redis.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)

    def wait_listening(self, port: int) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_until(up, START_S, f"redis-server on {port}", interval_s=0.05)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for server in made:
        stop_process(server.proc)


def _expand(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """$(VAR) as the kubelet expands it in a container's args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def _container_env(container: Mapping[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """A container's env with secretKeyRef values read from the rendered Secrets (as the kubelet does)."""
    out: dict[str, str] = {}
    for item in container.get("env", ()):
        if "value" in item:
            out[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = dh.find(objects, "Secret", ref["name"])
            out[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return out


def _local(argv: Sequence[str], binary: str, port: int, workdir: Path) -> list[str]:
    """The configured argv on a loopback port, with its data directory under the test's tmp."""
    out = [binary, *argv[1:]]
    if "--dir" in out:
        out[out.index("--dir") + 1] = str(workdir)
    else:
        out += ["--dir", str(workdir)]
    return [*out, "--port", str(port), "--bind", "127.0.0.1"]


def _assert_refuses_anonymous(port: int, password: str) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.lpush("autopilot.node.gpu-1", b"{}")  # the attack of issue 13
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port, password="wrong", socket_timeout=5).ping()
    assert redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5).ping()


def _assert_autopilot_connects(environ: Mapping[str, str], url: str) -> None:
    """The store and the broker of a process with this environment (URL moved to the test's port)."""
    settings = config.Settings.from_env({**environ, "AUTOPILOT_REDIS_URL": url})
    assert settings.redis_password, "the process is not given the Redis password"
    assert celery_app.make_store(settings).ping()
    app = celery_app.create_celery(settings)
    before = celery_app.redis_client(settings).llen("autopilot.node.gpu-1")
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        app.send_task("autopilot.test", queue="autopilot.node.gpu-1", connection=conn)
    assert celery_app.redis_client(settings).llen("autopilot.node.gpu-1") == before + 1


def test_the_charts_redis_refuses_a_client_without_the_password(
    servers: list[Server], tmp_path: Path, procs: Procs, api_factory: Callable[..., flask.testing.FlaskClient]
) -> None:
    binary = require_binary("redis-server")
    objects = dh.chart_objects()  # no values at all
    redis_pod = dh.find(objects, "StatefulSet", "autopilot-redis")["spec"]["template"]["spec"]
    container = redis_pod["containers"][0]
    env = _container_env(container, objects)
    port = free_port()
    server = Server(_local(_expand(container["args"], env), binary, port, tmp_path), tmp_path)
    servers.append(server)
    server.wait_listening(port)
    _assert_refuses_anonymous(port, env["REDIS_PASSWORD"])
    # The readiness probe (redis-cli ping) authenticates through REDISCLI_AUTH.
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"] and "REDISCLI_AUTH" in env
    url = f"redis://127.0.0.1:{port}/0"
    for kind, name in (("Deployment", "autopilot-api"), ("DaemonSet", "autopilot-worker")):
        pod = dh.find(objects, kind, name)["spec"]["template"]["spec"]
        _assert_autopilot_connects(_container_env(pod["containers"][0], objects), url)

    # End to end: a real worker process (the worker's own broker transport) and the API, given the
    # password only through AUTOPILOT_REDIS_PASSWORD, answer a run.
    password = env["REDIS_PASSWORD"]
    worker = procs.worker("node-a", url, {"AUTOPILOT_REDIS_PASSWORD": password})
    store = celery_app.make_store(config.Settings(redis_url=url, redis_password=password))
    wait_until(lambda: store.node("node-a") is not None, 60, "node-a's heartbeat")
    api = api_factory(url, redis_password=password)
    answer = api.get("/status?format=json&check=echo&host=node-a&deadline=30")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    report = answer.get_json()["nodes"]["node-a"]
    assert report["status"] == "ok" and report["results"][0]["data"]["pid"] == worker.pid


def _compose_value(text: str, env: Mapping[str, str]) -> str:
    """docker compose's interpolation of ${VAR}, ${VAR:-default} and ${VAR:?error}."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"compose refuses: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", sub, text)


def test_compose_requires_the_secrets_and_its_redis_refuses_a_client_without_them(
    servers: list[Server], tmp_path: Path
) -> None:
    binary = require_binary("redis-server")
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    with pytest.raises(ValueError, match="AUTOPILOT_REDIS_PASSWORD"):
        [_compose_value(a, {}) for a in services["redis"]["command"]]
    dotenv = {
        "AUTOPILOT_REDIS_PASSWORD": "s3cret-compose",
        "AUTOPILOT_API_TOKEN": "t",
        "AUTOPILOT_FLOWER_BASIC_AUTH": "a:b",
    }
    argv = [_compose_value(a, dotenv) for a in services["redis"]["command"]]
    port = free_port()
    server = Server(_local(argv, binary, port, tmp_path), tmp_path)
    servers.append(server)
    server.wait_listening(port)
    _assert_refuses_anonymous(port, "s3cret-compose")
    for name in ("api", "beat", "flower", "worker-0"):
        environ = {k: _compose_value(str(v), dotenv) for k, v in services[name]["environment"].items()}
        _assert_autopilot_connects(environ, f"redis://127.0.0.1:{port}/0")
    flower = {k: _compose_value(str(v), dotenv) for k, v in services["flower"]["environment"].items()}
    assert config.Settings.from_env(flower).flower_basic_auth == "a:b"


# ------------------------------------------------------------------ TLS


def _certificates(directory: Path, *, name: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost it signed: (ca, cert, key)."""
    pytest.importorskip("cryptography")
    from tests.unit.test_security import _certificates as make

    workdir = directory / name
    workdir.mkdir()
    return make(workdir)


@pytest.fixture
def tls_redis(servers: list[Server], tmp_path: Path) -> tuple[int, Path]:
    binary = require_binary("redis-server")
    ca, cert, key = _certificates(tmp_path, name="redis")
    port = free_port()
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--requirepass", "tls-pass", "--save", "", "--dir", str(tmp_path),
    ]  # fmt: skip
    server = Server(argv, tmp_path)
    servers.append(server)
    server.wait_listening(port)
    return port, ca


def test_store_and_broker_speak_tls_to_redis(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    environ = {
        "AUTOPILOT_REDIS_URL": f"rediss://localhost:{port}/0",
        "AUTOPILOT_REDIS_PASSWORD": "tls-pass",
        "AUTOPILOT_REDIS_TLS_CA": str(ca),
    }
    _assert_autopilot_connects(environ, environ["AUTOPILOT_REDIS_URL"])


def test_tls_verifies_the_servers_certificate(tls_redis: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_redis
    other_ca, _, _ = _certificates(tmp_path, name="other")
    settings = config.Settings(
        redis_url=f"rediss://localhost:{port}/0", redis_password="tls-pass", redis_tls_ca=str(other_ca)
    )
    with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
        celery_app.redis_client(settings).ping()
    plain = config.Settings(redis_url=f"redis://localhost:{port}/0", redis_password="tls-pass")
    with pytest.raises(redis.ConnectionError):
        celery_app.redis_client(plain).ping()
