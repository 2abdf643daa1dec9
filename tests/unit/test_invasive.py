"""The invasive DCGM level-3 Job: GPU availability, the Job spec, start and poll, on both backends."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from autopilot import cluster, errors, invasive, remediation, results
from autopilot.cluster import JobInfo, NodeInfo
from autopilot.config import Settings
from autopilot.invasive import JobState, StartState
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeClock
from tests.unit.cluster_standin import Backend, make_backend
from workers import invasive_flow

NS = "autopilot"
SETTINGS = Settings(node_name="gpu-1", image="quay.io/autopilot/autopilot:v1", invasive_job_ttl_s=45)
JOB = "autopilot-dcgm3-gpu-1"


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param, FakeClock())


def log_with(result: CheckResult) -> str:
    doc = json.dumps({"node": "gpu-1", "results": [result.to_dict()]}, indent=2)
    return f"2026-11-29 22:00:00 INFO starting dcgm\n{doc}\nwarning: something on stderr\n"


PASSED = CheckResult(
    "dcgm", Status.OK, "all tests pass", node="gpu-1", params={"r": 3}, started_at="2026-11-29T22:00:00Z"
)
FATAL = dataclasses.replace(PASSED, status=Status.FAIL, fatal=True, summary="pcie failed on GPU 3")


# ---------------------------------------------------------------- pure parts


def test_job_name_is_deterministic_and_fits_a_label() -> None:
    assert invasive.job_name("gpu-1") == JOB
    long = "node-" + "x" * 80 + ".cluster.example.com"
    name = invasive.job_name(long)
    assert len(name) <= 63 and name == invasive.job_name(long) and name.startswith("autopilot-dcgm3-node-x")
    assert invasive.job_name("a.b") != invasive.job_name("a-b")


def test_job_spec() -> None:
    spec = invasive.job_spec("gpu-1", 4, SETTINGS)
    assert spec["metadata"]["name"] == JOB and spec["metadata"]["namespace"] == "autopilot"
    assert spec["metadata"]["annotations"] == {"autopilot.ibm.com/node": "gpu-1"}
    job = spec["spec"]
    # INVASIVE_JOB_TTLSEC=45 is below the floor: the Job outlives the worker's polls (next test)
    assert (job["backoffLimit"], job["ttlSecondsAfterFinished"], job["activeDeadlineSeconds"]) == (0, 300, 3600)
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term == {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-1"]}]}
    assert "nodeName" not in pod  # the scheduler, taints and quotas apply
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [main] = pod["containers"]
    assert [main["command"][0], *main["args"]] == ["autopilot", "run", "dcgm", "--param", "r=3", "--json"]
    assert main["image"] == "quay.io/autopilot/autopilot:v1"
    assert main["resources"] == {
        "requests": {"cpu": "100m", "memory": "512Mi", "nvidia.com/gpu": "4"},
        "limits": {"nvidia.com/gpu": "4"},
    }
    assert main["securityContext"]["allowPrivilegeEscalation"] is False


def test_job_spec_overrides() -> None:
    tol = [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}]
    spec = invasive.job_spec("gpu-1", 8, SETTINGS, image="img:2", tolerations=tol, ttl_s=900, deadline_s=600)
    pod = spec["spec"]["template"]["spec"]
    assert pod["tolerations"] == tol and pod["containers"][0]["image"] == "img:2"
    assert (spec["spec"]["ttlSecondsAfterFinished"], spec["spec"]["activeDeadlineSeconds"]) == (900, 600)
    assert invasive.job_spec("gpu-1", 8, SETTINGS, ttl_s=0)["spec"]["ttlSecondsAfterFinished"] == invasive.MIN_JOB_TTL_S


def test_result_is_read_from_a_log_with_other_lines() -> None:
    found = invasive.parse_result_log(log_with(FATAL), "gpu-1")
    assert found is not None and found.status is Status.FAIL and found.fatal and found.params["r"] == 3
    assert invasive.parse_result_log("Traceback (most recent call last):\n  boom\n") is None
    assert invasive.parse_result_log('{"not": "a result"}\n{broken') is None


# ---------------------------------------------------------------- start


def test_busy_gpus_mean_no_job(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    backend.control.add_pod("team", "train-0", "gpu-1", gpus=8)
    assert invasive.gpus_free(backend.client, "gpu-1") == (False, "GPUs in use by team/train-0 (8 GPU, Running)")
    outcome = invasive.start(backend.client, "gpu-1", SETTINGS)
    assert outcome.state is StartState.BUSY and not outcome.testing and outcome.result is None
    assert backend.client.gpu_pods_on_node("gpu-1")[0].name == "train-0"
    with pytest.raises(Exception, match="not found"):
        backend.client.get_job(NS, JOB)


def test_a_node_without_gpus_is_not_tested(backend: Backend) -> None:
    backend.control.add_node("cpu-1")
    assert invasive.start(backend.client, "cpu-1", SETTINGS).state is StartState.NO_GPUS


def test_free_gpus_start_one_job_with_the_allocatable_count(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=4)
    backend.control.add_pod("team", "done", "gpu-1", gpus=4, phase="Succeeded")
    seen: list[bool] = []

    def mark_testing() -> None:  # the worker sets TESTING here; the Job must not exist yet
        seen.append(any(p.name.startswith(JOB) for p in backend.control.pods(NS)))

    outcome = invasive.start(backend.client, "gpu-1", SETTINGS, before_create=mark_testing)
    assert outcome.state is StartState.STARTED and outcome.testing and seen == [False]
    [pod] = backend.client.job_pods(NS, JOB)
    assert (pod.node, pod.gpus) == ("gpu-1", 4)
    again = invasive.start(backend.client, "gpu-1", SETTINGS)
    assert again.state is StartState.ALREADY_RUNNING and again.job_name == JOB


def test_a_finished_job_not_yet_collected_counts_as_running(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    invasive.start(backend.client, "gpu-1", SETTINGS)
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.ALREADY_RUNNING  # 409
    assert invasive.poll(backend.client, JOB, namespace=NS).state is JobState.SUCCEEDED


def test_refused_creation_ends_with_an_error_result(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    backend.control.fail_next("create_job", 403)
    outcome = invasive.start(backend.client, "gpu-1", SETTINGS)
    assert outcome.state is StartState.REFUSED and not outcome.testing
    assert outcome.result is not None and outcome.result.status is Status.ERROR
    assert outcome.result.params == {"r": 3} and outcome.result.node == "gpu-1"


def test_no_image_refuses(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    outcome = invasive.start(backend.client, "gpu-1", dataclasses.replace(SETTINGS, image=""))
    assert outcome.state is StartState.REFUSED and "AUTOPILOT_IMAGE" in outcome.reason


# ---------------------------------------------------------------- poll


def started(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.STARTED


def gone(backend: Backend) -> bool:
    try:
        backend.client.get_job(NS, JOB)
    except Exception:
        return True
    return False


def test_running_then_passed(backend: Backend) -> None:
    started(backend)
    running = invasive.poll(backend.client, JOB, namespace=NS)
    assert running.state is JobState.RUNNING and not running.finished and running.result is None
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.SUCCEEDED and done.node == "gpu-1"
    assert done.result is not None and done.result.status is Status.OK and done.result.params["r"] == 3
    assert gone(backend)


def test_a_finished_jobs_result_is_still_read_after_missed_polls_whatever_the_ttl_setting(backend: Backend) -> None:
    # INVASIVE_JOB_TTLSEC=0 (what upstream made of a value that is no number): before, the Job asked for that TTL and
    # the TTL-after-finished controller deleted it with its pod, log included, as it finished, before the worker's
    # next poll (every 10 s) read the result: every level-3 run ended GONE, an error, and no node ever passed one.
    backend.control.add_node("gpu-1", gpus=8)
    settings = dataclasses.replace(SETTINGS, invasive_job_ttl_s=0)
    assert invasive.start(backend.client, "gpu-1", settings).state is StartState.STARTED
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    assert backend.control.expire_finished_jobs(6 * invasive_flow.POLL_S) == []  # a minute of polls missed
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.SUCCEEDED and done.result is not None and done.result.status is Status.OK


def test_a_job_its_ttl_removed_before_the_worker_read_it_is_gone_as_an_error(backend: Backend) -> None:
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    assert backend.control.expire_finished_jobs(invasive.MIN_JOB_TTL_S) == [JOB]
    assert backend.control.pods(NS) == []  # its pod (and log) went with it
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.GONE and done.result is not None and done.result.status is Status.ERROR


def test_a_failing_dcgm_exits_non_zero_and_its_finding_is_kept(backend: Backend) -> None:
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=False, log=log_with(FATAL), exit_code=1)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.FAILED
    assert done.result is not None and done.result.status is Status.FAIL and done.result.fatal


def test_a_crash_without_a_result_is_an_error(backend: Backend) -> None:
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=False, log="Traceback: boom\n", exit_code=2)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.FAILED
    assert done.result is not None and done.result.status is Status.ERROR and "no DCGM result" in done.result.summary


@pytest.mark.parametrize("interim", [False, True])
def test_a_failed_job_whose_log_reads_ok_is_an_error_naming_the_failure_not_a_pass(
    backend: Backend, interim: bool
) -> None:
    # The pod exited 1 and the controller failed the Job, yet the log holds an ok dcgm result (a crash after
    # printing, a wrapper's own exit code). Before, that ok was stored: a wrong PASS, clearing an EVICT.
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=False, log=log_with(PASSED), exit_code=1, interim=interim)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.FAILED and done.result is not None
    assert done.result.status is Status.ERROR and done.result.params["r"] == 3
    assert "BackoffLimitExceeded" in done.result.summary and "exit code 1" in done.result.summary
    assert "its log reads ok: all tests pass" in done.result.summary


def test_a_failed_job_whose_log_reads_warn_keeps_the_warning(backend: Backend) -> None:
    # autopilot run exits 1 for a warn as for a fail: the Job fails, and the finding is what it found.
    started(backend)
    warned = dataclasses.replace(PASSED, status=Status.WARN, summary="diagnostic warning on GPU 2")
    backend.control.finish_job(NS, JOB, succeeded=False, log=log_with(warned), exit_code=1)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.result is not None and done.result.status is Status.WARN
    assert done.result.summary == "diagnostic warning on GPU 2"


@pytest.mark.parametrize(("log", "status"), [(FATAL, Status.FAIL), (PASSED, Status.ERROR)])
def test_a_job_past_its_deadline_keeps_a_failing_test_its_log_shows_and_never_passes(
    backend: Backend, log: CheckResult, status: Status
) -> None:
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=False, log=log_with(log), exit_code=1)
    backend.control.job_past_deadline(NS, JOB)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.DEADLINE_EXCEEDED and done.result is not None
    assert done.result.status is status and done.result.fatal is (status is Status.FAIL)
    if status is Status.ERROR:
        assert "did not finish before its deadline" in done.result.summary


@pytest.mark.parametrize("how", ["rejected", "unschedulable", "refused"])
def test_pod_admission_failures_end_the_job(backend: Backend, how: str) -> None:
    started(backend)
    if how == "rejected":
        backend.control.reject_job_pod(NS, JOB, "UnexpectedAdmissionError", "Allocate failed: requested 8, have 4")
    elif how == "unschedulable":
        backend.control.unschedulable_job_pod(NS, JOB, "0/3 nodes are available: 1 Insufficient nvidia.com/gpu.")
    else:
        backend.control.refuse_job_pod(NS, JOB, "exceeded quota: gpu-quota")
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.ADMISSION_FAILED and done.finished
    assert done.result is not None and done.result.status is Status.ERROR
    assert gone(backend)  # deleted, so a pending pod can never start later


# What the Job controller's FailedCreate says when ResourceQuota refuses the pod on usage: other pods hold the GPUs
# the quota allows, and it clears as they end (the controller retries with backoff).
QUOTA_BUSY = (
    'Error creating: pods "autopilot-dcgm3-gpu-1-x1" is forbidden: exceeded quota: gpu-quota, requested: '
    "requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu={used}, limited: requests.nvidia.com/gpu=12"
)


def at(backend: Backend, seconds: float) -> datetime:
    """The cluster's clock moved to ``seconds`` after the Job was made (as the API server stamped it); the worker's
    clock, returned, agrees with it."""
    when = results.parse_iso(backend.client.get_job(NS, JOB).created_at) + timedelta(seconds=seconds)
    backend.clock.advance((when - backend.clock.now()).total_seconds())
    return when


def test_a_quota_refusal_that_clears_is_waited_through_and_the_run_goes_on(backend: Backend) -> None:
    # Before: the first poll after the refusal ended the run (ADMISSION_FAILED), though the controller's next try
    # would have made the pod once the other pods' GPUs were back.
    started(backend)
    backend.control.refuse_job_pod(NS, JOB, QUOTA_BUSY.format(used=8))
    waiting = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 20), admission_wait_s=300)
    assert waiting.state is JobState.RUNNING and "exceeded quota: gpu-quota" in waiting.reason
    assert not gone(backend)
    backend.control.admit_job_pod(NS, JOB)
    assert invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 60), admission_wait_s=300).state is (
        JobState.RUNNING
    )
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    done = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 900), admission_wait_s=300)
    assert done.state is JobState.SUCCEEDED and done.result is not None and done.result.status is Status.OK


@pytest.mark.parametrize(("wait", "deadline", "after"), [(300.0, 3600.0, 301.0), (300.0, 120.0, 121.0)])
def test_a_quota_refusal_that_does_not_clear_ends_at_the_bound_naming_the_last_refusal(
    backend: Backend, wait: float, deadline: float, after: float
) -> None:
    started(backend)
    backend.control.refuse_job_pod(NS, JOB, QUOTA_BUSY.format(used=8))
    backend.control.refuse_job_pod(NS, JOB, QUOTA_BUSY.format(used=6))
    kwargs = {"namespace": NS, "deadline_s": deadline, "admission_wait_s": wait}
    assert invasive.poll(backend.client, JOB, now=at(backend, after - 2), **kwargs).state is JobState.RUNNING
    done = invasive.poll(backend.client, JOB, now=at(backend, after), **kwargs)  # the bound, never past the deadline
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and "used: requests.nvidia.com/gpu=6" in done.result.summary
    assert "still refused" in done.result.summary
    assert gone(backend)


@pytest.mark.parametrize(
    "message",
    [
        # A validating webhook that did not answer (failurePolicy Fail): a 500, not its denial (a 403).
        'Error creating: Internal error occurred: failed calling webhook "validation.gatekeeper.sh": failed to call '
        'webhook: Post "https://gatekeeper-webhook-service.gatekeeper-system.svc:443/v1/admit?timeout=3s": context '
        "deadline exceeded",
        # Two pods charged to one quota at once: the quota's update conflicted (409); the next try goes through.
        'Error creating: Operation cannot be fulfilled on resourcequotas "gpu-quota": the object has been modified; '
        "please apply your changes to the latest version and try again",
    ],
)
def test_a_refusal_of_the_api_servers_own_trouble_is_waited_through_like_a_busy_quota(
    backend: Backend, message: str
) -> None:
    # Before: ended at the first poll (ADMISSION_FAILED), though the controller's next try makes the pod.
    started(backend)
    backend.control.refuse_job_pod(NS, JOB, message)
    waiting = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 20), admission_wait_s=300)
    assert waiting.state is JobState.RUNNING and not gone(backend)
    done = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 301), admission_wait_s=300)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and "still refused" in done.result.summary


@pytest.mark.parametrize(
    "message",
    [
        'Error creating: pods "p" is forbidden: failed quota: compute: must specify limits.memory for: main',
        'Error creating: pods "p" is forbidden: admission webhook "gpu-policy.example.com" denied the request: no',
        'Error creating: pods "p" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true',
        'Error creating: Pod "p" is invalid: spec.containers[0].resources.requests: Invalid value: "512Mi": must be '
        "less than or equal to memory limit of 256Mi",
        # The pod alone asks for more than the quota allows: no other pod's end frees that.
        'Error creating: pods "p" is forbidden: exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=8, '
        "used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=4",
    ],
)
def test_a_refusal_that_never_clears_ends_the_run_at_the_first_poll_whatever_the_wait(
    backend: Backend, message: str
) -> None:
    started(backend)
    backend.control.refuse_job_pod(NS, JOB, message)
    done = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 10), admission_wait_s=300)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and message in done.result.summary


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_the_job_meets_a_namespace_enforcing_pod_security(backend: Backend, level: str) -> None:
    backend.control.label_namespace(NS, {"pod-security.kubernetes.io/enforce": level})
    started(backend)
    assert [p.node for p in backend.client.job_pods(NS, JOB)] == ["gpu-1"]
    assert backend.client.job_events(NS, JOB) == []


def test_a_job_pod_refused_by_pod_security_ends_the_run_as_an_error_naming_it(backend: Backend) -> None:
    """The PodSecurity plugin admits a Job and refuses its pod: no pod ever starts, only FailedCreate Events."""
    backend.control.label_namespace(NS, {"pod-security.kubernetes.io/enforce": "restricted"})
    backend.control.add_node("gpu-1", gpus=8)
    manifest = invasive.job_spec("gpu-1", 8, SETTINGS)
    del manifest["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    backend.client.create_job(NS, manifest)
    assert backend.client.job_pods(NS, JOB) == []
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and 'violates PodSecurity "restricted:latest"' in done.result.summary
    assert gone(backend)


def test_the_job_meets_a_namespace_whose_quota_tracks_cpu_and_memory_requests(backend: Backend) -> None:
    """A compute ResourceQuota refuses a pod that does not say what it tracks; before, the Job asked for GPUs only,
    so every level-3 run in such a namespace ended in FailedCreate."""
    backend.control.set_resource_quota(NS, "compute", ["requests.cpu", "requests.memory", "requests.nvidia.com/gpu"])
    started(backend)
    assert [p.node for p in backend.client.job_pods(NS, JOB)] == ["gpu-1"]
    assert backend.client.job_events(NS, JOB) == []


def test_a_job_pod_refused_by_a_quota_ends_the_run_as_an_error_naming_it(backend: Backend) -> None:
    backend.control.set_resource_quota(NS, "compute", ["limits.memory"])  # no limit: the diagnostics are not capped
    started(backend)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR
    assert "failed quota: compute: must specify limits.memory for: main" in done.result.summary
    assert gone(backend)


def test_a_limit_range_whose_default_memory_limit_is_below_the_request_ends_the_run_naming_what_to_set(
    backend: Backend,
) -> None:
    """LimitRanger gives the container (which sets no memory limit) the namespace's default, 256Mi; validation then
    refuses its 512Mi request. Before, the error repeated the API's words only: nothing said a LimitRange did it."""
    backend.control.set_limit_range(NS, "mem-defaults", {"memory": "256Mi", "cpu": "1"})
    started(backend)
    assert backend.client.job_pods(NS, JOB) == []
    done = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 10), admission_wait_s=300)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    summary = done.result.summary
    assert done.result.status is Status.ERROR
    assert 'Invalid value: "512Mi": must be less than or equal to memory limit of 256Mi' in summary
    assert f"a LimitRange in namespace {NS} gives its container a default memory limit below its memory request" in (
        summary
    )
    assert "default memory limit (and max) to at least 512Mi" in summary
    assert gone(backend)


def test_a_limit_range_at_or_above_the_requests_admits_the_job(backend: Backend) -> None:
    backend.control.set_limit_range(NS, "defaults", {"memory": "512Mi", "cpu": "100m"})
    started(backend)
    assert [p.node for p in backend.client.job_pods(NS, JOB)] == ["gpu-1"]


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (  # before Kubernetes 1.8
            'Error creating: Pod "p" is invalid: spec.containers[0].resources.limits: Invalid value: "50m": must be '
            "greater than or equal to cpu request",
            "default cpu limit (and max) to at least 100m",
        ),
        (
            'Error creating: pods "p" is forbidden: minimum memory usage per Container is 1Gi, but request is 512Mi',
            "let its Container min/max memory admit 512Mi",
        ),
    ],
)
def test_other_limit_range_refusals_name_it_too(backend: Backend, message: str, words: str) -> None:
    started(backend)
    backend.control.refuse_job_pod(NS, JOB, message)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert message in done.result.summary and words in done.result.summary and "a LimitRange" in done.result.summary


def test_deadline(backend: Backend) -> None:
    started(backend)
    backend.control.job_past_deadline(NS, JOB)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.DEADLINE_EXCEEDED and done.result is not None
    assert done.result.status is Status.ERROR


def test_a_job_that_vanished_ends_in_an_error(backend: Backend) -> None:
    done = invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1")
    assert done.state is JobState.GONE and done.result is not None
    assert done.result.status is Status.ERROR and done.result.node == "gpu-1"


# A 1.31+ Job controller writes FailureTarget / SuccessCriteriaMet first and Failed / Complete only once the
# pods are gone (a pod stuck terminating on a sick node can take long); the first word already decides.


def test_a_job_marked_failure_target_is_over(backend: Backend) -> None:
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=False, log=log_with(FATAL), exit_code=1, interim=True)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.FAILED  # before: RUNNING until the Failed condition came
    assert done.result is not None and done.result.status is Status.FAIL and done.result.fatal


def test_a_job_marked_success_criteria_met_is_over(backend: Backend) -> None:
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED), interim=True)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.SUCCEEDED and done.result is not None and done.result.status is Status.OK


def test_a_deadline_failure_target_is_a_deadline(backend: Backend) -> None:
    started(backend)
    backend.control.job_past_deadline(NS, JOB, interim=True)
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.DEADLINE_EXCEEDED and done.result is not None


# ---------------------------------------------------------------- a Job made again under its name


def test_pods_of_an_earlier_job_of_the_same_name_are_not_this_runs(backend: Backend) -> None:
    # before: job_pods selected by the job-name label alone, so the first run's pod, deleted in the
    # background and not yet collected, was read as the second run's: its DeadlineExceeded ended the
    # new run as an admission failure, and a stale log could stand for the new run's result
    backend.control.add_node("gpu-1", gpus=8)
    backend.control.pause_gc()
    invasive.start(backend.client, "gpu-1", SETTINGS)
    backend.control.job_past_deadline(NS, JOB)
    assert invasive.poll(backend.client, JOB, namespace=NS).state is JobState.DEADLINE_EXCEEDED  # and deleted
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.STARTED
    assert invasive.poll(backend.client, JOB, namespace=NS).state is JobState.RUNNING
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    done = invasive.poll(backend.client, JOB, namespace=NS)
    assert done.state is JobState.SUCCEEDED and done.result is not None and done.result.status is Status.OK
    assert len([p for p in backend.control.pods(NS) if p.name.startswith(JOB)]) == 2  # both pods still there
    backend.control.collect_garbage()
    assert not [p for p in backend.control.pods(NS) if p.name.startswith(JOB)]


def test_events_of_an_earlier_job_of_the_same_name_are_not_this_runs(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    invasive.start(backend.client, "gpu-1", SETTINGS)
    backend.control.refuse_job_pod(NS, JOB, 'pods "x" is forbidden: exceeded quota')
    assert invasive.poll(backend.client, JOB, namespace=NS).state is JobState.ADMISSION_FAILED
    invasive.start(backend.client, "gpu-1", SETTINGS)
    job = backend.client.get_job(NS, JOB)
    assert [e.reason for e in backend.client.job_events(NS, JOB)] == ["FailedCreate"]  # the first Job's
    assert backend.client.job_events(NS, JOB, job.uid) == []


# ---------------------------------------------------------------- on a node remediation holds


def _held(backend: Backend, *, cordon: bool, taint: bool) -> None:
    """gpu-1 as remediation leaves an EVICT node: ownership written, then cordoned and/or tainted."""
    backend.control.add_node("gpu-1", gpus=8)
    policy = remediation.Policy(cordon=cordon, taint=taint)
    the_plan = remediation.plan(policy, [backend.client.get_node("gpu-1")], {"gpu-1": remediation.Health("EVICT")})
    assert [a.kind for a in remediation.apply(backend.client, policy, the_plan)] == [remediation.Kind.APPLY]


@pytest.mark.parametrize(("cordon", "taint"), [(True, False), (False, True), (True, True)])
def test_the_level3_job_runs_on_the_node_remediation_holds(backend: Backend, cordon: bool, taint: bool) -> None:
    # before: the Job tolerated only the configured taints, so the scheduler kept it off the node remediation had
    # cordoned or tainted: the gate's level-3 run could never pass and the node was never given back
    _held(backend, cordon=cordon, taint=taint)
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.STARTED
    assert invasive.poll(backend.client, JOB, namespace=NS).state is JobState.RUNNING
    [pod] = backend.client.job_pods(NS, JOB)
    assert pod.node == "gpu-1" and not pod.unschedulable
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    assert invasive.poll(backend.client, JOB, namespace=NS).state is JobState.SUCCEEDED


def test_a_node_cordoned_by_someone_else_is_left_alone(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    backend.client.set_node_unschedulable("gpu-1", True)  # an operator's maintenance, not remediation's
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.STARTED
    outcome = invasive.poll(backend.client, JOB, namespace=NS)
    assert outcome.state is JobState.ADMISSION_FAILED and "were unschedulable" in outcome.reason
    assert outcome.result is not None and outcome.result.status is Status.ERROR


def test_held_tolerations_are_added_once_to_the_configured_ones() -> None:
    held = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
    settings = dataclasses.replace(SETTINGS, invasive_tolerations=(held,))
    info = NodeInfo("gpu-1", {}, {remediation.OWNER: "{}"})
    assert invasive.tolerations_for(info, settings) == [
        held,
        {"key": "autopilot.ibm.com/gpuhealth", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert invasive.tolerations_for(NodeInfo("gpu-1", {}), settings) == [held]


def test_a_pod_left_by_a_deleted_job_is_busy_not_a_running_job(backend: Backend) -> None:
    # before: the pod's job-name label made it "our Job holds the GPUs" (ALREADY_RUNNING), and the poll that
    # followed found no Job and stored an error ("gone before its result was read")
    backend.control.add_node("gpu-1", gpus=8)
    backend.control.pause_gc()
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.STARTED
    assert backend.client.delete_job(NS, JOB)  # e.g. by hand; its pod is still on the node
    outcome = invasive.start(backend.client, "gpu-1", SETTINGS)
    assert outcome.state is StartState.BUSY and "is gone" in outcome.reason and outcome.result is None
    backend.control.collect_garbage()
    assert invasive.start(backend.client, "gpu-1", SETTINGS).state is StartState.STARTED


# ---------------------------------------------------------------- the worker's clock is not the API server's


@pytest.mark.parametrize(("skew_s", "server_age_s", "state"), [(600.0, 100.0, JobState.RUNNING), (-600.0, 700.0, None)])
def test_a_jobs_age_is_judged_on_the_api_servers_clock_not_a_skewed_workers(
    backend: Backend, skew_s: float, server_age_s: float, state: JobState | None
) -> None:
    """creationTimestamp is the API server's stamp. Before, the age was the worker's clock less it: a worker 10 min
    ahead called a Job 100 s old past its 600 s deadline (DEADLINE_EXCEEDED, an error, the run thrown away), and one
    10 min behind kept a Job 700 s old, past it, running. Now the age is read on the server's clock (its Date)."""
    started(backend)
    server_now = at(backend, server_age_s)
    worker_now = server_now + timedelta(seconds=skew_s)
    done = invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1", deadline_s=600, now=worker_now)
    if state is JobState.RUNNING:
        assert done.state is JobState.RUNNING and not gone(backend)
    else:
        assert done.state is JobState.DEADLINE_EXCEEDED and done.result is not None
        assert done.result.status is Status.ERROR and "700 s after creation" in done.result.summary


def test_the_admission_wait_is_counted_on_the_api_servers_clock(backend: Backend) -> None:
    # A busy quota, 20 s into the wait by the server's clock, read by a worker 10 min ahead: before, the wait was
    # over at once ("still refused 620 s after"), and the run ended an error while the quota was about to clear.
    started(backend)
    backend.control.refuse_job_pod(NS, JOB, QUOTA_BUSY.format(used=8))
    worker_now = at(backend, 20) + timedelta(minutes=10)
    waiting = invasive.poll(backend.client, JOB, namespace=NS, now=worker_now, admission_wait_s=300)
    assert waiting.state is JobState.RUNNING and "(20 s)" in waiting.reason


def test_the_job_read_says_the_servers_time_from_its_date_header(backend: Backend) -> None:
    started(backend)
    backend.clock.advance(42)
    job = backend.client.get_job(NS, JOB)
    assert job.server_time == cluster.rfc3339(backend.clock.now())
    assert invasive.job_age_s(job, backend.clock.now() + timedelta(hours=1)) == 42


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"Date": "Tue, 01 Dec 2026 03:04:05 GMT"}, "2026-12-01T03:04:05Z"),
        ({"date": "Tue, 01 Dec 2026 03:04:05 GMT"}, "2026-12-01T03:04:05Z"),
        ({"Date": "yesterday"}, ""),
        ({}, ""),
        (None, ""),
    ],
)
def test_server_date(headers: dict[str, str] | None, said: str) -> None:
    assert cluster.server_date(headers) == said


def test_without_a_server_time_the_workers_clock_is_used() -> None:
    job = JobInfo("j", NS, created_at="2026-11-29T22:00:00Z")
    assert invasive.job_age_s(job, datetime(2026, 11, 29, 22, 5, tzinfo=UTC)) == 300


# ---------------------------------------------------------------- a Job a queueing controller suspends


def test_a_suspended_job_is_waited_for_as_a_refusal_that_can_clear_then_resumes_and_runs(backend: Backend) -> None:
    started(backend)
    backend.control.suspend_job(NS, JOB)  # Kueue's webhook: spec.suspend until its queue admits the Job
    waiting = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 20), admission_wait_s=300)
    assert waiting.state is JobState.RUNNING and "suspended" in waiting.reason and not gone(backend)
    backend.control.resume_job(NS, JOB)
    assert invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 60), admission_wait_s=300).state is (
        JobState.RUNNING
    )
    backend.control.finish_job(NS, JOB, succeeded=True, log=log_with(PASSED))
    done = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 900), admission_wait_s=300)
    assert done.state is JobState.SUCCEEDED and done.result is not None and done.result.status is Status.OK


def test_a_job_left_suspended_ends_the_run_as_an_error_at_the_admission_wait_not_the_hour_long_deadline(
    backend: Backend,
) -> None:
    """A queueing controller (Kueue with manageJobsWithoutQueueName, no queue for Autopilot's namespace) keeps the
    Job suspended: no pod, and activeDeadlineSeconds does not run. Before, the Job read as running until our own
    deadline plus 60 s: the node held TESTING an hour, then an error saying only "still not finished"."""
    started(backend)
    backend.control.suspend_job(NS, JOB)
    kwargs = {"namespace": NS, "node": "gpu-1", "deadline_s": 3600.0, "admission_wait_s": 300.0}
    done = invasive.poll(backend.client, JOB, now=at(backend, 301), **kwargs)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and not done.result.fatal
    assert "suspended" in done.result.summary and "Kueue" in done.result.summary
    assert gone(backend)


# ---------------------------------------------------------------- a pod the cluster ended mid-run


CUT = "2026-11-29 22:00:00 INFO starting dcgm\nRunning level 3 diagnostic...\n"


@pytest.mark.parametrize(
    ("kill", "words"),
    [
        # Preempted by a higher-priority pod: the scheduler's DisruptionTarget, SIGTERM then SIGKILL.
        (
            {
                "disruption": (
                    "PreemptionByScheduler",
                    "default-scheduler: preempting to accommodate a higher priority pod",
                )
            },
            "disrupted (PreemptionByScheduler: default-scheduler: preempting",
        ),
        # The kubelet evicted it under node memory pressure (reason Evicted, DisruptionTarget TerminationByKubelet).
        (
            {
                "reason": "Evicted",
                "message": "The node was low on resource: memory. Threshold quantity: 100Mi, available: 52Mi. ",
                "disruption": ("TerminationByKubelet", "The node was low on resource: memory. "),
                "terminated": "ContainerStatusUnknown",
            },
            "Evicted: The node was low on resource: memory",
        ),
        # The OOM killer took the container (exit 137, reason OOMKilled), no disruption condition.
        ({"terminated": "OOMKilled"}, "container OOMKilled"),
    ],
)
def test_a_pod_the_cluster_ended_mid_run_is_an_error_that_says_what_ended_it(
    backend: Backend, kill: dict[str, object], words: str
) -> None:
    """Never a pass, never a finding about the GPUs; before, the error said only "exit code 137, and its log holds no
    DCGM result JSON", which reads as the diagnostics crashing on the node."""
    started(backend)
    backend.control.kill_job_pod(NS, JOB, log=CUT, **kill)
    done = invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1")
    assert done.state is JobState.FAILED and done.result is not None
    assert done.result.status is Status.ERROR and not done.result.fatal
    assert words in done.result.summary and "exit code 137" in done.result.summary
    assert gone(backend)


def test_a_failed_job_whose_pod_sits_on_a_lost_node_ends_without_waiting_for_a_log_that_never_comes(
    backend: Backend,
) -> None:
    """The node stopped answering: the taint manager deletes the pod (DisruptionTarget DeletionByTaintManager), which
    stays terminating in phase Running, and the Job controller counts it failed. The API server answers every read
    of its log with a 500 (it cannot reach the kubelet). Before, each poll raised Transient and was asked again,
    holding the node TESTING until the Job's hour-long deadline; now the run ends an error naming it."""
    started(backend)
    taint = ("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint")
    backend.control.kill_job_pod(NS, JOB, phase="Running", disruption=taint)
    backend.control.fail_next("pod_log", 500, times=8)
    done = invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1")
    assert done.state is JobState.FAILED and done.result is not None
    assert done.result.status is Status.ERROR and not done.result.fatal
    assert "still Running" in done.result.summary and "DeletionByTaintManager" in done.result.summary
    assert gone(backend)


def test_a_finished_pods_log_the_api_cannot_give_now_is_asked_again(backend: Backend) -> None:
    # The pod ended (its kubelet said so): its log holds the run's result, so an API server away is waited out.
    started(backend)
    backend.control.finish_job(NS, JOB, succeeded=False, log=log_with(FATAL), exit_code=1)
    backend.control.fail_next("pod_log", 500, times=8)
    with pytest.raises(errors.Transient):
        invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1")
    assert not gone(backend)


# ---------------------------------------------------------------- a container the kubelet cannot start


def test_an_image_that_cannot_be_pulled_ends_the_run_as_an_error_naming_it(backend: Backend) -> None:
    started(backend)
    backend.control.hold_job_pod(NS, JOB, "ErrImagePull", 'failed to pull image "quay.io/autopilot/autopilot:v1"')
    assert invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 5)).state is JobState.RUNNING
    backend.control.hold_job_pod(NS, JOB, "ImagePullBackOff", 'Back-off pulling image "quay.io/autopilot/autopilot:v1"')
    done = invasive.poll(backend.client, JOB, namespace=NS, now=at(backend, 30), admission_wait_s=300)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and "ImagePullBackOff" in done.result.summary
    assert gone(backend)


def test_a_container_the_runtime_cannot_create_is_waited_for_then_ends_the_run_at_the_admission_wait(
    backend: Backend,
) -> None:
    """The kubelet retries a CreateContainerError with backoff, the pod Pending for ever if it never clears. Before,
    the Job read as running until our own deadline plus 60 s (the node TESTING an hour), then "still not finished"."""
    started(backend)
    backend.control.hold_job_pod(NS, JOB, "CreateContainerError", "context deadline exceeded")
    kwargs = {"namespace": NS, "deadline_s": 3600.0, "admission_wait_s": 300.0}
    waiting = invasive.poll(backend.client, JOB, now=at(backend, 20), **kwargs)
    assert waiting.state is JobState.RUNNING and "CreateContainerError" in waiting.reason
    done = invasive.poll(backend.client, JOB, now=at(backend, 301), **kwargs)
    assert done.state is JobState.ADMISSION_FAILED and done.result is not None
    assert done.result.status is Status.ERROR and "CreateContainerError" in done.result.summary
    assert gone(backend)


def test_a_container_that_never_started_names_the_runtimes_words(backend: Backend) -> None:
    # restartPolicy Never: a runtime hook that fails (the NVIDIA toolkit's, on a node whose driver and library
    # differ) ends the container StartError, exit 128, and the Job fails. Before: "exit code 128, and its log holds
    # no DCGM result JSON", nothing about why.
    started(backend)
    hook = (
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: error running "
        "hook #0: nvidia-container-cli: initialization error: nvml error: driver/library version mismatch"
    )
    backend.control.kill_job_pod(NS, JOB, exit_code=128, terminated="StartError", terminated_message=hook)
    done = invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1")
    assert done.state is JobState.FAILED and done.result is not None and done.result.status is Status.ERROR
    assert "StartError: failed to create containerd task" in done.result.summary
    assert "driver/library version mismatch" in done.result.summary


def test_the_log_of_a_pod_not_yet_started_is_refused_as_the_api_server_refuses_it(backend: Backend) -> None:
    # Both fakes as the real server: a 400 BadRequest, not an empty log (which reads as "no result" for another
    # reason than the real one).
    started(backend)
    pod = backend.client.job_pods(NS, JOB)[0].name
    with pytest.raises(errors.ClusterError, match=f'container "main" in pod "{pod}" is waiting to start: Container'):
        backend.client.pod_log(NS, pod, invasive.CONTAINER)
    backend.control.hold_job_pod(NS, JOB, "CreateContainerConfigError")
    with pytest.raises(errors.ClusterError, match="is waiting to start: CreateContainerConfigError"):
        backend.client.pod_log(NS, pod, invasive.CONTAINER)


def test_a_job_failed_before_its_pod_started_is_an_error_saying_its_log_was_refused(backend: Backend) -> None:
    # The controller failed the Job (a PodFailurePolicy rule, or an operator's kubectl) while its pod still waited.
    started(backend)
    backend.control.hold_job_pod(NS, JOB, "ContainerCreating")
    backend.control.kill_job_pod(NS, JOB, phase="Pending")
    done = invasive.poll(backend.client, JOB, namespace=NS, node="gpu-1")
    assert done.state is JobState.FAILED and done.result is not None and done.result.status is Status.ERROR
    assert "its log could not be read" in done.result.summary and "waiting to start" in done.result.summary
