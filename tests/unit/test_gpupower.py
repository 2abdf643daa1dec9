"""gpupower: clock event reasons from NVML, the nvidia-smi fallback (both field spellings), saved outputs."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import pytest

from autopilot import errors, execution, nvsmi, registry
from autopilot.checks import gpupower
from autopilot.commands import CommandResult
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from tests.conftest import sample_text

MakeCtx = Callable[..., CheckContext]
REASONS = list(gpupower.CSV_REASONS)
NEW_ARGV = [
    "nvidia-smi",
    "--query-gpu=index,pci.bus_id,clocks_event_reasons.gpu_idle,clocks_event_reasons.applications_clocks_setting,"
    "clocks_event_reasons.sw_power_cap,clocks_event_reasons.hw_slowdown,clocks_event_reasons.sync_boost,"
    "clocks_event_reasons.sw_thermal_slowdown,clocks_event_reasons.hw_thermal_slowdown,"
    "clocks_event_reasons.hw_power_brake_slowdown",
    "--format=csv,noheader",
]
OLD_ARGV = [NEW_ARGV[0], NEW_ARGV[1].replace("clocks_event_reasons.", "clocks_throttle_reasons."), NEW_ARGV[2]]


def with_reasons(*names: str) -> FakeGpu:
    return FakeGpu(reasons=frozenset(names))


def csv_row(index: int, *active: str, value: Callable[[str], str] | None = None) -> str:
    """One handwritten row of the fallback query, reasons in REASON_BITS order."""
    states = [(value or (lambda n: "Active" if n in active else "Not Active"))(n) for n in REASONS]
    return ", ".join([str(index), f"00000000:{index + 0x1A:02X}:00.0", *states]) + "\n"


def reasons(*active: str) -> nvsmi.ClockReasons:
    return nvsmi.ClockReasons.from_active(frozenset(active))


# ---------------------------------------------------------------- judging one GPU


@pytest.mark.parametrize(
    ("active", "status", "value", "detail"),
    [
        ((), Status.OK, 0, "no clock event reason active"),
        (("gpu_idle", "sw_power_cap"), Status.OK, 0, "clocks limited by: Idle, SW Power Cap"),
        (
            ("applications_clocks_setting", "sync_boost", "display_clock_setting"),
            Status.OK,
            0,
            "clocks limited by: Applications Clocks Setting, Sync Boost, Display Clock Setting",
        ),
        (("sw_thermal_slowdown",), Status.WARN, 0, "SW thermal slowdown active"),
        (("hw_power_brake_slowdown", "sw_power_cap"), Status.WARN, 0, "HW power brake asserted (no HW slowdown)"),
        (("hw_slowdown",), Status.FAIL, 1, "HW slowdown active: clocks cut by hardware"),
        (
            ("hw_slowdown", "hw_power_brake_slowdown"),
            Status.FAIL,
            1,
            "HW slowdown active (HW Power Brake Slowdown): clocks cut by hardware",
        ),
        (
            ("hw_thermal_slowdown", "sw_thermal_slowdown"),
            Status.FAIL,
            1,
            "HW slowdown active (HW Thermal Slowdown): clocks cut by hardware",
        ),
    ],
)
def test_judge(active: tuple[str, ...], status: Status, value: int, detail: str) -> None:
    d = gpupower.judge("0", reasons(*active))
    assert (d.status, d.value, d.detail) == (status, value, detail)


def test_judge_unreadable_hw_slowdown_is_an_error() -> None:
    unread = nvsmi.ClockReasons(active=frozenset({"gpu_idle"}), unknown=frozenset({"hw_slowdown"}))
    assert gpupower.judge("0", unread).status is Status.ERROR
    # a positive finding still counts even when the aggregate is N/A
    hot = nvsmi.ClockReasons(active=frozenset({"hw_thermal_slowdown"}), unknown=frozenset({"hw_slowdown"}))
    assert gpupower.judge("0", hot).status is Status.FAIL


# ---------------------------------------------------------------- NVML path


def test_hw_slowdown_fails_only_the_affected_gpu_and_is_not_fatal(make_ctx: MakeCtx) -> None:
    telemetry = FakeTelemetry(
        [with_reasons("gpu_idle"), with_reasons("hw_slowdown", "hw_power_brake_slowdown"), with_reasons("sw_power_cap")]
    )
    result = execution.run_check("gpupower", make_ctx(gpus=telemetry))
    assert result.status is Status.FAIL and not result.fatal
    assert [(d.id, d.status, d.value) for d in result.devices] == [
        ("0", Status.OK, 0),
        ("1", Status.FAIL, 1),
        ("2", Status.OK, 0),
    ]
    assert result.summary == "GPU 1: HW slowdown active (HW Power Brake Slowdown): clocks cut by hardware"
    assert result.data["gpus"]["1"] == {"source": "nvml", "active": ["hw_power_brake_slowdown", "hw_slowdown"]}
    assert result.data["gpus"]["2"]["active"] == ["sw_power_cap"]


def test_sw_thermal_slowdown_warns(make_ctx: MakeCtx) -> None:
    result = gpupower.run(make_ctx(gpus=FakeTelemetry([with_reasons(), with_reasons("sw_thermal_slowdown")])), {})
    assert result.status is Status.WARN
    assert result.summary == "GPU 1: SW thermal slowdown active"


def test_idle_gpus_pass(make_ctx: MakeCtx) -> None:
    result = gpupower.run(make_ctx(gpus=FakeTelemetry([with_reasons("gpu_idle")] * 2)), {})
    assert result.status is Status.OK and result.summary == "no HW slowdown on 2 GPUs"


def test_nvml_error_on_one_gpu_without_nvidia_smi_errors_that_gpu_only(make_ctx: MakeCtx) -> None:
    lost = FakeGpu(raises=errors.GpuError("GPU is lost", 15))
    telemetry = FakeTelemetry([with_reasons("hw_slowdown"), lost, with_reasons()])
    result = gpupower.run(make_ctx(commands=FakeRunner(), gpus=telemetry), {})
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.FAIL), ("1", Status.ERROR), ("2", Status.OK)]
    assert result.devices[1].detail == "NVML: GPU is lost"
    assert result.status is Status.FAIL


def test_nvml_error_on_one_gpu_falls_back_to_the_query(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(NEW_ARGV, csv_row(0) + csv_row(1, "hw_slowdown", "hw_thermal_slowdown"))
    telemetry = FakeTelemetry([with_reasons(), FakeGpu(raises=errors.GpuError("Unknown Error", 999))])
    result = gpupower.run(make_ctx(commands=runner, gpus=telemetry), {})
    assert runner.calls == [tuple(NEW_ARGV)]
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert result.data["source"] == "nvml+nvidia-smi"
    assert result.data["gpus"]["1"]["source"] == "nvidia-smi"
    assert result.data["gpus"]["1"]["bus_id"] == "00000000:1B:00.0"


def test_older_driver_field_names_are_retried(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    rejected = 'Field "clocks_event_reasons.gpu_idle" is not a valid field to query.\n\n'
    runner.add(NEW_ARGV, rejected, returncode=2)
    runner.add(OLD_ARGV, csv_row(0, "gpu_idle") + csv_row(1, "sw_thermal_slowdown"))
    ctx = make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="nvidia-ml-py is not installed"))
    result = gpupower.run(ctx, {})
    assert runner.calls == [tuple(NEW_ARGV), tuple(OLD_ARGV)]
    assert result.status is Status.WARN
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.WARN)]
    assert result.data["source"] == "nvidia-smi"


# The clock event reason fields ``nvidia-smi --help-query-gpu`` lists (drivers 535-590 under
# ``clocks_event_reasons.``, earlier ones under ``clocks_throttle_reasons.``), written by hand: there is no
# ``display_clock_setting`` among them, and nvidia-smi refuses a whole query for one field it does not know.
HELP_QUERY_GPU_REASONS = (
    "supported", "active", "gpu_idle", "applications_clocks_setting", "sw_power_cap", "hw_slowdown",
    "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown", "sync_boost",
)  # fmt: skip


class QueryGpuOf535(FakeRunner):
    """nvidia-smi 535+ answering ``--query-gpu``: ``rows`` for a query of fields it knows, else its refusal."""

    def __init__(self, rows: str) -> None:
        super().__init__(installed=["nvidia-smi"])
        self.rows = rows

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        self.calls.append(tuple(argv))
        known = {"index", "pci.bus_id", *("clocks_event_reasons." + name for name in HELP_QUERY_GPU_REASONS)}
        asked = argv[1].removeprefix("--query-gpu=").split(",")
        unknown = next((field for field in asked if field not in known), None)
        if unknown is not None:
            return CommandResult(tuple(argv), 2, f'Field "{unknown}" is not a valid field to query.\n\n', "")
        return CommandResult(tuple(argv), 0, self.rows, "")


def test_the_fallback_asks_only_for_fields_nvidia_smi_knows(make_ctx: MakeCtx) -> None:
    # Before: the query named clocks_event_reasons.display_clock_setting (and its older spelling), which no
    # driver knows, so both spellings were refused and the check was an error on every node without NVML.
    runner = QueryGpuOf535(csv_row(0, "gpu_idle") + csv_row(1, "hw_slowdown", "hw_power_brake_slowdown"))
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert runner.calls == [tuple(NEW_ARGV)]
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert result.data["source"] == "nvidia-smi"


def test_both_field_spellings_rejected_is_an_error(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(NEW_ARGV, 'Field "clocks_event_reasons.gpu_idle" is not a valid field to query.\n', returncode=2)
    runner.add(OLD_ARGV, 'Field "clocks_throttle_reasons.gpu_idle" is not a valid field to query.\n', returncode=2)
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert result.status is Status.ERROR
    assert "knows neither" in result.summary


def test_another_field_rejected_is_not_retried(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(NEW_ARGV, 'Field "pci.bus_id" is not a valid field to query.\n', returncode=2)
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert runner.calls == [tuple(NEW_ARGV)]
    assert result.status is Status.ERROR and 'field "pci.bus_id"' in result.summary


def test_unreadable_query_values_are_device_errors_not_passes(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(
        NEW_ARGV,
        csv_row(0, value=lambda n: "[Unknown Error]") + csv_row(1, value=lambda n: "[N/A]") + csv_row(2),
    )
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.ERROR), ("1", Status.ERROR), ("2", Status.OK)]
    assert "[Unknown Error]" in result.devices[0].detail
    assert result.devices[1].detail == "HW Slowdown state unreadable (N/A)"


# nvidia-smi --query-gpu on a node where GPU 3 fell off the bus: it answers for the GPUs it can
# reach, names the lost one on stderr with its index (newer drivers: "for GPU3: 0000:04:00.0"),
# and exits 0. Seen in a public troubleshooting note (RTX 3080 x8 under Proxmox, 2026) and a public
# test suite quoting the stderr ("nvidia-smi exits ZERO here"); written by hand here.
LOST_GPU3 = "Unable to determine the device handle for GPU3: 0000:1D:00.0: Unknown Error\n"


def run_with_gpu3_on_stderr(make_ctx: MakeCtx, stderr: str, returncode: int) -> CheckResult:
    """gpupower without NVML, the fallback query answering rows for GPUs 0-2 and 4 and ``stderr`` for GPU 3."""
    runner = FakeRunner()
    runner.add(NEW_ARGV, csv_row(0) + csv_row(1) + csv_row(2) + csv_row(4), stderr=stderr, returncode=returncode)
    return gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})


@pytest.mark.parametrize("returncode", [0, 15])
def test_a_gpu_nvidia_smi_names_only_on_stderr_is_an_error_not_left_out(make_ctx: MakeCtx, returncode: int) -> None:
    # Exit code 0 on some drivers; others exit non-zero after listing the GPUs that still answer.
    result = run_with_gpu3_on_stderr(make_ctx, LOST_GPU3, returncode)
    assert [(d.id, d.status) for d in result.devices] == [
        ("0", Status.OK),
        ("1", Status.OK),
        ("2", Status.OK),
        ("3", Status.ERROR),
        ("4", Status.OK),
    ]
    assert result.status is Status.ERROR
    assert result.devices[3].detail == "nvidia-smi could not open the GPU at 0000:1D:00.0: Unknown Error"


# The same answer when the reason is NVML_ERROR_GPU_IS_LOST, in nvidia-smi's words.
GONE_GPU3 = LOST_GPU3.replace("Unknown Error", "GPU is lost.  Reboot the system to recover this GPU")


@pytest.mark.parametrize("returncode", [0, 15])
def test_a_gpu_nvidia_smi_says_is_lost_is_a_fatal_fail_at_its_index(make_ctx: MakeCtx, returncode: int) -> None:
    # As NVML's NVML_ERROR_GPU_IS_LOST (gpucensus.lost_device); before, an error (node WARN, not EVICT).
    result = run_with_gpu3_on_stderr(make_ctx, GONE_GPU3, returncode)
    assert [(d.id, d.status) for d in result.devices][3] == ("3", Status.FAIL)
    assert [d.status for d in result.devices if d.id != "3"] == [Status.OK] * 4
    assert result.status is Status.FAIL and result.fatal
    assert result.devices[3].detail.startswith("GPU is lost, fell off the bus: nvidia-smi could not open the GPU at")


def test_a_saved_report_or_query_saying_a_gpu_is_lost_is_a_fatal_fail_there() -> None:
    rows = [csv_row(0), csv_row(1), csv_row(2), csv_row(4)]
    result = evaluate("".join(rows[:3]) + GONE_GPU3 + rows[3])
    assert [(d.id, d.status) for d in result.devices][3] == ("3", Status.FAIL)
    assert result.status is Status.FAIL and result.fatal
    unknown = evaluate("".join(rows[:3]) + LOST_GPU3 + rows[3])
    assert unknown.status is Status.ERROR and not unknown.fatal


@pytest.mark.parametrize("where", ["first", "inline"])
def test_saved_query_with_a_lost_gpu_blames_that_gpu(where: str) -> None:
    # ``| sort`` or 2>&1 puts the stderr line first; the rows keep their own index.
    rows = [csv_row(0), csv_row(1), csv_row(2, "hw_slowdown"), csv_row(4)]
    text = LOST_GPU3 + "".join(rows) if where == "first" else "".join(rows[:3]) + LOST_GPU3 + rows[3]
    result = evaluate(text)
    assert [(d.id, d.status) for d in result.devices] == [
        ("0", Status.OK),
        ("1", Status.OK),
        ("2", Status.FAIL),
        ("3", Status.ERROR),
        ("4", Status.OK),
    ]
    assert result.data["gpus"]["3"]["bus_id"] == "0000:1D:00.0"


@pytest.mark.parametrize("text", ["", "\n", ", ".join(gpupower.query_fields()) + "\n"])
def test_a_query_answer_without_any_gpu_row_is_an_error_not_no_gpus(text: str) -> None:
    # nvidia-smi says "No devices were found" when there are none; an empty answer is no answer.
    assert evaluate(text).status is Status.ERROR


def test_no_gpus_per_nvidia_smi_is_skipped(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(NEW_ARGV, "No devices were found\n", returncode=6)
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no GPU")), {})
    assert result.status is Status.SKIPPED


# What nvidia-smi says when it cannot open its only GPU and cannot even read the GPU's bus id (seen on 575-595
# drivers): the GPU by its index alone, then "No devices were found". A GPU is there, unread: never "no GPUs".
INDEX_ONLY = "Unable to determine the device handle for GPU0: {why}\n"


@pytest.mark.parametrize(
    ("why", "status"),
    [("Unknown Error", Status.ERROR), ("GPU is lost.  Reboot the system to recover this GPU", Status.FAIL)],
)
def test_no_devices_after_a_gpu_named_by_index_alone_is_that_gpu_not_no_gpus(
    make_ctx: MakeCtx, why: str, status: Status
) -> None:
    runner = FakeRunner()
    runner.add(NEW_ARGV, "No devices were found\n", returncode=6, stderr=INDEX_ONLY.format(why=why))
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="NVML: Unknown Error")), {})
    assert result.status is status and result.fatal is (status is Status.FAIL)
    assert [(d.id, d.status) for d in result.devices] == [("0", status)]
    saved = evaluate(INDEX_ONLY.format(why=why) + "No devices were found\n")
    assert [(d.id, d.status) for d in saved.devices] == [("0", status)] and saved.status is status
    assert "GPU 0" in saved.devices[0].detail or "GPU0" in saved.devices[0].detail


def test_no_driver_and_no_nvidia_smi_is_skipped(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(commands=FakeRunner(), gpus=FakeTelemetry(unavailable="no NVIDIA driver"))
    assert execution.run_check("gpupower", ctx).status is Status.SKIPPED


def test_nvml_gone_and_nvidia_smi_hung_is_an_error(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(NEW_ARGV, raises="timeout")
    result = gpupower.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert result.status is Status.ERROR and "timed out after 30 s" in result.summary


# ---------------------------------------------------------------- evaluate_text


def evaluate(text: str) -> CheckResult:
    return gpupower.evaluate_text(text, {}, None)


def gpus_with_active(text: str, label: str) -> set[str]:
    """Independent reading of the sample: indices of GPU sections where ``label`` reads Active."""
    sections = re.split(r"(?m)^GPU [0-9A-F:.]+$", text)[1:]
    return {str(i) for i, s in enumerate(sections) if re.search(rf"(?m)^\s+{label}\s+: Active$", s)}


def test_sample_h100_hw_power_brake_fails_the_affected_gpus() -> None:
    text = sample_text("nvidia-smi-q_h100x8_drv535.161.08_hw-power-brake-slowdown-active.txt")
    result = evaluate(text)
    affected = gpus_with_active(text, "HW Slowdown")
    assert affected  # the sample does show the fault
    assert result.status is Status.FAIL and not result.fatal
    assert {d.id for d in result.devices if d.status is Status.FAIL} == affected
    assert {d.id for d in result.devices if d.status is Status.OK} == {str(i) for i in range(8)} - affected
    assert all(d.value == 1 for d in result.devices if d.id in affected)
    assert result.devices[0].detail == "HW slowdown active (HW Power Brake Slowdown): clocks cut by hardware"
    assert result.data["gpus"]["0"]["bus_id"] == "00000000:19:00.0"


def test_sample_h100_sw_thermal_slowdown_warns() -> None:
    result = evaluate(sample_text("nvidia-smi-q_h100x8_drv535.183.01_sw-thermal-slowdown-active.txt"))
    assert result.status is Status.WARN
    assert [d.id for d in result.devices if d.status is not Status.OK] == ["2"]
    assert result.devices[2].detail == "SW thermal slowdown active; HW power brake asserted (no HW slowdown)"
    assert result.data["gpus"]["2"]["active"] == ["hw_power_brake_slowdown", "sw_power_cap", "sw_thermal_slowdown"]


def test_sample_rtx4090_idle_is_ok() -> None:
    result = evaluate(sample_text("nvidia-smi-q_rtx4090x8_drv535.154.05_pcie-idle-downtrained-gen1.txt"))
    assert result.status is Status.OK
    assert {d.detail for d in result.devices} == {"clocks limited by: Idle"}
    assert result.data["gpus"]["7"]["active"] == ["gpu_idle"]


@pytest.mark.parametrize(
    "name", ["nvidia-smi-q_titanv_drv560.35.03.txt", "nvidia-smi-q_a10_drv535.129.03_remapped-rows-pending.txt"]
)
def test_samples_single_gpu_ok(name: str) -> None:
    assert evaluate(sample_text(name)).status is Status.OK


def test_sample_corrupted_h100_is_an_error() -> None:
    result = evaluate(sample_text("nvidia-smi-q_h100_drv535.183.01_corrupted-invalid.txt"))
    assert result.status is Status.ERROR and "truncated or corrupted" in result.summary


def test_corrupted_reason_labels_alone_are_a_device_error() -> None:
    # The corrupted sample's block, inside an otherwise well-formed one-GPU report.
    text = (
        "Attached GPUs : 1\nGPU 00000000:53:00.0\n    Clocks Event Reasons\n"
        "        Idle                              : Active\n"
        "        Invalid HW Slowdown                       : Not Active\n"
    )
    result = evaluate(text)
    assert result.status is Status.ERROR
    assert result.devices[0].detail == "unreadable: unknown clock event reason 'Invalid HW Slowdown'"


def test_csv_with_header_and_without() -> None:
    header = "index, clocks_throttle_reasons.hw_slowdown, clocks_throttle_reasons.sw_thermal_slowdown\n"
    result = evaluate(header + "0, Not Active, Not Active\n1, Active, Not Active\n")
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert evaluate(csv_row(0) + csv_row(1, "sw_thermal_slowdown")).status is Status.WARN


def test_upstream_style_single_field_query_without_index() -> None:
    result = evaluate("clocks_event_reasons.hw_slowdown\nNot Active\nActive\n")
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]


def test_rejected_field_text_is_an_error() -> None:
    result = evaluate('Field "clocks_event_reasons.hw_slowdown" is not a valid field to query.\n')
    assert result.status is Status.ERROR and "does not know the field" in result.summary


def test_registered_with_evaluate_text() -> None:
    spec = registry.REGISTRY.get("gpupower")
    assert spec.uses_gpu and spec.evaluate_text is gpupower.evaluate_text


def test_a_csv_row_that_says_gpu_is_lost_is_a_fatal_fail_at_its_index() -> None:
    # nvidia-smi opened GPU 2, which then fell off the bus: NVML_ERROR_GPU_IS_LOST in brackets for each value.
    rows = [csv_row(0), csv_row(1), csv_row(2, value=lambda n: "[GPU is lost]"), csv_row(3)]
    result = evaluate("".join(rows))
    assert [(d.id, d.status) for d in result.devices][2] == ("2", Status.FAIL)
    assert result.status is Status.FAIL and result.fatal  # before: error, not fatal
    other = evaluate("".join(rows).replace("[GPU is lost]", "[Unknown Error]"))
    assert other.status is Status.ERROR and not other.fatal
