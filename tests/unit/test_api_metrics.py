"""api.metrics: /metrics over a fakeredis results store, and the API's own request metrics."""

from __future__ import annotations

import concurrent.futures
import struct
from pathlib import Path
from typing import Any

import fakeredis
import flask
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import ProcessFiles, SharedExposition, snapshot_from_store
from autopilot import config
from autopilot.metrics import ResultsCollector
from autopilot.registry import shipped as shipped_checks
from tests.metrics_data import make_app, populate
from workers.store import ResultsStore

NODES = ["gpu-a", "gpu-b", "gpu-c"]


@pytest.fixture
def store() -> ResultsStore:
    return ResultsStore(fakeredis.FakeRedis())


@pytest.fixture
def app(store: ResultsStore) -> flask.Flask:
    populate(store, NODES)
    return make_app(store, config.Settings(node_name="api", metrics_interval_s=0))


def scrape(client: flask.testing.FlaskClient) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_shows_every_node_of_the_store(app: flask.Flask) -> None:
    series = scrape(app.test_client())
    health = {(lb["health"], lb["node"], lb["deviceid"]): v for lb, v in series["autopilot_health_checks"]}
    assert {node for _, node, _ in health} == set(NODES)
    assert health[("pciebw", "gpu-a", "1")] == 25.0
    assert health[("remapped", "gpu-c", "1")] == 1.0
    assert health[("power-slowdown", "gpu-b", "0")] == 0.0
    assert not any(h == "dcgm" for h, _, _ in health)  # dcgm errored everywhere: no fake pass
    assert {lb["cpumodel"] for lb, _ in series["autopilot_health_checks"]} == {"Intel(R) Xeon(R) Platinum 8480+"}
    verdicts = {lb["node"]: lb["verdict"] for lb, v in series["autopilot_node_verdict"] if v == 1.0}
    assert verdicts == {"gpu-a": "PASS", "gpu-b": "PASS", "gpu-c": "EVICT"}
    assert dict((lb["state"], v) for lb, v in series["autopilot_nodes"]) == {"live": 3.0, "stale": 0.0}
    assert series["autopilot_results_store_up"] == [({}, 1.0)]


def test_forgotten_node_disappears(app: flask.Flask, store: ResultsStore) -> None:
    client = app.test_client()
    scrape(client)
    store.forget_node("gpu-b")
    series = scrape(client)
    assert {lb["node"] for lb, _ in series["autopilot_health_checks"]} == {"gpu-a", "gpu-c"}
    assert {lb["node"] for lb, _ in series["autopilot_node_verdict"]} == {"gpu-a", "gpu-c"}


def test_request_metrics_use_the_route_not_the_path(app: flask.Flask) -> None:
    client = app.test_client()
    for name in ("x1", "x2", "x3"):
        assert client.get(f"/api/v1/nodes/{name}").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    assert client.open("/api/v1/nodes/x1", method="BREW").status_code == 405
    assert client.get("/boom").status_code == 500
    series = scrape(client)
    counts = {(lb["method"], lb["endpoint"], lb["code"]): v for lb, v in series["autopilot_api_requests_total"]}
    assert counts[("GET", "/api/v1/nodes/<name>", "200")] == 3.0
    assert counts[("GET", "<unmatched>", "404")] == 1.0
    assert counts[("OTHER", "<unmatched>", "405")] == 1.0
    assert counts[("GET", "/boom", "500")] == 1.0
    assert not any("x1" in endpoint for _, endpoint, _ in counts)
    durations = {(lb["method"], lb["endpoint"]): v for lb, v in series["autopilot_api_request_duration_seconds_count"]}
    assert durations[("GET", "/api/v1/nodes/<name>")] == 3.0


def test_requests_answered_by_an_earlier_hook_are_still_timed(store: ResultsStore) -> None:
    app = flask.Flask("auth-first")

    @app.before_request
    def deny() -> tuple[dict[str, str], int] | None:
        if flask.request.path != "/metrics":
            return {"error": "unauthorized"}, 401
        return None

    @app.get("/secret")
    def secret() -> str:
        return "no"

    import api.metrics

    api.metrics.init_app(app, store, config.Settings(node_name="api"), checks=shipped_checks())
    client = app.test_client()
    assert client.get("/secret").status_code == 401
    series = scrape(client)
    counts = {(lb["endpoint"], lb["code"]): v for lb, v in series["autopilot_api_requests_total"]}
    assert counts[("/secret", "401")] == 1.0
    durations = {lb["endpoint"]: v for lb, v in series["autopilot_api_request_duration_seconds_count"]}
    assert durations["/secret"] == 1.0


def test_two_apps_do_not_share_a_registry(store: ResultsStore) -> None:
    first = make_app(store, config.Settings(node_name="api"))
    second = make_app(store, config.Settings(node_name="api"))
    first.test_client().get("/api/v1/nodes/a")
    series = scrape(second.test_client())
    assert not any(lb["endpoint"] == "/api/v1/nodes/<name>" for lb, _ in series.get("autopilot_api_requests_total", []))


def test_store_outage_keeps_metrics_up(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(store, config.Settings(node_name="api"))

    def down(*_: object, **__: object) -> list[str]:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(store, "node_names", down)
    series = scrape(app.test_client())
    assert series["autopilot_results_store_up"] == [({}, 0.0)]
    assert "autopilot_health_checks" not in series


def test_node_gauges_are_computed_once_per_interval_and_shared_by_scrapers(store: ResultsStore) -> None:
    populate(store, NODES)
    app = make_app(store, config.Settings(node_name="api", metrics_interval_s=3600))
    client = app.test_client()
    first = scrape(client)
    store.forget_node("gpu-b")
    reads: list[int] = []
    real = store.node_names

    def counted(*args: Any, **kwargs: Any) -> list[str]:
        reads.append(1)
        return real(*args, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        scrapes = list(pool.map(lambda _: scrape(app.test_client()), range(16)))
    client.get("/api/v1/nodes/a")
    after = scrape(client)

    assert reads == []  # within the interval nobody read the store again
    assert all(s["autopilot_health_checks"] == first["autopilot_health_checks"] for s in scrapes)
    assert app.extensions["autopilot_metrics"].nodes.renders == 1
    # The request metrics are not cached: they count up at every scrape.
    counts = {(lb["endpoint"], lb["code"]): v for lb, v in after["autopilot_api_requests_total"]}
    assert counts[("/api/v1/nodes/<name>", "200")] == 1.0
    assert counts[("/metrics", "200")] == 17.0


def test_node_gauges_are_computed_again_after_the_interval(store: ResultsStore) -> None:
    populate(store, NODES)
    registry = CollectorRegistry()
    registry.register(
        ResultsCollector(lambda: snapshot_from_store(store, config.Settings(node_name="api")), checks=shipped_checks())
    )
    now = [0.0]
    shared = SharedExposition(registry, 15.0, clock=lambda: now[0])
    before = shared.render()
    store.forget_node("gpu-b")
    now[0] = 14.9
    assert shared.render() == before
    now[0] = 15.0
    assert b'node="gpu-b"' in before and b'node="gpu-b"' not in shared.render()
    assert shared.renders == 2


def test_a_process_file_not_sized_yet_does_not_fail_the_scrape(tmp_path: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    live = MmapedDict(str(tmp_path / "counter_1.db"))
    live.write_value(mmap_key("requests", "requests_total", ("code",), ("200",), "help"), 3.0, 0.0)
    live.close()
    (tmp_path / "counter_2.db").touch()  # created, not sized yet (or its process died right then)

    collected = list(ProcessFiles(str(tmp_path)).collect())

    assert [(s.name, s.labels, s.value) for m in collected for s in m.samples] == [
        ("requests_total", {"code": "200"}, 3.0)
    ]
    with pytest.raises(struct.error):  # what the stock collector does with it
        MultiProcessCollector(None, path=str(tmp_path)).collect()


def test_a_rendering_reads_node_list_and_states_once(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(store, NODES)
    app = make_app(store, config.Settings(node_name="api", metrics_interval_s=0))
    calls: list[str] = []
    for name in ("node_names", "states"):
        real = getattr(store, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)

    series = scrape(app.test_client())

    assert sorted(calls) == ["node_names", "states"]  # one snapshot feeds the node and the GPU series
    assert {lb["node"] for lb, _ in series["autopilot_node_verdict"]} == set(NODES)
    assert "autopilot_gpus" in series
