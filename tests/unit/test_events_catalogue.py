"""The event catalogue and the kernel-log classification, over hand-written lines and every public sample."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from autopilot.events import catalogue, kmsg, logformats
from autopilot.events.catalogue import Action
from autopilot.names import bus_id
from tests.conftest import ROOT, SAMPLES, sample_text

# ---------------------------------------------------------------- the catalogue


def test_every_published_xid_is_listed_with_an_action_and_an_owner() -> None:
    xids = catalogue.all_xids()
    # NVIDIA's Xid Catalog numbers its rows 1..172 without holes.
    assert sorted(xids) == list(range(1, 173))
    for code, entry in xids.items():
        assert entry.owner in catalogue.OWNERS, code
        assert entry.mnemonic, code
    assert "docs.nvidia.com" in catalogue.data()["xid"]["source"]


@pytest.mark.parametrize("code", [13, 31, 43, 45])
def test_application_xids_never_evict(code: int) -> None:
    entry = catalogue.classify_xid(code, "pid=1234, name=python")
    assert entry.owner == "application"
    assert entry.action is Action.IGNORE


@pytest.mark.parametrize(
    ("code", "action"),
    [(48, "reset"), (63, "ignore"), (64, "reset"), (74, "reset"), (79, "evict"), (92, "ignore"), (94, "warn"),
     (95, "reset"), (119, "reset"), (120, "reset")],
)  # fmt: skip
def test_named_xids_follow_nvidias_immediate_action(code: int, action: str) -> None:
    assert catalogue.classify_xid(code).action.value == action


@pytest.mark.parametrize(
    ("code", "message", "action", "owner"),
    [
        # RESTART_VM: the GPU is unusable until its VM restarts; a GPU fail, not the node's eviction.
        (151, "Key rotation Error", "reset", "unknown"),
        # CHECK_UVM: RESET_GPU where UVM is in use, which every CUDA job's runtime makes it.
        (159, "CHI Non-Data Error", "reset", "hardware"),
        # The driver's Xid 160 is a pending HBM channel / L2 repair (its message format, written by hand
        # after open-gpu-kernel-modules' ECC_CHANNEL_REPAIR_PENDING_XID_MESSAGE_FMT): warn, as the same
        # state read from NVML (repair.channel), though the catalogue's bucket is IGNORE.
        (160, "Marking Channel 3 in FBPA 2 along with its pair for repair. Perform GPU reset to activate repair.",
         "warn", "hardware"),
        (161, "Repairing Channel failed as there are no more spare channels.", "ignore", "hardware"),
    ],
)  # fmt: skip
def test_xids_whose_bucket_needs_a_restart_or_a_pending_repair_are_never_passed_over(
    code: int, message: str, action: str, owner: str
) -> None:
    entry = catalogue.classify_xid(code, message)
    assert (entry.action.value, entry.owner) == (action, owner)
    assert catalogue.counter("repair.channel").action is catalogue.classify_xid(160, message).action


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("GPU recovery action changed from 0x0 (None) to 0x4 (Drain and Reset)", "reset"),
        ("GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)", "evict"),
        ("GPU recovery action changed from 0x4 (Drain and Reset) to 0x0 (None)", "ignore"),
        ("GPU recovery action changed from 0x0 (None) to 0x3 (Drain P2P)", "warn"),
        ("GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)", "reset"),
        # A name no public log shows yet: the value (nvmlDeviceGpuRecoveryAction_t) decides.
        ("GPU recovery action changed from 0x0 (None) to 0x7 (System Reboot Required)", "evict"),
        ("GPU recovery action changed from 0x0 (None) to 0x6 (Bus Reset Required)", "reset"),
        ("GPU recovery action changed from 0x0 (None) to 0x5 (Recover IMEX Domain)", "warn"),
        ("GPU recovery action changed from 0x0 (None) to 0x2a (Something New)", "warn"),
        ("something the driver never printed", "warn"),
    ],
)
def test_xid_154_takes_the_recovery_action_it_names(text: str, action: str) -> None:
    assert catalogue.classify_xid(154, text).action.value == action


def test_every_recovery_action_of_the_pinned_binding_has_a_sourced_row() -> None:
    """nvidia-ml-py's NVML_GPU_RECOVERY_ACTION_* (nvml.h's nvmlDeviceGpuRecoveryAction_t) each have a row
    with their name, an action and why; the row's action is what NVML's reading of that value gets."""
    pynvml = pytest.importorskip("pynvml")
    section = catalogue.data()["xid"]["xid154"]
    assert "error-recovery-and-response-flags" in section["source"]
    enum = {name.removeprefix("NVML_GPU_RECOVERY_ACTION_"): getattr(pynvml, name) for name in dir(pynvml)
            if name.startswith("NVML_GPU_RECOVERY_ACTION_")}  # fmt: skip
    assert enum["NONE"] == 0 and enum["NODE_REBOOT"] == 2 and len(enum) >= 5
    for name, value in enum.items():
        row = section["values"][str(value)]
        assert row["nvml"] == name and row["why"] and row["meaning"], name
        assert catalogue.recovery_action(value).action.value == row["action"], name
    expected = {"NONE": "ignore", "GPU_RESET": "reset", "NODE_REBOOT": "evict", "DRAIN_P2P": "warn",
                "DRAIN_AND_RESET": "reset", "SYSTEM_REBOOT": "evict"}  # fmt: skip
    assert {k: catalogue.recovery_action(enum[k]).action.value for k in expected if k in enum} == {
        k: v for k, v in expected.items() if k in enum
    }
    assert catalogue.recovery_action(99).action is Action.WARN  # a value newer than the table


def test_nvlink5_xids_reset_only_when_the_message_says_fatal() -> None:
    assert catalogue.classify_xid(149, " NETIR_LINK_EVT Fatal XC0 i0 Link 03 (0x0000e111 ...)").action is Action.RESET
    assert catalogue.classify_xid(149, " NETIR_BER_EVENT Nonfatal XC0 i0 Link 03").action is Action.WARN


def test_an_unknown_code_warns_with_its_number() -> None:
    entry = catalogue.classify_xid(4242)
    assert (entry.action, entry.known, entry.code) == (Action.WARN, False, "xid.4242")
    assert "4242" in entry.meaning
    assert catalogue.classify_sxid(11111, "Non-fatal, Link 3").action is Action.WARN
    assert catalogue.classify_sxid(22222, "Fatal, Link 3").action is Action.RESET


def test_every_listed_sxid_names_its_source_and_follows_its_class() -> None:
    """The SXid table follows the Fabric Manager guide's classes: corrected ECC ignored, fatal reset,
    always fatal (the fabric is down until the host restarts) evict; each row says where it comes from."""
    section = catalogue.data()["sxid"]
    assert "fabric-manager-user-guide" in section["source"]
    codes = section["codes"]
    assert len(codes) >= 80
    for number, row in codes.items():
        entry = catalogue.lookup("sxid", number)
        assert entry.owner == "hardware" and entry.mnemonic and entry.meaning, number
        assert "Fabric Manager User Guide" in row["source"], number
        kind = row["source"].rsplit(": ", 1)[1]
        allowed = {
            "Non-Fatal NVSwitch SXid Errors": {Action.IGNORE, Action.WARN, Action.RESET},
            "Fatal NVSwitch SXid Errors": {Action.RESET},
            "Always Fatal NVSwitch SXid Errors": {Action.EVICT},
            "Other Notable NVSwitch SXid Errors": {Action.WARN, Action.EVICT},
        }[kind]
        assert entry.action in allowed, (number, kind, entry.action)


@pytest.mark.parametrize(
    ("code", "printed", "action"),
    [(11012, "Non-fatal", "ignore"), (20001, "Non-fatal", "warn"), (12028, "Non-fatal", "reset"),
     (19047, "Fatal", "reset"), (20034, "Fatal", "reset"), (22003, "Fatal", "evict"), (23001, "Fatal", "evict")],
)  # fmt: skip
def test_a_listed_sxid_takes_its_rows_action_whatever_the_severity_word(code: int, printed: str, action: str) -> None:
    entry = catalogue.classify_sxid(code, f"{printed}, Link 07 ({code}, the driver's words)")
    assert entry.known and entry.action.value == action


def test_the_catalogue_is_installed_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["autopilot"]
    assert any(Path("data/events.json").match(p) for p in patterns)


# ---------------------------------------------------------------- kmsg records and lines


def test_a_kmsg_record_is_parsed_and_its_escapes_undone() -> None:
    raw = b"4,1021,5001234,-;NVRM: The NVIDIA GPU 0000:b3:00.0\\x0aNVRM: has fallen off the bus.\n SUBSYSTEM=pci\n"
    record = kmsg.parse_record(raw)
    assert record is not None
    assert (record.seq, record.ts_us, record.priority) == (1021, 5001234, 4)
    assert record.message == "NVRM: The NVIDIA GPU 0000:b3:00.0\nNVRM: has fallen off the bus."
    assert kmsg.parse_record(b"not a record") is None
    assert kmsg.parse_record(b"x,y,z;text") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("PCI:0000:9b:00", "0000:9b:00.0"), ("00000000:9B:00.0", "0000:9b:00.0"), ("0000:05:00.1", "0000:05:00.1"),
     ("mlx5_0/1", "mlx5_0/1")],
)  # fmt: skip
def test_bus_ids_from_the_driver_nvml_and_kernel_are_one_form(text: str, expected: str) -> None:
    assert bus_id(text) == expected


@pytest.mark.parametrize(
    ("line", "code", "device", "action"),
    [
        ("pcieport 0000:00:01.0: AER: Uncorrected (Fatal) error received: 0000:01:00.0", "aer.fatal", "0000:01:00.0",
         "evict"),
        ("pcieport 0000:00:03.1: AER: Uncorrected (Non-Fatal) error received: 0000:17:00.0", "aer.nonfatal",
         "0000:17:00.0", "warn"),
        ("pcieport 0000:00:03.1: AER: Correctable error message received from 0000:17:00.0", "aer.corrected",
         "0000:17:00.0", "ignore"),
        ("nvidia 0000:3b:00.0: AER: PCIe Bus Error: severity=Uncorrected (Fatal), type=Transaction Layer",
         "aer.fatal", "0000:3b:00.0", "evict"),
        ("NVRM: Xid (0000:03:00): 14, Channel 00000001", "xid.14", "0000:03:00.0", "ignore"),
        # MIG: the GPU instance (and compute instance) follow the bus id; the form NVIDIA's "A100 GPU
        # memory error management" guide prints for Xid 94/95.
        ("NVRM: Xid (PCI:0000:01:00 GPU-I:05): 95, pid=7194, Uncontained: FBHUB. RST: Yes, D-RST: No",
         "xid.95", "0000:01:00.0", "reset"),
        ("NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:02): 79, pid=9, name=a, GPU has fallen off the bus.",
         "xid.79", "0000:3b:00.0", "evict"),
        # Kernels before 4.20 (aer_print_port_info: "error received: id=%04x") name the source by its
        # requester id (bus << 8 | devfn), in the reporting port's domain.
        ("pcieport 0000:3a:00.0: AER: Uncorrected (Fatal) error received: id=3b00", "aer.fatal", "0000:3b:00.0",
         "evict"),
        ("pcieport 0001:00:02.0: AER: Multiple Corrected error received: id=0119", "aer.corrected", "0001:01:03.1",
         "ignore"),
    ],
)  # fmt: skip
def test_aer_and_old_style_xid_lines(line: str, code: str, device: str, action: str) -> None:
    [event] = kmsg.classify(line)
    assert (event.code, event.device, event.action.value) == (code, device, action)


@pytest.mark.parametrize(
    ("line", "device"),
    [
        # Xid and fallen-off-the-bus lines as copied from a host whose tools drop the PCI domain
        # (written by hand in the driver's form, the domain left out): the GPU is in domain 0.
        ("NVRM: Xid (PCI:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.", "0000:3b:00.0"),
        ("NVRM: Xid (3b:00): 79, GPU has fallen off the bus.", "0000:3b:00.0"),
        ("NVRM: GPU at 3b:00.0 has fallen off the bus.", "0000:3b:00.0"),
    ],
)
def test_xid_lines_without_a_pci_domain_are_read(line: str, device: str) -> None:
    [event] = kmsg.classify(line)
    assert (event.code, event.device, event.action) == ("xid.79", device, Action.EVICT)


@pytest.mark.parametrize(
    ("line", "code", "action"),
    [
        # The driver writes a comma after the code; a copy without it keeps the words that decide.
        ("NVRM: Xid (PCI:0009:01:00): 149 NETIR_LINK_EVT Fatal XC0 i0 Link 01 (0x021425c6 0x00000000)", "xid.149",
         Action.RESET),
        ("NVRM: Xid (PCI:0000:3b:00): 154 GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
         "xid.154", Action.EVICT),
        ("nvidia-nvswitch2: SXid (PCI:0000:07:00.0): 99999 Fatal, Link 37 something new", "sxid.99999", Action.RESET),
    ],
)  # fmt: skip
def test_a_line_without_the_comma_after_its_code_still_reads_its_message(line: str, code: str, action: Action) -> None:
    [event] = kmsg.classify(line)
    assert (event.code, event.action) == (code, action)


@pytest.mark.parametrize(
    ("line", "device"),
    [
        # Behind an Intel VMD bridge Linux numbers the PCI domain from 10000 (five hex digits); the
        # AER lines below follow the kernel's aer_print_port_info / aer_print_error forms.
        ("pcieport 10000:e0:01.0: AER: Uncorrected (Fatal) error received: 10000:e1:00.0", "10000:e1:00.0"),
        ("pcieport 10000:e0:01.0: AER: Uncorrected (Fatal) error received: id=e100", "10000:e1:00.0"),
        ("nvidia 10000:e1:00.0: AER: PCIe Bus Error: severity=Uncorrected (Fatal), type=Inaccessible",
         "10000:e1:00.0"),
    ],
)  # fmt: skip
def test_aer_lines_in_a_vmd_domain_name_the_device_in_that_domain(line: str, device: str) -> None:
    [event] = kmsg.classify(line)
    assert (event.code, event.device) == ("aer.fatal", device)


def test_a_fallen_off_the_bus_headline_that_names_its_pci_id_is_joined_with_its_last_line() -> None:
    # The notice's first two lines folded into one (as some copies of it print them), each line then
    # written by rsyslog with its own prefix: still one Xid 79 for that GPU.
    lines = [
        "NVRM: The NVIDIA GPU 0000:01:00.0 (PCI ID: 10de:2d04) installed in this system has",
        "NVRM: fallen off the bus and is not responding to commands.",
        "nvidia: probe of 0000:01:00.0 failed with error -1",
    ]
    text = "".join(f"Jun  1 10:11:12 gpu-7 kernel: {line}\n" for line in lines)
    events = [e for m in logformats.messages_from_text(text) for e in kmsg.classify(m)]
    assert [(e.code, e.device, e.action) for e in events] == [("xid.79", "0000:01:00.0", Action.EVICT)]


def test_aer_detail_lines_and_other_kernel_lines_are_no_events() -> None:
    assert kmsg.classify("pcieport 0000:00:01.0: AER:   device [8086:2030] error status/mask=00000001/00002000") == []
    assert kmsg.classify("NVRM: GPU at PCI:0000:9b:00: GPU-509665ad-b600-ac93-3616-d754b23d636d") == []
    assert kmsg.classify("oom-kill:constraint=CONSTRAINT_MEMCG") == []


# The open driver's (570+) fallen-off-the-bus notice, written by hand after the dmesg copy in
# NVIDIA/NVSentinel#155: one printk of three lines. rsyslog's imklog reads /proc/kmsg, where the
# kernel prefixes every line of a record (kern.log then has three prefixed lines, the kernel
# timestamp after the syslog one); ``journalctl -o cat`` prints them bare.
_FALLEN = (
    "NVRM: The NVIDIA GPU 0000:b3:00.0",
    "NVRM: (PCI ID: 10de:26b5) installed in this system has",
    "NVRM: fallen off the bus and is not responding to commands.",
)


@pytest.mark.parametrize(
    "prefix",
    [
        "Jun  1 10:11:12 gpu-7 kernel: [ 1843.308145] ",
        "<4>[ 1843.308145] ",
        "",
        "kern  :err   : [ 1843.308145] ",
        "kern  :err   : [Sun Jun  1 10:11:12 2025] ",
        "[ 1843.308145] gpu-7 kernel: ",
        "1748772672.308145 gpu-7 kernel: ",
        "Sun 2025-06-01 10:11:12 UTC gpu-7 kernel: ",
    ],
    ids=[
        "kern.log",
        "proc-kmsg",
        "journalctl-o-cat",
        "dmesg-x",
        "dmesg-x-T",
        "journalctl-o-short-monotonic",
        "journalctl-o-short-unix",
        "journalctl-o-short-full",
    ],
)
def test_the_open_drivers_fallen_off_the_bus_notice_one_line_per_log_line_is_one_xid_79(prefix: str) -> None:
    text = "".join(f"{prefix}{line}\n" for line in _FALLEN)
    text += f"{prefix}NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=python, Graphics Exception\n"
    # A headline cut short (its other lines lost) takes no later GPU's own message with it.
    text += f"{prefix}{_FALLEN[0].replace('b3', 'c3')}\n{prefix}NVRM: GPU 0000:d3:00.0: GPU has fallen off the bus.\n"
    # Nor another GPU's three-line notice: its headline starts a message of its own.
    text += f"{prefix}{_FALLEN[0].replace('b3', 'c4')}\n"
    text += "".join(f"{prefix}{line.replace('b3', 'e3')}\n" for line in _FALLEN)
    events = [e for m in logformats.messages_from_text(text) for e in kmsg.classify(m)]
    assert [(e.code, e.device, e.action) for e in events] == [
        ("xid.79", "0000:b3:00.0", Action.EVICT),
        ("xid.13", "0000:3b:00.0", Action.IGNORE),
        ("xid.79", "0000:d3:00.0", Action.EVICT),
        ("xid.79", "0000:e3:00.0", Action.EVICT),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "2025-06-01T10:11:12+0000 gpu-7 kernel: ",  # journalctl -o short-iso
        "2025-06-01T10:11:12.123456+00:00 gpu-7 kernel: ",  # journalctl -o short-iso-precise, rsyslog RFC 3339
        "Jun 01 10:11:12.123456 gpu-7 kernel: ",  # journalctl -o short-precise
        "Jun  1 10:11:12 gpu-7 kernel: [ 1843.308145] ",  # kern.log: the kernel's timestamp kept
        "2025-06-01T10:11:12,123456+00:00 ",  # dmesg --time-format=iso
        "[Jun  1 10:11] ",  # dmesg -H, first line of a minute
        "[  +0.000004] ",  # dmesg -H, later lines
        "kern  :warn  : [ 1843.308145] ",  # dmesg -x (--decode)
        "kern  :err   : [Sun Jun  1 10:11:12 2025] ",  # dmesg -x -T
        "kern  :err   : 2025-06-01T10:11:12,123456+00:00 ",  # dmesg -x --time-format=iso
        "[ 1843.308145] gpu-7 kernel: ",  # journalctl -o short-monotonic
        "[ 1843.308145 <    0.000004>] gpu-7 kernel: ",  # journalctl -o short-delta
        "1748772672.308145 gpu-7 kernel: ",  # journalctl -o short-unix
        "Sun 2025-06-01 10:11:12 UTC gpu-7 kernel: ",  # journalctl -o short-full
    ],
)
def test_journal_and_syslog_time_formats_leave_the_kernel_message(line: str) -> None:
    xid = "NVRM: Xid (PCI:0000:ab:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
    assert list(logformats.messages_from_text(line + xid + "\n")) == [xid]


# ---------------------------------------------------------------- every public kernel-log sample

KERNEL_SAMPLES = ["kernel-*.log", "kmsg-raw_*.log", "fabricmanager-log_*.log", "k8s-device-plugin_log_*.log",
                  "syslog_ib-link-flap_*.log"]  # fmt: skip
_XID_LINE = re.compile(r"(?<!S)Xid \((?:PCI:)?([0-9a-fA-F:.]+)\): (\d+)")
_SXID_LINE = re.compile(r"SXid \(PCI:([0-9a-fA-F:.]+)\): (\d+)")


def _sample_names() -> list[str]:
    return sorted(p.name for pattern in KERNEL_SAMPLES for p in SAMPLES.glob(pattern)) or ["(samples absent)"]


def _expected(message: str) -> tuple[str, str, Action] | None:
    """What the line says, read independently of ``kmsg.classify``: (code, bus, catalogue action)."""
    if m := _XID_LINE.search(message):
        return f"xid.{m.group(2)}", _bus(m.group(1)), catalogue.classify_xid(int(m.group(2)), message).action
    if m := _SXID_LINE.search(message):
        return f"sxid.{m.group(2)}", _bus(m.group(1)), catalogue.classify_sxid(int(m.group(2)), message).action
    if "fallen off the bus" in message:
        bus = re.search(r"(?:GPU|PCI:)\s*([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.\d)?)", message)
        assert bus is not None, message
        return "xid.79", _bus(bus.group(1)), catalogue.lookup("xid", "79").action
    if " AER: " in message:
        raise AssertionError(f"no AER sample was expected: {message}")
    return None


def _bus(text: str) -> str:
    parts = text.split(":")
    dev, _, fn = parts[-1].partition(".")
    return f"{int(parts[-3], 16):04x}:{int(parts[-2], 16):02x}:{int(dev, 16):02x}.{fn or '0'}"


@pytest.mark.parametrize("name", _sample_names())
def test_every_sample_line_gets_the_catalogues_action_for_the_right_device(name: str) -> None:
    text = sample_text(name) if name != "(samples absent)" else pytest.skip("samples absent")
    seen = 0
    for message in logformats.messages_from_text(text):
        expected = _expected(message)
        events = kmsg.classify(message)
        if expected is None:
            assert events == [], message
            continue
        seen += 1
        assert [(e.code, e.device, e.action) for e in events] == [expected], message
    fault_samples = ("kernel-",)
    if name.startswith(fault_samples):
        assert seen > 0, f"{name}: no fault line found"


def test_the_samples_verdicts() -> None:
    """The sample's own story: Xid 79 evicts GPU 0000:91:00.0, the Xid 13/43 burst is an application's."""
    events = [e for m in logformats.messages_from_text(sample_text("kernel-xid_79_sxid_20034_nvswitch.log"))
              for e in kmsg.classify(m)]  # fmt: skip
    assert {(e.device, e.action) for e in events if e.code == "xid.79"} == {("0000:91:00.0", Action.EVICT)}
    burst = [e for m in logformats.messages_from_text(sample_text("kernel-xid_13_43_dmesg-iso-decode.log"))
             for e in kmsg.classify(m)]  # fmt: skip
    assert {e.code for e in burst} == {"xid.13", "xid.43"}
    assert {e.action for e in burst} == {Action.IGNORE}
    assert {e.pid for e in burst if e.code == "xid.43"} == {"2924364"}


def test_the_device_plugins_nvml_xid_maps_to_the_gpu_the_kernel_log_names() -> None:
    """The device plugin logs the NVML event (Xid=48 on a GPU UUID); the kernel's "GPU at PCI:<bus>:
    GPU-<uuid>" line of the same incident gives its bus id, and the NVML path classifies it as the
    kernel line does."""
    from autopilot.events.follower import nvml_event
    from autopilot.nvml_events import NvmlEvent

    plugin = sample_text("k8s-device-plugin_log_xid48-marking-unhealthy.log")
    kernel = sample_text("kernel-xid_48_171_63_154_blackwell-dbe-chain_journalctl.log")
    found = re.search(r"XidCriticalError: Xid=(\d+) on Device=(GPU-[0-9a-f-]+)", plugin)
    assert found
    code, uuid = int(found.group(1)), found.group(2)
    bus_of = {u: b for b, u in re.findall(r"NVRM: GPU at PCI:([0-9a-f:]+): (GPU-[0-9a-f-]+)", kernel)}
    event = nvml_event(NvmlEvent("xid", bus_of[uuid], code), 0.0)
    kernel_events = (e for m in logformats.messages_from_text(kernel) for e in kmsg.classify(m))
    kernel_event = next(e for e in kernel_events if e.code == "xid.48")
    assert (event.code, event.device, event.action) == (kernel_event.code, kernel_event.device, kernel_event.action)
    assert (event.device, event.action) == ("0000:55:00.0", Action.RESET)


@pytest.mark.parametrize(
    "line",
    [
        "NVRM: Xid (PCI:0000:3b:00): " + "9" * 5000 + ", pid=1, name=x, Ch 00000001",
        "nvidia-nvswitch0: SXid (PCI:0000:05:00.0): " + "7" * 5000 + ", Non-fatal, Link 32",
    ],
    ids=["xid", "sxid"],
)
def test_a_code_of_thousands_of_digits_is_no_event_and_does_not_raise(line: str) -> None:
    # int() refuses more than 4,300 digits: the follower died on such a line before.
    assert kmsg.classify(line) == []


def test_a_five_digit_xid_is_still_read() -> None:
    (event,) = kmsg.classify("NVRM: Xid (PCI:0000:3b:00): 12345, pid=1, name=x")
    assert event.entry.code == "xid.12345"


def test_every_recovery_action_entry_has_the_code_the_counters_mark_standing() -> None:
    # The counters mark a standing recovery action by this code without building its entry each poll.
    from autopilot.events import counters

    assert {catalogue.recovery_action(v).code for v in range(-1, 10)} == {counters._RECOVERY_CODE}
