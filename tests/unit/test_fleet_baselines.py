"""The fleet's baselines in the workers and the API: results judged before they are stored, Redis bounds, the route."""

from __future__ import annotations

import random
from types import SimpleNamespace

import fakeredis
import pytest
from fakeredis.commands_mixins import server_mixin

from autopilot import baseline, config, nodeinfo
from autopilot.baseline import Cohort, Sample
from autopilot.checks import iperf
from autopilot.registry import shipped as shipped_checks
from autopilot.results import Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from tests.unit.api_helpers import make_api
from workers import fleet, simulate, tasks
from workers.host import NodeHost
from workers.store import NodeRecord, ResultsStore, Run, decoded

NODE = "sim-0"
H100 = simulate.GPU_NAME
PCIE = Cohort(H100, "550", "pciebw", "h2d_gbps")  # the simulated nodes' GPUs and driver
TEN_MINUTES = 600.0


def seeded(median: float, n: int = 100, **overrides: int) -> NodeHost:
    settings = config.Settings(node_name="test", redis_url="", periodic_checks=("pciebw",), **overrides)  # type: ignore[arg-type]
    host = NodeHost(
        settings, ResultsStore(fakeredis.FakeRedis()), simulate.contexts(settings, 1, [], checks=shipped_checks())
    )
    rng = random.Random(3)
    host.fleet.add(Sample(str(i % 8), PCIE, rng.gauss(median, 0.3)) for i in range(n))
    return host


def run_pciebw(host: NodeHost) -> None:
    run = Run.new(["pciebw"], [NODE], {}, 60)
    host.store.create_run(run)
    tasks.run_checks(host, run_id=run.id, node=NODE, checks=["pciebw"], params={}, deadline=run.deadline)


def test_a_result_below_its_fleet_is_stored_warn_with_its_baseline_and_moves_the_verdict() -> None:
    host = seeded(66.0)  # the simulated GPUs measure about 53.5 GB/s: 81% of this fleet
    run_pciebw(host)
    stored = host.store.latest(NODE)["pciebw"]
    assert stored.status is Status.WARN
    assert all(d.status is Status.WARN for d in stored.devices)
    assert "slow against its fleet: h2d_gbps 53.1 is 81% of the median of 100 NVIDIA H100 80GB HBM3" in stored.summary
    assert stored.data["fleet_baseline"][PCIE.key]["count"] == 100
    assert host.store.state(NODE).verdict == "WARN"


def test_a_result_like_its_fleet_passes_and_adds_its_figures() -> None:
    host = seeded(53.5)
    run_pciebw(host)
    assert host.store.latest(NODE)["pciebw"].status is Status.OK
    (entry,) = host.fleet.all()
    assert entry["count"] == 108 and entry["judging"] is True


def test_redis_keeps_a_window_per_cohort_and_a_bounded_number_of_cohorts() -> None:
    settings = config.Settings(baseline_window=10, baseline_min_samples=5, baseline_max_cohorts=2)
    fleets = fleet.FleetBaselines(fakeredis.FakeRedis(), settings, clock=iter(range(1, 100)).__next__)
    for model in ("A", "B", "C"):
        fleets.add(Sample("0", Cohort(model, "535", "pciebw", "h2d_gbps"), float(v)) for v in range(30))
    found = fleets.all()
    assert [(e["model"], e["count"]) for e in found] == [("B", 10), ("C", 10)]
    assert found[0]["median"] == 24.5  # the last ten figures: 20..29


def test_below_the_minimum_a_cohort_is_listed_but_judges_nobody() -> None:
    host = seeded(66.0, n=20)
    run_pciebw(host)
    assert host.store.latest(NODE)["pciebw"].status is Status.OK
    assert host.fleet.all()[0]["judging"] is False


def test_the_heartbeat_names_the_driver() -> None:
    facts = nodeinfo.collect(FakeRunner([]), FakeTelemetry([FakeGpu()], driver="535.129.03"), annotations_path="")
    assert facts.driver_version == "535.129.03"
    assert baseline.driver_major(facts.driver_version) == "535"


def test_get_baselines_serves_every_cohort() -> None:
    api = make_api()
    fleets = api.store.fleet(api.settings)
    fleets.add(Sample("0", PCIE, 50.0 + i % 3) for i in range(60))
    body = api.client.get("/api/v1/baselines").get_json()
    assert body["baselines"] == [
        {"model": H100, "driver": "550", "check": "pciebw", "metric": "h2d_gbps", "count": 60, "judging": True}
        | {"median": 51.0, "mad": 1.4826}
    ]
    assert body["settings"]["min_samples"] == 50
    assert api.client.get("/api/v1/baselines?x=1").status_code == 400


def test_metrics_export_each_cohorts_median_spread_and_size() -> None:
    api = make_api()
    fleets = api.store.fleet(api.settings)
    fleets.add(Sample("0", PCIE, 50.0 + i % 3) for i in range(60))
    fleets.add(Sample("0", Cohort(H100, "550", "gpumem", "dgemm_tflops"), 52.0) for _ in range(10))
    text = api.client.get("/metrics").get_data(as_text=True)
    labels = f'check="pciebw",driver="550",metric="h2d_gbps",model="{H100}"'
    assert f"autopilot_baseline_median{{{labels}}} 51.0" in text
    assert f"autopilot_baseline_mad{{{labels}}} 1.4826" in text
    assert f"autopilot_baseline_samples{{{labels}}} 60.0" in text
    # Too few figures: its size is exported, no median.
    assert 'autopilot_baseline_samples{check="gpumem",driver="550",metric="dgemm_tflops"' in text
    assert 'autopilot_baseline_median{check="gpumem"' not in text


def test_an_iperf_pair_is_judged_against_the_fleets_pairs_with_the_nodes_heartbeat() -> None:
    fleets = fleet.FleetBaselines(fakeredis.FakeRedis(), config.Settings())
    cohort = Cohort("NVIDIA H100 80GB HBM3", "535", "iperf", "pair_gbps")
    fleets.add(Sample("x/eth0", cohort, 98.0 + i % 5) for i in range(100))

    def measured(gbps: float) -> iperf.Measure:
        return iperf.Measure(Status.OK, gbps, f"{gbps:.2f} Gb/s")

    pairs = [
        iperf.pair("a", "b", "eth0", "10.0.0.2", measured(100.0)),
        iperf.pair("a", "c", "eth0", "10.0.0.3", measured(70.0)),
    ]
    result = iperf.evaluate("a", iperf.grade(pairs, threshold_gbps=0, min_fraction=0.5))
    assert result.status is Status.OK  # the ring's own median of two pairs sees nothing
    record = NodeRecord("a", gpu_model="NVIDIA H100 80GB HBM3", driver_version="535.129.03")
    judged = fleet.judge_for_record(fleets, result, record)
    assert judged.status is Status.WARN
    assert [d.id for d in judged.devices if d.status is Status.WARN] == ["c/eth0"]
    assert "pair_gbps 70 is 70% of the median of 100" in judged.summary


def test_a_tasks_figures_are_written_in_the_multi_of_its_results_and_only_once_it_ran() -> None:
    import pytest
    import redis

    from autopilot import execution
    from autopilot.errors import StoreUnavailable

    host = seeded(53.5)
    judge = fleet.judge_in(host.fleet, host.contexts[NODE])
    judged = judge(execution.run_check("pciebw", host.contexts[NODE]))
    assert judge.figures.kept == 8 and host.fleet.all()[0]["count"] == 100  # judged; nothing written yet

    real = host.store.r.pipeline

    def broken(*args: object, **kwargs: object) -> object:
        pipe = real(*args, **kwargs)  # type: ignore[arg-type]

        def fail(*_: object, **__: object) -> None:
            raise redis.ConnectionError("down")

        pipe.execute = fail  # type: ignore[method-assign]
        return pipe

    host.store.r.pipeline = broken  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        host.store.save_many([(judged, True)], None, figures=judge.figures)
    assert judge.figures.kept == 8  # kept for the task's next write, as its results are
    host.store.r.pipeline = real  # type: ignore[method-assign]
    host.store.save_many([(judged, True)], None, figures=judge.figures)
    assert judge.figures.kept == 0 and host.fleet.all()[0]["count"] == 108
    assert host.store.latest(NODE)["pciebw"].status is Status.OK


def test_the_cohort_index_is_scored_on_the_stores_clock_whatever_each_writers_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two writers 10 min apart: A's clock runs 10 min ahead of the store's, B's is on time. Before, each scored the
    # index on its own clock, so the cohort A fed first outranked those B fed after it, and above the bound the
    # cohort dropped was B's newest-but-one instead of A's, the one fed longest ago.
    store_at = [1_000_000.0]
    monkeypatch.setattr(server_mixin, "time", SimpleNamespace(time=lambda: store_at[0]))  # the store's TIME
    settings = config.Settings(baseline_window=10, baseline_min_samples=5, baseline_max_cohorts=2)
    client = fakeredis.FakeRedis()
    ahead = fleet.FleetBaselines(client, settings, clock=lambda: store_at[0] + TEN_MINUTES)
    on_time = fleet.FleetBaselines(client, settings, clock=lambda: store_at[0])

    def cohort(model: str) -> Cohort:
        return Cohort(model, "535", "pciebw", "h2d_gbps")

    # A judges first (its baseline read carries the store's TIME), then its task writes the figures
    ahead.baselines([cohort("A")], 5)

    def no_round_trip() -> None:
        raise AssertionError("the figures' write asked the store's clock in a round trip of its own")

    monkeypatch.setattr(client, "time", no_round_trip)
    pipe = client.pipeline(transaction=True)
    assert ahead.queue_add(pipe, [Sample("0", cohort("A"), 50.0)])
    ahead.added(pipe.execute()[-1])
    monkeypatch.undo()
    monkeypatch.setattr(server_mixin, "time", SimpleNamespace(time=lambda: store_at[0]))
    for model in ("B", "C"):  # B's worker writes figures with no baseline read before (a process's first add)
        store_at[0] += 60
        on_time.add([Sample("0", cohort(model), 50.0)])
    assert [e["model"] for e in on_time.all()] == ["B", "C"]
    scores = {decoded(k): s for k, s in client.zrange(fleet.INDEX, 0, -1, withscores=True)}
    assert scores == {"B|535|pciebw|h2d_gbps": 1_000_060.0, "C|535|pciebw|h2d_gbps": 1_000_120.0}
