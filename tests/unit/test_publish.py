"""Verdict publishing: the pure ``desired`` and the idempotent ``apply``, on both cluster backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from autopilot import labeling, publish, results
from autopilot.cluster import CONDITION_TYPE, rfc3339
from autopilot.results import CheckResult, Status
from autopilot.verdict import Decision, Verdict
from tests.unit.cluster_standin import Backend, make_backend

HEALTH = "autopilot.ibm.com/gpuhealth"
L3 = "autopilot.ibm.com/dcgm.level.3"


@pytest.fixture(params=["fake", "kube"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    yield from make_backend(request.param)


def dcgm(level: int, status: Status, started: str, failure: str = "") -> CheckResult:
    data = {"failure_string": failure} if failure else {}
    return CheckResult("dcgm", status, "", node="gpu-1", params={"r": level}, started_at=started, data=data)


EVICT = Decision(Verdict.EVICT, ("dcgm: pcie failed on GPU 3",))


def test_desired_for_an_eviction() -> None:
    pub = publish.desired(EVICT, [dcgm(3, Status.FAIL, "2026-11-29T22:00:00Z", "pcie.3")])
    assert pub.labels == {HEALTH: "EVICT", L3: "ERR_2026-11-29_22.00.00UTC"}
    assert pub.annotations == {L3 + ".output": "pcie.3"}
    assert (pub.condition.type, pub.condition.status, pub.condition.reason) == (
        CONDITION_TYPE,
        "False",
        "AutopilotEvict",
    )
    assert pub.condition.message == "dcgm: pcie failed on GPU 3"


@pytest.mark.parametrize(
    ("verdict", "status"),
    [(Verdict.PASS, "True"), (Verdict.WARN, "False"), (Verdict.TESTING, "Unknown"), (Verdict.UNKNOWN, "Unknown")],
)
def test_condition_status_per_verdict(verdict: Verdict, status: str) -> None:
    assert publish.desired(Decision(verdict, ())).condition.status == status


def test_the_latest_dcgm_result_of_a_level_wins_and_errors_write_nothing() -> None:
    results = [
        dcgm(1, Status.OK, "2026-11-29T23:00:00Z"),
        dcgm(1, Status.FAIL, "2026-11-29T22:00:00Z", "pcie.0"),
        dcgm(3, Status.ERROR, "2026-11-29T23:30:00Z"),
    ]
    pub = publish.desired(Decision(Verdict.PASS, ()), results)
    assert pub.labels == {HEALTH: "PASS", "autopilot.ibm.com/dcgm.level.1": "PASS_2026-11-29_23.00.00UTC"}
    assert pub.annotations == {"autopilot.ibm.com/dcgm.level.1.output": ""}


def test_long_messages_are_cut() -> None:
    pub = publish.desired(Decision(Verdict.WARN, tuple(f"check{i}: bad" for i in range(500))))
    assert len(pub.condition.message) == publish.MESSAGE_LIMIT


def writes(b: Backend) -> int:
    return len(b.standin.writes()) if b.standin is not None else len(b.control.writes)


def test_apply_writes_once_then_nothing(backend: Backend) -> None:
    backend.control.add_node("gpu-1", {"team": "ml"}, gpus=8)
    pub = publish.desired(EVICT, [dcgm(3, Status.FAIL, "2026-11-29T22:00:00Z", "pcie.3")])
    assert publish.apply(backend.client, "gpu-1", pub).wrote is True
    node = backend.client.get_node("gpu-1")
    assert node.labels[HEALTH] == "EVICT" and node.labels["team"] == "ml"
    assert node.annotations[L3 + ".output"] == "pcie.3"
    cond = node.condition()
    assert cond is not None and cond.reason == "AutopilotEvict"
    [event] = backend.control.events_for("Node", "gpu-1")
    assert event.type == "Warning" and "(none) -> EVICT" in event.message and event.namespace == "default"
    before = writes(backend)
    assert publish.apply(backend.client, "gpu-1", pub, Verdict.EVICT).wrote is False
    assert publish.apply(backend.client, "gpu-1", pub).wrote is False
    assert writes(backend) == before
    assert len(backend.control.events_for("Node", "gpu-1")) == 1


def test_a_new_message_updates_the_condition_without_an_event(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    publish.apply(backend.client, "gpu-1", publish.desired(Decision(Verdict.WARN, ("gpumem: GPU 1 slow",))))
    first = backend.client.get_node("gpu-1").condition()
    changed = publish.desired(Decision(Verdict.WARN, ("gpumem: GPU 1 slow", "pciebw: GPU 2 slow")))
    assert publish.apply(backend.client, "gpu-1", changed, Verdict.WARN).wrote is True
    second = backend.client.get_node("gpu-1").condition()
    assert first is not None and second is not None
    assert second.message == "gpumem: GPU 1 slow; pciebw: GPU 2 slow"
    assert second.last_transition_time == first.last_transition_time
    assert len(backend.control.events_for("Node", "gpu-1")) == 1


def test_an_unchanged_condition_gets_its_heartbeat_every_period_and_keeps_its_transition(backend: Backend) -> None:
    """lastHeartbeatTime says when its writer last stood by the condition (node-problem-detector re-posts every
    5 min): never refreshed, a stopped Autopilot's last verdict reads as current as a running one's."""
    backend.control.add_node("gpu-1", gpus=8)
    pub = publish.desired(Decision(Verdict.PASS, ()))
    publish.apply(backend.client, "gpu-1", pub)
    first = backend.client.get_node("gpu-1").condition()
    assert first is not None and first.last_heartbeat_time
    beat = results.parse_iso(first.last_heartbeat_time)
    before = writes(backend)
    soon = beat + timedelta(seconds=publish.HEARTBEAT_S - 1)
    assert publish.apply(backend.client, "gpu-1", pub, Verdict.PASS, now=soon).wrote is False
    assert writes(backend) == before
    later = beat + timedelta(seconds=publish.HEARTBEAT_S)
    assert publish.apply(backend.client, "gpu-1", pub, Verdict.PASS, now=later).wrote is True
    assert writes(backend) == before + 1  # the condition alone: no labels, no Event
    second = backend.client.get_node("gpu-1").condition()
    assert second is not None and second.last_transition_time == first.last_transition_time
    assert len(backend.control.events_for("Node", "gpu-1")) == 1


def test_the_condition_is_stamped_on_the_clock_its_heartbeat_is_judged_by(backend: Backend) -> None:
    # The reconcile passes the store's clock as now; here it runs 10 min ahead of this host's. Before, the condition
    # was stamped with this host's clock, 10 min old by the store's at once: due again at every reconcile.
    backend.control.add_node("gpu-1", gpus=8)
    pub = publish.desired(Decision(Verdict.PASS, ()))
    shared = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    publish.apply(backend.client, "gpu-1", pub, now=shared)
    stored = backend.client.get_node("gpu-1").condition()
    assert stored is not None
    assert stored.last_heartbeat_time == stored.last_transition_time == rfc3339(shared)
    before = writes(backend)
    assert publish.apply(backend.client, "gpu-1", pub, Verdict.PASS, now=shared + timedelta(seconds=60)).wrote is False
    assert writes(backend) == before


def test_the_verdict_change_event_is_stamped_on_the_reconciles_clock() -> None:
    # The reconcile passes the store's clock as now; this host's runs 10 min behind or ahead of it. The Event a
    # reader sees beside the condition must carry the same time whichever host wrote it. Before, it carried
    # datetime.now() of the writing host: 10 min off the condition's lastTransitionTime.
    for skew in (timedelta(minutes=-10), timedelta(minutes=10)):
        for kube in make_backend("kube"):
            assert kube.standin is not None
            kube.control.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
            shared = datetime.now(UTC).replace(microsecond=0) + skew
            publish.apply(kube.client, "gpu-1", publish.desired(EVICT), Verdict.PASS, now=shared)
            events = [o for (kind, _, _), o in kube.standin.objects.items() if kind == "Event"]
            assert [(e["firstTimestamp"], e["lastTimestamp"]) for e in events] == [(rfc3339(shared),) * 2]
            condition = kube.client.get_node("gpu-1").condition()
            assert condition is not None and condition.last_transition_time == rfc3339(shared)


def test_a_verdict_change_emits_one_event(backend: Backend) -> None:
    backend.control.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
    publish.apply(backend.client, "gpu-1", publish.desired(Decision(Verdict.PASS, ())), Verdict.PASS)
    assert backend.control.events_for("Node", "gpu-1") == []
    publish.apply(backend.client, "gpu-1", publish.desired(Decision(Verdict.TESTING, ("dcgm level 3",))), Verdict.PASS)
    [event] = backend.control.events_for("Node", "gpu-1")
    assert event.type == "Normal" and "PASS -> TESTING" in event.message
    assert backend.client.get_node("gpu-1").labels[HEALTH] == "TESTING"


def test_a_refused_event_does_not_undo_the_labels_and_is_reported(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    backend.control.fail_next("create_node_event", 403)
    applied = publish.apply(backend.client, "gpu-1", publish.desired(EVICT))
    assert applied.wrote is True and applied.before == ""
    assert applied.event_error is not None and "403" in applied.event_error
    assert backend.client.get_node("gpu-1").labels[HEALTH] == "EVICT"
    assert backend.control.events_for("Node", "gpu-1") == []


def test_the_event_about_a_node_is_posted_where_the_api_server_accepts_it(backend: Backend) -> None:
    backend.control.add_node("gpu-1", {HEALTH: "PASS"}, gpus=8)
    applied = publish.apply(backend.client, "gpu-1", publish.desired(EVICT), Verdict.PASS)
    assert applied.event_error is None and applied.before == "PASS"
    [event] = backend.control.events_for("Node", "gpu-1")
    assert event.namespace == "default"
    if backend.standin is not None:
        [post] = [r for r in backend.standin.writes() if r.path.endswith("/events")]
        assert post.path == "/api/v1/namespaces/default/events"


def test_condition_message_carries_notes_after_the_reasons() -> None:
    note = "eviction (dcgm on GPU 3: pcie (2026-11-29T22:00:00Z)) cleared by api:10.0.0.1 at 2026-11-30T08:00:00Z"
    assert publish.condition_for(Decision(Verdict.PASS, (), notes=(note,))).message == (
        f"all periodic checks pass; {note}"
    )
    assert publish.condition_for(Decision(Verdict.WARN, ("gpumem: slow",), notes=(note,))).message == (
        f"gpumem: slow; {note}"
    )


def test_a_dcgm_failure_string_from_hostile_output_is_kept_short_and_printable(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    failure = "memory_bandwidth\x1b[31m" + ".0" * 200_000  # 400 KB of test names and GPU ids from dcgmi
    pub = publish.desired(EVICT, [dcgm(3, Status.FAIL, "2026-11-29T22:00:00Z", failure)])
    publish.apply(backend.client, "gpu-1", pub)
    node = backend.client.get_node("gpu-1")
    assert node.labels[HEALTH] == "EVICT" and node.labels[L3] == "ERR_2026-11-29_22.00.00UTC"
    output = node.annotations[L3 + ".output"]
    assert output.startswith(r"memory_bandwidth\x1b[31m.0.0") and len(output) == 4096


@pytest.mark.parametrize("level", ["three", 10**70, -1, 5, None])
def test_a_dcgm_result_of_no_level_dcgmi_runs_writes_no_dcgm_label(backend: Backend, level: object) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    result = CheckResult("dcgm", Status.FAIL, "", node="gpu-1", params={"r": level}, started_at="2026-11-29T22:00:00Z")
    pub = publish.desired(EVICT, [result])
    publish.apply(backend.client, "gpu-1", pub)
    labels = backend.client.get_node("gpu-1").labels
    assert labels[HEALTH] == "EVICT"
    assert [k for k in labels if "dcgm.level" in k] == ([L3.replace("3", "1")] if level is None else [])


def test_a_patch_the_api_server_refuses_as_a_whole_still_writes_the_verdict_label(backend: Backend) -> None:
    backend.control.add_node("gpu-1", gpus=8)
    pub = publish.desired(Decision(Verdict.WARN, ("gpumem: GPU 1 slow",)))
    too_big = dataclasses.replace(pub, annotations={"autopilot.ibm.com/gpus": "x" * 300_000})
    publish.apply(backend.client, "gpu-1", too_big)
    node = backend.client.get_node("gpu-1")
    assert node.labels[HEALTH] == "WARN"
    assert "autopilot.ibm.com/gpus" not in node.annotations
    cond = node.condition()
    assert cond is not None and cond.reason == "AutopilotWarn"


def test_refused_annotations_leave_no_label_stale_nor_stop_the_next_reconcile(backend: Backend) -> None:
    # Another tool's annotations fill the Node almost to the API server's 256 KiB: our DCGM output cannot fit.
    backend.control.add_node("gpu-1", gpus=8, annotations={"example.com/big": "x" * (256 * 1024 - 200)})
    failed = [dcgm(3, Status.FAIL, "2026-11-29T22:00:00Z", "pcie.3 " * 100)]
    publish.apply(backend.client, "gpu-1", publish.desired(EVICT, failed))
    node = backend.client.get_node("gpu-1")
    assert node.labels[HEALTH] == "EVICT"
    assert node.labels[L3] == "ERR_2026-11-29_22.00.00UTC"  # a user selecting level-3 passes must not get it
    assert L3 + ".output" not in node.annotations
    # The next reconcile: the verdict label is there, the annotation still refused; the condition still follows.
    later = Decision(Verdict.EVICT, ("dcgm: pcie failed on GPUs 3 and 5",))
    publish.apply(backend.client, "gpu-1", publish.desired(later, failed))
    cond = backend.client.get_node("gpu-1").condition()
    assert cond is not None and "GPUs 3 and 5" in cond.message


def test_the_dcgm_label_time_is_the_runs_start_on_the_stores_clock_in_utc() -> None:
    # before: the label carried the worker's own stamp; a node whose clock runs 10 min ahead labelled its run
    # 10 min later than a node on time that ran with it, so a reader comparing nodes saw two times for one moment
    run = [dcgm(3, Status.OK, "2026-11-29T22:10:00Z")]
    ahead = publish.desired(Decision(Verdict.PASS, ()), run, offset=600.004)
    behind = publish.desired(Decision(Verdict.PASS, ()), run, offset=-599.996)
    assert ahead.labels[L3] == "PASS_2026-11-29_22.00.00UTC"
    assert behind.labels[L3] == "PASS_2026-11-29_22.20.00UTC"
    # the offset's milliseconds of jitter between heartbeats do not move the label (each move is a Node patch)
    assert publish.desired(Decision(Verdict.PASS, ()), run, offset=599.998).labels[L3] == ahead.labels[L3]
    # no offset known: as stamped
    assert publish.desired(Decision(Verdict.PASS, ()), run).labels[L3] == "PASS_2026-11-29_22.10.00UTC"


def test_a_dcgm_result_with_no_start_is_labelled_at_the_stores_now_in_utc() -> None:
    # before: this host's local time (``datetime.now().astimezone()``) written with a ``UTC`` suffix, so a host
    # at UTC+2 labelled its run two hours late, and another host's reconcile of the same result another time
    local = timezone(timedelta(hours=2))
    now = datetime(2026, 11, 30, 1, 30, 5, tzinfo=local)  # the store's clock, given in another zone
    pub = publish.desired(Decision(Verdict.WARN, ()), [dcgm(1, Status.FAIL, "", "pcie.0")], now=now)
    assert pub.labels["autopilot.ibm.com/dcgm.level.1"] == "ERR_2026-11-29_23.30.05UTC"
    assert labeling.timestamp(now) == "2026-11-29_23.30.05UTC"
