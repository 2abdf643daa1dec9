"""Regression tests for upstream Autopilot's known defects (reference section 13), one per defect
that applies to this design, each named after the defect it shows we do not have.

Defects of upstream's Go internals (concurrent map writes, ``time.NewTicker`` panics, a watcher
starting at resourceVersion 1) have no counterpart here; where another module's tests already pin a
defect down (alerts looking for ``ERR``, gauges never deleted, the DCGM parser), this file tests the
seam where the defect would show through the runtime rather than repeating them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from autopilot import config, errors, execution, labeling, parsing, registry, verdict
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status, utc_now_iso
from autopilot.testing import FakeClock, FakeGpu, FakeRunner, FakeTelemetry
from tests.unit.api_helpers import make_api
from workers import reconcile
from workers.app import beat_schedule
from workers.store import ResultsStore

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PERIODIC = ("pciebw", "remapped", "dcgm", "ping", "gpupower")


def _result(check: str, status: Status, *, fatal: bool = False, at: datetime = NOW, **params: Any) -> CheckResult:
    return CheckResult(check, status, f"{check} {status.value}", node="node-a", fatal=fatal,
                       params=params, started_at=utc_now_iso(at))  # fmt: skip


def _decide(*found: CheckResult, evicted_at: datetime | None = None) -> verdict.Decision:
    return verdict.decide(list(found), periodic=PERIODIC, now=NOW, max_age_s=3 * 3600, evicted_at=evicted_at)


def _all_ok(at: datetime = NOW) -> list[CheckResult]:
    return [_result(c, Status.OK, at=at) for c in PERIODIC]


def _ctx() -> CheckContext:
    return CheckContext(
        node="node-a",
        settings=config.Settings(node_name="node-a"),
        commands=FakeRunner(),
        gpus=FakeTelemetry([FakeGpu()]),
        clock=FakeClock(),
        checks=shipped_checks(),
    )


def _shipped() -> registry.CheckRegistry:
    importlib.import_module("autopilot.checks")
    return registry.REGISTRY


# ------------------------------------------------------------------ result semantics


def test_abort_is_never_pass() -> None:
    """Upstream: ``ABORT`` (MIG mode, error 802, dcgmi non-zero exit) counted as pass -> ``PASS``."""
    ok = _all_ok()
    for i, check in enumerate(PERIODIC):
        found = [*ok[:i], _result(check, Status.ERROR), *ok[i + 1 :]]
        decision = _decide(*found)
        assert decision.verdict is verdict.Verdict.WARN, check
        assert any(check in reason for reason in decision.reasons)
    # and a check that crashes or breaks its contract becomes an error, never a pass
    spec = registry.CheckSpec("broken", lambda ctx, p: None, "returns nothing")  # type: ignore[arg-type,return-value]
    reg = registry.CheckRegistry()
    reg.add(spec)
    ctx = _ctx()
    assert execution.run_check("broken", ctx, checks=reg).status is Status.ERROR


def test_dcgm_error_run_neither_passes_nor_blanks_the_dcgm_label() -> None:
    """Upstream: dcgmi's non-zero exit made Go ignore the result, then the periodic patch wrote PASS;
    a success while WARN blanked ``dcgm.level.<r>``. An errored DCGM run writes no dcgm label at all."""
    assert labeling.dcgm_labels(_result("dcgm", Status.ERROR, r=3)) == ({}, {})
    labels, _ = labeling.dcgm_labels(_result("dcgm", Status.FAIL, r=3))
    assert labels[labeling.dcgm_level_key(3)].startswith("ERR_")


def test_evict_is_sticky_under_a_periodic_pass() -> None:
    """Upstream: the forced periodic patch overwrote ``EVICT`` every period."""
    evicted = NOW - timedelta(hours=1)
    assert _decide(*_all_ok(), evicted_at=evicted).verdict is verdict.Verdict.EVICT
    # a level-1 dcgm pass is periodic, not invasive: still EVICT
    found = [*_all_ok()[:2], _result("dcgm", Status.OK, r=1), *_all_ok()[3:]]
    assert _decide(*found, evicted_at=evicted).verdict is verdict.Verdict.EVICT
    # a level-3 pass that started after the eviction lifts it
    found = [*_all_ok()[:2], _result("dcgm", Status.OK, r=3), *_all_ok()[3:]]
    assert _decide(*found, evicted_at=evicted).verdict is verdict.Verdict.PASS


def test_ping_failure_never_sets_another_checks_result() -> None:
    """Upstream: a ping failure set the ``pciebw`` flag."""
    store = ResultsStore(fakeredis.FakeRedis())
    # Confirmation off (it is tested in test_confirmation): one ping failure moves the verdict at once.
    settings = config.Settings(
        node_name="node-a", periodic_checks=PERIODIC, confirm_need=1, confirm_window=1, recover_passes=1
    )
    now = datetime.now(UTC)
    for r in _all_ok(now):
        store.save_result(r)
    store.save_result(_result("ping", Status.FAIL, at=now))
    decision = reconcile.reconcile_node(store, "node-a", settings, now, checks=shipped_checks())
    latest = store.latest("node-a")
    assert latest["ping"].status is Status.FAIL
    assert {c: r.status for c, r in latest.items() if c != "ping"} == dict.fromkeys(
        ("pciebw", "remapped", "dcgm", "gpupower"), Status.OK
    )
    assert decision.verdict is verdict.Verdict.WARN
    assert [r.split(":")[0] for r in decision.reasons] == ["ping"]


def test_stale_on_demand_results_do_not_keep_a_node_warn_forever() -> None:
    """Upstream: stale on-demand flags kept a node ``WARN`` forever."""
    old = NOW - timedelta(hours=4)
    found = [*_all_ok(), _result("iperf", Status.FAIL, at=old)]
    assert _decide(*found).verdict is verdict.Verdict.PASS


def test_a_failing_check_does_not_skip_the_rest() -> None:
    """Upstream: the first erroring check silently skipped the rest of the periodic list."""

    def crash(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        raise RuntimeError("tool exploded")

    def fail(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("fails", Status.FAIL, "bad")

    def ok(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("fine", Status.OK, "good")

    reg = registry.CheckRegistry()
    for name, fn in (("crashes", crash), ("fails", fail), ("fine", ok)):
        reg.add(registry.CheckSpec(name, fn, name))
    ctx = _ctx()
    done = execution.run_checks(["crashes", "fails", "fine"], ctx, checks=reg)
    assert [(r.check, r.status) for r in done] == [
        ("crashes", Status.ERROR), ("fails", Status.FAIL), ("fine", Status.OK)
    ]  # fmt: skip


def test_a_check_list_with_iperf_is_parsed_as_a_list() -> None:
    """Upstream: ``strings.Trim(check, "iperf")`` turned ``ping,iperf`` into ``ng``."""
    assert parsing.parse_list("ping,iperf") == ("ping", "iperf")
    assert parsing.parse_list("remapped,iperf") == ("remapped", "iperf")
    api = make_api()
    for query in ("check=ping,iperf", "check=remapped,iperf", "check=iperf&check=ping"):
        api.dispatcher.sent.clear()
        answer = api.client.get(f"/status?format=json&host=node-a&{query}&deadline=1")
        assert answer.status_code == 200, answer.get_json()
        assert sorted(answer.get_json()["checks"]) == sorted(query.replace("check=", "").replace("&", ",").split(","))


def test_gpumem_path_runs_gpumem_not_the_power_check() -> None:
    """Upstream: ``/gpumem`` ran the power check."""
    api = make_api()
    assert api.client.get("/gpumem?host=node-a&format=json").status_code == 200
    assert [e.checks for e in api.dispatcher.sent] == [("gpumem",)]


def test_status_never_panics_on_a_node_without_output() -> None:
    """Upstream: ``/status`` panicked on nil output. A silent node is ``unreachable``, answered in time."""
    api = make_api(deadline_s=0.3)
    api.workers.silent.add("node-b")
    answer = api.client.get("/status?format=json&check=remapped&host=node-a,node-b")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["nodes"]["node-b"]["status"] == "unreachable"
    assert body["nodes"]["node-a"]["status"] == "ok"
    text = api.client.get("/status?check=remapped&host=node-b")
    assert text.status_code == 200 and "node-b" in text.get_data(as_text=True)


# ------------------------------------------------------------------ security and safety


def test_no_authentication_is_not_an_option_when_a_token_is_set() -> None:
    """Upstream: no authentication on any endpoint; anyone could launch Jobs and change labels."""
    api = make_api(token="s3cret")
    for method, path in (("get", "/status"), ("post", "/api/v1/runs"), ("post", "/api/v1/nodes/node-a/clear"),
                         ("get", "/api/v1/nodes"), ("get", "/dcgm?r=3")):  # fmt: skip
        answer = getattr(api.client, method)(path, headers={"Authorization": "Bearer wrong"})
        assert answer.status_code == 401, path
        assert answer.get_json()["error"] == "unauthorized"
    assert api.dispatcher.sent == []
    assert api.client.get("/status?host=node-a", headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.mark.parametrize("r", ["9", "0", "3; reboot", "3 -x", "memory_bandwidth", "-1"])
def test_r_never_reaches_dcgmi_unvalidated(r: str) -> None:
    """Upstream: ``r`` went straight to ``dcgmi diag -r`` (any level or test name)."""
    api = make_api()
    answer = api.client.get("/dcgm", query_string={"r": r, "host": "node-a"})
    assert answer.status_code == 400 and answer.get_json()["field"] == "r"
    assert api.dispatcher.sent == []


@pytest.mark.parametrize(
    ("param", "value"), [("pclients", 10**6), ("pclients", 0), ("startport", 80), ("startport", 70000)]
)
def test_iperf_fanout_parameters_are_bounded(param: str, value: int) -> None:
    """Upstream: ``numservers``, ``numclients``, ``pclients`` unbounded; ``dstip`` aimed anywhere."""
    spec = _shipped().get("iperf")
    with pytest.raises(errors.BadParameter):
        spec.validate({param: value})
    assert "dstip" not in {p.name for p in spec.params}


def test_fanout_does_not_concatenate_parameters_across_nodes() -> None:
    """Upstream: fan-out URLs were built by string concatenation (parameter injection across pods)."""
    api = make_api()
    answer = api.client.get("/status", query_string={"host": "node-a&check=dcgm&r=3", "check": "remapped"})
    assert answer.status_code == 400 and answer.get_json()["field"] == "host"
    assert api.dispatcher.sent == []


def test_every_check_has_a_timeout_and_a_hung_check_becomes_an_error() -> None:
    """Upstream: ``dcgmi``, ``bandwidthTest``, ``gpucheck``, ``nvidia-smi`` had no timeout."""
    for spec in _shipped():
        assert 0 < spec.timeout_s < 24 * 3600, spec.name

    def hang(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        time.sleep(5)
        return CheckResult("hangs", Status.OK, "too late")

    reg = registry.CheckRegistry()
    reg.add(registry.CheckSpec("hangs", hang, "sleeps", timeout_s=0.2))
    ctx = _ctx()
    result = execution.run_check("hangs", ctx, checks=reg)
    assert result.status is Status.ERROR and "timed out" in result.summary


# ------------------------------------------------------------------ configuration


def test_invasive_zero_disables_instead_of_crashing() -> None:
    """Upstream: ``invasive: 0``, the documented way to disable, made ``time.NewTicker`` panic."""
    settings = config.Settings.from_env({"AUTOPILOT_INVASIVE_INTERVAL": "0", "AUTOPILOT_PERIODIC_INTERVAL": "0"})
    assert settings.invasive_interval_s == 0
    assert beat_schedule(settings).keys() == {"reconcile"}


def test_configuration_errors_surface_at_start() -> None:
    """Upstream: durations were parsed after the first run."""
    with pytest.raises(errors.ConfigError):
        config.Settings.from_env({"AUTOPILOT_PERIODIC_INTERVAL": "an hour"})


def test_dcgm_fatal_errors_are_a_list_not_characters() -> None:
    """Upstream: ``DCGM_FATAL_ERRORS`` values were iterated per character."""
    settings = config.Settings.from_env({"DCGM_FATAL_ERRORS": "PCIe,NVLink"})
    assert settings.dcgm_fatal_errors == ("PCIe", "NVLink")


def test_readiness_is_not_always_ready() -> None:
    """Upstream: readiness was always "ready". Without Redis we say so with a 503."""
    api = make_api()

    def down() -> bool:
        raise ConnectionError("redis down")

    api.store.ping = down  # type: ignore[method-assign]
    answer = api.client.get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["error"] == "unavailable"


def test_pvc_with_no_storage_class_is_skipped_not_passed() -> None:
    """Upstream: an empty storage class counted as configured."""
    ctx = _ctx()
    result = execution.run_check("pvc", ctx, checks=_shipped())
    assert result.status is Status.SKIPPED
