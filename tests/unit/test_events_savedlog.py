"""``autopilot evaluate events FILE``: a saved kernel log, in each format it is kept in, judged as the follower would.

Every log here is written by hand in the shape the tool writes (journalctl's outputs, RFC 5424, the CRI
log file, Docker's json-file); the public samples are read in place at the end.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from typing import Any

import pytest

from autopilot import cli
from autopilot.events import logformats, savedlog
from autopilot.events.follower import Follower
from autopilot.results import Status
from tests.conftest import sample_text

XID48 = "NVRM: Xid (PCI:0000:55:00): 48, pid=2187734, name=python, channel 0x00000002"
XID79 = "NVRM: Xid (PCI:0000:91:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
XID13 = "NVRM: Xid (PCI:0000:38:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp Exception"
FALLEN = [
    "NVRM: The NVIDIA GPU 0000:b3:00.0",
    "NVRM: (PCI ID: 10de:26b5) installed in this system has",
    "NVRM: fallen off the bus and is not responding to commands.",
]


def judge(text: str | bytes, window: float = 60.0) -> Any:
    return savedlog.judge(text, storm_window_s=window)


def findings(result: Any) -> dict[tuple[str, str], int]:
    return {(f["device"], f["code"]): f["count"] for f in result.data["findings"]}


# ---------------------------------------------------------------- journalctl's structured outputs


def _entry(message: Any, *, usec: int = 1748772672308145, transport: str = "kernel", **more: Any) -> dict[str, Any]:
    return {"__CURSOR": "s=1;i=2", "__REALTIME_TIMESTAMP": str(usec), "__MONOTONIC_TIMESTAMP": "1843308145",
            "_TRANSPORT": transport, "SYSLOG_IDENTIFIER": "kernel" if transport == "kernel" else "gpud",
            "PRIORITY": "4", "MESSAGE": message, **more}  # fmt: skip


def test_journal_json_reads_a_message_given_as_bytes_and_leaves_other_programs() -> None:
    lines = [
        json.dumps(_entry(XID48)),
        json.dumps(_entry(list(XID79.encode()))),  # not printable UTF-8 somewhere: an array of byte values
        json.dumps(_entry("NVRM: Xid (PCI:0000:aa:00): 79, a health agent quoting the kernel", transport="syslog")),
        json.dumps(_entry(None)),  # past 4096 bytes without --all: null
    ]
    messages = list(logformats.log_messages("\n".join(lines) + "\n"))
    assert [(m.text, m.source) for m in messages] == [
        (XID48, "kernel"), (XID79, "kernel"),
        ("NVRM: Xid (PCI:0000:aa:00): 79, a health agent quoting the kernel", "gpud"), ("", "kernel"),
    ]  # fmt: skip
    result = judge("\n".join(lines))
    assert set(findings(result)) == {("0000:55:00.0", "xid.48"), ("0000:91:00.0", "xid.79")}
    assert result.status is Status.FAIL and result.fatal


@pytest.mark.parametrize("form", ["json-pretty", "json-seq", "json-sse"])
def test_journal_json_pretty_seq_and_sse(form: str) -> None:
    entries = [_entry(XID48, usec=1_000_000_000_000_000), _entry(XID48, usec=1_000_000_030_000_000)]
    if form == "json-pretty":
        text = "\n".join(json.dumps(e, indent=8) for e in entries)
    elif form == "json-seq":
        text = "".join(f"\x1e{json.dumps(e)}\n" for e in entries)
    else:
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in entries)
    assert [m.at for m in logformats.log_messages(text)] == [1_000_000_000.0, 1_000_000_030.0]
    assert findings(judge(text)) == {("0000:55:00.0", "xid.48"): 2}


def test_journal_export_reads_text_and_binary_fields() -> None:
    """A message with a newline is written binary: name, newline, 64-bit little-endian length, bytes, newline."""
    notice = "\n".join(FALLEN).encode()

    def entry(message: bytes, usec: int) -> bytes:
        head = f"__CURSOR=s=1;i=2\n__REALTIME_TIMESTAMP={usec}\n_TRANSPORT=kernel\nPRIORITY=3\n".encode()
        if b"\n" in message:
            field = b"MESSAGE\n" + struct.pack("<Q", len(message)) + message + b"\n"
        else:
            field = b"MESSAGE=" + message + b"\n"
        return head + field + b"_HOSTNAME=gpu-7\n\n"

    data = entry(notice, 1_000_000_000_000_000) + entry(XID48.encode(), 1_000_000_001_000_000)
    messages = list(logformats.log_messages(savedlog.decode(data)))
    assert [(m.text, m.at) for m in messages] == [("\n".join(FALLEN), 1_000_000_000.0), (XID48, 1_000_000_001.0)]
    result = judge(data)
    assert set(findings(result)) == {("0000:b3:00.0", "xid.79"), ("0000:55:00.0", "xid.48")}
    assert result.fatal


def test_journal_verbose_reads_fields_a_continued_message_and_the_cursors_time() -> None:
    t = 1_000_000_000_000_000
    text = (
        f"Sun 2025-06-01 10:11:12.308145 UTC [s=ab;i=1;b=cd;m=1b7c9b1;t={t:x};x=ef]\n"
        "    _BOOT_ID=cd\n    _TRANSPORT=kernel\n    PRIORITY=3\n    SYSLOG_IDENTIFIER=kernel\n"
        f"    MESSAGE={FALLEN[0]}\n" + "".join(f"            {line}\n" for line in FALLEN[1:]) +
        "    _SOURCE_MONOTONIC_TIMESTAMP=1843308145\n"
        f"Sun 2025-06-01 10:11:42.000000 UTC [s=ab;i=2;b=cd;m=1b7c9b2;t={t + 30_000_000:x};x=ef]\n"
        f"    _TRANSPORT=kernel\n    MESSAGE={XID48}\n"
    )  # fmt: skip
    messages = list(logformats.log_messages(text))
    assert [(m.text, m.at) for m in messages] == [("\n".join(FALLEN), 1_000_000_000.0), (XID48, 1_000_000_030.0)]
    assert set(findings(judge(text))) == {("0000:b3:00.0", "xid.79"), ("0000:55:00.0", "xid.48")}


def test_journal_with_unit_names_a_kernel_message_as_short_full_does() -> None:
    text = (
        f"Sun 2025-06-01 10:11:12 UTC gpu-7 kernel: {XID48}\nSun 2025-06-01 10:11:13 UTC gpu-7 gpud.service: {XID79}\n"
    )
    messages = list(logformats.log_messages(text))
    assert [(m.text, m.source) for m in messages] == [(XID48, "kernel"), (XID79, "gpud.service")]
    assert set(findings(judge(text))) == {("0000:55:00.0", "xid.48")}


# ---------------------------------------------------------------- syslog and container logs


def test_rfc5424_syslog_kernel_lines_with_and_without_structured_data() -> None:
    text = (
        f"<3>1 2025-06-01T10:11:12.000Z gpu-7 kernel - - - {XID48}\n"
        f'<3>1 2025-06-01T10:11:13.000Z gpu-7 kernel - - [meta seq="7" note="a \\] b"] \ufeff{XID79}\n'
        f"<14>1 2025-06-01T10:11:14.000Z gpu-7 gpud 42 ID1 - {XID13}\n"
        f"<3>1 - gpu-7 kernel - - - {XID13}\n"
    )
    messages = list(logformats.log_messages(text))
    assert [(m.text, m.source) for m in messages] == [(XID48, "kernel"), (XID79, "kernel"), (XID13, "gpud"),
                                                      (XID13, "kernel")]  # fmt: skip
    assert [m.at for m in messages][:3] == [1748772672.0, 1748772673.0, 1748772674.0]
    assert messages[3].at is None


def test_bsd_syslog_with_a_priority_is_read_as_kern_log() -> None:
    text = f"<4>Jun  1 10:11:12 gpu-7 kernel: {XID48}\n<30>Jun  1 10:11:13 gpu-7 systemd[1]: Started x.\n"
    assert [(m.text, m.source) for m in logformats.log_messages(text)] == [(XID48, "kernel"), ("Started x.", "systemd")]


def test_a_cri_log_file_is_unwrapped_and_its_partial_lines_joined() -> None:
    """A DaemonSet running ``dmesg -w``: the runtime's time, stream, tag (P: the line goes on), the line."""
    text = (
        f"2025-06-01T10:11:12.123456789Z stdout F [ 1843.308145] {XID48}\n"
        f"2025-06-01T10:11:13.000000000+00:00 stdout P [ 1844.000000] {XID79[:20]}\n"
        f"2025-06-01T10:11:13.000000001+00:00 stdout F {XID79[20:]}\n"
        f"2025-06-01T10:11:14.5Z stderr F {XID13}\n"
    )
    messages = list(logformats.log_messages(text))
    assert [(m.text, m.at) for m in messages] == [(XID48, 1843.308145), (XID79, 1844.0), (XID13, 1748772674.5)]


def test_kubectl_logs_timestamps_and_docker_json_file() -> None:
    kubectl = f"2025-06-01T10:11:12.123456789Z [ 1843.308145] {XID48}\n2025-06-01T10:11:20Z {XID13}\n"
    assert [(m.text, m.at) for m in logformats.log_messages(kubectl)] == [(XID48, 1843.308145), (XID13, 1748772680.0)]
    docker = "".join(
        json.dumps({"log": f"{line}\n", "stream": "stdout", "time": "2025-06-01T10:11:12.5Z"}) + "\n"
        for line in (f"[ 1843.308145] {XID48}", XID13)
    )
    assert [(m.text, m.at) for m in logformats.log_messages(docker)] == [(XID48, 1843.308145), (XID13, 1748772672.5)]


# ---------------------------------------------------------------- the storm window on the log's own times


@pytest.mark.parametrize(
    "stamp",
    [
        lambda s: f"[{1843 + s:>12.6f}] ",  # dmesg: seconds since boot
        lambda s: f"2025-06-01T10:{11 + s // 60:02d}:{s % 60:02d}.000000+00:00 gpu-7 kernel: ",  # short-iso-precise
        lambda s: f"{1748772672 + s}.000000 gpu-7 kernel: ",  # short-unix
        lambda s: f"Jun  1 10:{11 + s // 60:02d}:{s % 60:02d} gpu-7 kernel: ",  # syslog
        lambda s: f"{6 + 0},{s},{(1843 + s) * 1_000_000},-;",  # raw kmsg
    ],
    ids=["dmesg", "journal-iso", "journal-unix", "syslog", "kmsg"],
)
def test_the_storm_window_runs_on_the_logs_own_times(stamp: Any) -> None:
    # 0 s and 30 s: one storm (x2); 200 s: a new episode, counted afresh as the follower does.
    storm = "".join(f"{stamp(s)}{XID48}\n" for s in (0, 30))
    assert findings(judge(storm)) == {("0000:55:00.0", "xid.48"): 2}
    episodes = "".join(f"{stamp(s)}{XID48}\n" for s in (0, 30, 200))
    (finding,) = judge(episodes).data["findings"]
    assert finding["count"] == 1 and finding["last_at"] - finding["first_at"] == 0


def test_dmesg_human_deltas_add_to_the_last_time() -> None:
    text = f"[Jun  1 10:11] {XID48}\n[  +0.000004] {XID13}\n[+100.000000] {XID48}\n"
    times = [m.at for m in logformats.log_messages(text)]
    assert times[1] - times[0] == pytest.approx(4e-6, abs=1e-5) and times[2] - times[1] == pytest.approx(100.0)
    (finding,) = judge(text).data["findings"]
    assert finding["count"] == 1  # 100 s after the first: a new episode


def test_syslog_times_without_a_year_go_on_past_new_year() -> None:
    text = "".join(f"{t} gpu-7 kernel: {XID48}\n" for t in ("Dec 31 23:59:50", "Jan  1 00:00:10", "Jan  1 00:05:00"))
    times = [m.at for m in logformats.log_messages(text)]
    assert times[1] - times[0] == 20.0 and times[2] - times[1] == 290.0
    (finding,) = judge(text).data["findings"]
    assert finding["count"] == 1  # the third is a new episode, not a storm of three


def test_lines_without_a_time_are_one_second_apart() -> None:
    assert findings(judge(f"{XID48}\n" * 5)) == {("0000:55:00.0", "xid.48"): 5}  # 1 s apart: one storm
    (finding,) = judge(f"{XID48}\n" * 5, window=0.5).data["findings"]  # a window under a second: each its own
    assert finding["count"] == 1


# ---------------------------------------------------------------- the follower's judgement


def test_the_result_is_the_one_the_follower_would_store() -> None:
    sxid = "nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 20034, Fatal, Link 63 LTSSM Fault Up"
    aer = "pcieport 0000:00:01.0: AER: Uncorrected (Fatal) error received: 0000:55:00.0"
    lines = [XID48, XID13, *FALLEN, XID48, sxid, aer]

    class Sink:
        def __init__(self) -> None:
            self.results: list[Any] = []

        def emit(self, node: str, result: Any, counted: Any, timed: Any) -> None:
            if result is not None:
                self.results.append(result)

        def last_result(self, node: str) -> None:
            return None

        def kmsg_position(self, node: str) -> None:
            return None

        def save_kmsg_position(self, node: str, boot: str, seq: int) -> None:
            return None

    sink = Sink()
    live = Follower("", sink, storm_window_s=60.0, clock=lambda: 10.0)
    for i, message in enumerate(logformats.messages_from_text("\n".join(lines))):
        live.feed_kmsg(message, written_at=float(i))
    live.flush()
    expected, got = sink.results[-1], judge("\n".join(lines))
    assert (got.status, got.fatal, got.summary, got.devices) == (expected.status, expected.fatal, expected.summary,
                                                                 expected.devices)  # fmt: skip
    assert got.data["findings"] == expected.data["findings"]


def test_no_hold_every_finding_of_the_log_counts() -> None:
    # The follower holds a finding 3 h (the verdict's freshness); a saved log's findings all count.
    text = f"[    0.000000] {XID48}\n[86400.000000] {XID79}\n"
    assert set(findings(judge(text))) == {("0000:55:00.0", "xid.48"), ("0000:91:00.0", "xid.79")}


def test_a_log_without_gpu_events_is_ok_and_counts_what_was_ignored() -> None:
    result = judge(f"[    1.000000] Linux version 6.8.0\n[    2.000000] {XID13}\n")
    assert (result.status, result.summary) == (Status.OK, "no GPU events")
    assert result.data["log"]["ignored"] == {"xid.13": 1}
    assert result.data["log"]["kernel_messages"] == 2


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "holds no log lines"),
        (b"# only a comment\n\n", "holds no log lines"),
        (b"-- No entries --\n", "holds no log lines"),  # journalctl -k on a journal without kernel messages
        (gzip.compress(f"[ 1.0] {XID48}\n".encode()), "gzip-compressed"),
        (b"LPKSHHRH\x00\x00\x00\x00binary journal", "binary journal file"),
        (b"Jun  1 10:11:12 gpu-7 systemd[1]: Started x.\n", "that are not the kernel's (systemd 1)"),
        (b"GPU 00000000:55:00.0\n    Remapped Rows Pending : Yes\n", "cannot tell they are kernel messages"),
        (bytes(range(256)) * 4, "cannot tell they are kernel messages"),
        (b'{"__REALTIME_TIMESTAMP": "1", "MESSAGE": "cut sh\n{{{\n', "not the kernel's (unreadable JSON 2)"),
    ],
    ids=[
        "empty",
        "comment",
        "journal-no-entries",
        "gzip",
        "journal-file",
        "other-program",
        "not-a-log",
        "binary",
        "broken-json",
    ],
)
def test_a_file_with_no_kernel_message_is_an_error_never_ok(data: bytes, words: str) -> None:
    result = judge(data)
    assert result.status is Status.ERROR
    assert words in result.summary


def test_a_bare_line_with_a_gpu_event_is_judged() -> None:
    # ``dmesg -t`` / ``journalctl -o cat``: no prefix, but an Xid line is the kernel's by what it says.
    result = judge(f"{XID48}\n")
    assert (result.status, findings(result)) == (Status.FAIL, {("0000:55:00.0", "xid.48"): 1})


# ---------------------------------------------------------------- the command


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["evaluate", "events", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_reads_a_file_and_stdin_and_sets_the_exit_code(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "kern.log"
    saved.write_text(f"Jun  1 10:11:12 gpu-7 kernel: {XID79}\n")
    code, out, _ = _run(capsys, str(saved), "--json")
    (result,) = json.loads(out)["results"]
    assert (code, result["check"], result["status"], result["fatal"]) == (1, "events", "fail", True)
    assert [d["id"] for d in result["devices"]] == ["0000:91:00.0"]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"[ 1.0] {XID13}\n"))
    code, out, _ = _run(capsys, "-")
    assert code == 0 and "no GPU events" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("Jun  1 10:11:12 gpu-7 systemd[1]: Started x.\n"))
    code, out, _ = _run(capsys, "-", "--json")
    assert code == 3 and json.loads(out)["results"][0]["status"] == "error"


def test_the_command_bounds_the_size_and_takes_no_param(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "big.log"
    saved.write_text(f"[ 1.0] {XID48}\n" * 10)
    monkeypatch.setattr(cli, "MAX_SAVED_OUTPUT", 100)
    code, _, err = _run(capsys, str(saved))
    assert code == 2 and "not a saved tool output" in err
    monkeypatch.setattr(cli, "MAX_SAVED_OUTPUT", 1 << 20)
    code, _, err = _run(capsys, str(saved), "--param", "r=1")
    assert code == 2 and "takes no --param" in err
    code, _, err = _run(capsys, str(tmp_path / "absent.log"))
    assert code == 2 and "cannot read" in err


def test_the_storm_window_setting_is_the_followers(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "dmesg.txt"
    saved.write_text(f"[ 1.0] {XID48}\n[ 31.0] {XID48}\n")
    monkeypatch.setenv("AUTOPILOT_EVENTS_STORM_WINDOW", "10s")
    _, out, _ = _run(capsys, str(saved), "--json")
    assert json.loads(out)["results"][0]["data"]["findings"][0]["count"] == 1
    monkeypatch.setenv("AUTOPILOT_EVENTS_STORM_WINDOW", "60s")
    _, out, _ = _run(capsys, str(saved), "--json")
    assert json.loads(out)["results"][0]["data"]["findings"][0]["count"] == 2


def test_evaluate_help_names_events(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["evaluate", "--help"])
    assert "events" in capsys.readouterr().out


# ---------------------------------------------------------------- the public samples, read in place

# name -> (status, fatal, {(device, code): count}, words in the summary); each read and decided by hand.
SAMPLES: dict[str, tuple[str, bool, dict[tuple[str, str], int], str]] = {
    # the open driver's three-line notice, no Xid line: GPU b3 is lost
    "kernel-gpu-fallen-off-bus_no-xid_open-driver-570.log": ("fail", True, {("0000:b3:00.0", "xid.79"): 1}, "xid.79"),
    # five Xid 119 on GPU 9b: three within a minute, then two more minutes apart: the last episode is held
    "kernel-xid_119_gsp-rpc-timeout_h100.log": ("fail", False, {("0000:9b:00.0", "xid.119"): 1}, "xid.119"),
    # an application's Xid 13 burst and Xid 43: ignored, as the follower ignores them; OOM lines are no GPU's
    "kernel-xid_13_43_dmesg-iso-decode.log": ("ok", False, {}, "no GPU events"),
    # Blackwell DBE: two Xid 48, Xid 171, Xid 154 "Drain and Reset" (a reset); Xid 63 ignored (the remap check's)
    "kernel-xid_48_171_63_154_blackwell-dbe-chain_journalctl.log": (
        "fail",
        False,
        {("0000:55:00.0", "xid.48"): 2, ("0000:55:00.0", "xid.171"): 1, ("0000:55:00.0", "xid.154"): 1},
        "xid.48",
    ),  # fmt: skip
    # one bare Xid 63 line: a kernel line by what it says, and Xid 63 is ignored
    "kernel-xid_63_row-remapper.log": ("ok", False, {}, "no GPU events"),
    # Xid 79 twice (the Xid line and "GPU has fallen off the bus") on 91, SXid 20034 on three NVSwitches
    "kernel-xid_79_sxid_20034_nvswitch.log": (
        "fail",
        True,
        {
            ("0000:91:00.0", "xid.79"): 2,
            ("0000:05:00.0", "sxid.20034"): 3,
            ("0000:06:00.0", "sxid.20034"): 1,
            ("0000:07:00.0", "sxid.20034"): 3,
        },
        "xid.79",
    ),  # fmt: skip
    # nvidia-peermem complaints: kernel messages, none a catalogued GPU event
    "kmsg-raw_nvidia-peermem-errors.log": ("ok", False, {}, "no GPU events"),
    # syslog of systemd-networkd's IB carrier flaps: not one kernel line, so nothing was judged
    "syslog_ib-link-flap_6-flaps.log": ("error", False, {}, "systemd-networkd 12"),
    # the device plugin's klog lines about an Xid 48 it saw through NVML: a pointer to the kernel log, not one
    "k8s-device-plugin_log_xid48-marking-unhealthy.log": ("error", False, {}, "Kubernetes component (klog) 2"),
    # Fabric Manager's log (its NVSwitch error 12028 reaches the kernel log as an SXid): not a kernel log
    "fabricmanager-log_sample.log": ("error", False, {}, "NVIDIA Fabric Manager"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_public_samples_through_the_command(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, fatal, expected, words = SAMPLES[name]
    monkeypatch.setattr("sys.stdin", io.StringIO(sample_text(name)))
    monkeypatch.setenv("AUTOPILOT_EVENTS_STORM_WINDOW", "60s")
    code, out, _ = _run(capsys, "-", "--json")
    (result,) = json.loads(out)["results"]
    assert (result["status"], result["fatal"]) == (status, fatal), result["summary"]
    assert {(f["device"], f["code"]): f["count"] for f in result["data"].get("findings", [])} == expected
    assert words in result["summary"]
    assert code == {"ok": 0, "fail": 1, "error": 3}[status]


def test_the_samples_ignored_xids_are_counted() -> None:
    burst = judge(sample_text("kernel-xid_13_43_dmesg-iso-decode.log"))
    assert burst.data["log"]["ignored"] == {"xid.13": 16, "xid.43": 1}
    chain = judge(sample_text("kernel-xid_48_171_63_154_blackwell-dbe-chain_journalctl.log"))
    assert chain.data["log"]["ignored"] == {"xid.63": 1}


def test_a_line_without_prefix_goes_on_with_another_programs_message_but_not_with_the_kernels() -> None:
    # Fabric Manager's log writes a message's payload on lines of its own; after a kernel line, a bare
    # line is a kernel message (``journalctl -o cat`` mixed in), judged.
    fm = "[Feb 27 2025 15:10:02] [ERROR] [tid 12727] detected NVSwitch non-fatal error\nMessage payload: x\n"
    assert [(m.text, m.source) for m in logformats.log_messages(fm)] == [
        ("detected NVSwitch non-fatal error\nMessage payload: x", "NVIDIA Fabric Manager")
    ]
    kernel = f"Jun  1 10:11:12 gpu-7 kernel: {XID13}\n{XID48}\n"
    assert [(m.text, m.source) for m in logformats.log_messages(kernel)] == [(XID13, "kernel"), (XID48, "")]


def test_another_programs_quote_of_the_headline_takes_no_kernel_line_with_it() -> None:
    quote = f"Jun  1 10:11:12 gpu-7 gpud[9]: {FALLEN[0]}\n"
    text = quote + "".join(f"Jun  1 10:11:13 gpu-7 kernel: {x}\n" for x in FALLEN[1:])
    assert [m.text for m in logformats.log_messages(text) if m.judged] == FALLEN[1:]


def test_names_from_the_log_are_bounded() -> None:
    text = "".join(f"Jun  1 10:11:12 gpu-7 p{i:03d}{'x' * 200}: hello\n" for i in range(50))
    result = judge(text)
    assert result.status is Status.ERROR
    assert len(result.data["log"]["other_sources"]) == 20
    assert max(len(k) for k in result.data["log"]["other_sources"]) == 64


def test_journalctl_boot_markers_are_no_messages() -> None:
    text = f"-- Boot 3c1b2a --\nJun  1 10:11:12 gpu-7 kernel: {XID48}\n-- Boot 9f8e7d --\n"
    assert [(m.text, m.source) for m in logformats.log_messages(text)] == [(XID48, "kernel")]
