"""Every form of saved nvidia-smi -q output gives one verdict: XML (-x), one-GPU captures (-i N),
section-only captures (-d ...), and copies whose indentation was lost; a missing section is an error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import autopilot.checks.gpupower as gpupower
import autopilot.checks.pciebw as pciebw
import autopilot.checks.remapped as remapped
from autopilot import nvsmi
from autopilot.config import Settings
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeClock, FakeRunner, FakeTelemetry
from tests.conftest import DATA, SAMPLES, sample_text

NVSMI = DATA / "nvsmi"
CHECKS = {"remapped": remapped.evaluate_text, "gpupower": gpupower.evaluate_text, "pciebw": pciebw.evaluate_text}


def fixture(name: str) -> str:
    return (NVSMI / name).read_text()


def judge(check: str, text: str) -> CheckResult:
    return CHECKS[check](text, {}, Settings())


def verdict(result: CheckResult) -> tuple[object, ...]:
    return (result.status, result.fatal, [(d.id, d.status, d.value, d.detail) for d in result.devices])


def flatten(text: str) -> str:
    """What a paste into a web form or chat leaves: every line's indentation gone."""
    return "\n".join(line.strip() for line in text.splitlines()) + "\n"


# ---------------------------------------------------------------- XML


@pytest.mark.parametrize(
    "stem", ["drv470.82.01_a100x2_throttle-hw-slowdown_remap-pending", "drv535.129.03_h100x2_remap-failure_width-x8"]
)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_xml_gives_the_verdicts_of_its_text_twin(stem: str, check: str) -> None:
    xml, text = judge(check, fixture(f"q-x_{stem}.xml")), judge(check, fixture(f"q_{stem}.txt"))
    assert verdict(xml) == verdict(text)
    assert xml.status is not Status.ERROR


@pytest.mark.parametrize("where", ["before", "after"])
def test_xml_with_the_drivers_inforom_warning_around_it_gives_the_same_verdict(where: str) -> None:
    # nvidia-smi prints "WARNING: infoROM is corrupted at gpu <bus>" on stdout around any answer.
    stem = "drv535.129.03_h100x2_remap-failure_width-x8"
    xml = fixture(f"q-x_{stem}.xml")
    warning = "WARNING: infoROM is corrupted at gpu 0000:1B:00.0\n"
    text = warning + xml if where == "before" else xml + warning
    for check in CHECKS:
        assert verdict(judge(check, text)) == verdict(judge(check, xml)), check
    assert nvsmi.parse_q(text).warnings == (warning.strip(),)


def test_xml_behind_a_warning_for_each_of_sixteen_corrupted_inforoms_is_still_xml() -> None:
    # One warning line per GPU whose infoROM is corrupted (16 on a DGX-2), all printed ahead of the
    # document: far more than the first 512 characters of the answer.
    stem = "drv535.129.03_h100x2_remap-failure_width-x8"
    xml = fixture(f"q-x_{stem}.xml")
    warnings = "".join(f"WARNING: infoROM is corrupted at gpu 0000:{bus:02X}:00.0\n" for bus in range(0x10, 0x20))
    for check in CHECKS:
        assert verdict(judge(check, warnings + xml)) == verdict(judge(check, xml)), check
    assert nvsmi.parse_q(warnings + xml).xml


def test_xml_with_stray_bytes_in_a_process_name_gives_the_same_verdict() -> None:
    # nvidia-smi -q -x run concurrently has printed arbitrary bytes inside <process_name>
    # (common-workflow-language/cwltool#1910: "xml.parsers.expat.ExpatError: not well-formed
    # (invalid token)"); control characters are not XML, and expat refused the whole report.
    stem = "drv535.129.03_h100x2_remap-failure_width-x8"
    xml = fixture(f"q-x_{stem}.xml")
    process = "<process_info><pid>4242</pid><type>C</type><process_name>\x01\x1bpy\x7fthon\x02</process_name>"
    garbled = xml.replace("<processes></processes>", f"<processes>{process}</process_info></processes>", 1)
    assert garbled != xml
    for check in CHECKS:
        assert verdict(judge(check, garbled)) == verdict(judge(check, xml)), check


def test_xml_driver_470_throttle_reasons_and_remap_pending() -> None:
    text = fixture("q-x_drv470.82.01_a100x2_throttle-hw-slowdown_remap-pending.xml")
    power = judge("gpupower", text)
    assert [(d.id, d.status) for d in power.devices] == [("0", Status.FAIL), ("1", Status.OK)]
    assert power.devices[0].detail == "HW slowdown active (HW Thermal Slowdown): clocks cut by hardware"
    remaps = judge("remapped", text)
    assert [(d.id, d.status) for d in remaps.devices] == [("0", Status.OK), ("1", Status.WARN)]
    assert remaps.data["source"] == "nvidia-smi -q -x"
    assert remaps.data["gpus"]["1"]["bank_remap_availability"]["max"] == 639
    link = nvsmi.pcie_link_from_q(nvsmi.parse_q(text).gpus[1])
    assert (link["current_gen"], link["max_gen"], link["host_max_gen"]) == (1, 4, None)  # 470 has no host max


def test_xml_driver_535_remap_failure_is_fatal_and_narrow_link_warns() -> None:
    text = fixture("q-x_drv535.129.03_h100x2_remap-failure_width-x8.xml")
    remaps = judge("remapped", text)
    assert (remaps.status, remaps.fatal) == (Status.FAIL, True)
    links = judge("pciebw", text)
    assert [(d.id, d.status, d.value) for d in links.devices] == [("0", Status.OK, 16), ("1", Status.WARN, 8)]
    power = judge("gpupower", text)
    assert [(d.id, d.status) for d in power.devices] == [("0", Status.OK), ("1", Status.WARN)]


def test_xml_driver_550_event_reason_counters_are_not_reasons() -> None:
    result = judge("gpupower", fixture("q-x_drv550.90.07_h100_sw-thermal.xml"))
    assert result.status is Status.WARN and result.summary == "GPU 0: SW thermal slowdown active"


def test_xml_volta_retired_pages_are_read_and_judged_where_row_remapping_is_not_supported() -> None:
    text = fixture("q-x_drv535.183.01_v100_retired-pages-pending.xml")
    result = judge("remapped", text)
    assert result.status is Status.WARN and not result.fatal  # a retirement pending: reset the GPU
    assert result.data["gpus"]["0"]["retired_pages"] == {"single_bit_ecc": 2, "double_bit_ecc": 1, "pending": True}
    assert nvsmi.parse_q(text).gpus[0].root.value_at("Retired Pages", "Pending Page Blacklist") == "Yes"


def test_text_retired_pages_read_like_xml() -> None:
    report = nvsmi.parse_q(sample_text("nvidia-smi-q-d-PAGE_RETIREMENT_8gpu_retired-pages-pending.txt"))
    assert nvsmi.retired_pages_from_q(report.gpus[1]) == {"single_bit_ecc": 2, "double_bit_ecc": 61, "pending": True}


@pytest.mark.parametrize(
    ("xml", "needle"),
    [
        (
            '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            "<nvidia_smi_log><driver_version>&b;</driver_version></nvidia_smi_log>",
            "entity declarations",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            "<nvidia_smi_log><gpu id='0000:01:00.0'><product_name>&x;</product_name></gpu></nvidia_smi_log>",
            "entity declarations",
        ),
        (
            "<nvidia_smi_log><gpu id='0000:01:00.0'><product_name>&undefined;</product_name></gpu></nvidia_smi_log>",
            "undefined entity",
        ),
        ('<?xml version="1.0" ?>\n<nvidia_smi_log>\n\t<gpu id="00000000:01:00.0">\n\t\t<pci>\n', "invalid XML"),
        ('<?xml version="1.0" ?><nvidia_smi_log><attached_gpus>1</attached_gpus></nvidia_smi_log>', "no <gpu>"),
        ('<?xml version="1.0" ?><html><gpu/></html>', "not <nvidia_smi_log>"),
    ],
)
def test_hostile_or_broken_xml_is_refused(xml: str, needle: str) -> None:
    with pytest.raises(nvsmi.ParseError, match=needle):
        nvsmi.parse_q(xml)
    result = judge("remapped", xml)
    assert result.status is Status.ERROR and needle in result.summary


def test_oversized_xml_is_refused_before_parsing() -> None:
    text = fixture("q-x_drv550.90.07_h100_sw-thermal.xml")
    padded = text.replace("<processes></processes>", "<processes>" + " " * nvsmi.MAX_XML_CHARS + "</processes>")
    with pytest.raises(nvsmi.ParseError, match="larger than"):
        nvsmi.parse_q(padded)


def test_xml_cut_short_is_an_error() -> None:
    text = fixture("q-x_drv535.129.03_h100x2_remap-failure_width-x8.xml")
    for check in CHECKS:
        assert judge(check, text[: text.index('<gpu id="00000000:2B:00.0">')]).status is Status.ERROR


def test_xml_announcing_more_gpus_than_it_holds_is_truncated() -> None:
    text = fixture("q-x_drv535.129.03_h100x2_remap-failure_width-x8.xml").replace(
        "<attached_gpus>2</attached_gpus>", "<attached_gpus>3</attached_gpus>"
    )
    result = judge("remapped", text)
    assert result.status is Status.ERROR and "announces 3 GPUs but holds 2" in result.summary


@pytest.mark.parametrize(
    "name", ["q_drv580.65.06_gb200x2_gpu1-lost-readings.txt", "q-x_drv580.65.06_gb200x2_gpu1-lost-readings.xml"]
)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_gpu_whose_readings_say_gpu_is_lost_is_that_gpus_fatal_fail(name: str, check: str) -> None:
    # A GPU that fell off the bus after nvidia-smi opened it is still listed, its values written as NVML's
    # error ("GPU is lost", as "[GPU is lost]" in a CSV row): the lost GPU's fatal fail, not an unreadable value.
    result = judge(check, fixture(name))
    assert result.status is Status.FAIL and result.fatal
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert "GPU is lost" in result.devices[1].detail and "00000009:01:00.0" in result.devices[1].detail
    other = judge(check, fixture(name).replace("GPU is lost", "Unknown Error"))
    assert [d.status for d in other.devices] == [Status.OK, Status.ERROR] and not other.fatal


def test_a_process_named_gpu_is_lost_is_no_lost_gpu() -> None:
    # Process names are whatever programs call themselves: only the GPU's own readings can say it is lost.
    text = fixture("q_drv535.129.03_h100x2_remap-failure_width-x8.txt")
    assert "Processes                             : None" in text
    named = text.replace(
        "Processes                             : None",
        "Processes\n        Process ID                        : 4242\n"
        "            Name                          : GPU is lost",
        1,
    )
    report = nvsmi.parse_q(named)
    assert report.gpus[0].find("Processes", "Process ID", "Name") is not None
    assert not any(g.lost for g in report.gpus)


# ---------------------------------------------------------------- one-GPU captures (-i N)


@pytest.mark.parametrize(
    ("name", "check", "status", "bus"),
    [
        ("q-i3_drv550.90.07_h100_one-of-8_hw-slowdown.txt", "gpupower", Status.FAIL, "00000000:5D:00.0"),
        ("q-i3_drv550.90.07_h100_one-of-8_hw-slowdown.txt", "remapped", Status.OK, "00000000:5D:00.0"),
        ("q-i3_drv550.90.07_h100_one-of-8_hw-slowdown.txt", "pciebw", Status.OK, "00000000:5D:00.0"),
        ("q-x-i5_drv570.124.06_b200_one-of-8_remap-pending.xml", "remapped", Status.WARN, "00000000:AB:00.0"),
        ("q-x-i5_drv570.124.06_b200_one-of-8_remap-pending.xml", "gpupower", Status.OK, "00000000:AB:00.0"),
        ("q-x-i5_drv570.124.06_b200_one-of-8_remap-pending.xml", "pciebw", Status.OK, "00000000:AB:00.0"),
    ],
)
def test_one_gpu_capture_is_read_and_names_the_gpu_by_bus_id(name: str, check: str, status: Status, bus: str) -> None:
    # `-q -i N` prints the system's `Attached GPUs : 8` above one section and never says N.
    result = judge(check, fixture(name))
    assert result.status is status
    assert [d.id for d in result.devices] == [bus]
    if check != "pciebw":
        assert result.data["source"].endswith("(1 of 8 GPUs)")
        assert list(result.data["gpus"]) == [bus]


def test_one_gpu_capture_cut_short_is_still_truncated() -> None:
    text = fixture("q-i3_drv550.90.07_h100_one-of-8_hw-slowdown.txt")
    cut = text[: text.index("    Remapped Rows")]
    result = judge("gpupower", cut)
    assert result.status is Status.ERROR and "truncated or corrupted" in result.summary


def test_our_own_query_must_answer_for_every_gpu() -> None:
    # the live fallback asks nvidia-smi for all GPUs: one section under "Attached GPUs : 8" is not enough
    text = fixture("q-i3_drv550.90.07_h100_one-of-8_hw-slowdown.txt")
    with pytest.raises(nvsmi.ParseError, match="announces 8 GPUs but holds 1"):
        nvsmi.parse_q(text, whole=True)
    runner = FakeRunner()
    runner.add(list(remapped.ROW_REMAPPER_ARGV), text)
    ctx = CheckContext(
        "n1", Settings(), runner, FakeTelemetry(unavailable="no NVML"), FakeClock(), checks=shipped_checks()
    )
    result = remapped.run(ctx, {})
    assert result.status is Status.ERROR and "announces 8 GPUs but holds 1" in result.summary


# ---------------------------------------------------------------- section-only captures, and a missing section


@pytest.mark.parametrize(
    ("name", "check", "status", "bad"),
    [
        ("q-d-PERFORMANCE_drv550.90.07_h100x2_hw-slowdown-gpu1.txt", "gpupower", Status.FAIL, ["1"]),
        ("q-d-PCI_drv535.129.03_h100x2_width-x8-gpu0.txt", "pciebw", Status.WARN, ["0"]),
    ],
)
def test_section_only_capture_is_read(name: str, check: str, status: Status, bad: list[str]) -> None:
    result = judge(check, fixture(name))
    assert result.status is status
    assert [d.id for d in result.devices if d.status is not Status.OK] == bad


@pytest.mark.parametrize(
    ("name", "check", "section"),
    [
        ("q-d-ECC_drv535.129.03_h100x2.txt", "remapped", "Remapped Rows"),
        ("q-d-ECC_drv535.129.03_h100x2.txt", "gpupower", "Clocks Event Reasons"),
        ("q-d-ECC_drv535.129.03_h100x2.txt", "pciebw", "PCI > GPU Link Info"),
        ("q-d-PCI_drv535.129.03_h100x2_width-x8-gpu0.txt", "remapped", "Remapped Rows"),
        ("q-d-PCI_drv535.129.03_h100x2_width-x8-gpu0.txt", "gpupower", "Clocks Event Reasons"),
        ("q-d-PERFORMANCE_drv550.90.07_h100x2_hw-slowdown-gpu1.txt", "remapped", "Remapped Rows"),
        ("q-d-PERFORMANCE_drv550.90.07_h100x2_hw-slowdown-gpu1.txt", "pciebw", "PCI > GPU Link Info"),
    ],
)
@pytest.mark.parametrize("pasted", [False, True])
def test_a_capture_lacking_the_needed_section_is_an_error_naming_it(
    name: str, check: str, section: str, pasted: bool
) -> None:
    text = fixture(name)
    result = judge(check, flatten(text) if pasted else text)
    assert result.status is Status.ERROR
    assert section in result.summary


@pytest.mark.parametrize(
    ("name", "check", "section"),
    [
        ("nvidia-smi-q-d-PAGE_RETIREMENT_8gpu_retired-pages-pending.txt", "gpupower", "Clocks Event Reasons"),
        ("nvidia-smi-q-d-ROW_REMAPPER_blackwell_pending-yes.txt", "gpupower", "Clocks Event Reasons"),
        ("nvidia-smi-q-d-ROW_REMAPPER_blackwell_pending-yes.txt", "pciebw", "PCI > GPU Link Info"),
    ],
)
def test_samples_lacking_the_needed_section_are_errors(name: str, check: str, section: str) -> None:
    result = judge(check, sample_text(name))
    assert result.status is Status.ERROR and section in result.summary


# ---------------------------------------------------------------- indentation lost (pasted)


TEXT_FIXTURES = sorted(p.name for p in NVSMI.glob("q*.txt"))


@pytest.mark.parametrize("name", TEXT_FIXTURES)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_pasted_fixture_without_indentation_gives_the_same_verdict(name: str, check: str) -> None:
    text = fixture(name)
    assert verdict(judge(check, flatten(text))) == verdict(judge(check, text))


def test_pasted_reports_nest_again() -> None:
    pasted = nvsmi.parse_q(flatten(fixture("q_drv535.129.03_h100x2_remap-failure_width-x8.txt")))
    gpu = pasted.gpus[1]
    assert gpu.root.value_at("PCI", "GPU Link Info", "Link Width", "Current") == "8x"
    assert gpu.root.value_at("PCI", "GPU Link Info", "PCIe Generation", "Host Max") == "5"
    assert gpu.root.value_at("Remapped Rows", "Bank Remap Availability Histogram", "Max") == "639 bank(s)"
    assert gpu.root.value_at("Remapped Rows", "Correctable Error") == "1"
    # a line after a block we read is not taken into it
    assert gpu.root.value_at("Clocks Event Reasons", "Performance State") is None
    assert nvsmi.clock_reasons_from_q(gpu).active == frozenset({"hw_power_brake_slowdown"})
    perf = nvsmi.parse_q(flatten(fixture("q-d-PERFORMANCE_drv550.90.07_h100x2_hw-slowdown-gpu1.txt")))
    assert perf.gpus[1].root.value_at("Sparse Operation Mode") == "N/A"
    assert nvsmi.clock_reasons_from_q(perf.gpus[1]).active == frozenset({"hw_slowdown", "hw_thermal_slowdown"})


def test_pasted_one_gpu_capture_is_read() -> None:
    result = judge("gpupower", flatten(fixture("q-i3_drv550.90.07_h100_one-of-8_hw-slowdown.txt")))
    assert result.status is Status.FAIL and [d.id for d in result.devices] == ["00000000:5D:00.0"]


SAMPLE_Q = sorted(p.name for p in SAMPLES.glob("nvidia-smi-q*")) if SAMPLES.is_dir() else []


@pytest.mark.parametrize("name", SAMPLE_Q or ["(samples absent)"])
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_every_sample_pasted_without_indentation_gives_the_same_verdict(name: str, check: str) -> None:
    text = sample_text(name)
    assert verdict(judge(check, flatten(text))) == verdict(judge(check, text))


def test_every_sample_q_report_is_covered_here() -> None:
    # a new nvidia-smi -q sample joins the pasted-form test above by its name
    assert all(re.match(r"nvidia-smi-q", name) for name in SAMPLE_Q)
    if SAMPLES.is_dir():
        assert len(SAMPLE_Q) >= 10


def test_fixture_files_are_handwritten_and_described() -> None:
    readme = (NVSMI / "README.md").read_text()
    assert "Written by hand" in readme
    assert {Path(p).suffix for p in NVSMI.iterdir()} == {".md", ".txt", ".xml"}


def test_driver_418_retired_pages_pending_label_is_read() -> None:
    # Drivers of the 418 era label the flag "Pending" (later "Pending Page Blacklist"/"Retirement").
    text = fixture("q_drv418.87.01_v100x2_retired-pages-pending-gpu1.txt")
    result = judge("remapped", text)
    assert result.data["gpus"]["0"]["retired_pages"] == {"single_bit_ecc": 0, "double_bit_ecc": 0, "pending": False}
    assert result.data["gpus"]["1"]["retired_pages"] == {"single_bit_ecc": 3, "double_bit_ecc": 1, "pending": True}
    pasted = judge("remapped", flatten(text))
    assert pasted.data["gpus"]["1"]["retired_pages"] == {"single_bit_ecc": 3, "double_bit_ecc": 1, "pending": True}


@pytest.mark.parametrize("margin", ["    ", "\t", "  "])
def test_report_indented_as_a_whole_reads_as_the_report(margin: str) -> None:
    # A report quoted in a Markdown or reStructuredText code block: every line shifted by one margin.
    text = fixture("q_drv535.129.03_h100x2_remap-failure_width-x8.txt")
    shifted = "\n".join(margin + line if line.strip() else line for line in text.splitlines()) + "\n"
    for check in CHECKS:
        assert verdict(judge(check, shifted)) == verdict(judge(check, text)), check
