"""Issue 5's scenarios end to end: API -> worker task -> cluster seam (FakeCluster), store in fakeredis.

busy GPUs -> no Job; free GPUs -> TESTING, a Job, then PASS_<ts>, or ERR_<ts> + annotation + EVICT
for a fatal category; Job creation refused -> the node leaves TESTING; a periodic pass after EVICT
leaves EVICT; a worker restart mid-Job ends TESTING; the clear endpoint needs the token.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

import autopilot.checks  # noqa: F401 - registers the real checks
from api.app import create_app
from autopilot import config, invasive
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status, utc_now_iso
from autopilot.testing import FakeClock, FakeCluster, FakeGpu, FakeRunner, FakeTelemetry
from workers import invasive_flow, tasks
from workers.dispatch import Envelope, FakeDispatcher
from workers.host import NodeHost
from workers.store import NodeRecord, ResultsStore

NODE = "gpu-1"
NS = "autopilot"
JOB = invasive.job_name(NODE)
TOKEN = "s3cret-token"
GPUHEALTH = "autopilot.ibm.com/gpuhealth"
LEVEL3 = "autopilot.ibm.com/dcgm.level.3"
LEVEL3_AT = utc_now_iso(datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1))


class HookClock(FakeClock):
    """A manual clock whose sleep lets the test act (finish the Job) while the worker waits."""

    def __init__(self) -> None:
        # Real now: the API and the reconcile judge freshness against the wall clock, so results
        # stamped by a clock stuck on a fixed date would go stale once that date is 3 h past.
        super().__init__(datetime.now(UTC))
        self.on_sleep: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.on_sleep()


def dcgm_json(status: str) -> str:
    results = [{"entity_group": "GPU", "entity_group_id": 1, "entity_id": i, "status": status} for i in range(2)]
    return json.dumps(
        {
            "DCGM Diagnostic": {
                "test_categories": [{"category": "Hardware", "tests": [{"name": "pcie", "results": results}]}]
            }
        }
    )


def pod_log(status: Status, *, fatal: bool = False) -> str:
    result = CheckResult(
        "dcgm",
        status,
        "pcie failed on GPU 1" if status is Status.FAIL else "all tests pass",
        node=NODE,
        fatal=fatal,
        params={"r": 3},
        # After any eviction the test makes, and within the hours a result stays fresh: a stamp further
        # ahead of the reconcile's (wall) clock is placed nowhere and is no fresh result.
        started_at=LEVEL3_AT,
        data={"failure_string": "pcie.1"} if status is Status.FAIL else {},
    )
    return json.dumps({"node": NODE, "results": [result.to_dict()]})


@dataclasses.dataclass
class World:
    client: FlaskClient
    store: ResultsStore
    cluster: FakeCluster
    clock: HookClock
    host: NodeHost
    sent: FakeDispatcher

    def run(self, checks: list[str], params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"checks": checks, "hosts": [NODE], "params": params or {}, "deadline": 30}
        created = self.client.post("/api/v1/runs", json=body, headers=auth())
        assert created.status_code == 202, created.get_json()
        answer = self.client.get(f"/api/v1/runs/{created.get_json()['id']}?wait=5", headers=auth())
        return answer.get_json()  # type: ignore[no-any-return]

    def labels(self) -> dict[str, str]:
        return dict(self.cluster.get_node(NODE).labels)

    def verdict(self) -> str:
        return self.store.state(NODE).verdict or ""


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def world() -> World:
    settings = config.Settings(
        node_name=NODE,
        api_token=TOKEN,
        image="registry.example/autopilot:test",
        periodic_checks=("dcgm",),
        cluster="on",
    )
    store = ResultsStore(fakeredis.FakeRedis())
    clock = HookClock()
    # The API server's clock agrees with the worker's here: the Job's age is judged on the server's (its stamps
    # and Date), so a wait the test drives through the worker's sleeps moves the server's clock too.
    cluster = FakeCluster(clock=clock)
    cluster.add_node(NODE, {"nvidia.com/gpu.present": "true", "team": "ml"}, gpus=2)
    runner = FakeRunner()
    runner.add(["dcgmi", "diag", "-r", "1", "-j"], dcgm_json("Pass"))
    ctx = CheckContext(
        NODE, settings, runner, FakeTelemetry([FakeGpu(), FakeGpu()]), clock, cluster=cluster, checks=shipped_checks()
    )
    host = NodeHost(settings, store, {NODE: ctx})
    store.heartbeat(NodeRecord(NODE, last_seen=time.time()))

    def worker(env: Envelope) -> None:  # the worker task body, run inline
        tasks.run_checks(
            host, run_id=env.run_id, node=env.node, checks=env.checks, params=env.params, deadline=env.deadline
        )

    sent = FakeDispatcher(on_send=worker)
    app = create_app(settings, store=store, dispatcher=sent, cluster=cluster)
    return World(app.test_client(), store, cluster, clock, host, sent)


def dcgm_result(report: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in report["nodes"][NODE]["results"] if r["check"] == "dcgm")


def test_busy_gpus_start_no_job(world: World) -> None:
    world.cluster.add_pod("ml", "trainer-0", NODE, gpus=2)
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    result = dcgm_result(report)
    assert result["status"] == "skipped" and "trainer-0" in result["summary"]
    assert world.cluster.jobs == {}
    assert world.labels().get(GPUHEALTH) != "TESTING"


def test_free_gpus_testing_then_pass(world: World) -> None:
    seen: list[tuple[str, str | None]] = []

    def finish() -> None:
        seen.append((world.verdict(), world.labels().get(GPUHEALTH)))
        world.cluster.finish_job(NS, JOB, succeeded=True, log=pod_log(Status.OK))

    world.clock.on_sleep = finish
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert seen[0] == ("TESTING", "TESTING")  # held while the Job ran
    manifest = world.cluster.job_manifests[(NS, JOB)]
    requests = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert requests["nvidia.com/gpu"] == "2"  # the node's allocatable count, not a fixed 8
    assert dcgm_result(report)["status"] == "ok"
    labels = world.labels()
    assert labels[LEVEL3].startswith("PASS_" + LEVEL3_AT.replace("T", "_").replace(":", ".").replace("Z", "UTC"))
    assert labels[GPUHEALTH] == "PASS"
    assert world.store.state(NODE).testing_since is None


def test_fatal_level3_failure_evicts_and_a_periodic_pass_keeps_it(world: World) -> None:
    world.clock.on_sleep = lambda: world.cluster.finish_job(
        NS, JOB, succeeded=False, exit_code=1, log=pod_log(Status.FAIL, fatal=True)
    )
    world.run(["dcgm"], {"dcgm": {"r": 3}})
    node = world.cluster.get_node(NODE)
    assert node.labels[LEVEL3].startswith("ERR_")
    assert node.annotations[LEVEL3 + ".output"] == "pcie.1"
    assert node.labels[GPUHEALTH] == "EVICT" and world.verdict() == "EVICT"
    condition = node.condition("autopilot.ibm.com/GpuHealth")
    assert condition is not None and condition.status == "False"
    # a later periodic level-1 pass does not lift EVICT
    periodic = world.run(["dcgm"], {"dcgm": {"r": 1}})
    assert dcgm_result(periodic)["status"] == "ok"
    assert world.labels()[GPUHEALTH] == "EVICT"
    # clearing needs the token ...
    assert world.client.post(f"/api/v1/nodes/{NODE}/clear").status_code == 401
    # ... and with it, the fresh periodic pass decides
    cleared = world.client.post(f"/api/v1/nodes/{NODE}/clear", headers=auth())
    assert cleared.status_code == 200, cleared.get_json()
    assert world.labels()[GPUHEALTH] == "PASS"


def test_refused_job_leaves_testing(world: World) -> None:
    world.cluster.fail_next("create_job", 403)
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    result = dcgm_result(report)
    assert result["status"] == "error" and "refused" in result["summary"]
    assert world.store.state(NODE).testing_since is None
    assert world.labels()[GPUHEALTH] != "TESTING"


def test_an_api_server_away_for_longer_than_the_retries_does_not_end_the_watch(world: World) -> None:
    """An API server restart (or APF's 429s) outlasting the seam's retries mid-run: the Job runs on, and its result
    is read once the server is back. Before, the Transient ended the task with no result stored."""
    sleeps = [0]

    def api_away_then_job_done() -> None:
        sleeps[0] += 1
        if sleeps[0] == 1:
            world.cluster.fail_next("get_job", 503, times=world.cluster.retry.attempts)
        elif sleeps[0] == 2:
            world.cluster.finish_job(NS, JOB, succeeded=True, log=pod_log(Status.OK))

    world.clock.on_sleep = api_away_then_job_done
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert dcgm_result(report)["status"] == "ok"
    assert world.labels()[GPUHEALTH] == "PASS" and world.store.state(NODE).testing_since is None


def test_a_finished_jobs_log_unreadable_past_the_retries_is_read_at_the_next_poll(world: World) -> None:
    """The API server away just as the Job is read complete: its pass is read once the server is back. Before, the
    unread log made the run an error and the Job (with the only copy of its result) was deleted."""
    sleeps = [0]

    def job_done_then_log_unreadable() -> None:
        sleeps[0] += 1
        if sleeps[0] == 1:
            world.cluster.finish_job(NS, JOB, succeeded=True, log=pod_log(Status.OK))
            world.cluster.fail_next("pod_log", 503, times=world.cluster.retry.attempts)

    world.clock.on_sleep = job_done_then_log_unreadable
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert dcgm_result(report)["status"] == "ok"
    assert world.labels()[GPUHEALTH] == "PASS" and (NS, JOB) not in world.cluster.jobs


def test_a_job_the_api_refuses_to_show_ends_the_run_as_an_error(world: World) -> None:
    world.clock.on_sleep = lambda: world.cluster.fail_next("get_job", 403)
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    result = dcgm_result(report)
    assert result["status"] == "error" and "could not be read" in result["summary"] and "403" in result["summary"]
    assert world.store.state(NODE).testing_since is None


def test_a_job_whose_pods_the_api_refuses_to_list_is_deleted_when_the_run_ends(world: World) -> None:
    """A refusal mid-watch (403 on the Job's pods) ends the run and TESTING: the Job, which the worker may still
    delete, must not hold the node's GPUs for up to its hour-long deadline with nobody reading its result."""
    world.clock.on_sleep = lambda: world.cluster.fail_next("job_pods", 403)
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert dcgm_result(report)["status"] == "error"
    assert (NS, JOB) not in world.cluster.jobs
    assert world.cluster.job_pods(NS, JOB) == []


def test_a_job_made_although_its_create_went_unanswered_is_deleted_as_the_run_ends(world: World) -> None:
    """The server made the Job but its answer was lost (a 504), and the retries met no server: the run ends as an
    error and TESTING with it, so the Job, unwatched, must not go on holding the node's GPUs."""
    world.cluster.fail_next("create_job", 504, applied=True)
    world.cluster.fail_next("create_job", 503, times=world.cluster.retry.attempts - 1)
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert dcgm_result(report)["status"] == "error"
    assert world.store.state(NODE).testing_since is None
    assert (NS, JOB) not in world.cluster.jobs


def test_admission_failure_ends_testing(world: World) -> None:
    world.clock.on_sleep = lambda: world.cluster.refuse_job_pod(NS, JOB, "exceeded quota: gpu-quota")
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    result = dcgm_result(report)
    assert result["status"] == "error" and "quota" in result["summary"]
    assert world.labels()[GPUHEALTH] != "TESTING"


QUOTA_BUSY = (
    'Error creating: pods "autopilot-dcgm3-gpu-1-x1" is forbidden: exceeded quota: gpu-quota, requested: '
    "requests.nvidia.com/gpu=2, used: requests.nvidia.com/gpu=2, limited: requests.nvidia.com/gpu=2"
)


def test_a_quota_refusal_that_clears_within_the_wait_holds_testing_and_the_run_passes(world: World) -> None:
    """Another team's pods hold the GPUs the namespace's quota allows; they end, the controller's next try makes the
    pod. Before, the first poll after the refusal ended the run as an error."""
    sleeps = [0]

    def refused_then_cleared() -> None:
        sleeps[0] += 1
        if sleeps[0] == 1:
            world.cluster.refuse_job_pod(NS, JOB, QUOTA_BUSY)
        elif sleeps[0] == 2:
            assert world.labels()[GPUHEALTH] == "TESTING"  # held while it waits
        elif sleeps[0] == 4:
            world.cluster.admit_job_pod(NS, JOB)
        elif sleeps[0] == 5:
            world.cluster.finish_job(NS, JOB, succeeded=True, log=pod_log(Status.OK))

    world.clock.on_sleep = refused_then_cleared
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert dcgm_result(report)["status"] == "ok"
    assert world.labels()[GPUHEALTH] == "PASS" and world.store.state(NODE).testing_since is None


def test_a_quota_refusal_that_never_clears_ends_the_run_after_the_wait_naming_it(world: World) -> None:
    started = world.clock.monotonic()
    world.clock.on_sleep = lambda: world.cluster.refuse_job_pod(NS, JOB, QUOTA_BUSY)
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    result = dcgm_result(report)
    assert result["status"] == "error" and "exceeded quota: gpu-quota" in result["summary"]
    assert "still refused" in result["summary"]
    waited = world.clock.monotonic() - started
    wait = world.host.settings.invasive_admission_wait_s
    assert wait <= waited <= wait + 2 * invasive_flow.POLL_S  # the bound, not the Job's hour-long deadline
    assert world.store.state(NODE).testing_since is None and (NS, JOB) not in world.cluster.jobs


def test_worker_restart_mid_job_resumes_and_ends_testing(world: World) -> None:
    # a previous worker set TESTING and created the Job, then died
    world.store.set_state(NODE, {"testing_since": "2026-11-29T22:00:00Z", "testing_job": JOB})
    world.cluster.create_job(NS, invasive.job_spec(NODE, 2, world.host.settings))
    world.clock.on_sleep = lambda: world.cluster.finish_job(NS, JOB, succeeded=True, log=pod_log(Status.OK))
    invasive_flow.resume(world.host, NODE, world.cluster)
    assert world.store.state(NODE).testing_since is None
    assert world.store.latest(NODE)["dcgm"].status is Status.OK
    # and a Job that vanished while nobody watched ends TESTING with an error
    world.store.set_state(NODE, {"testing_since": "2026-11-29T22:00:00Z", "testing_job": JOB})
    invasive_flow.resume(world.host, NODE, world.cluster)
    assert world.store.state(NODE).testing_since is None
    assert world.store.latest(NODE)["dcgm"].status is Status.ERROR


def test_one_job_per_node_whoever_asks(world: World) -> None:
    world.cluster.create_job(NS, invasive.job_spec(NODE, 2, world.host.settings))
    world.clock.on_sleep = lambda: world.cluster.finish_job(NS, JOB, succeeded=True, log=pod_log(Status.OK))
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    assert dcgm_result(report)["status"] == "ok"
    assert len(world.cluster.jobs) <= 1
    creates = [w for w in world.cluster.writes if w[0] == "create_job"]
    assert len(creates) == 1  # the test's own; the second asker watched the running Job


@pytest.mark.parametrize("fate", ["suspended", "preempted", "lost node"])
def test_a_run_the_cluster_never_let_finish_is_an_error_a_warn_never_a_pass_or_eviction_and_testing_ends(
    world: World, fate: str
) -> None:
    """Kueue holding the Job, a higher-priority pod preempting it, its node lost: DCGM could not run to its end. The
    result is an error (the node WARN, not PASS, not EVICT), and TESTING ends within the admission wait, not the
    Job's hour-long deadline."""
    started = world.clock.monotonic()

    def cluster_acts() -> None:
        if (NS, JOB) not in world.cluster.jobs:
            return
        if world.cluster.jobs[(NS, JOB)].finished:
            if fate == "lost node":  # every read of its log meets the API server's 500, for as long as it is asked
                world.cluster.fail_next("pod_log", 500, times=world.cluster.retry.attempts)
            return
        if fate == "suspended":
            if not world.cluster.jobs[(NS, JOB)].suspended:
                world.cluster.suspend_job(NS, JOB)
        elif fate == "preempted":
            preempt = ("PreemptionByScheduler", "default-scheduler: preempting to accommodate a higher priority pod")
            world.cluster.kill_job_pod(NS, JOB, disruption=preempt)
        else:
            taint = ("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")
            world.cluster.kill_job_pod(NS, JOB, phase="Running", disruption=taint)
            world.cluster.fail_next("pod_log", 500, times=world.cluster.retry.attempts)

    world.clock.on_sleep = cluster_acts
    report = world.run(["dcgm"], {"dcgm": {"r": 3}})
    result = dcgm_result(report)
    assert result["status"] == "error" and not result["fatal"]
    assert world.labels()[GPUHEALTH] == "WARN" and world.verdict() == "WARN"
    assert world.store.state(NODE).testing_since is None and (NS, JOB) not in world.cluster.jobs
    assert world.clock.monotonic() - started <= world.host.settings.invasive_admission_wait_s + 2 * invasive_flow.POLL_S
