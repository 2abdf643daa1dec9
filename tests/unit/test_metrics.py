"""autopilot.metrics on a fresh CollectorRegistry: upstream gauge semantics, our own series, churn."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from autopilot.metrics import NodeInfo, ResultsCollector, Snapshot, upstream_samples
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status, parse_iso

NOW = 1_800_000_000.0
STARTED = "2027-01-15T07:59:00Z"

Labels = tuple[tuple[str, str], ...]


def scrape(
    snapshot: Snapshot | None = None, *, fn: Callable[[], Snapshot] | None = None
) -> dict[str, dict[Labels, float]]:
    """Register a collector on a fresh registry, render text, parse it back: name -> labels -> value."""
    registry = CollectorRegistry()
    registry.register(ResultsCollector(fn or (lambda: snapshot or Snapshot()), checks=shipped_checks()))
    text = generate_latest(registry).decode()
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def health(series: Mapping[str, Mapping[Labels, float]]) -> dict[tuple[str, str, str], float]:
    """autopilot_health_checks as (health, node, deviceid) -> value."""
    found = {}
    for labels, value in series.get("autopilot_health_checks", {}).items():
        d = dict(labels)
        found[(d["health"], d["node"], d["deviceid"])] = value
    return found


def result(check: str, status: Status, *devices: DeviceResult, node: str = "n1", **kw: object) -> CheckResult:
    return CheckResult(check, status, node=node, devices=devices, started_at=STARTED, duration_s=2.5, **kw)  # type: ignore[arg-type]


def snap(latest: Mapping[str, Mapping[str, CheckResult]], **kw: object) -> Snapshot:
    nodes = [NodeInfo(n, "Intel Xeon 8480", "NVIDIA H100 80GB HBM3", NOW - 5) for n in latest]
    base: dict[str, object] = {"nodes": nodes, "latest": latest, "verdicts": {}, "taken_at": NOW, "live_after_s": 45}
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


GBS = "GB/s"


# ---------------------------------------------------------------- upstream gauge


def test_pciebw_exports_bandwidth_per_gpu_with_node_labels() -> None:
    r = result(
        "pciebw",
        Status.FAIL,
        DeviceResult("0", Status.OK, 24.5, GBS),
        DeviceResult("1", Status.FAIL, 2.1, GBS),
        DeviceResult("2", Status.ERROR, None, GBS, "no measurement"),
    )
    series = scrape(snap({"n1": {"pciebw": r}}))
    assert health(series) == {("pciebw", "n1", "0"): 24.5, ("pciebw", "n1", "1"): 2.1}
    labels = dict(next(iter(series["autopilot_health_checks"])))
    assert labels["cpumodel"] == "Intel Xeon 8480"
    assert labels["gpumodel"] == "NVIDIA H100 80GB HBM3"


def test_pciebw_link_only_mode_is_not_a_bandwidth() -> None:
    r = result("pciebw", Status.OK, DeviceResult("0", Status.OK, 16, "lanes"))
    assert upstream_samples(r) == {}


def test_remapped_is_one_for_pending_or_failed_remap() -> None:
    r = result(
        "remapped",
        Status.FAIL,
        DeviceResult("0", Status.OK, 0),
        DeviceResult("1", Status.WARN, 1),
        DeviceResult("2", Status.FAIL, 1),
        DeviceResult("3", Status.SKIPPED, detail="not supported"),
        fatal=True,
    )
    assert upstream_samples(r) == {"0": 0.0, "1": 1.0, "2": 1.0}


def test_remapped_without_device_value_falls_back_to_status() -> None:
    r = result("remapped", Status.WARN, DeviceResult("0", Status.OK), DeviceResult("1", Status.WARN))
    assert upstream_samples(r) == {"0": 0.0, "1": 1.0}


def test_gpupower_exports_power_slowdown() -> None:
    r = result("gpupower", Status.FAIL, DeviceResult("0", Status.FAIL, 1), DeviceResult("1", Status.WARN, 0))
    assert health(scrape(snap({"n1": {"gpupower": r}}))) == {
        ("power-slowdown", "n1", "0"): 1.0,
        ("power-slowdown", "n1", "1"): 0.0,
    }


def test_gpumem_is_per_gpu() -> None:
    r = result(
        "gpumem",
        Status.FAIL,
        DeviceResult("0", Status.OK, 1800.0, GBS),
        DeviceResult("1", Status.FAIL, 900.0, GBS),
        DeviceResult("2", Status.FAIL, 850.0, GBS),
    )
    assert upstream_samples(r) == {"0": 0.0, "1": 1.0, "2": 1.0}


@pytest.mark.parametrize(("status", "value"), [(Status.OK, 0.0), (Status.WARN, 0.0), (Status.FAIL, 1.0)])
def test_dcgm_and_pvc_are_node_wide(status: Status, value: float) -> None:
    dcgm = result("dcgm", status, DeviceResult("0", status))
    assert upstream_samples(dcgm) == {"": value}
    assert upstream_samples(result("pvc", status)) == {"": value}


def test_ping_is_per_remote_node_and_one_if_any_address_failed() -> None:
    r = result(
        "ping",
        Status.FAIL,
        DeviceResult("n2/eth0", Status.OK),
        DeviceResult("n2/net1", Status.FAIL),
        DeviceResult("n3/eth0", Status.OK),
        DeviceResult("n4", Status.FAIL),
    )
    assert upstream_samples(r) == {"n2": 1.0, "n3": 0.0, "n4": 1.0}


def test_long_peer_names_cut_for_their_label_stay_two_series() -> None:
    # Node names may be 253 characters: two peers alike in their first 128 were one deviceid, so the
    # scrape held the same series twice and Prometheus kept one of them (here the reachable one).
    stem = "gpu-node." + "a" * 150
    r = result(
        "ping", Status.FAIL, DeviceResult(f"{stem}-1/eth0", Status.OK), DeviceResult(f"{stem}-2/eth0", Status.FAIL)
    )
    found = [(d, v) for (h, n, d), v in health(scrape(snap({"n1": {"ping": r}}))).items() if h == "ping"]
    assert len(found) == 2 and sorted(v for _, v in found) == [0.0, 1.0]
    assert all(len(d) <= 128 for d, _ in found)


@pytest.mark.parametrize("status", [Status.ERROR, Status.SKIPPED])
def test_error_and_skipped_results_are_absent_from_the_upstream_gauge(status: Status) -> None:
    latest = {
        "n1": {
            "dcgm": result("dcgm", status, summary="dcgmi not found"),
            "remapped": result("remapped", status, DeviceResult("0", Status.OK, 0)),
        }
    }
    series = scrape(snap(latest))
    assert health(series) == {}
    # ...but our own series say what happened.
    assert series["autopilot_check_status"][(("check", "dcgm"), ("node", "n1"), ("status", status.value))] == 1.0
    assert series["autopilot_check_status"][(("check", "dcgm"), ("node", "n1"), ("status", "ok"))] == 0.0


def test_checks_without_upstream_series_still_get_ours() -> None:
    series = scrape(snap({"n1": {"iperf": result("iperf", Status.OK)}}))
    assert health(series) == {}
    assert series["autopilot_check_status"][(("check", "iperf"), ("node", "n1"), ("status", "ok"))] == 1.0


# ---------------------------------------------------------------- our own series


def test_check_status_is_one_hot_with_fatal_duration_and_last_run() -> None:
    r = result("remapped", Status.FAIL, DeviceResult("0", Status.FAIL, 1), fatal=True)
    series = scrape(snap({"n1": {"remapped": r}}))
    status = {dict(k)["status"]: v for k, v in series["autopilot_check_status"].items()}
    assert status == {"ok": 0.0, "warn": 0.0, "fail": 1.0, "error": 0.0, "skipped": 0.0}
    key = (("check", "remapped"), ("node", "n1"))
    assert series["autopilot_check_fatal"][key] == 1.0
    assert series["autopilot_check_duration_seconds"][key] == 2.5
    assert series["autopilot_check_last_run_timestamp_seconds"][key] == parse_iso(STARTED).timestamp()


def test_result_without_start_time_has_no_last_run_series() -> None:
    r = CheckResult("pvc", Status.OK, node="n1")
    series = scrape(snap({"n1": {"pvc": r}}))
    assert "autopilot_check_last_run_timestamp_seconds" not in series
    assert series["autopilot_check_fatal"][(("check", "pvc"), ("node", "n1"))] == 0.0


def test_verdict_is_one_hot_and_defaults_to_unknown() -> None:
    latest: dict[str, dict[str, CheckResult]] = {"n1": {}, "n2": {}, "n3": {}}
    series = scrape(snap(latest, verdicts={"n1": "EVICT", "n3": "BOGUS"}))
    verdicts: dict[str, dict[str, float]] = {}
    for labels, value in series["autopilot_node_verdict"].items():
        d = dict(labels)
        verdicts.setdefault(d["node"], {})[d["verdict"]] = value
    assert verdicts["n1"] == {"PASS": 0.0, "WARN": 0.0, "EVICT": 1.0, "TESTING": 0.0, "UNKNOWN": 0.0}
    assert verdicts["n2"] == {"PASS": 0.0, "WARN": 0.0, "EVICT": 0.0, "TESTING": 0.0, "UNKNOWN": 1.0}
    assert verdicts["n3"]["UNKNOWN"] == 1.0 and sum(verdicts["n3"].values()) == 1.0


def test_live_and_stale_nodes_and_last_seen() -> None:
    nodes = [
        NodeInfo("fresh", last_seen=NOW - 10),
        NodeInfo("old", last_seen=NOW - 3600),
        NodeInfo("never"),
    ]
    series = scrape(Snapshot(nodes=nodes, latest={"ghost": {}}, taken_at=NOW, live_after_s=45))
    assert series["autopilot_nodes"] == {(("state", "live"),): 1.0, (("state", "stale"),): 3.0}
    assert series["autopilot_node_last_seen_timestamp_seconds"] == {
        (("node", "fresh"),): NOW - 10,
        (("node", "old"),): NOW - 3600,
    }


def test_empty_store_still_reports_node_counts() -> None:
    series = scrape(Snapshot(taken_at=NOW))
    assert series["autopilot_nodes"] == {(("state", "live"),): 0.0, (("state", "stale"),): 0.0}
    assert series["autopilot_results_store_up"] == {(): 1.0}


def test_series_vanish_when_a_node_or_check_disappears() -> None:
    pcie = DeviceResult("0", Status.OK, 20.0, GBS)
    current = {
        "n1": {"pciebw": result("pciebw", Status.OK, pcie), "dcgm": result("dcgm", Status.OK)},
        "n2": {"pciebw": result("pciebw", Status.OK, pcie, node="n2")},
    }
    registry = CollectorRegistry()
    registry.register(ResultsCollector(lambda: snap(current), checks=shipped_checks()))

    def nodes_and_checks() -> set[tuple[str, str]]:
        text = generate_latest(registry).decode()
        return {
            (s.labels["node"], s.labels.get("check", s.labels.get("health", "")))
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if "node" in s.labels
        }

    before = nodes_and_checks()
    assert ("n2", "pciebw") in before and ("n1", "dcgm") in before
    del current["n2"]
    del current["n1"]["dcgm"]
    after = nodes_and_checks()
    assert not any(node == "n2" for node, _ in after)
    assert ("n1", "dcgm") not in after
    assert ("n1", "pciebw") in after


def test_a_failing_store_reports_down_instead_of_failing_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Snapshot:
        raise ConnectionError("redis is down")

    series = scrape(fn=broken)
    assert series == {"autopilot_results_store_up": {(): 0.0}}
    assert "results store" in caplog.text


def test_a_store_outage_is_one_warning_line_per_scrape_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # Redis down is expected and the gauge says it: two ERROR tracebacks at every scrape drowned the log.
    from autopilot import errors
    from autopilot.events.metrics import EventsCollector, EventsSnapshot

    def unreachable() -> Snapshot:
        raise errors.StoreUnavailable("results store unreachable: ConnectionError: refused")

    def events_unreachable() -> EventsSnapshot:
        raise errors.StoreUnavailable("results store unreachable: ConnectionError: refused")

    assert scrape(fn=unreachable) == {"autopilot_results_store_up": {(): 0.0}}
    registry = CollectorRegistry()
    registry.register(EventsCollector(events_unreachable))
    generate_latest(registry)
    records = [r for r in caplog.records if "results store" in r.getMessage()]
    assert len(records) == 2
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in records)
    assert all("ConnectionError: refused" in r.getMessage() for r in records)


def test_registering_does_not_read_the_store() -> None:
    calls: list[int] = []

    def counted() -> Snapshot:
        calls.append(1)
        return Snapshot(taken_at=NOW)

    registry = CollectorRegistry(auto_describe=True)
    registry.register(ResultsCollector(counted, checks=shipped_checks()))
    assert calls == []
    generate_latest(registry)
    assert calls == [1]


def test_exposition_has_help_and_type_and_round_trips() -> None:
    latest = {
        "n1": {"pciebw": result("pciebw", Status.OK, DeviceResult("0", Status.OK, 22.0, GBS))},
        "n2": {"dcgm": result("dcgm", Status.FAIL, node="n2", fatal=True)},
    }
    registry = CollectorRegistry()
    registry.register(ResultsCollector(lambda: snap(latest, verdicts={"n2": "EVICT"}), checks=shipped_checks()))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["autopilot_health_checks"].type == "gauge"
    assert families["autopilot_health_checks"].documentation.startswith("Summary of the health checks")
    for name in (
        "autopilot_check_status",
        "autopilot_check_fatal",
        "autopilot_check_duration_seconds",
        "autopilot_check_last_run_timestamp_seconds",
        "autopilot_node_verdict",
        "autopilot_node_last_seen_timestamp_seconds",
        "autopilot_nodes",
    ):
        assert families[name].documentation, name
    assert "# TYPE autopilot_health_checks gauge" in text
    samples = {(s.labels["health"], s.labels["node"]): s.value for s in families["autopilot_health_checks"].samples}
    assert samples == {("pciebw", "n1"): 22.0, ("dcgm", "n2"): 1.0}
