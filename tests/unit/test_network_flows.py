"""The chart's NetworkPolicies admit every flow the merged features need, and nothing more.

The rendered policies are evaluated as the NetworkPolicy API defines them (a pod selected by no
policy of a direction is open in it; a selected pod admits the union of its policies' rules; a peer
``podSelector`` alone means this namespace; ports absent means all; ``endPort`` a range), with the
pods' labels taken from the rendered workloads themselves (and, for Autopilot's own Jobs and the
redis-ha dependency, from the code and that chart's labels), so a label or port drifting between
a workload and its policy fails here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autopilot import invasive
from tests.unit import deploy_helpers as dh

NS = "autopilot"
Pod = tuple[str, Mapping[str, str]]  # (namespace, labels)
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


def _matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or ():
        value, op, values = labels.get(expr["key"]), expr["operator"], expr.get("values") or ()
        ok = {
            "In": value in values,
            "NotIn": value not in values,
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[op]
        if not ok:
            return False
    return True


def _peer_admits(peer: Mapping[str, Any], src: Pod, policy_ns: str) -> bool:
    ns, labels = src
    if "ipBlock" in peer:
        return False  # pods are reached by pod IP, not through an ipBlock of ours
    if "namespaceSelector" in peer:
        # The namespace's only label here is the one Kubernetes sets on every namespace.
        if not _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns}):
            return False
    elif ns != policy_ns:
        return False
    return _matches(peer.get("podSelector") or {}, labels)


def _port_admits(ports: Sequence[Mapping[str, Any]] | None, port: int | None, protocol: str) -> bool:
    if not ports:
        return True
    if port is None:
        return False  # ICMP: no port rule can name it
    for rule in ports:
        if rule.get("protocol", "TCP") != protocol:
            continue
        first = int(rule["port"])
        if first <= port <= int(rule.get("endPort", first)):
            return True
    return False


def admits(policies: Sequence[Mapping[str, Any]], src: Pod, dst: Pod, port: int | None, protocol: str = "TCP") -> bool:
    """Whether ``dst``'s ingress and ``src``'s egress both allow ``src`` -> ``dst:port``."""
    if not _allowed(policies, dst, "Ingress", "ingress", "from", src, port, protocol):
        return False
    return _allowed(policies, src, "Egress", "egress", "to", dst, port, protocol)


def _allowed(
    policies: Sequence[Mapping[str, Any]], pod: Pod, kind: str, key: str, peers: str, other: Pod,
    port: int | None, protocol: str,
) -> bool:  # fmt: skip
    selecting = [
        p for p in policies
        if p["metadata"].get("namespace", NS) == pod[0]
        and _matches(p["spec"]["podSelector"], pod[1])
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]  # fmt: skip
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get(key) or ():
            who = rule.get(peers)
            if (not who or any(_peer_admits(x, other, pod[0]) for x in who)) and _port_admits(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def _render(values: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Pod]]:
    objects = dh.chart_objects(dict(values or {}), namespace=NS)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods: dict[str, Pod] = {}
    for o in objects:
        if o["kind"] in WORKLOADS:
            labels = o["spec"]["template"]["metadata"]["labels"]
            pods[labels["app.kubernetes.io/component"]] = (NS, labels)
    pods["dcgm-job"] = (NS, invasive.LABELS)
    pods["redis-ha"] = (NS, {"app": "redis-ha", "release": "autopilot"})  # the dependency's pod labels
    pods["stranger"] = (NS, {"app": "something-else"})
    pods["other-ns"] = ("team-a", dict(pods["worker"][1]))  # even with our labels, another namespace
    pods["prometheus"] = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    pods["apiserver"] = ("kube-system", {"component": "kube-apiserver"})  # stands for the API server's address
    return policies, pods


def _container_port(values: Mapping[str, Any] | None, component: str, name: str) -> int:
    for o in dh.chart_objects(dict(values or {}), namespace=NS):
        if (
            o["kind"] in WORKLOADS
            and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ):
            for c in o["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports") or ():
                    if p.get("name") == name:
                        return int(p["containerPort"])
    raise AssertionError(f"no port {name!r} on {component}")


FLOWER = {"flower": {"enabled": True, "basicAuth": {"users": "ops:secret"}}}


def test_the_flows_the_features_need_are_admitted() -> None:
    policies, pods = _render(FLOWER)
    redis = _container_port(FLOWER, "redis", "redis")
    api = _container_port(FLOWER, "api", "http")
    for src in ("api", "worker", "beat", "flower"):
        assert admits(policies, pods[src], pods["redis"], redis), f"{src} -> redis"
    # Workers, beat and the API (an operator's clear) reconcile: labels, conditions, Events,
    # DeviceTaintRules and remediation's cordons reach the API server; no egress rule stands between.
    for src in ("api", "worker", "beat"):
        assert admits(policies, pods[src], pods["apiserver"], 443), f"{src} -> the API server"
    # The network checks between workers: the iperf ring's lanes and ping (ICMP).
    for port in range(5200, 5216):
        assert admits(policies, pods["worker"], pods["worker"], port)
    assert admits(policies, pods["worker"], pods["worker"], None, "ICMP")
    # Prometheus scrapes the API's /metrics through the ServiceMonitor (port http) from its namespace.
    assert admits(policies, pods["prometheus"], pods["api"], api)


def test_the_sentinel_option_admits_clients_and_replication() -> None:
    values = {"redis": {"enabled": False}, "redis-ha": {"enabled": True}}
    policies, pods = _render(values)
    for src in ("api", "worker", "beat", "redis-ha"):
        for port in (6379, 26379):
            assert admits(policies, pods[src], pods["redis-ha"], port), f"{src} -> redis-ha:{port}"
    assert not admits(policies, pods["stranger"], pods["redis-ha"], 26379)


def test_nothing_more_is_admitted() -> None:
    policies, pods = _render(FLOWER)
    # Redis: nobody but Autopilot's own processes, not its level-3 Job, not our labels elsewhere.
    for src in ("stranger", "other-ns", "dcgm-job", "prometheus"):
        assert not admits(policies, pods[src], pods["redis"], 6379), f"{src} -> redis"
    assert not admits(policies, pods["worker"], pods["redis"], 6380)
    # Workers: only other workers (the follower serves nothing; no check listens for others).
    for src in ("api", "beat", "flower", "stranger", "other-ns", "prometheus"):
        assert not admits(policies, pods[src], pods["worker"], 5201), f"{src} -> worker"
        assert not admits(policies, pods[src], pods["worker"], None, "ICMP"), f"{src} pings a worker"
    # Beat and Flower listen to no one by default (kubectl port-forward is not subject to policies).
    flower = _container_port(FLOWER, "flower", "http")
    for src in ("api", "worker", "stranger", "prometheus"):
        assert not admits(policies, pods[src], pods["beat"], 8080)
        assert not admits(policies, pods[src], pods["flower"], flower)
    # The API: only its port.
    assert not admits(policies, pods["worker"], pods["api"], 6379)


def test_without_ping_workers_admit_only_the_iperf_ports() -> None:
    policies, pods = _render({"networkPolicy": {"worker": {"ping": False}}})
    assert admits(policies, pods["worker"], pods["worker"], 5200)
    assert not admits(policies, pods["worker"], pods["worker"], None, "ICMP")
    assert not admits(policies, pods["worker"], pods["worker"], 6379)
