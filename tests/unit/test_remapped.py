"""remapped: NVML readings, the nvidia-smi fallback, and saved outputs judged by evaluate_text."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autopilot import errors, execution, gpus, registry
from autopilot.checks import remapped
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeGpu, FakeRunner, FakeTelemetry
from tests.conftest import sample_text

MakeCtx = Callable[..., CheckContext]
ARGV = ["nvidia-smi", "-q", "-d", "ROW_REMAPPER"]


def rows(correctable: int = 0, uncorrectable: int = 0, pending: bool = False, failure: bool = False) -> FakeGpu:
    return FakeGpu(remapped=gpus.RemappedRows(correctable, uncorrectable, pending, failure))


def row_remapper_report(*blocks: str) -> str:
    """A handwritten ``nvidia-smi -q -d ROW_REMAPPER`` answer, one block per GPU."""
    head = (
        "\n==============NVSMI LOG==============\n\n"
        "Timestamp                                 : Sun Nov 29 22:00:00 2026\n"
        "Driver Version                            : 550.90.07\n"
        "CUDA Version                              : 12.4\n\n"
        f"Attached GPUs                             : {len(blocks)}\n"
    )
    return head + "".join(blocks)


def block(bus: str, pending: str = "No", failure: str = "No", uncorrectable: int = 0) -> str:
    return (
        f"GPU {bus}\n"
        "    Remapped Rows\n"
        "        Correctable Error                 : 0\n"
        f"        Uncorrectable Error               : {uncorrectable}\n"
        f"        Pending                           : {pending}\n"
        f"        Remapping Failure Occurred        : {failure}\n"
    )


# ---------------------------------------------------------------- judging one GPU


def test_failed_remap_fails_and_counts_as_needing_attention() -> None:
    d = remapped.judge("3", gpus.RemappedRows(0, 5, False, True))
    assert (d.status, d.value) == (Status.FAIL, 1)
    assert "row remapping failed" in d.detail and "5 uncorrectable" in d.detail


def test_pending_remap_warns() -> None:
    d = remapped.judge("0", gpus.RemappedRows(0, 4, True, False))
    assert (d.status, d.value) == (Status.WARN, 1)
    assert d.detail == "row remap pending: reset the GPU (4 uncorrectable, 0 correctable remapped rows)"


def test_applied_uncorrectable_remaps_are_ok_but_reported() -> None:
    d = remapped.judge("1", gpus.RemappedRows(2, 1, False, False))
    assert (d.status, d.value) == (Status.OK, 0)
    assert d.detail == "1 uncorrectable, 2 correctable remapped rows, all applied"


# ---------------------------------------------------------------- NVML path


def test_failure_occurred_is_a_fatal_fail(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(gpus=FakeTelemetry([rows(), rows(uncorrectable=9, failure=True), rows()]))
    result = execution.run_check("remapped", ctx)
    assert result.status is Status.FAIL and result.fatal
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL), ("2", Status.OK)]
    assert result.summary.startswith("GPU 1: row remapping failed")
    assert result.data["gpus"]["1"] == {
        "source": "nvml",
        "correctable": 0,
        "uncorrectable": 9,
        "pending": False,
        "failure_occurred": True,
    }


def test_pending_is_a_warning_not_fatal(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(gpus=FakeTelemetry([rows(), rows(correctable=1, pending=True)]))
    result = remapped.run(ctx, {})
    assert result.status is Status.WARN and not result.fatal
    assert [d.value for d in result.devices] == [0, 1]
    assert result.summary == "GPU 1: row remap pending: reset the GPU (0 uncorrectable, 1 correctable remapped rows)"


def test_all_clean_gpus_pass_and_name_applied_remaps(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(gpus=FakeTelemetry([rows(), rows(uncorrectable=2)]))
    result = remapped.run(ctx, {})
    assert result.status is Status.OK
    assert result.summary == (
        "no pending or failed row remaps on 2 GPUs; GPU 1: 2 uncorrectable, 0 correctable remapped rows, all applied"
    )
    assert result.data["source"] == "nvml"


def test_nvml_error_on_one_gpu_without_nvidia_smi_errors_that_gpu_only(make_ctx: MakeCtx) -> None:
    lost = FakeGpu(raises=errors.GpuError("GPU is lost", 15))
    ctx = make_ctx(commands=FakeRunner(), gpus=FakeTelemetry([rows(pending=True), lost, rows()]))
    result = remapped.run(ctx, {})
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.WARN), ("1", Status.ERROR), ("2", Status.OK)]
    assert result.devices[1].detail == "NVML: GPU is lost"
    assert result.status is Status.ERROR  # an error ranks above a warning


def test_nvml_error_on_one_gpu_falls_back_to_nvidia_smi(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    report = row_remapper_report(
        block("00000000:1A:00.0"), block("00000000:2B:00.0", pending="Yes", uncorrectable=1), block("00000000:3C:00.0")
    )
    runner.add(ARGV, report)
    lost = FakeGpu(raises=errors.GpuError("Unknown Error", 999))
    ctx = make_ctx(commands=runner, gpus=FakeTelemetry([FakeGpu(), lost, FakeGpu()]))
    result = remapped.run(ctx, {})
    assert runner.calls == [tuple(ARGV)]
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.WARN), ("2", Status.OK)]
    assert result.data["source"] == "nvml+nvidia-smi"
    assert result.data["gpus"]["1"]["source"] == "nvidia-smi"
    assert result.data["gpus"]["1"]["bus_id"] == "00000000:2B:00.0"
    assert result.data["gpus"]["1"]["nvml_error"] == "Unknown Error"


def test_nvidia_smi_fallback_runs_once_for_several_gpus(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(ARGV, row_remapper_report(block("00000000:1A:00.0"), block("00000000:2B:00.0", failure="Yes")))
    broken = [FakeGpu(raises=errors.GpuError("Unknown Error", 999)) for _ in range(2)]
    result = remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(broken)), {})
    assert len(runner.calls) == 1
    assert result.status is Status.FAIL and result.fatal


def test_nvidia_smi_failing_too_leaves_the_gpu_in_error(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(ARGV, "Unable to determine the device handle for GPU0000:2B:00.0: Unknown Error\n", returncode=15)
    ctx = make_ctx(commands=runner, gpus=FakeTelemetry([FakeGpu(), FakeGpu(raises=errors.GpuError("lost", 15))]))
    result = remapped.run(ctx, {})
    assert [d.status for d in result.devices] == [Status.OK, Status.ERROR]
    assert result.devices[1].detail.startswith("NVML: lost; nvidia-smi exited 15: Unable to determine")


@pytest.mark.parametrize("returncode", [0, 15])
def test_nvidia_smi_naming_a_lost_gpu_on_stderr_still_answers_for_the_others(
    make_ctx: MakeCtx, returncode: int
) -> None:
    # Newer drivers name the GPU they could not open with its index ("for GPU1: 0000:2B:00.0"),
    # on stderr; the report holds the other sections under the system's count.
    result = run_with_gpu1_unopened(make_ctx, "for GPU1: 0000:2B:00.0: Unknown Error", returncode)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.ERROR), ("2", Status.WARN)]


def run_with_gpu1_unopened(make_ctx: MakeCtx, line: str, returncode: int) -> CheckResult:
    """remapped without NVML, nvidia-smi answering for GPUs 0 and 2 (2 pending) and naming GPU 1 on stderr:
    ``Unable to determine the device handle <line>``."""
    report = row_remapper_report(block("00000000:1A:00.0"), block("00000000:3C:00.0", pending="Yes"))
    runner = FakeRunner()
    runner.add(
        ARGV,
        report.replace(
            "Attached GPUs                             : 2", "Attached GPUs                             : 3"
        ),
        stderr=f"Unable to determine the device handle {line}\n",
        returncode=returncode,
    )
    return remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})


GONE = "GPU is lost.  Reboot the system to recover this GPU"


@pytest.mark.parametrize("line", [f"for GPU1: 0000:2B:00.0: {GONE}", f"for GPU0000:2B:00.0: {GONE}"])
def test_nvidia_smi_saying_a_gpu_is_lost_makes_it_a_fatal_fail_at_its_index(make_ctx: MakeCtx, line: str) -> None:
    # NVML unusable (library missing from the image): nvidia-smi answers, naming GPU 1 lost on stderr, by index
    # (newer drivers) or by bus id alone (older ones, placed in PCI bus order). NVML's own lost GPU is a fatal
    # fail at its index; so is this. Before: an error device (and, without the index, the whole report unread:
    # "announces 3 GPUs but holds 2").
    result = run_with_gpu1_unopened(make_ctx, line, 15)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL), ("2", Status.WARN)]
    assert result.status is Status.FAIL and result.fatal
    assert "GPU is lost" in result.devices[1].detail


@pytest.mark.parametrize("form", ["text", "xml", "csv"])
@pytest.mark.parametrize(("why", "status"), [(GONE, Status.FAIL), ("Unknown Error", Status.ERROR),
                                             ("Insufficient Permissions", Status.ERROR)])  # fmt: skip
def test_saved_output_naming_a_gpu_lost_is_a_fatal_fail_and_other_reasons_an_error(
    form: str, why: str, status: Status
) -> None:
    line = f"Unable to determine the device handle for GPU1: 0000:2B:00.0: {why}\n"
    if form == "text":
        body = row_remapper_report(block("00000000:1A:00.0"), block("00000000:3C:00.0"))
        body = body.replace(
            "Attached GPUs                             : 2", "Attached GPUs                             : 3"
        )
    elif form == "xml":
        gpu = (
            '<gpu id="{}"><remapped_rows><remapped_row_corr>0</remapped_row_corr><remapped_row_unc>0'
            "</remapped_row_unc><remapped_row_pending>No</remapped_row_pending><remapped_row_failure>No"
            "</remapped_row_failure></remapped_rows></gpu>"
        )
        body = (
            '<?xml version="1.0" ?>\n<nvidia_smi_log><attached_gpus>3</attached_gpus>'
            + gpu.format("00000000:1A:00.0")
            + gpu.format("00000000:3C:00.0")
            + "</nvidia_smi_log>\n"
        )
    else:
        body = (
            "gpu_bus_id, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending, "
            "remapped_rows.failure\n00000000:1A:00.0, 0, 0, No, No\n00000000:3C:00.0, 0, 0, No, No\n"
        )
    result = remapped.evaluate_text(line + body, {}, None)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", status), ("2", Status.OK)]
    assert result.status is status and result.fatal is (status is Status.FAIL)


def test_gpu_without_row_remapper_is_skipped(make_ctx: MakeCtx) -> None:
    volta = FakeGpu(name="NVIDIA TITAN V", raises=errors.GpuError("Not Supported", remapped.NVML_NOT_SUPPORTED))
    result = remapped.run(make_ctx(commands=FakeRunner(installed=["nvidia-smi"]), gpus=FakeTelemetry([volta])), {})
    assert result.status is Status.SKIPPED
    assert result.summary == "row remapping not supported on any of 1 GPUs"
    assert result.devices[0].detail == "row remapping not supported on this GPU"


def test_mixed_supported_and_unsupported_gpus_judge_the_supported(make_ctx: MakeCtx) -> None:
    volta = FakeGpu(raises=errors.GpuError("Not Supported", 3))
    result = remapped.run(make_ctx(gpus=FakeTelemetry([rows(), volta])), {})
    assert result.status is Status.OK
    assert result.summary == "no pending or failed row remaps on 1 GPUs (1 without row remapping)"


def test_no_gpus_is_skipped(make_ctx: MakeCtx) -> None:
    result = remapped.run(make_ctx(gpus=FakeTelemetry([])), {})
    assert result.status is Status.SKIPPED and result.summary == "no GPUs on this node"


def test_no_driver_and_no_nvidia_smi_is_skipped_by_the_engine(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(commands=FakeRunner(), gpus=FakeTelemetry(unavailable="no NVIDIA driver"))
    with pytest.raises(errors.GpuUnavailable):
        remapped.run(ctx, {})
    assert execution.run_check("remapped", ctx).status is Status.SKIPPED


def test_nvml_unavailable_but_nvidia_smi_answers(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(ARGV, row_remapper_report(block("00000000:1A:00.0", pending="Yes"), block("00000000:2B:00.0")))
    ctx = make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="nvidia-ml-py is not installed"))
    result = remapped.run(ctx, {})
    assert runner.calls == [tuple(ARGV)]
    assert result.status is Status.WARN
    assert result.data["source"] == "nvidia-smi"
    assert result.data["gpus"]["0"]["bus_id"] == "00000000:1A:00.0"


def test_nvml_unavailable_and_nvidia_smi_finds_no_gpu_is_skipped(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(ARGV, "No devices were found\n", returncode=6)
    result = remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no GPU")), {})
    assert result.status is Status.SKIPPED


@pytest.mark.parametrize(
    ("why", "status"),
    [("Unknown Error", Status.ERROR), ("GPU is lost.  Reboot the system to recover this GPU", Status.FAIL)],
)
def test_no_devices_after_a_gpu_named_by_index_alone_is_that_gpu_not_no_gpus(
    make_ctx: MakeCtx, why: str, status: Status
) -> None:
    # nvidia-smi that cannot open its only GPU, nor read its bus id, names it by index and then finds "no
    # devices" (575-595 drivers): a GPU is there, unread (or lost), never a node without GPUs.
    line = f"Unable to determine the device handle for GPU0: {why}\n"
    runner = FakeRunner()
    runner.add(ARGV, "No devices were found\n", returncode=6, stderr=line)
    result = remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="NVML: Unknown Error")), {})
    assert result.status is status and result.fatal is (status is Status.FAIL)
    assert [(d.id, d.status) for d in result.devices] == [("0", status)]
    saved = evaluate(line + "No devices were found\n")
    assert [(d.id, d.status) for d in saved.devices] == [("0", status)] and saved.status is status


def test_nvml_unavailable_and_nvidia_smi_without_driver_agrees_no_driver(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    said = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure ...\n"
    runner.add(ARGV, said, returncode=9)
    with pytest.raises(errors.GpuUnavailable):
        remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no driver")), {})


def test_nvml_unavailable_and_nvidia_smi_garbled_is_an_error(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    whole = row_remapper_report(block("00000000:1A:00.0"), block("00000000:2B:00.0"))
    runner.add(ARGV, whole[: whole.index("GPU 00000000:2B")])  # cut short: announces 2 GPUs, holds 1
    result = remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert result.status is Status.ERROR
    assert result.summary.startswith("no reading of row remapping: NVML: no NVML; unreadable nvidia-smi output:")


def test_nvidia_smi_timeout_is_an_error(make_ctx: MakeCtx) -> None:
    runner = FakeRunner()
    runner.add(ARGV, raises="timeout")
    result = remapped.run(make_ctx(commands=runner, gpus=FakeTelemetry(unavailable="no NVML")), {})
    assert result.status is Status.ERROR and "timed out" in result.summary


# ---------------------------------------------------------------- evaluate_text


def evaluate(text: str) -> CheckResult:
    return remapped.evaluate_text(text, {}, None)


def test_handwritten_failure_report_is_fatal() -> None:
    result = evaluate(row_remapper_report(block("00000000:1A:00.0", failure="Yes", pending="Yes", uncorrectable=3)))
    assert result.status is Status.FAIL and result.fatal
    assert result.devices[0].detail.endswith("; a remap is also pending)")


def test_unknown_text_is_an_error() -> None:
    result = evaluate("Mon Jan 20 10:18:26 2025\n+------+\n")
    assert result.status is Status.ERROR and result.summary.startswith("unreadable nvidia-smi output")


def test_sample_a10_full_report_pending_warns() -> None:
    result = evaluate(sample_text("nvidia-smi-q_a10_drv535.129.03_remapped-rows-pending.txt"))
    assert result.status is Status.WARN and not result.fatal
    assert [(d.id, d.status, d.value) for d in result.devices] == [("0", Status.WARN, 1)]
    assert result.data["gpus"]["0"]["uncorrectable"] == 4
    assert result.data["gpus"]["0"]["bus_id"] == "00000000:07:00.0"
    assert result.data["source"] == "nvidia-smi -q"


def test_sample_a100_excerpt_after_xid63_warns() -> None:
    result = evaluate(sample_text("nvidia-smi-q_excerpt_a100_drv510_remap-pending-after-xid63.txt"))
    assert result.status is Status.WARN
    # one GPU quoted from a report of 8: its index is unknown, so it is named by its bus id
    assert [d.id for d in result.devices] == ["00000000:10:1C.0"]
    gpu = result.data["gpus"]["00000000:10:1C.0"]
    assert gpu["correctable"] == 1 and gpu["pending"] is True


def test_sample_blackwell_row_remapper_pending_warns() -> None:
    result = evaluate(sample_text("nvidia-smi-q-d-ROW_REMAPPER_blackwell_pending-yes.txt"))
    assert result.status is Status.WARN
    assert result.data["source"] == "nvidia-smi -q -d ROW_REMAPPER"
    assert result.data["gpus"]["0"]["bank_remap_availability"]["high"] == 1


def test_sample_query_remapped_rows_csv_per_gpu() -> None:
    result = evaluate(sample_text("nvidia-smi-query-remapped-rows_csv_4gpu_after-reset.txt"))
    assert result.status is Status.OK
    assert [(d.id, d.status, d.value) for d in result.devices] == [(str(i), Status.OK, 0) for i in range(4)]
    assert [result.data["gpus"][str(i)]["uncorrectable"] for i in range(4)] == [0, 1, 0, 0]
    assert result.data["gpus"]["1"]["gpu_uuid"] == "GPU-455e672a-..."
    assert "GPU 1: 1 uncorrectable, 0 correctable remapped rows, all applied" in result.summary


def test_sample_corrupted_h100_is_an_error() -> None:
    result = evaluate(sample_text("nvidia-smi-q_h100_drv535.183.01_corrupted-invalid.txt"))
    assert result.status is Status.ERROR
    assert "truncated or corrupted" in result.summary


@pytest.mark.parametrize(
    "name",
    [
        "nvidia-smi-q_rtx4090x8_drv535.154.05_pcie-idle-downtrained-gen1.txt",
        "nvidia-smi-q_h100x8_drv535.161.08_hw-power-brake-slowdown-active.txt",
        "nvidia-smi-q_h100x8_drv535.183.01_sw-thermal-slowdown-active.txt",
    ],
)
def test_samples_of_healthy_memory_pass(name: str) -> None:
    result = evaluate(sample_text(name))
    assert result.status is Status.OK
    assert [d.status for d in result.devices] == [Status.OK] * 8


def test_sample_titan_v_has_no_row_remapper() -> None:
    result = evaluate(sample_text("nvidia-smi-q_titanv_drv560.35.03.txt"))
    assert result.status is Status.SKIPPED
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.SKIPPED)]


def test_a_page_retirement_report_is_judged_on_its_retired_pages() -> None:
    # Pre-Ampere GPUs (V100, T4) retire pages instead of remapping rows: -q -d PAGE_RETIREMENT answers for them.
    clean = evaluate(sample_text("nvidia-smi-q-d-PAGE_RETIREMENT_8gpu_clean.txt"))
    assert clean.status is Status.OK and clean.data["source"] == "nvidia-smi -q -d PAGE_RETIREMENT"
    assert clean.summary == "no pending page retirement on 8 GPUs (no row remapping)"
    # The retired-pages-pending sample (Azure/azurehpc-health-checks' 'bad' fixture): GPU 0 has 60 + 5
    # retired pages and GPU 1 2 + 61 (the limit is 63): fail, not fatal; GPU 3 has one pending: warn.
    bad = evaluate(sample_text("nvidia-smi-q-d-PAGE_RETIREMENT_8gpu_retired-pages-pending.txt"))
    statuses = {d.id: d.status for d in bad.devices}
    assert bad.status is Status.FAIL and not bad.fatal
    assert (statuses["0"], statuses["1"], statuses["2"], statuses["3"]) == (
        Status.FAIL, Status.FAIL, Status.OK, Status.WARN
    )  # fmt: skip
    assert bad.data["gpus"]["1"]["retired_pages"] == {"single_bit_ecc": 2, "double_bit_ecc": 61, "pending": True}


def test_a_report_with_neither_remapped_rows_nor_retired_pages_is_an_error() -> None:
    text = (
        "==============NVSMI LOG==============\n\nAttached GPUs : 1\nGPU 00000000:3B:00.0\n    Temperature\n"
        "        GPU Current Temp : 35 C\n"
    )
    result = evaluate(text)
    assert result.status is Status.ERROR and "no 'Remapped Rows' or 'Retired Pages' block" in result.summary


def test_registered_with_evaluate_text() -> None:
    spec = registry.REGISTRY.get("remapped")
    assert spec.uses_gpu and spec.evaluate_text is remapped.evaluate_text


def test_saved_remapped_rows_csv_with_a_lost_gpu_keeps_every_gpu_at_its_index() -> None:
    # --query-remapped-rows with GPU 1 lost: its stderr line printed first (2>&1), then the rows of
    # GPUs 0 and 2 in index order. Before, the line made the whole answer unreadable.
    text = (
        "Unable to determine the device handle for GPU1: 0000:2B:00.0: Unknown Error\n"
        "gpu_bus_id, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending, "
        "remapped_rows.failure\n"
        "00000000:1A:00.0, 0, 0, No, No\n"
        "00000000:3C:00.0, 0, 2, Yes, No\n"
    )
    result = remapped.evaluate_text(text, {}, None)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.ERROR), ("2", Status.WARN)]
    assert result.data["gpus"]["2"]["gpu_bus_id"] == "00000000:3C:00.0"


def test_a_csv_row_that_says_gpu_is_lost_is_a_fatal_fail_at_its_index() -> None:
    # nvidia-smi still lists a GPU that fell off the bus after it got its handle, and writes NVML_ERROR_GPU_IS_LOST
    # in brackets in place of each value; other bracketed errors (Unknown Error) prove nothing about the GPU.
    head = (
        "gpu_bus_id, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending, "
        "remapped_rows.failure\n"
    )
    lost = head + "00000000:1A:00.0, 0, 0, No, No\n" + "00000000:2B:00.0" + ", [GPU is lost]" * 4 + "\n"
    result = remapped.evaluate_text(lost, {}, None)
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]
    assert result.status is Status.FAIL and result.fatal  # before: error, not fatal (node WARN, not EVICT)
    assert result.devices[1].detail.startswith("GPU is lost, fell off the bus: ")
    unknown = remapped.evaluate_text(lost.replace("[GPU is lost]", "[Unknown Error]"), {}, None)
    assert unknown.status is Status.ERROR and not unknown.fatal


def test_a_lost_csv_row_without_a_bus_id_is_named_by_its_uuid() -> None:
    # The remapped-rows query as documented (gpu_uuid, no bus id): the GPU is named by what the row has,
    # not "at its bus id unknown".
    head = (
        "gpu_uuid, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending, "
        "remapped_rows.failure\n"
    )
    uuid = "GPU-455e672a-1111-2222-3333-444455556667"
    result = remapped.evaluate_text(head + uuid + ", [GPU is lost]" * 4 + "\n", {}, None)
    assert result.devices[0].status is Status.FAIL
    assert result.devices[0].detail == f"GPU is lost, fell off the bus: nvidia-smi answered [GPU is lost] for {uuid}"
    unnamed = remapped.evaluate_text(head + "[GPU is lost]" + ", [GPU is lost]" * 4 + "\n", {}, None)
    assert unnamed.devices[0].detail == (
        "GPU is lost, fell off the bus: nvidia-smi answered [GPU is lost] for the GPU (no bus id or UUID in its row)"
    )


# Health scripts ask --query-remapped-rows for some of the four figures (the failure flag alone, with the bus id;
# pending, failure and uncorrectable); the driver prints the flags as Yes/No or 1/0. Written by hand after the
# CSV of nvidia-smi 470-580 with a header (field names as queried).
@pytest.mark.parametrize(
    ("csv", "statuses", "fatal"),
    [
        ("gpu_bus_id, remapped_rows.failure\n00000000:1A:00.0, 0\n00000000:3B:00.0, 1\n",
         [Status.ERROR, Status.FAIL], True),
        ("remapped_rows.pending, remapped_rows.failure, remapped_rows.uncorrectable\nNo, No, 0\nYes, No, 2\n",
         [Status.OK, Status.WARN], False),
        ("gpu_bus_id, remapped_rows.failure\n00000000:1A:00.0, [N/A]\n", [Status.SKIPPED], False),
    ],
)  # fmt: skip
def test_a_csv_query_of_some_of_the_figures_is_judged_on_those_it_holds(
    csv: str, statuses: list[Status], fatal: bool
) -> None:
    # Before: every GPU an error ("remapped rows CSV lacks ..."), a failed remap included (node WARN, not EVICT).
    result = remapped.evaluate_text(csv, {}, None)
    assert [d.status for d in result.devices] == statuses
    # Without the pending flag, a GPU whose failure flag is clear is not known to be fine: error, never ok.
    assert result.fatal is fatal


def test_a_csv_header_without_rows_is_an_error_not_a_node_without_gpus() -> None:
    # Before: skipped, "no GPUs on this node". nvidia-smi answers a node without GPUs with "No devices were
    # found" and a GPU without row remapping with a row of [N/A] (Azure azhpc-diagnostics asserts the latter).
    head = "gpu_bus_id, remapped_rows.correctable, remapped_rows.uncorrectable, remapped_rows.pending\n"
    result = remapped.evaluate_text(head, {}, None)
    assert result.status is Status.ERROR and "no GPU row" in result.summary
