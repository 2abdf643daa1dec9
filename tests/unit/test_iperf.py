"""The pure parts of ``iperf``: parameters and their bounds, command lines, judging client output
(including the iperf3 -J samples of ../shared/samples), grading, the summary, and the seam's spawn."""

from __future__ import annotations

import json
import os
import time

import pytest

from autopilot import commands, errors, execution, network, registry
from autopilot.checks import iperf
from autopilot.commands import CommandResult
from autopilot.results import Status
from autopilot.testing import FakeRunner
from tests.conftest import sample_text


def ok_json(bps: float) -> str:
    return json.dumps(
        {
            "start": {"test_start": {"protocol": "TCP"}},
            "end": {
                "sum_sent": {"bits_per_second": bps * 1.01, "retransmits": 0},
                "sum_received": {"bits_per_second": bps},
            },
        }
    )


def out(stdout: str, rc: int = 0, stderr: str = "") -> CommandResult:
    return CommandResult(("iperf3",), rc, stdout, stderr)


# ------------------------------------------------------------------ parameters


def spec() -> registry.CheckSpec:
    return registry.REGISTRY.get("iperf")


def test_defaults_and_case_insensitive_workload() -> None:
    params = spec().validate({"workload": " RING "})
    assert params == {
        "workload": "ring",
        "pclients": 1,
        "startport": 5200,
        "duration_s": 5,
        "threshold_gbps": 0.0,
        "min_fraction": 0.5,
        "nodes": "",
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"workload": "mesh"}, "workload"),
        ({"workload": "ring;ls"}, "workload"),
        ({"pclients": 0}, "pclients"),
        ({"pclients": 17}, "pclients"),
        ({"pclients": "8 -s"}, "pclients"),
        ({"startport": 1023}, "startport"),
        ({"startport": 65001}, "startport"),
        ({"duration_s": 0}, "duration_s"),
        ({"duration_s": 61}, "duration_s"),
        ({"threshold_gbps": -1}, "threshold_gbps"),
        ({"min_fraction": 1.5}, "min_fraction"),
        ({"numservers": 3}, "numservers"),
    ],
)
def test_parameters_are_bounded(raw: dict[str, object], field: str) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        spec().validate(raw)
    assert caught.value.field == field


def test_ports_stay_in_range_at_the_bounds() -> None:
    assert iperf.ports(65000, 16) == list(range(65000, 65016))
    assert iperf.ports(5200, 3) == [5200, 5201, 5202]
    with pytest.raises(errors.BadParameter):
        iperf.ports(65530, 16)
    with pytest.raises(errors.BadParameter):
        iperf.ports(5200, 0)


def test_command_lines_are_argv_lists() -> None:
    assert iperf.server_argv("192.0.2.1", 5200) == [
        "iperf3", "-s", "-p", "5200", "-B", "192.0.2.1", "--idle-timeout", str(iperf.IDLE_TIMEOUT_S),
    ]  # fmt: skip
    argv = iperf.client_argv("192.0.2.2", 5201, 5, "192.0.2.1")
    assert argv[:9] == ["iperf3", "-c", "192.0.2.2", "-p", "5201", "-t", "5", "-J", "-Z"]
    assert argv[-2:] == ["-B", "192.0.2.1"] and "--connect-timeout" in argv


def test_local_run_is_skipped_as_a_multi_node_workload(make_ctx) -> None:  # type: ignore[no-untyped-def]
    result = execution.run_check("iperf", make_ctx())
    assert result.status is Status.SKIPPED
    assert "multi-node workload" in result.summary


# ------------------------------------------------------------------ judging client output


def test_success_sample_is_ok_in_gbps() -> None:
    m = iperf.judge_client(out(sample_text("iperf3-J_tcp_success_iperf3.9.json.txt")))
    assert m.status is Status.OK
    assert m.gbps == pytest.approx(0.1416, abs=1e-4)


def test_udp_sample_is_ok() -> None:
    m = iperf.judge_client(out(sample_text("iperf3-J_udp_success_iperf3.9.json.txt")))
    assert m.status is Status.OK and m.gbps == pytest.approx(0.00105, abs=1e-5)


def test_refused_sample_is_a_network_failure() -> None:
    m = iperf.judge_client(out(sample_text("iperf3-J_error_connection-refused.json.txt"), rc=1))
    assert m.status is Status.FAIL and "Connection refused" in m.detail


def test_auth_failed_sample_is_an_error_not_a_network_failure() -> None:
    m = iperf.judge_client(out(sample_text("iperf3-J_error_auth-failed.json.txt"), rc=1))
    assert m.status is Status.ERROR and "authorization failed" in m.detail


def test_warnings_before_the_document_and_a_repeated_document_are_read() -> None:
    # iperf3 prints warnings to stdout ahead of the -J document (esnet/iperf#1223, "warning: UDP
    # block size 2048 exceeds TCP MSS 1448, may result in fragmentation / drops"; #1776, "warning:
    # JSON data length overflow"), and 3.16/3.17 print the document twice (esnet/iperf#1688, #1716).
    doc = ok_json(4e9)
    for stdout in (
        f"warning: UDP block size 2048 exceeds TCP MSS 1448, may result in fragmentation / drops\n{doc}",
        f"warning: JSON data length overflow\n{doc}\n",
        f"{doc}\n{doc}\n",
    ):
        m = iperf.judge_client(out(stdout))
        assert m.status is Status.OK and m.gbps == pytest.approx(4.0)


def client_doc(sent_bps: float, received_bps: float, **extra: object) -> str:
    # A hand-written minimal ``iperf3 -c ... -J`` client document (iperf 3.9+ layout: the end sums carry
    # "sender"; receiver_tcp_congestion is absent when the server's results never came back).
    doc = {
        "start": {"version": "iperf 3.9", "test_start": {"protocol": "TCP", "num_streams": 1}},
        "intervals": [],
        "end": {
            "sum_sent": {"seconds": 5, "bits_per_second": sent_bps, "retransmits": 0, "sender": True},
            "sum_received": {"seconds": 5, "bits_per_second": received_bps, "sender": True},
            "sender_tcp_congestion": "cubic",
        },
        **extra,
    }
    return json.dumps(doc, indent="\t")


def test_an_error_iperf3_reports_after_its_document_is_the_result() -> None:
    # Once the -J document is printed, iperf_errexit (iperf_error.c) has no document to add "error" to
    # and writes "iperf3: error - ..." to stderr (esnet/iperf#1143: a complete client document, then
    # "iperf3: error - unable to send control message: Broken pipe", exit 1). The summary is not a
    # measurement: never ok at its figure, and a receiver side of 0 (the server's results never came)
    # is no "path drops the data" either.
    for received in (9.4e9, 0.0):
        m = iperf.judge_client(
            out(
                client_doc(9.4e9, received),
                rc=1,
                stderr="iperf3: error - unable to send control message: Broken pipe\n",
            )
        )
        assert m.status is Status.ERROR and m.gbps is None
        assert m.detail == "iperf3: error - unable to send control message: Broken pipe"
    # The same words on stdout after the document (iperf3 --logfile, or a runner merging the streams).
    tail = "iperf3: error - control socket has closed unexpectedly\n"
    m = iperf.judge_client(out(client_doc(9.4e9, 9.4e9) + "\n" + tail, rc=1))
    assert m.status is Status.FAIL and "control socket has closed" in m.detail
    # A signal after the document: "iperf3: interrupt - the client has terminated".
    m = iperf.judge_client(
        out(client_doc(9.4e9, 9.4e9), rc=1, stderr="iperf3: interrupt - the client has terminated\n")
    )
    assert m.status is Status.ERROR and "interrupt" in m.detail
    # Other stderr text (a warning) leaves a complete run alone.
    m = iperf.judge_client(out(client_doc(9.4e9, 9.4e9), stderr="warning: Ignoring nonsense TCP MSS 0\n"))
    assert m.status is Status.OK and m.gbps == pytest.approx(9.4)


def test_a_repeated_document_that_adds_an_error_is_read_for_it() -> None:
    # 3.16/3.17 print the document again when it is finished twice (esnet/iperf#1688); a run that fails
    # after the first print adds its "error" to the second copy.
    first = client_doc(9.4e9, 9.4e9)
    second = client_doc(9.4e9, 9.4e9, error="unable to receive results: Connection reset by peer")
    m = iperf.judge_client(out(f"{first}\n{second}\n", rc=1))
    assert m.status is Status.ERROR and m.detail == "iperf3: unable to receive results: Connection reset by peer"
    refused = client_doc(0.0, 0.0, error="error - unable to connect to server: Connection refused")
    m = iperf.judge_client(out(f"{first}\n{refused}\n", rc=1))
    assert m.status is Status.FAIL and "Connection refused" in m.detail


def test_udp_summary_of_iperf3_3_11_keeps_its_loss() -> None:
    # iperf3 3.11+ writes end.sum_sent/sum_received for UDP beside end.sum (esnet/iperf#1174).
    doc = {
        "start": {"test_start": {"protocol": "UDP"}},
        "end": {
            "sum": {"bits_per_second": 1e9, "lost_percent": 0.0},
            "sum_sent": {"bits_per_second": 1e9, "lost_percent": 0.0},
            "sum_received": {"bits_per_second": 0.8e9, "lost_percent": 20.0},
        },
    }
    stats = network.parse_iperf3(json.dumps(doc))
    assert stats.protocol == "UDP" and stats.lost_percent == 20.0 and stats.received_bps == 0.8e9


@pytest.mark.parametrize(
    "end",
    [
        {"sum_sent": {"bits_per_second": 1e9}, "sum_received": {}},
        {"sum_sent": {"bits_per_second": 1e9}, "sum_received": {"bits_per_second": "n/a"}},
        {"sum_sent": None, "sum_received": {"bits_per_second": 1e9}},
        {"sum": []},
    ],
)
def test_a_summary_missing_its_figures_is_unreadable_not_a_crash(end: dict[str, object]) -> None:
    m = iperf.judge_client(out(json.dumps({"start": {}, "end": end})))
    assert m.status is Status.ERROR and "unreadable" in m.detail


def test_nothing_received_is_not_a_pass_at_zero() -> None:
    m = iperf.judge_client(out(ok_json(0.0)))
    assert m.status is Status.ERROR and m.gbps is None


def test_data_sent_and_none_received_is_a_network_failure() -> None:
    # The connection and the control messages got through, the data did not (an MTU black hole).
    tcp = json.dumps(
        {
            "start": {"test_start": {"protocol": "TCP"}},
            "end": {"sum_sent": {"bits_per_second": 2.5e9, "retransmits": 310}, "sum_received": {"bits_per_second": 0}},
        }
    )
    udp = json.dumps(
        {"start": {"test_start": {"protocol": "UDP"}}, "end": {"sum": {"bits_per_second": 1e9, "lost_percent": 100}}}
    )
    for stdout in (tcp, udp):
        m = iperf.judge_client(out(stdout))
        assert m.status is Status.FAIL and m.gbps is None and "received nothing" in m.detail


def test_timeouts_missing_tool_and_garbage() -> None:
    assert iperf.judge_client(errors.ToolTimeout("iperf3", 10)).status is Status.FAIL
    assert iperf.judge_client(errors.ToolNotFound("iperf3: not found")).status is Status.ERROR
    assert iperf.judge_client(out("", rc=1, stderr="iperf3: error - unable to connect to server")).status is Status.FAIL
    garbled = iperf.judge_client(out("Segmentation fault", rc=139))
    assert garbled.status is Status.ERROR and "unreadable" in garbled.detail


def test_an_iperf3_too_old_for_our_options_says_so() -> None:
    # iperf3 3.0/3.1 (Ubuntu 18.04's 3.1.3) predate --connect-timeout (3.2): getopt's complaint, then the
    # whole usage text on stderr, exit 1 (hand-written, shortened). The complaint is the detail.
    stderr = (
        "iperf3: unrecognized option '--connect-timeout'\n"
        "Usage: iperf [-s|-c host] [options]\n"
        "       iperf [-h|--help] [-v|--version]\n\n"
        "Server or Client:\n  -p, --port      #         server port to listen on/connect to\n\n"
        "iperf3 homepage at: http://software.es.net/iperf/\n"
        "Report bugs to:     https://github.com/esnet/iperf\n"
    )
    m = iperf.judge_client(out("", rc=1, stderr=stderr))
    assert m.status is Status.ERROR
    assert m.detail == "iperf3 output unreadable: iperf3: unrecognized option '--connect-timeout'"


def test_a_pair_sums_its_clients_and_any_failed_client_decides() -> None:
    m = iperf.judge_pair([out(ok_json(2e9)), out(ok_json(3e9))])
    assert m.status is Status.OK and m.gbps == pytest.approx(5.0)
    bad = iperf.judge_pair([out(ok_json(2e9)), errors.ToolTimeout("iperf3", 10)])
    assert bad.status is Status.FAIL and bad.gbps is None and bad.detail.startswith("1/2 clients")
    assert iperf.judge_pair([]).status is Status.ERROR


# ------------------------------------------------------------------ grading and the summary


def P(src: str, dst: str, gbps: float | None, status: str = "ok", lane: str = "net1") -> dict[str, object]:
    return {"source": src, "target": dst, "interface": lane, "address": "192.0.2.9", "status": status,
            "gbps": gbps, "detail": ""}  # fmt: skip


def test_grade_warns_below_the_fraction_of_the_lane_median() -> None:
    pairs = [P("a", "b", 9.0), P("b", "c", 9.4), P("c", "a", 9.2), P("a", "c", 2.0), P("b", "a", 9.3)]
    graded = iperf.grade(pairs, threshold_gbps=0, min_fraction=0.5)
    assert [p["status"] for p in graded] == ["ok", "ok", "ok", "warn", "ok"]
    assert "median" in str(graded[3]["detail"])


def test_grade_absolute_threshold_and_lanes_are_separate() -> None:
    pairs = [P("a", "b", 9.0), P("b", "a", 8.0), P("a", "b", 1.0, lane="net2"), P("b", "a", 1.1, lane="net2")]
    graded = iperf.grade(pairs, threshold_gbps=5, min_fraction=0.5)
    assert [p["status"] for p in graded] == ["ok", "ok", "warn", "warn"]
    assert "below 5 Gb/s" in str(graded[2]["detail"])
    # the relative test alone: each lane's median is its own, so the slower lane is fine
    assert {p["status"] for p in iperf.grade(pairs, threshold_gbps=0, min_fraction=0.5)} == {"ok"}


def test_failed_pairs_are_left_alone_and_do_not_move_the_median() -> None:
    pairs = [P("a", "b", None, "fail"), P("b", "a", 9.0), P("a", "c", 9.0)]
    graded = iperf.grade(pairs, threshold_gbps=0, min_fraction=0.9)
    assert [p["status"] for p in graded] == ["fail", "ok", "ok"]


def test_evaluate_one_device_per_target_and_interface() -> None:
    pairs = [P("a", "b", 9.0), P("a", "c", 1.0, "warn"), P("b", "a", 8.0)]
    result = iperf.evaluate("a", pairs)
    assert result.node == "a" and result.status is Status.WARN
    assert [(d.id, d.value, d.unit) for d in result.devices] == [("b/net1", 9.0, "Gb/s"), ("c/net1", 1.0, "Gb/s")]
    assert result.data["sent_mean_gbps"] == 5.0 and result.data["received_mean_gbps"] == 8.0
    assert "pair c/net1" in result.summary


def test_summary_matrix_per_node_and_mean() -> None:
    pairs = [P("a", "b", 9.0), P("b", "c", 8.0), P("c", "a", None, "fail"), P("a", "b", 1.0, lane="net2")]
    summary = iperf.summarize(pairs)
    net1 = summary["net1"]
    assert net1["matrix"] == {"a": {"b": 9.0}, "b": {"c": 8.0}, "c": {"a": None}}
    assert net1["mean_gbps"] == 8.5 and net1["pairs"] == 3 and net1["bad_pairs"] == 1
    assert net1["nodes"]["a"] == {"sent_mean_gbps": 9.0, "received_mean_gbps": None, "bad_pairs": 1}
    assert summary["net2"]["mean_gbps"] == 1.0


def test_pair_results_count_everything_but_ok_as_bad() -> None:
    found = iperf.pair_results([P("a", "b", 9.0), P("a", "c", 1.0, "warn"), P("b", "c", None, "error")])
    assert [p.bad for p in found] == [False, True, True]


# ------------------------------------------------------------------ the command seam's spawn


def test_spawn_runs_in_its_own_group_and_terminate_kills_it() -> None:
    proc = commands.SubprocessRunner().spawn(["sleep", "30"], lifetime_s=60)
    try:
        assert proc.poll() is None
        assert os.getpgid(proc.pid) == proc.pid
    finally:
        proc.terminate(grace_s=1)
    assert proc.poll() is not None
    proc.terminate()  # idempotent


def test_spawn_lifetime_kills_a_forgotten_program() -> None:
    proc = commands.spawn(["sleep", "30"], lifetime_s=0.2)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is not None


def test_spawn_keeps_output_of_a_program_that_ended() -> None:
    proc = commands.spawn(["sh", "-c", "echo cannot bind >&2; exit 3"], lifetime_s=10)
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() == 3 and "cannot bind" in proc.output()
    proc.terminate()


def test_spawn_refuses_shell_strings_and_missing_programs() -> None:
    with pytest.raises(TypeError):
        commands.spawn("iperf3 -s", lifetime_s=1)  # type: ignore[arg-type]
    with pytest.raises(errors.ToolNotFound):
        commands.spawn(["/nonexistent/iperf3"], lifetime_s=1)


def test_fake_spawn_records_and_can_fail() -> None:
    runner = FakeRunner(installed=["iperf3"])
    runner.exits[("iperf3", "-s")] = (1, "iperf3: error - unable to start listener: Address already in use")
    up = runner.spawn(["iperf3", "-s", "-p", "1"], lifetime_s=5)
    down = runner.spawn(["iperf3", "-s"], lifetime_s=5)
    assert up.poll() is None and down.poll() == 1 and "Address already in use" in down.output()
    up.terminate()
    assert up.terminated and runner.spawned == [up, down]
    with pytest.raises(errors.ToolNotFound):
        runner.spawn(["nosuch"], lifetime_s=1)
