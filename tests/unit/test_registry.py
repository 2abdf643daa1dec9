"""Parameter validation shared by the CLI, the API and the tasks."""

from __future__ import annotations

from typing import Any

import pytest

from autopilot import errors, registry


@pytest.mark.parametrize(
    "kind, raw, expected",
    [(int, "3", 3), (float, "4.5", 4.5), (bool, "yes", True), (bool, "0", False), (str, "abc", "abc")],
)
def test_param_parses(kind: type, raw: str, expected: object) -> None:
    assert registry.Param("x", kind, None, "").parse(raw) == expected


@pytest.mark.parametrize(
    "param, raw, words",
    [
        (registry.Param("r", int, 1, "", minimum=1, maximum=4), "9", "r: must be <= 4"),
        (registry.Param("r", int, 1, "", minimum=1, maximum=4), "-1", "r: must be >= 1"),
        (registry.Param("r", int, 1, ""), "1;rm -rf /", "r: expected int"),
        (registry.Param("t", float, 1.0, ""), "nan", "t: expected float"),
        (registry.Param("b", bool, False, ""), "maybe", "b: expected bool"),
        (registry.Param("w", str, "a", "", choices=("a", "b")), "c", "w: must be one of a, b"),
    ],
)
def test_param_rejects(param: registry.Param, raw: str, words: str) -> None:
    with pytest.raises(errors.BadParameter) as info:
        param.parse(raw)
    assert str(info.value).startswith(words)
    assert info.value.field == param.name


def test_unknown_parameter_is_named() -> None:
    spec = registry.CheckSpec("c", lambda ctx, p: None, "d", params=(registry.Param("r", int, 1, ""),))  # type: ignore[arg-type,return-value]
    with pytest.raises(errors.BadParameter) as info:
        spec.validate({"bogus": "1"})
    assert info.value.field == "bogus"
    assert spec.validate({}) == {"r": 1}


# Per-check knowledge lives on the check's spec: whoever holds a registry reads it there.


def _spec(name: str, **facts: Any) -> registry.CheckSpec:
    return registry.CheckSpec(name, lambda ctx, p: None, "d", **facts)  # type: ignore[arg-type,return-value]


def _registry(*specs: registry.CheckSpec) -> registry.CheckRegistry:
    reg = registry.CheckRegistry()
    for spec in specs:
        reg.add(spec)
    return reg


def test_the_upstream_gauge_names_a_check_by_its_specs_health() -> None:
    from prometheus_client import CollectorRegistry

    from autopilot.metrics import NodeInfo, ResultsCollector, Snapshot
    from autopilot.results import CheckResult, Status

    def scrape(reg: registry.CheckRegistry) -> set[str]:
        got = CheckResult("dcgm", Status.FAIL, node="n1", started_at="2027-01-15T07:59:00Z")
        snapshot = Snapshot(nodes=[NodeInfo("n1", last_seen=1.0)], latest={"n1": {"dcgm": got}}, taken_at=2.0)
        prom = CollectorRegistry()
        prom.register(ResultsCollector(lambda: snapshot, reg))
        return {
            s.labels["health"]
            for family in prom.collect()
            if family.name == "autopilot_health_checks"
            for s in family.samples
        }

    assert scrape(_registry(_spec("dcgm", health="dcgm-diag"))) == {"dcgm-diag"}
    assert scrape(_registry(_spec("dcgm"))) == set()  # no health on the spec: no upstream series


def test_the_status_text_tags_a_check_by_its_spec() -> None:
    from api import text

    reg = _registry(_spec("gpupower", tag="GPU POWER"), _spec("other"))
    assert (text.tag("gpupower", reg), text.tag("other", reg), text.tag("unknown", reg)) == (
        "GPU POWER",
        "OTHER",
        "UNKNOWN",
    )


def test_a_spec_says_when_a_run_is_a_job_and_bad_stored_params_are_not_one() -> None:
    from autopilot import config

    spec = _spec("deep", as_job=lambda params, settings: int(params.get("level") or settings.dcgm_level) >= 3)
    settings = config.Settings(dcgm_level=1)
    assert spec.runs_as_job({"level": 3}, settings) and not spec.runs_as_job({"level": 2}, settings)
    assert not spec.runs_as_job({"level": "three"}, settings)  # a stored result's params are not trusted
    assert not _spec("light").runs_as_job({"level": 3}, settings)


def test_the_ring_of_a_run_is_the_check_its_spec_calls_a_ring() -> None:
    import fakeredis

    from autopilot import config
    from workers import runs
    from workers.dispatch import FakeDispatcher
    from workers.store import ResultsStore

    reg = _registry(_spec("mesh", ring=True), _spec("ping"))
    svc = runs.Services(config.Settings(), ResultsStore(fakeredis.FakeRedis()), FakeDispatcher(on_task=[]), reg)
    found = runs.ring_of(svc, ["ping", "mesh"])
    assert found is not None and found.check == "mesh"
    assert runs.ring_of(svc, ["ping"]) is None


def test_the_default_periodic_checks_are_those_whose_spec_is_periodic() -> None:
    from autopilot import config

    assert set(config.Settings().periodic_checks) == set(registry.shipped().periodic())
