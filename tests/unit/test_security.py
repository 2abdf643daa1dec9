"""Security review of the deployment, as tests.

- containers run as a non-root user: the Dockerfiles' final ``USER`` and the chart's pod and
  container security contexts, for every workload the chart templates;
- minimal RBAC: no wildcard verbs, resources or API groups, no secrets, no privilege-escalation
  verbs, in ``deploy/rbac`` and the chart;
- the API token is compared in constant time (``hmac.compare_digest``, never ``==``);
- secrets are never logged: the token and the Redis password do not appear in the logs of an API
  run (every outcome: authorized, refused, Redis down) nor in the settings' ``repr``, nor in the
  log of a real worker process connected with a password;
- the Redis connection can use a password (a real ``redis-server --requirepass``) and TLS (a real
  ``redis-server --tls-port`` with a certificate this test signs): the store, Celery and a real
  worker process connect, and a request is answered end to end.

The last two need ``redis-server`` and are marked ``integration``.
"""

from __future__ import annotations

import ast
import datetime
import ipaddress
import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from api.app import create_app
from autopilot import config
from tests.conftest import ROOT, require_binary
from tests.integration.conftest import (
    Procs,
    free_port,
    kill_group,
    runtime_env,
    settings_for,
    wait_for_nodes,
    wait_until,
)
from workers.app import create_celery, make_store

TEMPLATES = ROOT / "helm" / "autopilot" / "templates"
TOKEN = "tok-9f8e7d6c5b4a-SECRET"
PASSWORD = "pw-1a2b3c4d5e6f-SECRET"
ESCALATING_VERBS = {"escalate", "bind", "impersonate", "*"}


# ------------------------------------------------------------------ non-root containers


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in ROOT.glob("Dockerfile*")))
def test_images_run_as_a_non_root_user(dockerfile: str) -> None:
    lines = (ROOT / dockerfile).read_text().splitlines()
    final = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    users = [line.split()[1] for line in lines[final:] if line.startswith("USER ")]
    assert users, f"{dockerfile}: the final stage sets no USER (runs as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile}: USER {users[-1]} (use a numeric non-root uid)"


def test_chart_pods_and_containers_are_non_root_and_unprivileged() -> None:
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    pod = re.search(r'define "autopilot.podSecurityContext" -}}(.*?){{- end', helpers, re.S)
    container = re.search(r'define "autopilot.containerSecurityContext" -}}(.*?){{- end', helpers, re.S)
    assert pod and container
    pod_ctx = yaml.safe_load(pod.group(1))
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0
    assert yaml.safe_load(container.group(1)) | {"capabilities": None} == {
        "privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": None,
    }  # fmt: skip
    workloads = [
        p for p in TEMPLATES.glob("*.yaml") if re.search(r"kind: (Deployment|DaemonSet|StatefulSet)", p.read_text())
    ]
    assert len(workloads) >= 4
    for path in workloads:
        text = path.read_text()
        assert "runAsUser: 0" not in text and "privileged: true" not in text, path.name
        assert "allowPrivilegeEscalation: true" not in text, path.name
        # every pod has a pod-level context, and every container a container-level one
        assert text.count("securityContext:") >= 2, f"{path.name}: a pod or container without a securityContext"
        if path.name != "redis.yaml":
            assert 'include "autopilot.podSecurityContext"' in text, path.name
        assert 'include "autopilot.containerSecurityContext"' in text or "allowPrivilegeEscalation: false" in text


# ------------------------------------------------------------------ minimal RBAC


def _rules() -> Iterator[tuple[str, dict[str, list[str]]]]:
    for path in sorted((ROOT / "deploy" / "rbac").glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for rule in (doc or {}).get("rules", ()):
                yield f"{path.name}/{doc['metadata']['name']}", rule
    # the chart's template: its rules are plain YAML lists once the few {{ }} lines are dropped
    text = "\n".join(
        line for line in (TEMPLATES / "rbac.yaml").read_text().splitlines() if "{{" not in line or ":" in line
    )
    for key in ("verbs", "resources", "apiGroups"):
        for match in re.finditer(rf"{key}:\s*\[([^\]]*)\]", text):
            yield f"rbac.yaml {key}", {key: [v.strip().strip("'\"") for v in match.group(1).split(",")]}


def test_rbac_is_minimal() -> None:
    rules = list(_rules())
    assert len(rules) > 10
    for where, rule in rules:
        for key in ("verbs", "resources", "apiGroups"):
            assert not any("*" in v for v in rule.get(key, ())), f"{where}: wildcard in {key}: {rule[key]}"
        assert not ESCALATING_VERBS & set(rule.get("verbs", ())), f"{where}: {rule['verbs']}"
        assert "secrets" not in rule.get("resources", ()), f"{where}: may read secrets"
        assert not {"nodes/proxy", "pods/exec", "pods/attach"} & set(rule.get("resources", ())), where


# ------------------------------------------------------------------ the token in constant time


def test_token_is_compared_in_constant_time() -> None:
    tree = ast.parse((ROOT / "api" / "app.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "hmac.compare_digest"]
    assert calls, "api/app.py must compare the token with hmac.compare_digest"
    # and never with ==/!= (a short-circuiting comparison leaks the matching prefix's length)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            text = ast.unparse(node)
            assert not re.search(r"token|expected|given|authorization", text, re.I), text


def test_token_refusals_do_not_depend_on_how_much_matches() -> None:
    from tests.unit.api_helpers import make_api

    api = make_api(token=TOKEN)
    # The scheme is case-insensitive (RFC 7235, test_api): "bearer <token>" is accepted, so it is no refusal here.
    for given in ("", "Bearer", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"bearer {TOKEN}x", TOKEN,
                  f"Bearer {TOKEN[:-1]}X"):  # fmt: skip
        answer = api.client.get("/api/v1/nodes", headers={"Authorization": given} if given else {})
        assert answer.status_code == 401 and TOKEN not in answer.get_data(as_text=True), given
    assert api.client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


# ------------------------------------------------------------------ secrets never logged


def test_settings_repr_hides_secrets() -> None:
    settings = config.Settings.from_env(
        {"AUTOPILOT_API_TOKEN": TOKEN, "AUTOPILOT_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0"}
    )
    assert settings.api_token == TOKEN and PASSWORD in settings.redis_url
    assert TOKEN not in repr(settings) and PASSWORD not in repr(settings)
    assert TOKEN not in str(settings) and PASSWORD not in str(settings)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server that requires ``PASSWORD``; yields its URL with the password in it."""
    binary = require_binary("redis-server")
    workdir = tmp_path_factory.mktemp("redis-pw")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", PASSWORD, "--dir", str(workdir)]  # fmt: skip
    with open(workdir / "redis.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), 10, "redis-server with a password")
        yield url
    finally:
        kill_group(proc)
        proc.wait(5)


def _pings(url: str, **kwargs: object) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, **kwargs)  # type: ignore[arg-type]
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.mark.integration
def test_a_password_protected_redis_is_used_and_secrets_never_logged(
    password_redis: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    without = re.sub(r":[^@/]*@", "@", password_redis)
    with pytest.raises(redis.RedisError):  # without the password: refused
        redis.Redis.from_url(without, socket_timeout=1).set("x", "1")
    caplog.set_level(logging.DEBUG)
    settings = settings_for(password_redis, api_token=TOKEN)
    assert make_store(settings).ping()
    celery = create_celery(settings)
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
    celery.close()

    procs = Procs(tmp_path)
    try:
        worker = procs.start(
            "worker", ["worker", "--node", "node-a", "--loglevel", "DEBUG"],
            runtime_env(password_redis, {"AUTOPILOT_API_TOKEN": TOKEN}),
        )  # fmt: skip
        wait_for_nodes(password_redis, ["node-a"])
        app = create_app(settings, checks=_test_checks())
        client = app.test_client()
        ok = client.get("/status?format=json&check=echo&host=node-a&deadline=30",
                        headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert ok.status_code == 200 and ok.get_json()["nodes"]["node-a"]["status"] == "ok"
        assert client.get("/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # Redis with a wrong password: a 503 that names no secret
        wrong = create_app(settings_for(password_redis.replace(PASSWORD, "nope"), api_token=TOKEN),
                           checks=_test_checks()).test_client()  # fmt: skip
        refused = wrong.get("/api/v1/nodes", headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 503 and PASSWORD not in refused.get_data(as_text=True)
    finally:
        procs.stop_all()
    worker_log = worker.output()  # the whole log, to the worker's exit (no sleep that guesses when it is written)
    assert "node-a" in worker_log and "echo" in worker_log  # the log is there, and it is verbose
    for secret in (TOKEN, PASSWORD):
        assert secret not in caplog.text, f"a secret reached the API's log: {secret}"
        assert secret not in worker_log, f"a secret reached the worker's log: {secret}"


def _test_checks():  # type: ignore[no-untyped-def]
    from tests.integration.check_specs import registry_with_specs

    return registry_with_specs()


# ------------------------------------------------------------------ TLS


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("autopilot test CA")).issuer_name(name("autopilot test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = (workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.mark.integration
def test_redis_over_tls_with_a_verified_certificate(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    binary = require_binary("redis-server")
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
            "--dir", str(tmp_path)]  # fmt: skip
    with open(tmp_path / "redis.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    procs = Procs(tmp_path)
    try:
        # Until it answers, or exits (a build without TLS refuses the options at once, however long that takes).
        wait_until(lambda: proc.poll() is not None or _pings(url), 10, "redis-server over TLS")
        if proc.poll() is not None:
            text = (tmp_path / "redis.log").read_text()
            pytest.skip(f"this redis-server has no TLS support: {text[-300:]}")
        # plain TCP to the TLS port is refused; an unverified CA is refused
        assert not _pings(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
        assert not _pings(url.replace(str(ca), str(cert)))

        settings = settings_for(url)
        assert make_store(settings).ping()
        celery = create_celery(settings)
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        celery.close()

        procs.worker("node-a", url)
        wait_for_nodes(url, ["node-a"])
        api = create_app(settings, checks=_test_checks()).test_client()
        answer = api.get("/status?format=json&check=echo&host=node-a&deadline=30")
        assert answer.status_code == 200 and answer.get_json()["nodes"]["node-a"]["status"] == "ok"
    finally:
        procs.stop_all()
        kill_group(proc)
        proc.wait(5)
