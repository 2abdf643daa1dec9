"""The chart's secure defaults (issue 13), over the objects it renders (tests/unit/deploy_helpers.py
reads the templates as Helm does): the Redis password in every process, NetworkPolicies, Flower's
login, the worker's pod-shape policy, the Sentinel option; and the code each of them relies on.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from autopilot import config, errors
from tests.unit import deploy_helpers as dh
from workers import app as celery_app
from workers.main import flower_args

VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
PODS = {"api": ("Deployment", "autopilot-api"), "worker": ("DaemonSet", "autopilot-worker"),
        "beat": ("Deployment", "autopilot-beat"), "flower": ("Deployment", "autopilot-flower")}  # fmt: skip


def _env(objects: list[dict[str, Any]], process: str) -> dict[str, Any]:
    kind, name = PODS[process]
    container = dh.find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _secret_value(objects: list[dict[str, Any]], ref: dict[str, Any]) -> str:
    secret = dh.find(objects, "Secret", ref["secretKeyRef"]["name"])
    return base64.b64decode(secret["data"][ref["secretKeyRef"]["key"]]).decode()


# ------------------------------------------------------------------ secrets


def test_with_no_values_every_process_gets_the_generated_redis_password() -> None:
    objects = dh.chart_objects({"flower": {"enabled": True}})
    redis_container = dh.find(objects, "StatefulSet", "autopilot-redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis_container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    server_env = {e["name"]: e["valueFrom"] for e in redis_container["env"]}
    password = _secret_value(objects, server_env["REDIS_PASSWORD"])
    assert len(password) >= 32 and _secret_value(objects, server_env["REDISCLI_AUTH"]) == password
    for process in PODS:
        env = _env(objects, process)
        assert _secret_value(objects, env["AUTOPILOT_REDIS_PASSWORD"]) == password, process
        assert env["AUTOPILOT_REDIS_URL"] == "redis://autopilot-redis:6379/0"
        assert "secretKeyRef" in env["AUTOPILOT_API_TOKEN"]


def test_an_existing_secret_replaces_the_generated_password() -> None:
    objects = dh.chart_objects({"redis": {"auth": {"existingSecret": "ops-redis"}}})
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("redis-auth")]
    for process in ("api", "worker", "beat"):
        assert _env(objects, process)["AUTOPILOT_REDIS_PASSWORD"]["secretKeyRef"] == {
            "name": "ops-redis",
            "key": "password",
        }
    redis_env = dh.find(objects, "StatefulSet", "autopilot-redis")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in redis_env} == {"ops-redis"}


def test_a_given_password_is_used_and_an_external_redis_gets_none_unless_asked() -> None:
    objects = dh.chart_objects({"redis": {"auth": {"password": "chosen"}}})
    assert _secret_value(objects, _env(objects, "api")["AUTOPILOT_REDIS_PASSWORD"]) == "chosen"
    external = dh.chart_objects({"redis": {"enabled": False, "externalUrl": "rediss://r.example:6380/0"}})
    assert "AUTOPILOT_REDIS_PASSWORD" not in _env(external, "api")
    assert not [o for o in external if o["kind"] == "StatefulSet"]


def test_an_external_tls_redis_gets_its_ca_mounted_in_every_process() -> None:
    values = {"redis": {"enabled": False, "externalUrl": "rediss://r.example:6380/0", "tls": {"caSecret": "redis-ca"}},
              "flower": {"enabled": True}}  # fmt: skip
    objects = dh.chart_objects(values)
    for process, (kind, name) in PODS.items():
        spec = dh.find(objects, kind, name)["spec"]["template"]["spec"]
        assert _env(objects, process)["AUTOPILOT_REDIS_TLS_CA"] == "/etc/autopilot/redis-ca/ca.crt"
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["redis-ca"] == "/etc/autopilot/redis-ca"
        (volume,) = [v for v in spec["volumes"] if v["name"] == "redis-ca"]
        assert volume["secret"]["secretName"] == "redis-ca"


# ------------------------------------------------------------------ Sentinel


def test_the_sentinel_option_points_every_process_at_the_redis_ha_sentinels() -> None:
    objects = dh.chart_objects(
        {"redis": {"enabled": False}, "redis-ha": {"enabled": True}, "fullnameOverride": "autopilot"}, release="ap"
    )
    url = _env(objects, "worker")["AUTOPILOT_REDIS_URL"]
    hosts, db = celery_app.sentinels(url)
    assert hosts == [(f"ap-redis-ha-announce-{i}", 26379) for i in range(3)] and db == 0
    assert (
        _env(objects, "api")["AUTOPILOT_REDIS_SENTINEL_MASTER"]
        == dh.chart_values()["redis-ha"]["redis"]["masterGroupName"]
    )
    # redis-ha reads its password from this chart's Secret (its existingSecret is a template).
    assert dh.chart_values()["redis-ha"]["existingSecret"] == "{{ .Release.Name }}-redis-auth"
    assert dh.find(objects, "Secret", "ap-redis-auth")
    assert dh.chart_values()["redis-ha"]["redis"]["config"]["appendfsync"] == "always"
    with pytest.raises(dh.TemplateError, match="exclude each other"):
        dh.chart_objects({"redis-ha": {"enabled": True}})


def test_the_chart_declares_redis_ha_as_an_optional_dependency() -> None:
    chart = yaml.safe_load((dh.CHART / "Chart.yaml").read_text())
    (dep,) = chart["dependencies"]
    assert dep["name"] == "redis-ha" and dep["condition"] == "redis-ha.enabled" and dep["version"][0].isdigit()
    assert dh.chart_values()["redis-ha"]["enabled"] is False


# ------------------------------------------------------------------ NetworkPolicies


def _policies(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"] for o in dh.chart_objects(values) if o["kind"] == "NetworkPolicy"}


def test_network_policies_are_on_by_default_and_can_be_turned_off() -> None:
    assert set(_policies()) == {"autopilot-redis", "autopilot-api", "autopilot-worker", "autopilot-beat"}
    assert _policies({"networkPolicy": {"enabled": False}}) == {}
    assert "autopilot-flower" in _policies({"flower": {"enabled": True}})
    assert "autopilot-redis-ha" in _policies({"redis": {"enabled": False}, "redis-ha": {"enabled": True}})


def test_redis_admits_only_autopilots_processes_on_its_port() -> None:
    spec = _policies()["autopilot-redis"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "no namespace or IP peers: pods of this namespace only"
    assert peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "autopilot",
        "app.kubernetes.io/instance": "autopilot",
    }
    (expr,) = peer["podSelector"]["matchExpressions"]
    assert (expr["key"], expr["operator"], set(expr["values"])) == (
        "app.kubernetes.io/component", "In", {"api", "worker", "beat", "flower"},
    )  # fmt: skip
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_the_api_admits_what_the_values_allow() -> None:
    (rule,) = _policies()["autopilot-api"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {}}] and rule["ports"] == [{"protocol": "TCP", "port": 3333}]
    only = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    (rule,) = _policies({"networkPolicy": {"api": {"from": [only]}}})["autopilot-api"]["ingress"]
    assert rule["from"] == [only]
    assert _policies({"networkPolicy": {"api": {"from": []}}})["autopilot-api"]["ingress"] == []


def test_workers_admit_only_other_workers_and_beat_and_flower_no_one() -> None:
    worker = _policies()["autopilot-worker"]
    iperf, ping = worker["ingress"]
    for rule in (iperf, ping):
        assert rule["from"] == [{"podSelector": {"matchLabels": worker["podSelector"]["matchLabels"]}}]
    assert iperf["ports"] == [{"protocol": "TCP", "port": 5200, "endPort": 5215}]
    assert "ports" not in ping  # ICMP cannot be named; documented in values.yaml
    (only_iperf,) = _policies({"networkPolicy": {"worker": {"ping": False}}})["autopilot-worker"]["ingress"]
    assert only_iperf == iperf
    assert _policies()["autopilot-beat"]["ingress"] == []
    assert _policies({"flower": {"enabled": True}})["autopilot-flower"]["ingress"] == []


def test_the_iperf_ports_cover_the_checks_parameter_range() -> None:
    from autopilot.checks import iperf

    ports = dh.chart_values()["networkPolicy"]["worker"]["iperfPorts"]
    default = {p.name: p.default for p in iperf.PARAMS}
    assert ports["first"] == default["startport"] and ports["last"] == default["startport"] + iperf.MAX_PCLIENTS - 1


# ------------------------------------------------------------------ Flower


def test_flower_always_gets_a_login_from_a_secret() -> None:
    objects = dh.chart_objects({"flower": {"enabled": True}})
    login = _secret_value(objects, _env(objects, "flower")["AUTOPILOT_FLOWER_BASIC_AUTH"])
    user, _, password = login.partition(":")
    assert user == "admin" and len(password) >= 24
    assert config.Settings.from_env({"AUTOPILOT_FLOWER_BASIC_AUTH": login}).flower_basic_auth == login
    mine = dh.chart_objects({"flower": {"enabled": True, "auth": {"existingSecret": "ops-flower"}}})
    assert _env(mine, "flower")["AUTOPILOT_FLOWER_BASIC_AUTH"]["secretKeyRef"] == {
        "name": "ops-flower",
        "key": "basic-auth",
    }
    assert not [o for o in mine if o["kind"] == "Secret" and o["metadata"]["name"].endswith("flower-auth")]


def test_flower_without_a_login_stays_on_loopback() -> None:
    bare = config.Settings()
    with pytest.raises(errors.ConfigError, match="AUTOPILOT_FLOWER_BASIC_AUTH"):
        flower_args(bare, ["--port=5555", "--address=0.0.0.0"], {})
    args, extra = flower_args(bare, ["--port=5555"], {})
    assert args == ["--port=5555", "--address=127.0.0.1"] and extra == {}
    assert flower_args(bare, ["--address=127.0.0.1"], {})[0] == ["--address=127.0.0.1"]
    with pytest.raises(errors.ConfigError):
        flower_args(bare, ["--address", "0.0.0.0"], {})


def test_flower_with_a_login_may_bind_anywhere_and_keeps_the_password_out_of_argv() -> None:
    settings = config.Settings(flower_basic_auth="ops:pw")
    args, extra = flower_args(settings, ["--address=0.0.0.0"], {})
    assert args == ["--address=0.0.0.0"] and extra == {"FLOWER_BASIC_AUTH": "ops:pw"}
    assert "pw" not in repr(settings)
    assert (
        flower_args(config.Settings(), ["--address=0.0.0.0", "--auth_provider=x.Y"], {})[0][-1] == "--auth_provider=x.Y"
    )
    assert flower_args(config.Settings(), ["--address=0.0.0.0"], {"FLOWER_BASIC_AUTH": "a:b"})[0] == [
        "--address=0.0.0.0"
    ]


@pytest.mark.parametrize("bad", ["admin", "admin:", ":pw", "a:b,c", "a b:c"])
def test_flower_logins_are_validated_without_echoing_them(bad: str) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        config.Settings.from_env({"AUTOPILOT_FLOWER_BASIC_AUTH": bad})
    assert "AUTOPILOT_FLOWER_BASIC_AUTH" in str(caught.value) and (bad not in str(caught.value) or len(bad) < 4)


# ------------------------------------------------------------------ connection settings


def test_redis_settings_parse_and_stay_out_of_reprs() -> None:
    settings = config.Settings.from_env(
        {
            "AUTOPILOT_REDIS_PASSWORD": "pw-123",
            "AUTOPILOT_REDIS_SENTINEL_PASSWORD": "sp-456",
            "AUTOPILOT_REDIS_SENTINEL_MASTER": "autopilot",
            "AUTOPILOT_REDIS_TLS_CA": "/etc/ca.crt",
        }  # fmt: skip
    )
    assert (settings.redis_password, settings.redis_sentinel_master, settings.redis_tls_ca) == (
        "pw-123",
        "autopilot",
        "/etc/ca.crt",
    )
    assert "pw-123" not in repr(settings) and "sp-456" not in repr(settings)
    with pytest.raises(errors.BadParameter, match="AUTOPILOT_REDIS_SENTINEL_MASTER"):
        config.Settings.from_env({"AUTOPILOT_REDIS_SENTINEL_MASTER": "a b"})


def test_sentinel_urls_are_read_as_kombu_reads_them() -> None:
    assert celery_app.sentinels("sentinel://a:26379;sentinel://b:26380;sentinel://c/2") == (
        [("a", 26379), ("b", 26380), ("c", 26379)],
        2,
    )
    for bad in ("sentinel://a:1;redis://b:2", "sentinel://a:1/x", "sentinel://"):
        with pytest.raises(errors.ConfigError):
            celery_app.sentinels(bad)


def test_broker_options_follow_the_scheme() -> None:
    import ssl

    plain = celery_app.broker_settings(config.Settings(redis_url="redis://r:6379/0", redis_password="pw"))
    assert plain == {"broker_password": "pw", "transport": {}}
    tls = celery_app.broker_settings(config.Settings(redis_url="rediss://r:6380/0", redis_tls_ca="/ca.crt"))
    assert tls["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.crt"}
    sentinel = celery_app.broker_settings(
        config.Settings(redis_url="sentinel://s:26379/0", redis_sentinel_master="ap", redis_sentinel_password="sp")
    )
    assert sentinel["transport"] == {"master_name": "ap", "sentinel_kwargs": {"password": "sp", "socket_timeout": 5}}
    app = celery_app.create_celery(config.Settings(redis_url="sentinel://s:26379/0", redis_sentinel_master="ap"))
    assert app.conf.broker_transport_options["master_name"] == "ap"
    assert app.conf.broker_transport_options["visibility_timeout"] > 0, "the existing options are kept"


# ------------------------------------------------------------------ the worker's pods


def test_the_worker_pod_policy_is_rendered_where_the_api_exists_and_binds_the_workers_account() -> None:
    assert not [o for o in dh.chart_objects() if o["kind"].startswith("ValidatingAdmissionPolicy")]
    objects = dh.chart_objects(api_versions=[VAP], namespace="ops")
    policy = dh.find(objects, "ValidatingAdmissionPolicy", "autopilot-worker-pods")
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == "request.userInfo.username == 'system:serviceaccount:ops:autopilot-worker'"
    assert {r["resources"][0] for r in policy["spec"]["matchConstraints"]["resourceRules"]} == {"pods", "jobs"}
    image = _env(objects, "worker")["AUTOPILOT_IMAGE"]
    assert f"c.image == '{image}'" in policy["spec"]["validations"][0]["expression"]
    binding = dh.find(objects, "ValidatingAdmissionPolicyBinding", "autopilot-worker-pods")
    assert binding["spec"] == {"policyName": "autopilot-worker-pods", "validationActions": ["Deny"]}
    assert not [
        o
        for o in dh.chart_objects({"rbac": {"workerPodPolicy": False}}, api_versions=[VAP])
        if "Admission" in o["kind"]
    ]


def test_the_pods_the_worker_builds_have_the_shape_the_policy_admits() -> None:
    """The policy's rules, restated over the two manifests the code creates (no CEL engine here)."""
    from autopilot import invasive
    from autopilot.checks import pvc

    settings = config.Settings(image="img:1", namespace="ops")
    pod = pvc.consumer_pod_manifest("c", "ops", "gpu-1", "img:1", ())["spec"]
    job = invasive.job_spec("gpu-1", 8, settings)["spec"]["template"]["spec"]
    for spec in (pod, job):
        assert [c["image"] for c in spec["containers"]] == ["img:1"]
        assert "initContainers" not in spec and "ephemeralContainers" not in spec
        assert spec["automountServiceAccountToken"] is False and spec.get("serviceAccountName", "default") == "default"
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            assert (
                c["securityContext"]["allowPrivilegeEscalation"] is False
                and "add" not in c["securityContext"]["capabilities"]
            )
        assert all("persistentVolumeClaim" in v for v in spec.get("volumes", ()))


def _pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    workloads = ("Deployment", "DaemonSet", "StatefulSet", "Job")
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] in workloads}


def _psa_level_docs_give(variant: str) -> str:
    """The Pod Security level docs/KUBERNETES.md tells the release namespace to enforce for ``variant``."""
    text = " ".join((Path(__file__).parents[2] / "docs" / "KUBERNETES.md").read_text().split())
    section = text[text.index("run the release in a namespace of its own") :]
    found = re.search(rf"{variant}.{{0,80}}?pod-security\.kubernetes\.io/enforce=(\w+)", section)
    assert found, f"docs/KUBERNETES.md gives no enforce level for {variant!r}"
    return found[1]


def test_the_pod_security_level_the_docs_give_admits_every_pod_of_the_release() -> None:
    """A namespace enforcing the level the docs give must admit every pod the chart makes there: the
    PodSecurity plugin refuses the others (403), and a DaemonSet whose pods are refused has no workers."""
    from autopilot import apivalidation

    lean = {"worker": {"follower": {"kmsg": False}, "capabilities": []}, "flower": {"enabled": True}}
    for variant, values in (("with the defaults", {"flower": {"enabled": True}}), ("every pod of the release", lean)):
        level = _psa_level_docs_give(variant)
        for name, spec in _pod_templates(dh.chart_objects(values)).items():
            assert apivalidation.pod_security_violations(spec, level) == [], (variant, level, name)


def test_the_worker_pod_needs_privileged_only_for_the_kmsg_mount_and_net_raw() -> None:
    from autopilot import apivalidation

    templates = _pod_templates(dh.chart_objects({"flower": {"enabled": True}}))
    for name, spec in templates.items():
        if name != "autopilot-worker":
            assert apivalidation.pod_security_violations(spec, "restricted") == [], name
    assert apivalidation.pod_security_violations(templates["autopilot-worker"], "baseline") == [
        'non-default capabilities (container "worker" must not include "NET_RAW" in securityContext.capabilities.add)',
        'hostPath volumes (volume "kmsg")',
    ]
    lean = _pod_templates(dh.chart_objects({"worker": {"follower": {"kmsg": False}, "capabilities": []}}))
    assert apivalidation.pod_security_violations(lean["autopilot-worker"], "restricted") == []


def test_the_pods_the_worker_builds_meet_pod_security_restricted() -> None:
    from autopilot import apivalidation, invasive
    from autopilot.checks import pvc

    settings = config.Settings(image="img:1", namespace="ops")
    pod = pvc.consumer_pod_manifest("c", "ops", "gpu-1", "img:1", ())["spec"]
    job = invasive.job_spec("gpu-1", 8, settings)["spec"]["template"]["spec"]
    assert apivalidation.pod_security_violations(pod, "restricted") == []
    assert apivalidation.pod_security_violations(job, "restricted") == []


@pytest.mark.parametrize(
    ("change", "level", "words"),
    [
        ({"hostNetwork": True}, "baseline", "host namespaces (hostNetwork=true)"),
        ({"containers": [{"name": "c", "securityContext": {"privileged": True}}]}, "baseline", "privileged ("),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "baseline", 'hostPath volumes (volume "h")'),
        ({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "baseline", "forbidden sysctls"),
        ({"containers": [{"name": "c", "ports": [{"hostPort": 80}]}]}, "baseline", "hostPort ("),
        ({"containers": [{"name": "c"}]}, "restricted", "allowPrivilegeEscalation != false"),
        ({"containers": [{"name": "c"}]}, "restricted", 'must set securityContext.capabilities.drop=["ALL"]'),
        ({"securityContext": {}}, "restricted", "runAsNonRoot != true"),
        ({"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}, "restricted", "runAsUser=0"),
        ({"securityContext": {"runAsNonRoot": True}}, "restricted", "seccompProfile ("),
        ({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}, "restricted", "restricted volume types"),
    ],
)
def test_pod_security_checks_refuse_what_the_plugin_refuses(change: dict[str, Any], level: str, words: str) -> None:
    from autopilot import apivalidation
    from autopilot.checks import pvc

    spec = {**pvc.consumer_pod_manifest("c", "ops", "gpu-1", "img:1", ())["spec"], **change}
    assert any(words in v for v in apivalidation.pod_security_violations(spec, level)), level
    assert apivalidation.pod_security_violations(spec, "privileged") == []


# ------------------------------------------------------------------ validity


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"flower": {"enabled": True}, "config": {"pvcTestStorageClass": "local"}},
        {"redis": {"enabled": False}, "redis-ha": {"enabled": True}, "networkPolicy": {"worker": {"ping": False}}},
    ],
    ids=["defaults", "flower-and-pvc", "sentinel"],
)
def test_rendered_objects_validate_strictly(values: dict[str, Any], tmp_path: Path) -> None:
    objects = [o for o in dh.chart_objects(values, api_versions=[VAP]) if "coreos.com" not in o["apiVersion"]]
    path = tmp_path / "chart.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    done = subprocess.run(
        [dh.tool("kubernetes-validate"), "--strict", "--quiet", "-k", "1.31.0", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ the template reader itself


def _render(source: str, values: dict[str, Any]) -> str:
    defines: dict[str, Any] = {}
    tree = dh._parse(source, defines)
    root = {"Values": values, "Release": {"Name": "r", "Namespace": "ns"}}
    return dh._Renderer(defines, root).render(tree, root, [{"$": root}])


def test_the_reader_follows_go_templates_where_the_chart_relies_on_them() -> None:
    source = (
        '{{- define "x" -}}<{{ . }}>{{- end -}}\n'
        "a:\n  {{- if .Values.off }} no{{ else if .Values.on }} yes{{ else }} never{{ end }}\n"
        'b: {{ and .Values.missing .Values.missing.deeper }}|{{ or .Values.empty "dflt" }}\n'
        "c: {{ range $k, $v := .Values.m }}{{ $k }}={{ $v }},{{ end }}\n"
        'd: {{ include "x" "in" | quote }} {{ (list 1 2) | toJson }} {{ printf "%s-%d" $.Release.Name 3 }}\n'
    )
    out = _render(source, {"on": True, "off": False, "m": {"z": 1, "a": 2}, "empty": ""})
    assert out == 'a: yes\nb: |dflt\nc: a=2,z=1,\nd: "<in>" [1,2] r-3\n'


def test_the_reader_refuses_what_it_does_not_know() -> None:
    with pytest.raises(dh.TemplateError, match="does not know"):
        _render("{{ frobnicate 1 }}", {})
    with pytest.raises(dh.TemplateError, match="nil pointer"):
        _render("{{ .Values.a.b }}", {})
    with pytest.raises(dh.TemplateError, match="required"):
        _render('{{ required "x is required" .Values.x }}', {})
