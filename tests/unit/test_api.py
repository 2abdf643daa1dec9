"""The API through its app factory: fakeredis store, a dispatcher that answers like workers."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from autopilot.cluster import NodeInfo
from autopilot.results import Status
from autopilot.testing import FakeCluster
from tests.unit.api_helpers import NODES, Api, make_api
from workers.dispatch import Envelope
from workers.store import NodeRecord


@pytest.fixture
def api() -> Api:
    return make_api()


def status_json(api: Api, query: str) -> dict[str, Any]:
    response = api.client.get(f"/status?{query}&format=json")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


# ------------------------------------------------------------------ gathering


def test_status_over_three_nodes_returns_all_three(api: Api) -> None:
    report = status_json(api, "host=node-a,node-b,node-c&check=pciebw,remapped")
    assert list(report["nodes"]) == list(NODES)
    for node in NODES:
        entry = report["nodes"][node]
        assert entry["status"] == "ok"
        assert [r["check"] for r in entry["results"]] == ["pciebw", "remapped"]
        assert all(r["node"] == node for r in entry["results"])
    assert report["complete"] is True
    assert report["status"] == "ok"
    assert report["totals"]["nodes"] == 3 and report["totals"]["answered"] == 3 and report["totals"]["ok"] == 3
    assert sorted(e.node for e in api.dispatcher.sent) == list(NODES)
    assert all(e.checks == ("pciebw", "remapped") for e in api.dispatcher.sent)


def test_no_selection_means_every_node_and_default_checks_and_a_lost_one_is_listed(api: Api) -> None:
    old = time.time() - 3600
    api.store.heartbeat(NodeRecord("node-old", last_seen=old))
    api.store.set_state("node-old", {"verdict": "PASS", "reasons": "[]"})
    report = status_json(api, "")
    # node-old stopped heartbeating: sent nothing, and listed as unreachable rather than left out
    assert list(report["nodes"]) == [*NODES, "node-old"]
    since = datetime.fromtimestamp(old, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    lost = report["nodes"]["node-old"]
    assert lost["status"] == "unreachable" and lost["detail"].startswith(f"no heartbeat since {since}")
    assert lost["verdict"] == "UNKNOWN" and lost["reasons"] == [lost["detail"]]
    assert "node-old" not in {e.node for e in api.dispatcher.sent}
    assert report["totals"]["unreachable"] == 1 and report["status"] == "error"
    assert report["checks"] == ["pciebw", "remapped", "dcgm", "ping", "gpupower"]
    assert status_json(api, "host=all&check=all")["checks"] == report["checks"]


def test_only_lost_nodes_are_still_answered_not_refused(api: Api) -> None:
    api.store.forget_node("node-a")
    api.store.forget_node("node-b")
    api.store.heartbeat(NodeRecord("node-c", last_seen=time.time() - 3600))
    report = status_json(api, "host=all&check=pciebw")
    assert list(report["nodes"]) == ["node-c"] and report["nodes"]["node-c"]["status"] == "unreachable"
    assert api.dispatcher.sent == []


def test_a_named_lost_node_is_still_asked_and_unreachable_says_since_when() -> None:
    api = make_api(deadline_s=1)
    api.store.heartbeat(NodeRecord("node-b", last_seen=time.time() - 3600))
    api.workers.silent.add("node-b")
    report = status_json(api, "host=node-a,node-b&check=pciebw")
    assert [e.node for e in api.dispatcher.sent] == ["node-a", "node-b"]  # its worker may be restarting
    assert report["nodes"]["node-a"]["status"] == "ok"
    assert report["nodes"]["node-b"]["status"] == "unreachable"
    assert report["nodes"]["node-b"]["detail"].startswith("no heartbeat since ")


def test_silent_node_is_unreachable_within_deadline_and_the_rest_is_intact() -> None:
    api = make_api(deadline_s=1)
    api.workers.silent.add("node-b")
    report = status_json(api, "host=node-a,node-b,node-c&check=pciebw")
    assert report["nodes"]["node-b"]["status"] == "unreachable"
    assert report["nodes"]["node-b"]["results"] == []
    for node in ("node-a", "node-c"):
        assert report["nodes"][node]["status"] == "ok"
        assert report["nodes"][node]["results"][0]["summary"] == "pciebw fine"
    assert report["complete"] is True
    assert report["totals"]["unreachable"] == 1 and report["totals"]["answered"] == 2
    assert report["status"] == "error"


def test_node_answering_some_checks_gets_an_error_for_the_rest() -> None:
    api = make_api(deadline_s=1)
    api.workers.only["node-a"] = {"pciebw"}
    entry = status_json(api, "host=node-a&check=pciebw,remapped")["nodes"]["node-a"]
    assert entry["status"] == "error"
    got = {r["check"]: r for r in entry["results"]}
    assert got["pciebw"]["status"] == "ok"
    assert got["remapped"]["status"] == "error"
    # a hung tool on a live node read as a node too slow to answer
    assert got["remapped"]["summary"] == (
        "no answer within the deadline: the node answered its other checks, this one still runs or waits there"
    )


def test_results_status_and_verdict_are_reported(api: Api) -> None:
    api.workers.outcomes[("node-b", "remapped")] = (Status.FAIL, True, "GPU 3: row remap failed")
    api.store.set_state("node-b", {"verdict": "EVICT", "reasons": json.dumps(["remapped: GPU 3: row remap failed"])})
    report = status_json(api, "host=node-a,node-b&check=pciebw,remapped")
    assert report["nodes"]["node-b"]["status"] == "fail"
    assert report["nodes"]["node-b"]["verdict"] == "EVICT"
    assert report["nodes"]["node-b"]["reasons"] == ["remapped: GPU 3: row remap failed"]
    assert report["nodes"]["node-a"]["verdict"] is None
    assert report["status"] == "fail"


def test_batch_limits_nodes_in_flight() -> None:
    nodes = tuple(f"n{i}" for i in range(7))
    api = make_api(nodes=nodes)
    api.workers.delay_s = 0.02  # workers answer a little later, from their own threads
    in_flight_at_send: list[int] = []
    answer = api.workers

    def on_send(env: Envelope) -> None:
        answered = {n for n in nodes if api.store.latest(n)}
        sent_before = {e.node for e in api.dispatcher.sent[:-1]}
        in_flight_at_send.append(len(sent_before - answered))
        answer(env)

    api.dispatcher.on_send = on_send
    report = status_json(api, f"host={','.join(nodes)}&check=ping&batch=2")
    assert report["totals"]["ok"] == 7
    assert len(api.dispatcher.sent) == 7
    # at every send, at most one other node was still running: the new one makes two
    assert max(in_flight_at_send) <= 1


def test_batch_waits_for_a_silent_node_deadline_before_sending_the_next() -> None:
    api = make_api(deadline_s=1)
    api.workers.silent.add("node-a")
    report = status_json(api, "host=node-a,node-b&check=ping&batch=1")
    first, second = api.dispatcher.sent
    assert (first.node, second.node) == ("node-a", "node-b")
    # node-b was only sent once node-a's deadline had passed (its own deadline is later)
    assert second.deadline >= first.deadline
    assert report["nodes"]["node-a"]["status"] == "unreachable"
    assert report["nodes"]["node-b"]["status"] == "ok"


def test_unknown_hosts_are_reported_not_enqueued(api: Api) -> None:
    report = status_json(api, "host=node-a,ghost-1")
    assert report["nodes"]["ghost-1"]["status"] == "unknown"
    assert report["nodes"]["node-a"]["status"] == "ok"
    assert [e.node for e in api.dispatcher.sent] == ["node-a"]
    assert report["totals"]["unknown"] == 1


def test_only_unknown_hosts_is_a_404_naming_host(api: Api) -> None:
    response = api.client.get("/status?host=ghost-1,ghost-2")
    assert response.status_code == 404
    body = response.get_json()
    assert body["field"] == "host" and body["unknown"] == ["ghost-1", "ghost-2"]
    assert api.dispatcher.sent == []


def test_no_live_nodes_is_a_404() -> None:
    api = make_api(nodes=())
    response = api.client.get("/status")
    assert response.status_code == 404 and response.get_json()["error"] == "no_nodes"


# ------------------------------------------------------------------ selection


def test_nodelabel_without_cluster_uses_record_and_local_labels() -> None:
    api = make_api(labels={"node-a": {"pool": "train"}, "node-c": {"pool": "train"}})
    report = status_json(api, "nodelabel=pool=train&check=ping")
    assert list(report["nodes"]) == ["node-a", "node-c"]
    api.store.set_labels("node-b", {"autopilot.ibm.com/gpuhealth": "WARN"})
    report = status_json(api, "nodelabel=autopilot.ibm.com/gpuhealth=WARN&check=ping")
    assert list(report["nodes"]) == ["node-b"]


def test_selection_is_the_union_of_host_nodelabel_and_job() -> None:
    cluster = FakeCluster(
        nodes=[NodeInfo("node-a", {"pool": "x"}), NodeInfo("node-b", {"pool": "y"}), NodeInfo("node-c", {})],
        pods=[("team", "node-c", {"app": "llm"}), ("other", "node-b", {"app": "llm"})],
    )
    api = make_api(cluster=cluster)
    report = status_json(api, "host=node-b&nodelabel=pool=x&job=team:app=llm&check=ping")
    assert list(report["nodes"]) == ["node-b", "node-a", "node-c"]
    report = status_json(api, "job=team:app=llm&check=ping")
    assert list(report["nodes"]) == ["node-c"]


def test_cluster_node_without_worker_is_unknown() -> None:
    cluster = FakeCluster(nodes=[NodeInfo("node-a", {"gpu": "yes"}), NodeInfo("gpu-new", {"gpu": "yes"})])
    api = make_api(cluster=cluster)
    report = status_json(api, "nodelabel=gpu=yes&check=ping")
    assert report["nodes"]["gpu-new"]["status"] == "unknown"
    assert [e.node for e in api.dispatcher.sent] == ["node-a"]


def test_job_without_cluster_matches_record_labels() -> None:
    api = make_api(labels={"node-b": {"app": "llm"}})
    assert list(status_json(api, "job=team:app=llm&check=ping")["nodes"]) == ["node-b"]


def test_job_matching_nothing_without_cluster_says_node_labels_were_matched() -> None:
    # It said "no workload labeled with app=none in namespace ns": no pod was ever asked.
    detail = make_api().client.get("/status?job=ns:app=none").get_json()["detail"]
    assert detail == "no node is labeled with app=none (no cluster here: job matches node labels)"
    cluster = FakeCluster(nodes=[NodeInfo("node-a", {})])
    detail = make_api(cluster=cluster).client.get("/status?job=ns:app=none").get_json()["detail"]
    assert detail == "no workload labeled with app=none in namespace ns"


@pytest.mark.parametrize(("query", "field"), [("nodelabel=pool=none", "nodelabel"), ("job=ns:app=none", "job")])
def test_selector_matching_nothing_is_a_404_naming_it(api: Api, query: str, field: str) -> None:
    response = api.client.get(f"/status?{query}")
    assert response.status_code == 404
    assert response.get_json()["field"] == field
    assert api.dispatcher.sent == []


# ------------------------------------------------------------------ validation


BAD_QUERIES = [
    ("check=nosuch", "check"),
    ("check=pciebw,nosuch", "check"),
    ("job=malformed", "job"),
    ("job=Bad_NS:a=b", "job"),
    ("host=a;rm -rf /", "host"),
    ("host=node-a,$(reboot)", "host"),
    ("host=NODE-A", "host"),
    ("batch=-1", "batch"),
    ("batch=many", "batch"),
    ("batch=10001", "batch"),
    ("r=9", "r"),
    ("r=0", "r"),
    ("r=1;ls", "r"),
    ("deadline=0", "deadline"),
    ("deadline=7201", "deadline"),
    ("deadline=soon", "deadline"),
    ("nodelabel=noequals", "nodelabel"),
    ("nodelabel=a=b c", "nodelabel"),
    ("format=xml", "format"),
    ("foo=1", "foo"),
    ("check=iperf&workload=mesh", "workload"),
    ("check=iperf&pclients=1000", "pclients"),
    ("check=ping&pclients=4", "pclients"),
    ("check=pciebw&threshold_gbps=fast", "threshold_gbps"),
]


@pytest.mark.parametrize(("query", "field"), BAD_QUERIES)
def test_bad_status_input_is_a_400_naming_the_field_and_enqueues_nothing(api: Api, query: str, field: str) -> None:
    response = api.client.get(f"/status?host=node-a&{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "bad_request"
    assert body["field"] == field
    assert body["detail"]
    assert api.dispatcher.sent == []
    assert api.run_keys() == []


@pytest.mark.parametrize(
    ("path", "field"),
    [("/dcgm?r=9", "r"), ("/dcgm?check=pciebw", "check"), ("/iperf?pclients=0", "pclients"), ("/ping?r=x", "r")],
)
def test_bad_input_on_check_paths(api: Api, path: str, field: str) -> None:
    response = api.client.get(path)
    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert api.dispatcher.sent == []


# ------------------------------------------------------------------ per-check paths


def test_check_paths_run_their_check_with_params(api: Api) -> None:
    response = api.client.get("/dcgm?host=node-a&r=3&format=json")
    assert response.status_code == 200
    (env,) = api.dispatcher.sent
    assert env.checks == ("dcgm",) and env.params == {"dcgm": {"r": 3}}
    assert response.get_json()["nodes"]["node-a"]["results"][0]["params"] == {"r": 3}


def test_gpumem_path_runs_gpumem(api: Api) -> None:
    api.client.get("/gpumem?host=node-a")
    assert api.dispatcher.sent[0].checks == ("gpumem",)


def test_iperf_params_pass_through_validated(api: Api) -> None:
    assert api.client.get("/iperf?host=node-a&workload=all&pclients=4&startport=6000").status_code == 200
    assert api.dispatcher.sent[0].params == {"iperf": {"workload": "all", "pclients": 4, "startport": 6000}}
    api.client.get("/status?host=node-b&check=iperf,ping")
    assert api.dispatcher.sent[1].params == {
        "iperf": {"workload": "ring", "pclients": 8, "startport": 5200},
        "ping": {},
    }


def test_r_is_ignored_for_checks_that_do_not_take_it(api: Api) -> None:
    assert api.client.get("/status?host=node-a&check=ping&r=2").status_code == 200
    assert api.dispatcher.sent[0].params == {"ping": {}}


def test_path_of_a_check_not_in_the_build_is_a_json_404(api: Api) -> None:
    response = api.client.get("/pvc")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    assert api.dispatcher.sent == []


# ------------------------------------------------------------------ text output


def test_text_output_is_shaped_like_upstream(api: Api) -> None:
    api.workers.outcomes[("node-b", "remapped")] = (Status.FAIL, True, "GPU 3: row remap failed")
    api.workers.outcomes[("node-c", "pciebw")] = (Status.ERROR, False, "ap-bandwidth crashed\nexit 1")
    response = api.client.get("/status?host=node-a,node-b,node-c&check=pciebw,remapped")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    body = response.get_data(as_text=True)
    blocks = body.split("-" * 67)
    assert len(blocks) == 4  # three node blocks, then the summary
    assert "Autopilot Endpoint: autopilot.node.node-a\nNode: node-a\nResponse:\n" in blocks[0]
    assert "[[ PCIEBW ]] SUCCESS: pciebw fine" in blocks[0]
    assert "[[ REMAPPED ROWS ]] SUCCESS" in blocks[0]
    assert "Node Status: OK" in blocks[0]
    assert "[[ REMAPPED ROWS ]] FAIL (fatal): GPU 3: row remap failed" in blocks[1]
    assert "Node Status: REMAPPED ROWS Failed (fatal)" in blocks[1]
    assert "[[ PCIEBW ]] ABORT: ap-bandwidth crashed exit 1" in blocks[2]
    summary = blocks[3]
    assert "Node Summary:" in summary
    assert "node-b  REMAPPED ROWS Failed (fatal)" in summary
    assert "runtime:" in summary and summary.rstrip().endswith("sec")
    assert "{'" not in body and "['" not in body  # no Python reprs


def test_text_output_names_unreachable_and_unknown_nodes() -> None:
    api = make_api(deadline_s=1)
    api.workers.silent.add("node-b")
    body = api.client.get("/status?host=node-a,node-b,ghost&check=ping").get_data(as_text=True)
    assert "Node: node-b" in body and "Node Status: Unreachable" in body
    assert "Node: ghost" in body and "Node Status: Unknown node" in body


# ------------------------------------------------------------------ token


def test_token_is_required_except_for_health_and_metrics() -> None:
    api = make_api(token="s3cret")
    client = api.client
    assert client.get("/status?host=node-a").status_code == 401
    response = client.get("/api/v1/nodes", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/nodes", headers={"Authorization": "s3cret"}).status_code == 401
    assert client.get("/no/such/path").status_code == 401  # paths are not revealed either
    assert client.post("/api/v1/nodes/node-a/clear").status_code == 401
    assert api.dispatcher.sent == []
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/status?host=node-a", headers=good).status_code == 200
    assert client.get("/api/v1/nodes", headers=good).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code != 401


def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not() -> None:
    # RFC 7235: "bearer s3cret" is the same credential; it was refused 401.
    client = make_api(token="s3cret").client
    for header in ("bearer s3cret", "BEARER s3cret", "Bearer  s3cret"):
        assert client.get("/api/v1/nodes", headers={"Authorization": header}).status_code == 200, header
    for header in ("Bearer S3CRET", "Basic s3cret", "Bearers3cret", "Bearer s3cret ", "Bearer", "s3cret"):
        assert client.get("/api/v1/nodes", headers={"Authorization": header}).status_code == 401, header


def test_without_token_everything_is_open(api: Api) -> None:
    assert api.client.get("/api/v1/checks").status_code == 200


# ------------------------------------------------------------------ runs


def test_run_create_then_read_with_wait(api: Api) -> None:
    api.workers.delay_s = 0.05
    response = api.client.post("/api/v1/runs", json={"checks": ["pciebw", "ping"], "hosts": ["node-a", "node-b"]})
    assert response.status_code == 202
    created = response.get_json()
    assert len(created["id"]) == 32 and created["status_url"] == f"/api/v1/runs/{created['id']}"
    assert response.headers["Location"] == created["status_url"]
    assert created["nodes"] == ["node-a", "node-b"] and created["unknown"] == []
    report = api.client.get(created["status_url"] + "?wait=5").get_json()
    assert report["complete"] is True and report["totals"]["ok"] == 2
    assert [r["check"] for r in report["nodes"]["node-a"]["results"]] == ["pciebw", "ping"]


def test_run_read_without_wait_may_be_pending() -> None:
    api = make_api(deadline_s=5)
    api.workers.silent.add("node-a")
    created = api.client.post("/api/v1/runs", json={"checks": ["ping"], "hosts": ["node-a"]}).get_json()
    report = api.client.get(created["status_url"]).get_json()
    assert report["complete"] is False
    assert report["status"] == "pending" and report["nodes"]["node-a"]["status"] == "pending"


def test_run_wait_ends_at_the_run_deadline_with_unreachable_nodes() -> None:
    api = make_api(deadline_s=1)
    api.workers.silent.add("node-b")
    created = api.client.post("/api/v1/runs", json={"checks": ["ping"], "hosts": ["node-a", "node-b"]}).get_json()
    report = api.client.get(created["status_url"] + "?wait=30").get_json()
    assert report["complete"] is True
    assert report["nodes"]["node-b"]["status"] == "unreachable"
    assert report["nodes"]["node-a"]["status"] == "ok"


def test_batched_run_continues_in_the_background() -> None:
    nodes = tuple(f"n{i}" for i in range(5))
    api = make_api(nodes=nodes)
    # The workers answer once the test has looked, so the first wave cannot finish (and free the
    # background thread to send the next) before the answer is read, however slow the machine.
    api.workers.gate = threading.Event()
    created = api.client.post("/api/v1/runs", json={"checks": ["ping"], "batch": 2, "params": {"ping": {}}})
    assert created.status_code == 202
    assert len(api.dispatcher.sent) <= 2  # the first wave only, at answer time
    api.workers.gate.set()
    report = api.client.get(created.get_json()["status_url"] + "?wait=10").get_json()
    assert report["complete"] is True and report["totals"]["ok"] == 5
    for thread in threading.enumerate():
        if thread.name.startswith("gather-"):
            thread.join(timeout=10)


def test_run_with_params_and_unknown_host(api: Api) -> None:
    body = {"checks": ["dcgm"], "hosts": ["node-a", "ghost"], "params": {"dcgm": {"r": 2}}, "deadline": 1}
    created = api.client.post("/api/v1/runs", json=body).get_json()
    assert created["unknown"] == ["ghost"]
    assert api.dispatcher.sent[0].params == {"dcgm": {"r": 2}}


BAD_BODIES = [
    ({"checks": ["nosuch"]}, "check"),
    ({"hosts": ["a;rm -rf /"]}, "hosts"),
    ({"hosts": "node-a;reboot"}, "host"),
    ({"job": "nope"}, "job"),
    ({"nodelabel": 5}, "nodelabel"),
    ({"batch": -1}, "batch"),
    ({"deadline": 0}, "deadline"),
    ({"checks": ["dcgm"], "params": {"dcgm": {"r": 9}}}, "params.dcgm.r"),
    ({"checks": ["dcgm"], "params": {"dcgm": {"level": 3}}}, "params.dcgm.level"),
    ({"checks": ["dcgm"], "params": {"pciebw": {}}}, "params.pciebw"),
    ({"checks": ["dcgm"], "params": {"dcgm": {"r": [3]}}}, "params.dcgm.r"),
    ({"checks": ["ping"], "params": []}, "params"),
    ({"surprise": 1}, "surprise"),
    (["ping"], "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_run_body_is_a_400_naming_the_field(api: Api, body: Any, field: str) -> None:
    response = api.client.post("/api/v1/runs", json=body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["field"] in (field, "host" if field == "hosts" else field)
    assert api.dispatcher.sent == []
    assert api.run_keys() == []


def test_a_blank_item_of_a_run_list_is_named_by_its_position(api: Api) -> None:
    # It said "empty entry in ''" (what `autopilot status --host a,,b` sends as a list).
    for body, field in (({"hosts": ["node-a", ""]}, "hosts"), ({"checks": ["ping", " "]}, "checks")):
        response = api.client.post("/api/v1/runs", json=body)
        assert response.status_code == 400
        assert response.get_json() == {
            "error": "bad_request",
            "field": field,
            "detail": "empty entry (item 2 of the list)",
        }
    assert api.dispatcher.sent == []


def test_a_refused_json_value_is_quoted_as_json() -> None:
    # A client that sent `true` was told "got 'True'" (Python's spelling).
    from autopilot.registry import shipped

    api = make_api(checks=shipped())
    for body, detail in (
        ({"batch": True}, "expected an integer, got true"),
        ({"batch": 1e3}, "expected an integer, got 1000.0"),
        ({"checks": ["ping"], "params": {"ping": {"count": True}}}, "expected int, got true"),
        ({"checks": ["ping"], "params": {"ping": {"count": "abc"}}}, "expected int, got 'abc'"),
    ):
        response = api.client.post("/api/v1/runs", json=body)
        assert response.status_code == 400 and response.get_json()["detail"] == detail, body
    assert api.dispatcher.sent == []


def test_run_body_that_is_not_json(api: Api) -> None:
    response = api.client.post("/api/v1/runs", data="{nope", content_type="application/json")
    assert response.status_code == 400 and response.get_json()["field"] == "body"
    assert api.dispatcher.sent == []


def test_run_ids_are_validated(api: Api) -> None:
    assert api.client.get("/api/v1/runs/not-hex").get_json()["field"] == "id"
    assert api.client.get("/api/v1/runs/" + "0" * 32).status_code == 404
    run_id = api.client.post("/api/v1/runs", json={"checks": ["ping"]}).get_json()["id"]
    for wait in ("301", "-1", "x"):
        response = api.client.get(f"/api/v1/runs/{run_id}?wait={wait}")
        assert response.status_code == 400 and response.get_json()["field"] == "wait"


# ------------------------------------------------------------------ nodes and checks


def test_nodes_list(api: Api) -> None:
    api.store.heartbeat(NodeRecord("node-old", last_seen=time.time() - 3600))
    api.store.set_state("node-a", {"verdict": "WARN", "reasons": json.dumps(["pciebw: warn: slow"])})
    answer = api.client.get("/api/v1/nodes").get_json()
    by_name = {n["name"]: n for n in answer["nodes"]}
    assert set(by_name) == {*NODES, "node-old"}
    assert answer["total"] == 4 and answer["live"] == 3
    assert by_name["node-a"]["verdict"] == "WARN" and by_name["node-a"]["reasons"] == ["pciebw: warn: slow"]
    assert by_name["node-b"]["verdict"] == "UNKNOWN"
    assert by_name["node-old"]["live"] is False and by_name["node-a"]["live"] is True
    assert by_name["node-a"]["gpu_model"] == "H100" and by_name["node-a"]["last_seen_at"].endswith("Z")


def test_node_detail(api: Api) -> None:
    for _ in range(3):
        api.client.get("/status?host=node-a&check=pciebw,ping")
    api.store.set_labels("node-a", {"autopilot.ibm.com/gpuhealth": "PASS"})
    api.store.set_state("node-a", {"verdict": "PASS", "reasons": "[]"})
    node = api.client.get("/api/v1/nodes/node-a?limit=4").get_json()
    assert node["verdict"] == "PASS" and node["reasons"] == []
    assert set(node["latest"]) == {"pciebw", "ping"}
    assert len(node["history"]) == 4
    assert node["labels"] == {"autopilot.ibm.com/gpuhealth": "PASS"}
    assert node["record"]["gpu_count"] == 8 and node["live"] is True


def test_node_detail_is_one_redis_round_trip(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.client.get("/status?host=node-a&check=pciebw,ping")
    trips: list[str] = []
    command, execute = redis.Redis.execute_command, redis.client.Pipeline.execute

    def one_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(str(args[0]))
        return command(self, *args, **kwargs)

    def one_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append("pipeline")
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", one_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", one_pipeline)
    node = api.client.get("/api/v1/nodes/node-a").get_json()
    assert set(node["latest"]) == {"pciebw", "ping"} and len(node["history"]) == 2
    assert trips == ["pipeline"]


def test_node_detail_errors(api: Api) -> None:
    assert api.client.get("/api/v1/nodes/ghost").status_code == 404
    assert api.client.get("/api/v1/nodes/Bad_Name").get_json()["field"] == "name"
    assert api.client.get("/api/v1/nodes/node-a?limit=0").get_json()["field"] == "limit"
    assert api.client.get("/api/v1/nodes/node-a?limit=5000").get_json()["field"] == "limit"
    assert api.client.get("/api/v1/nodes?verbose=1").get_json()["field"] == "verbose"


def test_clear_lifts_a_sticky_evict(api: Api) -> None:
    api.store.set_state("node-a", {"verdict": "EVICT", "evicted_at": "2026-01-01T00:00:00Z"})
    response = api.client.post("/api/v1/nodes/node-a/clear")
    assert response.status_code == 200
    body = response.get_json()
    assert body["verdict"] != "EVICT"
    state = api.store.state("node-a")
    assert state.evicted_at is None and state.cleared_by.startswith("api:")
    assert api.client.post("/api/v1/nodes/ghost/clear").status_code == 404
    assert api.client.get("/api/v1/nodes/node-a/clear").status_code == 405


def test_a_clear_is_logged_with_the_callers_address_at_the_default_level(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    # Logged at INFO, it never reached the log of a process at the default AUTOPILOT_LOG_LEVEL (WARNING).
    api.store.set_state("node-a", {"verdict": "EVICT", "evicted_at": "2026-01-01T00:00:00Z"})
    caplog.set_level(logging.WARNING)
    response = api.client.post("/api/v1/nodes/node-a/clear", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert response.status_code == 200
    (record,) = [r for r in caplog.records if "cleared by" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == f"eviction of node-a cleared by 192.0.2.7: now {response.get_json()['verdict']}"


def test_clear_needs_the_token_when_set() -> None:
    api = make_api(token="t0k")
    assert api.client.post("/api/v1/nodes/node-a/clear").status_code == 401
    ok = api.client.post("/api/v1/nodes/node-a/clear", headers={"Authorization": "Bearer t0k"})
    assert ok.status_code == 200


def test_checks_catalogue(api: Api) -> None:
    answer = api.client.get("/api/v1/checks").get_json()
    names = [c["name"] for c in answer["checks"]]
    assert "iperf" in names and "pvc" not in names
    iperf = next(c for c in answer["checks"] if c["name"] == "iperf")
    assert {p["name"] for p in iperf["params"]} == {"workload", "pclients", "startport"}
    assert answer["default"] == ["pciebw", "remapped", "dcgm", "ping", "gpupower"]


# ------------------------------------------------------------------ operations and errors


def test_openapi_covers_every_route(api: Api) -> None:
    doc = api.client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    missing = []
    for rule in api.app.url_map.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if method.lower() not in doc["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == []
    status_params = {p["name"] for p in doc["paths"]["/status"]["get"]["parameters"]}
    assert {"host", "check", "job", "nodelabel", "batch", "r", "deadline", "format", "workload"} <= status_params
    assert {p["name"] for p in doc["paths"]["/iperf"]["get"]["parameters"]} >= {"pclients", "startport"}


def test_openapi_documents_the_status_of_an_unknown_query_parameter_on_every_path(api: Api) -> None:
    # /api/v1/nodes, the clear, /api/v1/baselines and /api/v1/checks answered 400 to an unknown
    # parameter while their documented responses had no 400.
    doc = api.client.get("/openapi.json").get_json()
    values = {
        "{name}": "node-a",
        "{uuid}": "GPU-" + "-".join(["0" * 8, *["0" * 4] * 3, "0" * 12]),
        "{run_id}": "0" * 32,
    }
    undocumented = []
    for path, operations in doc["paths"].items():
        url = path
        for placeholder, value in values.items():
            url = url.replace(placeholder, value)
        for method, operation in operations.items():
            code = api.client.open(f"{url}?zz=1", method=method.upper(), json={}).status_code
            if str(code) not in operation["responses"]:
                undocumented.append(f"{method.upper()} {path}: {code}")
    assert undocumented == []


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").get_json() == {"status": "ok"}
    assert api.client.get("/readyz").get_json()["status"] == "ready"


def _refusing_redis() -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Port 1 on loopback: nothing listens, so every command is refused at once (no retry).
    return redis.Redis(port=1, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))


def test_readyz_is_503_when_redis_is_gone(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.store, "r", _refusing_redis())
    response = api.client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["error"] == "unavailable"
    assert api.client.get("/healthz").status_code == 200


def test_store_down_during_a_request_is_a_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.store, "r", _refusing_redis())
    for path in ("/api/v1/nodes", "/api/v1/nodes/node-a", "/api/v1/gpus/GPU-00000000-0000-0000-0000-000000000001"):
        response = api.client.get(path)
        assert response.status_code == 503 and response.get_json()["error"] == "unavailable", path


def test_unknown_paths_and_methods_are_json(api: Api) -> None:
    response = api.client.get("/nope")
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
    response = api.client.post("/status")
    assert response.status_code == 405 and response.is_json
    assert "GET" in response.headers["Allow"]


def test_unexpected_error_is_a_500_without_traceback(api: Api) -> None:
    def explode(env: Envelope) -> None:
        raise RuntimeError("secret internals")

    api.dispatcher.on_send = explode
    response = api.client.get("/status?host=node-a")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert response.get_json()["error"] == "internal_error"
    assert "Traceback" not in body and "secret internals" not in body
