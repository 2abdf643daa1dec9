"""The nvidia-smi parsers: -q report trees, corruption detection, CSV queries, per-GPU readers."""

from __future__ import annotations

import pytest

from autopilot import gpus, nvsmi
from autopilot.checks import pciebw, remapped
from autopilot.config import Settings
from autopilot.results import Status
from tests.conftest import sample_text

# Handwritten, shaped like a driver 550 report of two GPUs (values invented).
TWO_GPUS = """\
==============NVSMI LOG==============

Timestamp                                 : Sun Nov 29 22:00:00 2026
Driver Version                            : 550.90.07
CUDA Version                              : 12.4

Attached GPUs                             : 2
GPU 00000000:1A:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    PCI
        Bus Id                            : 00000000:1A:00.0
        GPU Link Info
            PCIe Generation
                Max                       : 5
                Current                   : 5
                Device Current            : 5
                Device Max                : 5
                Host Max                  : 5
            Link Width
                Max                       : 16x
                Current                   : 8x
    Clocks Event Reasons
        Idle                              : Not Active
        SW Power Cap                      : Active
        HW Slowdown                       : Not Active
            HW Thermal Slowdown           : Not Active
            HW Power Brake Slowdown       : Not Active
        SW Thermal Slowdown               : Not Active
    Clocks Event Reasons Counters
        SW Power Capping                  : 123456 us
        HW Thermal Slowdown               : 0 us
    Remapped Rows
        Correctable Error                 : 2
        Uncorrectable Error               : 0
        Pending                           : No
        Remapping Failure Occurred        : No
        Bank Remap Availability Histogram
            Max                           : 2559 bank(s)
            High                          : 1 bank(s)
    Processes
        Process ID                        : 11
            Name                          : /usr/bin/python3
        Process ID                        : 12
            Name                          : /usr/bin/time
GPU 00000000:2B:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    Clocks Throttle Reasons
        Idle                              : Active
        HW Slowdown                       : N/A
    Remapped Rows                         : N/A
    Processes                             : None
"""


def test_report_splits_into_gpu_sections_in_index_order() -> None:
    report = nvsmi.parse_q(TWO_GPUS)
    assert report.driver_version == "550.90.07"
    assert report.header["Timestamp"] == "Sun Nov 29 22:00:00 2026"  # colons inside a value are kept
    assert report.attached == 2
    assert report.full and not report.excerpt
    assert [(g.index, g.bus_id) for g in report.gpus] == [(0, "00000000:1A:00.0"), (1, "00000000:2B:00.0")]


def test_entries_nest_by_indentation_and_repeat_keys_stay_in_order() -> None:
    gpu0 = nvsmi.parse_q(TWO_GPUS).gpus[0]
    assert gpu0.root.value_at("PCI", "Bus Id") == "00000000:1A:00.0"
    assert gpu0.root.value_at("PCI", "GPU Link Info", "Link Width", "Current") == "8x"
    processes = gpu0.find("Processes")
    assert processes is not None and processes.value is None
    assert [(c.key, c.value, c.children[0].value) for c in processes.children] == [
        ("Process ID", "11", "/usr/bin/python3"),
        ("Process ID", "12", "/usr/bin/time"),
    ]
    # lookups ignore case and inner spacing
    assert gpu0.root.value_at("remapped  rows", "PENDING") == "No"


def test_report_announcing_more_gpus_than_it_holds_is_truncated() -> None:
    text = TWO_GPUS.replace("Attached GPUs                             : 2", "Attached GPUs : 3")
    with pytest.raises(nvsmi.ParseError, match="announces 3 GPUs but holds 2"):
        nvsmi.parse_q(text)


def test_full_report_cut_before_the_last_processes_entry_is_truncated() -> None:
    cut = TWO_GPUS[: TWO_GPUS.rindex("    Processes")]
    with pytest.raises(nvsmi.ParseError, match="GPU 1 .* ends early"):
        nvsmi.parse_q(cut)


def test_quoted_excerpt_with_elisions_is_tolerated() -> None:
    text = """\
Driver Version                            : 510.73.08
Attached GPUs                             : 8
GPU 00000000:10:1C.0
    Product Name                          : NVIDIA A100-SXM4-80GB
    [...]
    Remapped Rows
        Pending                           : Yes
[...]
"""
    report = nvsmi.parse_q(text)
    assert report.excerpt and report.attached == 8 and len(report.gpus) == 1
    assert report.gpus[0].root.value_at("Remapped Rows", "Pending") == "Yes"


@pytest.mark.parametrize("lost", ["GPU0000:1A:00.0", "gpu 0000:1A:00.0"])
def test_gpu_without_a_handle_keeps_its_index_and_carries_the_error(lost: str) -> None:
    text = f"""\
Attached GPUs                             : 2
Unable to determine the device handle for {lost}: Unknown Error
GPU 00000000:2B:00.0
    Remapped Rows
        Correctable Error                 : 0
        Uncorrectable Error               : 0
        Pending                           : No
        Remapping Failure Occurred        : No
"""
    report = nvsmi.parse_q(text)
    assert [(g.index, g.bus_id, g.error is not None) for g in report.gpus] == [
        (0, "0000:1A:00.0", True),
        (1, "00000000:2B:00.0", False),
    ]
    with pytest.raises(nvsmi.ParseError, match="Unknown Error"):
        nvsmi.remapped_rows_from_q(report.gpus[0])
    assert nvsmi.remapped_rows_from_q(report.gpus[1]) == gpus.RemappedRows(0, 0, False, False)


# A -q report of three GPUs whose second nvidia-smi could not open (its section is missing), and an XML
# report of two whose first is missing: what follows the lost-GPU line in the tests below.
_TWO_OF_THREE_GPUS = """
==============NVSMI LOG==============

Attached GPUs                             : 3
GPU 00000000:1A:00.0
    Remapped Rows
        Pending                           : No
GPU 00000000:3C:00.0
    Remapped Rows
        Pending                           : Yes
"""
_XML_1_OF_2 = (
    '<?xml version="1.0" ?>\n<nvidia_smi_log><attached_gpus>2</attached_gpus>'
    '<gpu id="00000000:3C:00.0"><product_name>NVIDIA H100 80GB HBM3</product_name><processes>'
    "</processes></gpu></nvidia_smi_log>\n"
)


def test_a_lost_gpu_line_naming_its_index_places_it_there_wherever_it_is_printed() -> None:
    # Newer drivers: "Unable to determine the device handle for GPU1: 0000:2B:00.0: Unknown Error"
    # (index, then bus id). A copy saved with 2>&1 prints that stderr line ahead of the report;
    # the other sections keep their own indexes.
    text = "Unable to determine the device handle for GPU1: 0000:2B:00.0: Unknown Error\n" + _TWO_OF_THREE_GPUS
    report = nvsmi.parse_q(text)
    assert sorted((g.index, g.bus_id, g.error is not None) for g in report.gpus) == [
        (0, "00000000:1A:00.0", False),
        (1, "0000:2B:00.0", True),
        (2, "00000000:3C:00.0", False),
    ]


def test_a_lost_gpu_line_beside_an_xml_report_is_that_gpus_section() -> None:
    report = nvsmi.parse_q(
        "Unable to determine the device handle for GPU0: 0000:1A:00.0: Unknown Error\n" + _XML_1_OF_2
    )
    assert [(g.index, g.bus_id, g.error is not None) for g in report.gpus] == [
        (0, "0000:1A:00.0", True),
        (1, "00000000:3C:00.0", False),
    ]


def test_a_lost_gpu_line_without_its_index_printed_ahead_is_placed_by_its_bus_id() -> None:
    # Older drivers name the GPU by bus id alone ("for GPU0000:2B:00.0"); a copy saved with stderr first
    # prints it ahead of the report. nvidia-smi numbers GPUs in PCI bus order: the lost GPU is 1, not the
    # last, and the healthy GPU at 3C keeps index 2 (it was blamed as GPU 1's, and GPU 2 as the lost one).
    text = "Unable to determine the device handle for GPU0000:2B:00.0: Unknown Error\n" + _TWO_OF_THREE_GPUS
    report = nvsmi.parse_q(text)
    assert sorted((g.index, g.bus_id, g.error is not None) for g in report.gpus) == [
        (0, "00000000:1A:00.0", False),
        (1, "0000:2B:00.0", True),
        (2, "00000000:3C:00.0", False),
    ]
    report = nvsmi.parse_q("Unable to determine the device handle for GPU0000:1A:00.0: Unknown Error\n" + _XML_1_OF_2)
    assert [(g.index, g.bus_id, g.error is not None) for g in report.gpus] == [
        (0, "0000:1A:00.0", True),
        (1, "00000000:3C:00.0", False),
    ]
    rows = "gpu_bus_id, remapped_rows.pending\n00000000:1A:00.0, No\n00000000:3C:00.0, Yes\n"
    placed = nvsmi.parse_csv_gpus("Unable to determine the device handle for GPU0000:2B:00.0: Unknown Error\n" + rows)
    assert [(i, e.bus_id if isinstance(e, nvsmi.LostGpu) else e["gpu_bus_id"]) for i, e in placed] == [
        (0, "00000000:1A:00.0"),
        (1, "0000:2B:00.0"),
        (2, "00000000:3C:00.0"),
    ]


def test_csv_gpus_place_rows_around_the_gpus_nvidia_smi_could_not_open() -> None:
    text = (
        "gpu_bus_id, remapped_rows.pending\n"
        "00000000:1A:00.0, No\n"
        "Unable to determine the device handle for GPU0000:2B:00.0: Unknown Error\n"
        "00000000:3C:00.0, Yes\n"
    )
    placed = nvsmi.parse_csv_gpus(text)
    assert [(i, e.bus_id if isinstance(e, nvsmi.LostGpu) else e["gpu_bus_id"]) for i, e in placed] == [
        (0, "00000000:1A:00.0"),
        (1, "0000:2B:00.0"),
        (2, "00000000:3C:00.0"),
    ]
    with pytest.raises(nvsmi.ParseError, match="could not open the GPU at 0000:2B:00.0"):
        nvsmi.parse_csv(text)  # the rows alone would shift GPU 2 into GPU 1's place
    with pytest.raises(nvsmi.ParseError, match="named twice"):
        nvsmi.parse_csv_gpus("index, x\n1, a\nUnable to determine the device handle for GPU1: 0000:2B:00.0: Lost\n")


def test_a_report_whose_only_gpu_is_lost_is_that_gpus_fatal_fail() -> None:
    # nvidia-smi -q -d ROW_REMAPPER on a one-GPU node whose GPU fell off the bus (driver 535): the
    # banner and header, then the handle error where the section would be; no "GPU <bus>" heading.
    # "GPU is lost" is nvidia-smi's words for NVML_ERROR_GPU_IS_LOST: the same fatal fail as NVML's lost GPU
    # (before: an error, which left the node WARN instead of EVICT).
    text = (
        "\n==============NVSMI LOG==============\n\n"
        "Timestamp                                 : Mon Jan  8 10:00:00 2024\n"
        "Driver Version                            : 535.104.05\n"
        "CUDA Version                              : 12.2\n\n"
        "Attached GPUs                             : 1\n"
        "Unable to determine the device handle for GPU0000:07:00.0: "
        "GPU is lost.  Reboot the system to recover this GPU\n"
    )
    assert nvsmi.looks_like_q(text)
    result = remapped.evaluate_text(text, {}, Settings())
    assert result.status is Status.FAIL and result.fatal
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.FAIL)]
    assert "GPU is lost" in result.summary


# What nvidia-smi prints after "Unable to determine the device handle for ...: " (NVML's error strings): only
# NVML_ERROR_GPU_IS_LOST proves the GPU gone; the others say nvidia-smi could not open it.
_NOT_LOST = [
    "Unknown Error",
    "Insufficient Permissions",
    "Driver/library version mismatch",
    "",
]


@pytest.mark.parametrize(
    ("line", "lost"),
    [
        ("Unable to determine the device handle for GPU0000:3B:00.0: GPU is lost.  Reboot the system to recover "
         "this GPU", True),
        ("Unable to determine the device handle for GPU 0000:02:00.0: GPU is lost. Reboot the system to recover "
         "this GPU", True),
        ("Unable to determine the device handle for GPU3: 0000:3B:00.0: GPU is lost", True),
        *((f"Unable to determine the device handle for GPU0000:3B:00.0: {why}", False) for why in _NOT_LOST),
    ],
)  # fmt: skip
def test_only_the_gpu_is_lost_reason_marks_a_gpu_lost(line: str, lost: bool) -> None:
    gone = nvsmi.lost_gpu(line)
    assert gone is not None and gone.is_lost is lost
    text_report = nvsmi.parse_q(line + "\n" + _TWO_OF_THREE_GPUS)
    assert [g.lost for g in text_report.gpus if g.error is not None] == [lost]
    assert [g.lost for g in text_report.gpus if g.error is None] == [False, False]
    xml_report = nvsmi.parse_q(line + "\n" + _XML_1_OF_2)
    assert [(g.error is not None, g.lost) for g in xml_report.gpus if g.bus_id != "00000000:3C:00.0"] == [(True, lost)]


def test_a_gpu_named_by_index_alone_is_read_and_a_bus_id_is_never_taken_for_an_index() -> None:
    # 575-595 drivers name a GPU whose bus id they cannot read by its index alone.
    gone = nvsmi.lost_gpu("Unable to determine the device handle for GPU2: GPU is lost.  Reboot the system")
    assert gone == nvsmi.LostGpu("", "GPU is lost.  Reboot the system", 2) and gone.is_lost
    assert gone.error == "nvidia-smi could not open GPU 2: GPU is lost.  Reboot the system"
    assert nvsmi.lost_gpu("Unable to determine the device handle for GPU0000:3B:00: Unknown Error") is None
    report = nvsmi.parse_q("Unable to determine the device handle for GPU0: Unknown Error\nNo devices were found\n")
    assert [(g.index, g.error is not None, g.lost) for g in report.gpus] == [(0, True, False)]
    assert nvsmi.no_devices("No devices were found\n")
    assert not nvsmi.no_devices(
        "Unable to determine the device handle for GPU0: Unknown Error\nNo devices were found\n"
    )


def test_pciebw_link_census_of_a_report_naming_a_gpu_lost_is_a_fatal_fail_at_its_index() -> None:
    line = (
        "Unable to determine the device handle for GPU0000:2B:00.0: GPU is lost.  Reboot the system to recover this GPU"
    )
    report = TWO_GPUS.replace("GPU 00000000:2B:00.0", f"{line}\nGPU 00000000:3C:00.0").replace(
        "Attached GPUs                             : 2", "Attached GPUs                             : 3"
    )
    report = report.replace("    Remapped Rows                         : N/A\n", _LINK_3C + "    Remapped Rows : N/A\n")
    result = pciebw.evaluate_text(report, {}, Settings())
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.WARN), ("1", Status.FAIL), ("2", Status.OK)]
    assert result.status is Status.FAIL and result.fatal
    unknown = pciebw.evaluate_text(
        report.replace(line, line.split(": GPU is lost")[0] + ": Unknown Error"), {}, Settings()
    )
    assert [d.status for d in unknown.devices] == [Status.WARN, Status.ERROR, Status.OK] and not unknown.fatal


_LINK_3C = """\
    PCI
        GPU Link Info
            PCIe Generation
                Max                       : 5
                Current                   : 5
            Link Width
                Max                       : 16x
                Current                   : 16x
"""


@pytest.mark.parametrize(
    "text",
    [
        "",
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
        "gpu_uuid, remapped_rows.pending\nGPU-1, No\n",
        "    Pending : Yes\n",  # indented line before any GPU section
        TWO_GPUS + "Timestamp : again\n",  # a second report glued on
    ],
)
def test_text_that_is_not_a_report_raises(text: str) -> None:
    with pytest.raises(nvsmi.ParseError):
        nvsmi.parse_q(text)


def test_the_drivers_inforom_warning_around_an_answer_is_not_part_of_it() -> None:
    # nvidia-smi prints "WARNING: infoROM is corrupted at gpu <bus>" on stdout after (or before) any
    # answer for such a GPU (seen after the summary table and ahead of --query-gpu CSV rows in public
    # bug reports); the answer is intact and must not read as unreadable.
    warning = "WARNING: infoROM is corrupted at gpu 0000:1A:00.0"
    report = nvsmi.parse_q(TWO_GPUS + warning + "\n")
    assert len(report.gpus) == 2 and report.warnings == (warning,)
    result = remapped.evaluate_text(TWO_GPUS + warning + "\n", {}, Settings())
    assert result.status is not Status.ERROR
    assert result.data["gpus"]["0"]["nvidia_smi_warnings"] == [warning]
    assert "nvidia_smi_warnings" not in result.data["gpus"]["1"]
    csv = f"{warning}\ngpu_uuid, remapped_rows.pending\nGPU-1, No\n"
    assert nvsmi.first_line(csv) == "gpu_uuid, remapped_rows.pending"
    assert nvsmi.parse_csv(csv) == [{"gpu_uuid": "GPU-1", "remapped_rows.pending": "No"}]
    assert nvsmi.parse_csv(f"{warning}\nGPU-1, No\n", ["gpu_uuid", "pending"]) == [
        {"gpu_uuid": "GPU-1", "pending": "No"}
    ]


def test_words() -> None:
    assert nvsmi.flag("Yes", "x") is True and nvsmi.flag(" no ", "x") is False and nvsmi.flag("1", "x") is True
    assert nvsmi.flag("[N/A]", "x") is None and nvsmi.active("N/A", "x") is None
    assert nvsmi.active("Active", "x") is True and nvsmi.active("Not  Active", "x") is False
    assert nvsmi.integer("177", "x") == 177 and nvsmi.integer("16x", "x", suffix="x") == 16
    for bad in ("[Unknown Error]", "Maybe", ""):
        with pytest.raises(nvsmi.ParseError):
            nvsmi.active(bad, "x")
    with pytest.raises(nvsmi.ParseError):
        nvsmi.integer("many", "x")


def test_csv_with_header_drops_units() -> None:
    text = "index, memory.used [MiB], remapped_rows.pending\n0, 12 MiB, No\n1, 3 MiB, Yes\n"
    assert nvsmi.parse_csv(text) == [
        {"index": "0", "memory.used": "12 MiB", "remapped_rows.pending": "No"},
        {"index": "1", "memory.used": "3 MiB", "remapped_rows.pending": "Yes"},
    ]


def test_csv_without_header_takes_the_queried_fields() -> None:
    assert nvsmi.parse_csv("0, Active\n1, Not Active\n", ["index", "x"]) == [
        {"index": "0", "x": "Active"},
        {"index": "1", "x": "Not Active"},
    ]


def test_csv_row_of_the_wrong_width_raises() -> None:
    with pytest.raises(nvsmi.ParseError, match="row 2 has 1 values for 2 fields"):
        nvsmi.parse_csv("0, Active\ngarbage\n", ["index", "x"])


def test_csv_rejected_field_raises_invalid_field() -> None:
    text = 'Field "clocks_event_reasons.hw_slowdown" is not a valid field to query.\n\n'
    with pytest.raises(nvsmi.InvalidField) as caught:
        nvsmi.parse_csv(text, ["index", "clocks_event_reasons.hw_slowdown"])
    assert caught.value.field == "clocks_event_reasons.hw_slowdown"
    assert isinstance(caught.value, nvsmi.ParseError)


def test_clock_reasons_read_nested_hw_reasons_and_ignore_the_counters() -> None:
    reasons = nvsmi.clock_reasons_from_q(nvsmi.parse_q(TWO_GPUS).gpus[0])
    assert reasons.active == {"sw_power_cap"}
    assert reasons.inactive == {
        "gpu_idle",
        "hw_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "sw_thermal_slowdown",
    }
    # not printed by this (invented) report: unknown, not assumed inactive
    assert reasons.unknown == {"applications_clocks_setting", "sync_boost", "display_clock_setting"}


def test_clock_reasons_under_the_older_throttle_heading_with_na() -> None:
    reasons = nvsmi.clock_reasons_from_q(nvsmi.parse_q(TWO_GPUS).gpus[1])
    assert reasons.active == {"gpu_idle"}
    assert "hw_slowdown" in reasons.unknown


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("        Invalid HW Slowdown               : Not Active", "unknown clock event reason"),
        ("        HW Slowdown                       : [Unknown Error]", "unreadable value"),
    ],
)
def test_clock_reasons_unreadable(line: str, match: str) -> None:
    text = TWO_GPUS.replace("        HW Slowdown                       : Not Active", line, 1)
    with pytest.raises(nvsmi.ParseError, match=match):
        nvsmi.clock_reasons_from_q(nvsmi.parse_q(text).gpus[0])


def test_clock_reasons_from_csv_rows() -> None:
    row = {
        "index": "0",
        "clocks_throttle_reasons.hw_slowdown": "Active",
        "clocks_throttle_reasons.sw_thermal_slowdown": "Not Active",
    }
    reasons = nvsmi.clock_reasons_from_csv_row(row)
    assert reasons.active == {"hw_slowdown"} and reasons.inactive == {"sw_thermal_slowdown"}
    mask = nvsmi.clock_reasons_from_csv_row({"clocks_event_reasons.active": "0x0000000000000084"})
    assert mask.active == {"sw_power_cap", "hw_power_brake_slowdown"} and not mask.unknown
    with pytest.raises(nvsmi.ParseError):
        nvsmi.clock_reasons_from_csv_row({"clocks_event_reasons.hw_slowdown": "[Unknown Error]"})
    with pytest.raises(nvsmi.ParseError):
        nvsmi.clock_reasons_from_csv_row({"index": "0"})


def test_remapped_rows_from_q() -> None:
    report = nvsmi.parse_q(TWO_GPUS)
    assert nvsmi.remapped_rows_from_q(report.gpus[0]) == gpus.RemappedRows(2, 0, False, False)
    assert nvsmi.remap_histogram_from_q(report.gpus[0]) == {"max": 2559, "high": 1}
    assert nvsmi.remapped_rows_from_q(report.gpus[1]) is None  # "Remapped Rows : N/A"
    no_block = TWO_GPUS.replace("    Remapped Rows                         : N/A\n", "")
    assert nvsmi.remapped_rows_from_q(nvsmi.parse_q(no_block).gpus[1]) is None


def test_remapped_rows_incomplete_block_raises() -> None:
    partial = TWO_GPUS.replace("        Pending                           : No\n", "", 1)
    with pytest.raises(nvsmi.ParseError, match="missing pending"):
        nvsmi.remapped_rows_from_q(nvsmi.parse_q(partial).gpus[0])
    half_na = TWO_GPUS.replace("Pending                           : No", "Pending : N/A", 1)
    with pytest.raises(nvsmi.ParseError, match="N/A"):
        nvsmi.remapped_rows_from_q(nvsmi.parse_q(half_na).gpus[0])


def test_remapped_rows_from_csv_row_accepts_yes_no_and_digits() -> None:
    row = {
        "remapped_rows.correctable": "0",
        "remapped_rows.uncorrectable": "1",
        "remapped_rows.pending": "No",
        "remapped_rows.failure": "1",
    }
    assert nvsmi.remapped_rows_from_csv_row(row) == gpus.RemappedRows(0, 1, False, True)
    assert nvsmi.remapped_rows_from_csv_row({k: "[N/A]" for k in row}) is None


def test_pcie_link_from_q() -> None:
    assert nvsmi.pcie_link_from_q(nvsmi.parse_q(TWO_GPUS).gpus[0]) == {
        "current_gen": 5,
        "max_gen": 5,
        "current_width": 8,
        "max_width": 16,
        "device_current_gen": 5,
        "device_max_gen": 5,
        "host_max_gen": 5,
    }
    with pytest.raises(nvsmi.ParseError, match="no PCI"):
        nvsmi.pcie_link_from_q(nvsmi.parse_q(TWO_GPUS).gpus[1])


def _v100_in_a_vm(host_max: str, current: str = "3") -> str:
    """``nvidia-smi -q -d PCI`` of a Tesla V100-SXM2 passed through to a cloud VM (bus 00:04.0),
    written by hand after a public copy of a full report (driver 550-era layout): the driver cannot
    read the virtual host bridge and prints ``Host Max : Unknown Error``."""
    return f"""\
Attached GPUs                             : 1
GPU 00000000:00:04.0
    PCI
        Bus Id                            : 00000000:00:04.0
        GPU Link Info
            PCIe Generation
                Max                       : 3
                Current                   : {current}
                Device Current            : 3
                Device Max                : 3
                Host Max                  : {host_max}
            Link Width
                Max                       : 16x
                Current                   : 16x
"""


def test_an_unreadable_host_figure_leaves_the_link_readable() -> None:
    link = nvsmi.pcie_link_from_q(nvsmi.parse_q(_v100_in_a_vm("Unknown Error")).gpus[0])
    assert (link["current_gen"], link["max_gen"], link["current_width"], link["host_max_gen"]) == (3, 3, 16, None)
    result = pciebw.evaluate_text(_v100_in_a_vm("Unknown Error"), {}, Settings())
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK)]
    # The figures the check judges stay strict.
    with pytest.raises(nvsmi.ParseError, match="Current"):
        nvsmi.pcie_link_from_q(nvsmi.parse_q(_v100_in_a_vm("3", current="Unknown Error")).gpus[0])


# ---------------------------------------------------------------- public samples


@pytest.mark.parametrize(
    ("name", "count", "driver"),
    [
        ("nvidia-smi-q_h100x8_drv535.161.08_hw-power-brake-slowdown-active.txt", 8, "535.161.08"),
        ("nvidia-smi-q_h100x8_drv535.183.01_sw-thermal-slowdown-active.txt", 8, "535.183.01"),
        ("nvidia-smi-q_rtx4090x8_drv535.154.05_pcie-idle-downtrained-gen1.txt", 8, "535.154.05"),
        ("nvidia-smi-q_a10_drv535.129.03_remapped-rows-pending.txt", 1, "535.129.03"),
        ("nvidia-smi-q_titanv_drv560.35.03.txt", 1, "560.35.03"),
    ],
)
def test_full_sample_reports_parse(name: str, count: int, driver: str) -> None:
    report = nvsmi.parse_q(sample_text(name))
    assert report.full and not report.excerpt
    assert report.driver_version == driver
    assert len(report.gpus) == report.attached == count
    assert [g.index for g in report.gpus] == list(range(count))
    for section in report.gpus:
        assert section.find("Product Name") is not None
        nvsmi.clock_reasons_from_q(section)  # every GPU's block is readable


def test_titan_v_driver_560_layout() -> None:
    gpu = nvsmi.parse_q(sample_text("nvidia-smi-q_titanv_drv560.35.03.txt")).gpus[0]
    assert gpu.bus_id == "00000000:01:00.0"
    assert gpu.root.value_at("Product Architecture") == "Volta"
    assert nvsmi.remapped_rows_from_q(gpu) is None  # "Remapped Rows : N/A": no row remapper on Volta
    processes = gpu.find("Processes")
    assert processes is not None
    assert [c.value for c in processes.children if c.key == "Process ID"] == ["100607", "100838", "101815"]
    assert nvsmi.pcie_link_from_q(gpu)["current_gen"] == 1


def test_rtx4090_idle_link_reads_downtrained() -> None:
    report = nvsmi.parse_q(sample_text("nvidia-smi-q_rtx4090x8_drv535.154.05_pcie-idle-downtrained-gen1.txt"))
    link = nvsmi.pcie_link_from_q(report.gpus[0])
    assert (link["current_gen"], link["max_gen"], link["current_width"], link["max_width"]) == (1, 4, 16, 16)


def test_corrupted_h100_sample_is_rejected() -> None:
    with pytest.raises(nvsmi.ParseError, match="announces 8 GPUs but holds 1"):
        nvsmi.parse_q(sample_text("nvidia-smi-q_h100_drv535.183.01_corrupted-invalid.txt"))


def test_a100_excerpt_and_blackwell_row_remapper_parse() -> None:
    a100 = nvsmi.parse_q(sample_text("nvidia-smi-q_excerpt_a100_drv510_remap-pending-after-xid63.txt"))
    assert a100.excerpt and a100.driver_version == "510.73.08"
    assert nvsmi.remapped_rows_from_q(a100.gpus[0]) == gpus.RemappedRows(1, 0, True, False)
    blackwell = nvsmi.parse_q(sample_text("nvidia-smi-q-d-ROW_REMAPPER_blackwell_pending-yes.txt"))
    assert not blackwell.full and blackwell.attached is None
    assert nvsmi.remapped_rows_from_q(blackwell.gpus[0]) == gpus.RemappedRows(0, 1, True, False)
    assert nvsmi.remap_histogram_from_q(blackwell.gpus[0])["max"] == 511


def test_remapped_rows_csv_sample_parses_per_gpu() -> None:
    rows = nvsmi.parse_csv(sample_text("nvidia-smi-query-remapped-rows_csv_4gpu_after-reset.txt"))
    uuids = ["GPU-a895322e-...", "GPU-455e672a-...", "GPU-d66f99e9-...", "GPU-cd616af2-..."]
    assert [r["gpu_uuid"] for r in rows] == uuids
    assert [nvsmi.remapped_rows_from_csv_row(r) for r in rows] == [
        gpus.RemappedRows(0, 0, False, False),
        gpus.RemappedRows(0, 1, False, False),
        gpus.RemappedRows(0, 0, False, False),
        gpus.RemappedRows(0, 0, False, False),
    ]


def test_split_driver_warnings_keeps_line_numbers_and_sets_warnings_aside() -> None:
    text = (
        "WARNING: infoROM is corrupted at gpu 0000:07:00.0\nindex, name\n"
        "  warning: infoROM is corrupted at gpu 1  \n0, H100\n"
    )
    kept, warnings = nvsmi.split_driver_warnings(text)
    assert kept == [(2, "index, name"), (4, "0, H100")]
    assert warnings == ("WARNING: infoROM is corrupted at gpu 0000:07:00.0", "warning: infoROM is corrupted at gpu 1")
