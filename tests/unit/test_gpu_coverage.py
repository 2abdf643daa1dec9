"""How long each GPU has gone unmeasured: busy GPUs are skipped, never silently covered.

Per GPU and figure check (``pciebw``, ``gpumem``), when its figure was last measured (or since when it never
was), kept in the GPU's state; a reason past ``AUTOPILOT_UNMEASURED_AFTER`` that never moves a verdict; the
gauge ``autopilot_gpu_last_measured_timestamp_seconds``; the API's and the CLI's GPU views.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from api import client
from autopilot import config, gpumetrics, gpuverdict, results
from autopilot.memstore import MemoryStore
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.verdict import Verdict
from tests.unit.api_helpers import make_api
from tests.unit.test_api_client import Served
from tests.unit.test_store_traffic import trips
from workers import reconcile
from workers.store import ResultsStore

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
AGE = 3 * 3600.0
WEEK = 7 * 86400.0
BUSY = "in use by others (61 GiB used): H2D 21.3 GB/s not judged"


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def stamp(at: datetime) -> str:
    return results.utc_now_iso(at)


def figures(
    check: str = "pciebw",
    at: datetime = NOW,
    *,
    busy: frozenset[int] = frozenset(),
    statuses: Mapping[int, Status] | None = None,
    n: int = 4,
    node: str = "n1",
) -> CheckResult:
    """A pciebw/gpumem result over ``n`` GPUs: ``busy`` ones skipped as in use by others, the rest ``statuses``
    (default ok), each measured one with its GB/s figure."""
    given = dict(statuses or {})
    devices = []
    for i in range(n):
        status = Status.SKIPPED if i in busy else given.get(i, Status.OK)
        value = 21.3 if i in busy or status in (Status.OK, Status.WARN, Status.FAIL) else None
        detail = BUSY if i in busy else f"{check} says {status.value}"
        devices.append(DeviceResult(str(i), status, value, "GB/s", detail, uuid=uuid(i), bus_id=f"0000:{i:02x}:00.0"))
    data = {"gpus": {str(i): {"in_use": {"busy": i in busy}} for i in range(n)}}
    return CheckResult(check, Status.OK, "s", node=node, devices=tuple(devices), data=data, started_at=stamp(at))


def decide(
    latest: list[CheckResult], previous: Mapping[str, gpuverdict.GpuState], *, now: datetime = NOW, after: float = 0.0
) -> dict[str, gpuverdict.GpuState]:
    return gpuverdict.decide(
        {r.check: r for r in latest},
        previous,
        now=now,
        max_age_s=AGE,
        checks=shipped_checks(),
        unmeasured_after_s=after,
    )


# ---------------------------------------------------------------- the decision


def test_a_measured_figure_stamps_its_gpu_and_check() -> None:
    states = decide([figures("pciebw"), figures("gpumem")], {})
    assert states[uuid(0)].measured == (("gpumem", stamp(NOW)), ("pciebw", stamp(NOW)))
    assert states[uuid(0)].unmeasured_since == ()


@pytest.mark.parametrize("status", [Status.WARN, Status.FAIL])
def test_a_judged_figure_counts_as_measured_whatever_its_status(status: Status) -> None:
    states = decide([figures(statuses={1: status})], {})
    assert dict(states[uuid(1)].measured) == {"pciebw": stamp(NOW)}


def test_a_skip_as_in_use_by_others_keeps_the_last_measurement() -> None:
    before = decide([figures(at=NOW - timedelta(days=2))], {}, now=NOW - timedelta(days=2))
    after = decide([figures(busy=frozenset({2}))], before)
    assert dict(after[uuid(2)].measured) == {"pciebw": stamp(NOW - timedelta(days=2))}
    assert dict(after[uuid(0)].measured) == {"pciebw": stamp(NOW)}


def test_an_error_or_a_fail_without_a_figure_keeps_the_last_measurement() -> None:
    before = decide([figures(at=NOW - timedelta(days=2))], {}, now=NOW - timedelta(days=2))
    after = decide([figures(statuses={0: Status.ERROR})], before)
    assert dict(after[uuid(0)].measured) == {"pciebw": stamp(NOW - timedelta(days=2))}
    no_figure = figures()
    devices = tuple(dataclasses.replace(d, status=Status.FAIL, value=None) for d in no_figure.devices)
    after = decide([dataclasses.replace(no_figure, devices=devices)], before)
    assert dict(after[uuid(1)].measured) == {"pciebw": stamp(NOW - timedelta(days=2))}


def test_a_warn_while_in_use_by_others_is_no_measurement() -> None:
    # Warned for what load does not change (a narrow link): the figure itself was the contended one.
    busy = figures(busy=frozenset({3}))
    devices = tuple(dataclasses.replace(d, status=Status.WARN) if d.id == "3" else d for d in busy.devices)
    states = decide([dataclasses.replace(busy, devices=devices)], {})
    assert states[uuid(3)].measured == () and dict(states[uuid(3)].unmeasured_since) == {"pciebw": stamp(NOW)}


def test_pciebw_lane_counts_are_no_bandwidth_measured() -> None:
    link_only = figures()
    devices = tuple(dataclasses.replace(d, value=16, unit="lanes") for d in link_only.devices)
    states = decide([dataclasses.replace(link_only, devices=devices)], {})
    assert states[uuid(0)].measured == ()


def test_a_gpu_that_appears_busy_counts_from_its_first_sighting_until_measured() -> None:
    first = decide([figures(busy=frozenset({1}), at=NOW - timedelta(days=3))], {}, now=NOW - timedelta(days=3))
    assert first[uuid(1)].measured == ()
    assert dict(first[uuid(1)].unmeasured_since) == {"pciebw": stamp(NOW - timedelta(days=3))}
    still = decide([figures(busy=frozenset({1}))], first)
    assert dict(still[uuid(1)].unmeasured_since) == {"pciebw": stamp(NOW - timedelta(days=3))}
    measured = decide([figures(at=NOW + timedelta(hours=1))], still, now=NOW + timedelta(hours=1))
    assert dict(measured[uuid(1)].measured) == {"pciebw": stamp(NOW + timedelta(hours=1))}
    assert measured[uuid(1)].unmeasured_since == ()


def test_a_gpu_no_fresh_result_names_keeps_its_times() -> None:
    before = decide([figures()], {})
    later = NOW + timedelta(days=1)
    after = decide([], before, now=later)
    assert after[uuid(0)].verdict is Verdict.UNKNOWN
    assert after[uuid(0)].measured == before[uuid(0)].measured


def test_an_older_result_never_moves_a_measurement_back() -> None:
    before = decide([figures(at=NOW)], {})
    after = decide([figures(at=NOW - timedelta(hours=1))], before)
    assert dict(after[uuid(0)].measured) == {"pciebw": stamp(NOW)}


# ---------------------------------------------------------------- the reason, and no verdict change


def test_a_gpu_unmeasured_past_the_setting_says_so_and_keeps_its_verdict() -> None:
    before = decide([figures(at=NOW - timedelta(days=9))], {}, now=NOW - timedelta(days=9))
    latest = [figures(busy=frozenset({2})), figures("gpumem")]
    said = decide(latest, before, after=WEEK)
    silent = decide(latest, before, after=0.0)
    assert "pciebw not measured for 9 d (in use by others)" in said[uuid(2)].reasons
    assert not any("not measured for" in r for r in silent[uuid(2)].reasons)
    assert {k: s.verdict for k, s in said.items()} == {k: s.verdict for k, s in silent.items()}
    assert said[uuid(2)].verdict is Verdict.PASS
    assert gpuverdict.labels(said) == gpuverdict.labels(silent)
    assert not any("not measured" in r for s in said.values() if s.key != uuid(2) for r in s.reasons)


def test_the_reason_waits_for_the_threshold() -> None:
    before = decide([figures(at=NOW - timedelta(days=6))], {}, now=NOW - timedelta(days=6))
    states = decide([figures(busy=frozenset({2}))], before, after=WEEK)
    assert not any("not measured" in r for r in states[uuid(2)].reasons)
    hours = decide([figures(busy=frozenset({2}))], before, after=3600.0)
    assert "pciebw not measured for 6 d (in use by others)" in hours[uuid(2)].reasons


def test_a_gpu_never_measured_counts_from_when_it_appeared() -> None:
    first = decide([figures(busy=frozenset({0}), at=NOW - timedelta(days=8))], {}, now=NOW - timedelta(days=8))
    states = decide([figures(busy=frozenset({0}))], first, after=WEEK)
    assert "pciebw not measured for 8 d (in use by others)" in states[uuid(0)].reasons


def test_an_errored_figure_names_its_cause() -> None:
    before = decide([figures(at=NOW - timedelta(days=9))], {}, now=NOW - timedelta(days=9))
    states = decide([figures(statuses={1: Status.ERROR})], before, after=WEEK)
    assert "pciebw not measured for 9 d (error)" in states[uuid(1)].reasons
    assert states[uuid(1)].verdict is Verdict.WARN  # the error's own verdict, as before


def test_unmeasured_after_setting_reads_a_duration_and_zero() -> None:
    assert config.Settings().unmeasured_after_s == WEEK
    assert config.Settings.from_env({"AUTOPILOT_UNMEASURED_AFTER": "9d"}).unmeasured_after_s == 9 * 86400.0
    assert config.Settings.from_env({"AUTOPILOT_UNMEASURED_AFTER": "0"}).unmeasured_after_s == 0.0


# ---------------------------------------------------------------- the stores, the annotation


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_times_round_trip_through_the_node_state(kind: str) -> None:
    store: Any = ResultsStore(fakeredis.FakeRedis()) if kind == "redis" else MemoryStore()
    first = decide([figures(busy=frozenset({1}), at=NOW - timedelta(days=1))], {}, now=NOW - timedelta(days=1))
    states = decide([figures("gpumem", busy=frozenset({1}))], first)
    store.set_state("n1", {"gpus": gpuverdict.dumps(states)})
    back = gpuverdict.loads(store.state("n1").gpus)
    assert back == states
    assert dict(back[uuid(1)].unmeasured_since) == {
        "gpumem": stamp(NOW),
        "pciebw": stamp(NOW - timedelta(days=1)),
    }
    assert dict(back[uuid(0)].measured) == {"gpumem": stamp(NOW), "pciebw": stamp(NOW - timedelta(days=1))}


def test_stored_times_are_validated_when_read() -> None:
    raw = {
        uuid(0): {
            "uuid": uuid(0),
            "verdict": "PASS",
            "measured": {"pciebw": "not a time", "gpumem": "2026-11-30T08:00:00.5+00:00", "ping": stamp(NOW)},
            "unmeasured_since": ["pciebw"],
        }
    }
    state = gpuverdict.loads(json.dumps(raw))[uuid(0)]
    assert state.measured == (("gpumem", "2026-11-30T08:00:00Z"),)
    assert state.unmeasured_since == ()


def test_the_annotation_carries_no_times() -> None:
    # Times move at every measurement: in the annotation they would rewrite the Node at every run.
    one = decide([figures(at=NOW)], {})
    two = decide([figures(at=NOW + timedelta(hours=1))], one, now=NOW + timedelta(hours=1))
    assert gpuverdict.annotation(one) == gpuverdict.annotation(two)
    assert "measured" not in gpuverdict.annotation(one)


def test_a_new_measurement_writes_no_gpu_sighting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The times ride in the ``gpus`` field, written with ``gpus_at``: a reconcile whose only news is a GPU
    # measured again sends what one whose news is a passing remapped (which measures no figure) sends.
    def remapped(at: datetime) -> CheckResult:
        devices = tuple(dataclasses.replace(d, value=0, unit=None) for d in figures(at=at).devices)
        return dataclasses.replace(figures(at=at), check="remapped", devices=devices, data={})

    def sent(latest: CheckResult) -> tuple[list[str], ResultsStore]:
        store = ResultsStore(fakeredis.FakeRedis())
        settings = config.Settings(periodic_checks=("pciebw", "remapped"))
        store.save_result(figures(at=NOW))
        store.save_result(remapped(NOW))
        reconcile.reconcile_node(store, "n1", settings, NOW + timedelta(minutes=2), checks=shipped_checks())
        store.save_result(latest)
        log = trips(monkeypatch, store.r)
        reconcile.reconcile_node(store, "n1", settings, NOW + timedelta(hours=1), checks=shipped_checks())
        monkeypatch.undo()
        return log, store

    later = NOW + timedelta(minutes=59)
    measured, store = sent(figures(at=later))
    assert dict(gpuverdict.loads(store.state("n1").gpus)[uuid(0)].measured) == {"pciebw": stamp(later)}
    unmeasured, _ = sent(remapped(later))
    assert measured == unmeasured


# ---------------------------------------------------------------- the metric, the API, the CLI


def test_the_gauge_says_when_each_gpu_was_last_measured() -> None:
    first = decide([figures(busy=frozenset({1}), at=NOW - timedelta(days=2))], {}, now=NOW - timedelta(days=2))
    states = decide([figures(busy=frozenset({1}))], first)
    families = {f.name: f for f in gpumetrics.build({"n1": gpuverdict.dumps(states), "n2": None})}
    samples = {
        (s.labels["node"], s.labels["gpu"], s.labels["uuid"], s.labels["check"]): s.value
        for s in families["autopilot_gpu_last_measured_timestamp_seconds"].samples
    }
    assert samples[("n1", "0", uuid(0), "pciebw")] == NOW.timestamp()
    # Never measured: the start of its gap, so ``time() - value`` is how long it has gone unmeasured.
    assert samples[("n1", "1", uuid(1), "pciebw")] == (NOW - timedelta(days=2)).timestamp()
    assert len(samples) == 4


def test_node_answer_and_cli_show_each_gpus_measured_times(capsys: pytest.CaptureFixture[str]) -> None:
    api = make_api()
    now = datetime.now(UTC).replace(microsecond=0)
    api.store.save_result(figures(node="node-a", at=now, busy=frozenset({3})))
    reconcile.reconcile_node(api.store, "node-a", api.settings, now, checks=shipped_checks())
    body = api.client.get("/api/v1/nodes/node-a").get_json()
    gpus = {g["index"]: g for g in body["gpus"]}
    assert gpus["0"]["measured"] == {"pciebw": stamp(now)}
    assert "measured" not in gpus["3"] and gpus["3"]["unmeasured_since"] == {"pciebw": stamp(now)}
    listed = api.client.get("/api/v1/nodes?gpus=true").get_json()
    node_a = next(n for n in listed["nodes"] if n["name"] == "node-a")
    assert {g["index"]: g.get("measured") for g in node_a["gpus"]}["0"] == {"pciebw": stamp(now)}
    client._stdout().print(client.gpus_table(body | {"nodes": [{"name": "node-a", **body}], "total": 1}))
    out = capsys.readouterr().out
    assert "MEASURED" in out and f"pciebw {stamp(now)}" in out and "pciebw never" in out


def test_cli_nodes_json_carries_the_times(capsys: pytest.CaptureFixture[str]) -> None:
    served = Served(make_api(deadline_s=1))
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        served.api.store.save_result(figures(node="node-a", at=now, busy=frozenset({1})))
        reconcile.reconcile_node(served.api.store, "node-a", served.api.settings, now, checks=shipped_checks())
        assert client.nodes_main(["--url", served.url, "--gpus", "--json"]) == 0
    finally:
        served.close()
    answer = json.loads(capsys.readouterr().out)
    gpus = {g["index"]: g for n in answer["nodes"] if n["name"] == "node-a" for g in n["gpus"]}
    assert gpus["0"]["measured"] == {"pciebw": stamp(now)} and gpus["1"]["unmeasured_since"] == {"pciebw": stamp(now)}
