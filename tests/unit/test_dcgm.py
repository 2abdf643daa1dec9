"""The ``dcgm`` check: DCGM 3.x/4.x JSON and text parsing, judgement, fatal categories, collect."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import autopilot.checks.dcgm as dcgm
from autopilot import errors, execution, registry
from autopilot.commands import CommandResult
from autopilot.config import Settings
from autopilot.context import CheckContext
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeClock, FakeGpu, FakeRunner, FakeTelemetry
from tests.conftest import DATA, SAMPLES, sample_text

DEFAULT_FATAL = Settings().dcgm_fatal_errors
Outcome = dcgm.Outcome
P, F, W, S = Outcome.PASS, Outcome.FAIL, Outcome.WARN, Outcome.SKIP


def ctx_for(commands: Any, *, gpus: int = 8, **settings: Any) -> CheckContext:
    return CheckContext(
        node="n1",
        settings=Settings(**settings),
        commands=commands,
        gpus=FakeTelemetry([FakeGpu()] * gpus),
        clock=FakeClock(),
        checks=shipped_checks(),
    )


def fixture_stdout(scenario: str) -> tuple[str, int]:
    raw = json.loads(next((DATA / "dcgm" / scenario).glob("*.json")).read_text())
    return raw["stdout"], raw["returncode"]


def by_name(result: CheckResult) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in result.data["tests"]}


def outcome(
    name: str, status: Outcome, gpus: Mapping[str, Outcome] | None = None, category: str = ""
) -> dcgm.TestOutcome:
    return dcgm.TestOutcome(name, category, status, dict(gpus or {}))


# ---------------------------------------------------------------- public samples, read in place


def test_sample_dcgm3_json_nvidia_example() -> None:
    text = sample_text("dcgmi-diag-j_json_dcgm3x-format_nvidia-example.json.txt")
    tests = {t.name: t for t in dcgm.parse_json(text)}
    assert len(tests) == 17
    assert tests["Denylist"].category == "Deployment"
    assert tests["Denylist"].gpus == {"0": P, "1": P, "2": P, "3": P}
    # upper-case PASS/FAIL/SKIP read case-insensitively; a skip on one GPU does not fail the test
    assert tests["memory"].status is P
    assert tests["memory"].gpus == {"0": S, "1": P, "2": P, "3": P}
    assert tests["memory"].info[0] == "Allocated 16583361795 bytes (97.2%)"
    assert "ECC memory on GPU 0 is not currently active" in tests["memory"].warnings[0]
    assert tests["pcie"].category == "Integration" and tests["pcie"].status is P
    assert tests["diagnostic"].status is S and tests["memory_bandwidth"].status is S
    assert tests["sm_stress"].status is F
    assert tests["sm_stress"].gpus == {"0": F, "1": P, "2": F, "3": F}

    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.FAIL
    assert result.fatal is False  # sm_stress is a Stress test, not in PCIe/NVLink/ECC/GPU Memory
    assert result.data["failure_string"] == "sm_stress.0.2.3"
    assert result.data["format"] == "json"
    assert [(d.id, d.status) for d in result.devices] == [
        ("0", Status.FAIL),
        ("1", Status.OK),
        ("2", Status.FAIL),
        ("3", Status.FAIL),
    ]
    assert result.devices[0].detail == "failed: sm_stress"
    assert result.summary == "DCGM failed: sm_stress failed on GPU 0, 2, 3"
    # skipped tests are kept in data, not judged
    assert by_name(result)["targeted_power"]["status"] == "skip"
    json.dumps(result.to_dict())


def test_sample_dcgm4_schema_is_not_a_report() -> None:
    # The 4.x file is a JSON Schema, not an output: it must never be read as a (passing) report.
    text = sample_text("dcgmi-diag-j_json_dcgm4x_SCHEMA.json.txt")
    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.ERROR
    assert "DCGM Diagnostic" in result.summary


def _check_required(schema: Mapping[str, Any], doc: Any, where: str = "$") -> None:
    """Enough of JSON Schema (type, properties, items, required) to hold a fixture to NVIDIA's schema."""
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(doc, dict), where
        for key in schema.get("required", ()):
            assert key in doc, f"{where}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in doc:
                _check_required(sub, doc[key], f"{where}.{key}")
    elif kind == "array":
        assert isinstance(doc, list), where
        for i, item in enumerate(doc):
            _check_required(schema.get("items", {}), item, f"{where}[{i}]")
    elif kind == "string":
        assert isinstance(doc, str), where
    elif kind == "integer":
        assert isinstance(doc, int), where


def test_dcgm4_fixture_follows_the_dcgm4_schema_and_parses() -> None:
    schema = json.loads(sample_text("dcgmi-diag-j_json_dcgm4x_SCHEMA.json.txt"))
    stdout, _ = fixture_stdout("dcgm4-pcie-fail")
    _check_required(schema, json.loads(stdout))

    tests = {t.name: t for t in dcgm.parse_json(stdout)}
    assert list(tests) == ["software", "memory", "pcie"]
    assert tests["pcie"].category == "Integration"
    assert tests["pcie"].status is F
    assert tests["pcie"].gpus == {"0": P, "1": F, "2": P, "3": P}
    assert tests["pcie"].warnings == ("synthetic: GPU 1 PCIe replay rate too high",)
    assert tests["memory"].gpus == {str(i): P for i in range(4)}


def test_sample_text_dcgm318_persistence_mode_fail() -> None:
    text = sample_text("dcgmi-diag-r1_text_dcgm3.1.8_h200x8_fail-persistence-mode.txt")
    tests = {t.name: t for t in dcgm.parse_text(text)}
    assert list(tests) == [
        "Denylist",
        "NVML Library",
        "CUDA Main Library",
        "Permissions and OS Blocks",
        "Persistence Mode",
        "Environment Variables",
        "Page Retirement/Row Remap",
        "Graphics Processes",
        "Inforom",
    ]
    pm = tests["Persistence Mode"]
    assert pm.category == "Deployment" and pm.status is F
    # the wrapped Error cell is joined back mid-word, without spaces inserted or lost
    assert pm.warnings[0].startswith("Persistence mode for GPU 0 is currently disabled. The DCGM diagnostic requires")
    assert "Persistence mode for GPU 1 is currently disabled." in pm.warnings[0]
    # the row names no GPU; its (truncated) message names GPUs 0-5
    assert pm.gpus == {str(i): F for i in range(6)}
    assert tests["Inforom"].status is P and tests["Inforom"].gpus == {}

    result = dcgm.evaluate_text(text, {"r": 1}, Settings())
    assert result.status is Status.FAIL and result.fatal is False
    assert result.data["failure_string"] == "persistence_mode.0.1.2.3.4.5"
    assert result.data["metadata"]["DCGM Version"] == "3.1.8"
    assert result.data["metadata"]["GPU Device IDs Detected"] == ",".join(["2335"] * 8)
    assert result.data["level"] == 1
    assert result.data["format"] == "text"
    assert {d.detail for d in result.devices} == {"failed: Persistence Mode"}


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("dcgmi-diag-r2_text_dcgm3.3.3_a100x8_pass.txt", "3.3.3"),
        ("dcgmi-diag-r2_text_dcgm3.3.8_h100_pass-with-persistence-info.txt", "3.3.8"),
    ],
)
def test_sample_text_dcgm33_pass(name: str, version: str) -> None:
    text = sample_text(name)
    tests = {t.name: t for t in dcgm.parse_text(text)}
    assert len(tests) == 11
    assert all(t.status is P for t in tests.values())
    assert (tests["PCIe"].category, tests["GPU Memory"].category) == ("Integration", "Hardware")
    # "Pass - All" names no GPU index, so there is no per-GPU entry to invent
    assert tests["GPU Memory"].gpus == {}

    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.OK
    assert result.summary == "DCGM diagnostics passed: 11 tests"
    assert result.data["failure_string"] == ""
    assert result.data["metadata"]["DCGM Version"] == version


def test_sample_text_dcgm338_info_row_belongs_to_its_test() -> None:
    text = sample_text("dcgmi-diag-r2_text_dcgm3.3.8_h100_pass-with-persistence-info.txt")
    pm = next(t for t in dcgm.parse_text(text) if t.name == "Persistence Mode")
    assert pm.status is P
    assert pm.info == (
        "Persistence mode for GPU 0 is disabled. "
        'Enable persistence mode by running "nvidia-smi -i <gpuId> -pm 1 " as root.',
    )
    assert pm.gpus == {}  # Info text never attributes


def test_sample_text_dcgm442_new_layout() -> None:
    text = sample_text("dcgmi-diag-r2_text_dcgm4.4.2_1gpu_pass_new-4x-layout.txt")
    tests = dcgm.parse_text(text)
    assert [(t.category, t.name, t.status, dict(t.gpus)) for t in tests] == [
        ("Deployment", "software", P, {"0": P}),
        ("Hardware", "memory", P, {"0": P}),
        ("Integration", "pcie", P, {"0": P}),
    ]
    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.OK
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK)]
    assert result.summary == "DCGM diagnostics passed: 3 tests on 1 GPU"
    assert result.data["metadata"]["DCGM Version"] == "4.4.2"


def test_sample_text_fragments_row_remap_error_and_gpu_memory_fail() -> None:
    text = sample_text("dcgmi-diag_text_fragments_fail_row-remap-pending_gpu-memory-fail.txt")
    tests = dcgm.parse_text(text)
    assert [t.name for t in tests] == ["Deployment error", "GPU Memory"]
    orphan, memory = tests
    # an Error row with no test above it is kept as a failure of its own, on the GPU it names
    assert orphan.status is F and orphan.gpus == {"3": F}
    assert orphan.warnings == ("GPU 3 has uncorrectable memory errors and row remappings are pending",)
    assert memory.status is F
    assert memory.gpus == {"0": F, **{str(i): P for i in range(1, 8)}}
    assert memory.warnings[0].startswith("GPU 0 Thermal violations totaling 13.3 seconds started at 9.7 seconds")

    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.FAIL
    assert result.fatal is True  # GPU Memory is fatal by default
    assert result.data["failure_string"] == "deployment_error.3,gpu_memory.0"
    devices = {d.id: d for d in result.devices}
    assert devices["0"].detail == "failed: GPU Memory (fatal)"
    assert devices["3"].status is Status.FAIL and devices["7"].status is Status.OK


def test_sample_upstream_docstring_fragment() -> None:
    # Upstream's docstring shape is an excerpt with "..." in it: unreadable, so an error, never a pass.
    text = sample_text("upstream/dcgmi-diag-j--shape-fragment-from-docstring.txt")
    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.ERROR
    # The same shape, completed by hand: "gpu_id" (singular) and "Fail" in a Hardware test "GPU Memory".
    complete = {
        "DCGM GPU Diagnostic": {
            "test_categories": [
                {
                    "category": "Hardware",
                    "tests": [{"name": "GPU Memory", "results": [{"gpu_id": "0", "status": "Fail"}]}],
                }
            ]
        }
    }
    result = dcgm.evaluate_text(json.dumps(complete), {}, Settings())
    assert (result.status, result.fatal, result.data["failure_string"]) == (Status.FAIL, True, "gpu_memory.0")


def test_every_dcgmi_sample_is_covered() -> None:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples absent")
    names = {p.name for p in SAMPLES.rglob("dcgmi*")}
    covered = {
        "dcgmi-diag-j_json_dcgm3x-format_nvidia-example.json.txt",
        "dcgmi-diag-j_json_dcgm4x_SCHEMA.json.txt",
        "dcgmi-diag-r1_text_dcgm3.1.8_h200x8_fail-persistence-mode.txt",
        "dcgmi-diag-r2_text_dcgm3.3.3_a100x8_pass.txt",
        "dcgmi-diag-r2_text_dcgm3.3.8_h100_pass-with-persistence-info.txt",
        "dcgmi-diag-r2_text_dcgm4.4.2_1gpu_pass_new-4x-layout.txt",
        "dcgmi-diag_text_fragments_fail_row-remap-pending_gpu-memory-fail.txt",
        "dcgmi-diag-j--shape-fragment-from-docstring.txt",
    }
    assert names <= covered, f"new dcgmi samples without a test: {sorted(names - covered)}"


# ---------------------------------------------------------------- parsing details


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("Pass", P),
        ("PASS", P),
        ("pass", P),
        ("Fail", F),
        ("FAIL", F),
        ("Warn", W),
        ("WARNING", W),
        ("Skip", S),
        ("SKIPPED", S),
        ("Not Run", Outcome.NOT_RUN),
        ("NOT_RUN", Outcome.NOT_RUN),
        ("Maybe", Outcome.UNKNOWN),
        ("", Outcome.UNKNOWN),
    ],
)
def test_status_words(word: str, expected: Outcome) -> None:
    assert dcgm.outcome_of(word) is expected


def test_json_flat_test_list_and_non_gpu_entities() -> None:
    doc = {
        "DCGM Diagnostic": {
            "tests": [
                {
                    "name": "cpu_eud",
                    "category": "Hardware",
                    "results": [{"entity_group": "CPU", "entity_group_id": 7, "entity_id": 0, "status": "Fail"}],
                    "test_summary": {"status": "Fail"},
                },
                {"name": "memory", "results": [{"entity_id": 0, "status": "Pass"}], "test_summary": {"status": "Pass"}},
            ]
        }
    }
    cpu, memory = dcgm.parse_json(json.dumps(doc))
    assert (cpu.category, cpu.status, dict(cpu.gpus)) == ("Hardware", F, {})  # a CPU is not a GPU device
    assert memory.gpus == {"0": P}
    result = dcgm.evaluate(dcgm.parse_json(json.dumps(doc)), DEFAULT_FATAL)
    assert result.status is Status.FAIL and result.data["failure_string"] == "cpu_eud"


def test_json_runtime_error() -> None:
    only_error = json.dumps({"DCGM GPU Diagnostic": {"runtime_error": "synthetic: NVVS could not start"}})
    result = dcgm.evaluate_text(only_error, {}, Settings())
    assert result.status is Status.ERROR
    assert "synthetic: NVVS could not start" in result.summary

    with_tests = json.dumps(
        {
            "DCGM Diagnostic": {
                "runtime_error": "synthetic: stopped early",
                "test_categories": [
                    {
                        "category": "Deployment",
                        "tests": [{"name": "software", "results": [], "test_summary": {"status": "Pass"}}],
                    }
                ],
            }
        }
    )
    result = dcgm.evaluate_text(with_tests, {}, Settings())
    assert result.status is Status.ERROR  # a run that stopped part-way is not a pass
    assert "stopped early" in result.summary


def test_json_with_a_line_before_and_after() -> None:
    stdout, _ = fixture_stdout("dcgm4-pcie-fail")
    result = dcgm.evaluate_text("synthetic notice\n" + stdout + "\ntrailer\n", {}, Settings())
    assert result.status is Status.FAIL and result.data["format"] == "json"


def test_text_wrapped_gpu_list_and_unreadable_cell() -> None:
    text = "\n".join(
        [
            "+---------------------------+------------------------------------------------+",
            "| Diagnostic                | Result                                         |",
            "+===========================+================================================+",
            "+-----  Hardware  ----------+------------------------------------------------+",
            "| GPU Memory                | Pass - GPUs: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,  |",
            "|                           |  11                                            |",
            "|                           | Fail - GPU: 12                                 |",
            "| Diagnostic                | Sideways                                       |",
            "+---------------------------+------------------------------------------------+",
        ]
    )
    memory, diag = dcgm.parse_text(text)
    assert memory.gpus == {**{str(i): P for i in range(12)}, "12": F}
    assert diag.status is Outcome.UNKNOWN and diag.info == ("Sideways",)


# dcgmi's own JSON writers (NVIDIA/DCGM dcgmi/Diag.cpp): DCGM 2.x HelperJsonAddBasicTests gives a
# Deployment result only "status" and "warnings" (a string), no GPU id; 3.x gives "gpu_ids" the
# error's GPU id (an int, negative when the error concerns no one GPU) and each warning object its
# text under "warnings"; 3.1 per-GPU results may carry "gpu_ids" as an int and "tests" may hold null
# (DCGM's testing/JsonResultTests "Deserialize real output", printed after a "WARNING:" line).
def test_json_dcgm2_deployment_failure_is_attributed_to_the_gpu_its_message_names() -> None:
    doc = {
        "DCGM GPU Diagnostic": {
            "test_categories": [
                {
                    "category": "Deployment",
                    "tests": [
                        {"name": "Denylist", "results": [{"status": "Pass"}]},
                        {
                            "name": "Persistence Mode",
                            "results": [{"status": "Fail", "warnings": "Persistence mode for GPU 1 is disabled."}],
                        },
                    ],
                },
                {
                    "category": "Hardware",
                    "tests": [
                        {
                            "name": "GPU Memory",
                            "results": [{"gpu_ids": "0", "status": "Pass"}, {"gpu_ids": "1", "status": "Pass"}],
                        }
                    ],
                },
            ],
            "version": "2.4.5",
        }
    }
    result = dcgm.evaluate_text(json.dumps(doc), {}, Settings())
    assert result.status is Status.FAIL
    assert {d.id: d.status for d in result.devices} == {"0": Status.OK, "1": Status.FAIL}
    assert result.data["failure_string"] == "persistence_mode.1"


def test_json_dcgm3_deployment_error_ids_and_warning_objects() -> None:
    def deployment(gpu_id: int, message: str) -> str:
        warning = {"warnings": message, "error_id": 9, "error_category": 1, "error_severity": 2}
        result = {"status": "Fail", "gpu_ids": gpu_id, "warnings": [warning]}
        test = {"name": "Environment Variables", "results": [result]}
        return json.dumps({"DCGM GPU Diagnostic": {"test_categories": [{"category": "Deployment", "tests": [test]}]}})

    nobody = dcgm.evaluate_text(deployment(-1, "Found environment variable 'CUDA_LAUNCH_BLOCKING'"), {}, Settings())
    assert nobody.status is Status.FAIL and nobody.devices == ()  # no device "-1"
    assert nobody.data["tests"][0]["warnings"] == ["Found environment variable 'CUDA_LAUNCH_BLOCKING'"]
    one = dcgm.evaluate_text(deployment(2, "GPU 2 has a problem"), {}, Settings())
    assert [(d.id, d.status) for d in one.devices] == [("2", Status.FAIL)]


def test_json_dcgm31_null_tests_and_integer_gpu_ids_after_a_warning_line() -> None:
    doc = {
        "DCGM GPU Diagnostic": {
            "test_categories": [
                {
                    "category": "Deployment",
                    "tests": [{"name": "Denylist", "results": [{"gpu_ids": "0,1", "status": "PASS"}]}, None],
                },
                {
                    "category": "Custom",
                    "tests": [
                        {
                            "name": "software",
                            "results": [{"gpu_ids": 0, "status": "PASS"}, {"gpu_ids": 1, "status": "PASS"}],
                        }
                    ],
                },
            ],
            "version": "3.1.0",
        }
    }
    result = dcgm.evaluate_text("\tWARNING: THIS SHOULD NOT HAPPEN\n\t" + json.dumps(doc, indent="\t"), {}, Settings())
    assert result.status is Status.OK and [d.id for d in result.devices] == ["0", "1"]


def test_text_warn_all_with_its_return_code_row_is_a_warning() -> None:
    # dcgmi Diag.cpp HelperDisplayGpuResults: "Warn - All" of the Diagnostic test is followed by a
    # continuation row "  Code: (000000000123)" (the EUD return code), in every 3.x build.
    text = "\n".join(
        [
            "Successfully ran diagnostic for group.",
            "+---------------------------+------------------------------------------------+",
            "| Diagnostic                | Result                                         |",
            "+===========================+================================================+",
            "+-----  Hardware  ----------+------------------------------------------------+",
            "| GPU Memory                | Pass - All                                     |",
            "| Diagnostic                | Warn - All                                     |",
            "|                           |   Code: (000000000123)                         |",
            "+---------------------------+------------------------------------------------+",
        ]
    )
    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.WARN and "Diagnostic warned" in result.summary


def dcgm4_table(*rows: str) -> str:
    """A DCGM 4.x text table (dcgmi Diag.cpp, dcgmDiagResponse_v12) around ``rows``."""
    border = "+---------------------------+------------------------------------------------+"
    head = ["Successfully ran diagnostic for group.", border, "| Diagnostic                | Result  "
            "                                       |", border.replace("-", "=")]  # fmt: skip
    return "\n".join([*head, *rows, border]) + "\n"


def row4(label: str, value: str) -> str:
    return f"| {label:<25} | {value:<46} |"


def test_text_dcgm4_warned_gpu_printed_as_fail_is_a_warning() -> None:
    # DCGM 4.x dcgmi prints the test's own row with DDR_DISPLAY_WARN ("Warn") but each entity row
    # with the default DDR_NO_DISPLAY_WARN, where a warned entity reads "Fail" (Diag.cpp
    # HelperDisplayEntityResults / HelperDisplayDiagResult). A memory warning must not evict.
    text = dcgm4_table(
        "+-----  Hardware  ----------+------------------------------------------------+",
        row4("memory", "Warn"),
        row4("", "GPU0: Pass"),
        row4("", "GPU1: Fail"),
        row4("Warning: GPU1", "Some memory warning"),
    )
    result = dcgm.evaluate_text(text, {}, Settings())
    assert (result.status, result.fatal) == (Status.WARN, False)
    assert {d.id: d.status for d in result.devices} == {"0": Status.OK, "1": Status.WARN}
    failed = text.replace(row4("memory", "Warn"), row4("memory", "Fail"))
    assert dcgm.evaluate_text(failed, {}, Settings()).fatal  # a real failure still evicts


def test_text_dcgm4_rows_of_other_entity_groups_count_but_are_no_gpus() -> None:
    # Grace systems list CPU entities ("Number of CPUs Detected", "CPU0: Pass"); an entity row
    # with an empty word is a result not run.
    text = dcgm4_table(
        "|-----  Metadata  ----------+------------------------------------------------|",
        row4("Number of CPUs Detected", "1"),
        "+-----  Hardware  ----------+------------------------------------------------+",
        row4("memory", "Pass"),
        row4("", "GPU0: Pass"),
        row4("", "GPU1:"),
        row4("cpu_eud", "Pass"),
        row4("", "CPU0: Pass"),
    )
    result = dcgm.evaluate_text(text, {}, Settings())
    assert result.status is Status.OK, result.summary
    assert {d.id: d.status for d in result.devices} == {"0": Status.OK, "1": Status.SKIPPED}
    cpu_fail = text.replace(row4("", "CPU0: Pass"), row4("", "CPU0: Fail")).replace(
        row4("cpu_eud", "Pass"), row4("cpu_eud", "Fail")
    )
    failed = dcgm.evaluate_text(cpu_fail, {}, Settings())
    assert failed.status is Status.FAIL and failed.data["failure_string"] == "cpu_eud"


def test_unknown_status_is_an_error_not_a_pass() -> None:
    result = dcgm.evaluate([outcome("pcie", Outcome.UNKNOWN, {"0": Outcome.UNKNOWN})], DEFAULT_FATAL)
    assert result.status is Status.ERROR
    assert result.devices[0].status is Status.ERROR


# ---------------------------------------------------------------- judgement


def test_fixture_dcgm3_nonfatal_fail_with_nonzero_exit() -> None:
    stdout, rc = fixture_stdout("dcgm3-membw-fail")
    assert rc != 0
    tests = {t.name: t for t in dcgm.parse_json(stdout)}
    assert tests["Denylist"].gpus == {"0": P, "1": P, "2": P, "3": P}
    assert tests["PCIe"].status is P  # lower-case "pass"
    assert tests["SM Stress"].status is W

    result = dcgm.evaluate_output(stdout, DEFAULT_FATAL, returncode=rc)
    assert result.status is Status.FAIL
    assert result.fatal is False  # Memory Bandwidth is a performance test, not GPU Memory
    assert result.data["failure_string"] == "memory_bandwidth.0.1.2.3"
    assert result.data["returncode"] == 226
    assert result.summary == "DCGM failed: Memory Bandwidth failed on GPU 0, 1, 2, 3; dcgmi exited 226"
    devices = {d.id: d for d in result.devices}
    assert devices["2"].detail == "failed: Memory Bandwidth; warned: SM Stress"
    assert by_name(result)["Memory Bandwidth"]["warnings"][0] == "synthetic: GPU 0 bandwidth 100 GB/s below 1000 GB/s"
    # membership of a fatal category, recorded whatever the test's outcome
    assert by_name(result)["PCIe"]["fatal_category"] is True
    assert by_name(result)["Memory Bandwidth"]["fatal_category"] is False


def test_custom_fatal_list_makes_memory_bandwidth_fatal() -> None:
    stdout, rc = fixture_stdout("dcgm3-membw-fail")
    # spelled as an operator would, with the upstream variable's spacing and case
    result = dcgm.evaluate_output(stdout, ("memory bandwidth",), returncode=rc)
    assert result.status is Status.FAIL and result.fatal is True
    # a whole category can be fatal
    assert dcgm.evaluate_output(stdout, ("Stress",), returncode=rc).fatal is True
    # upstream iterated the setting per character and matched substrings: "PCIe" must not evict here
    assert dcgm.evaluate_output(stdout, ("PCIe",), returncode=rc).fatal is False
    assert dcgm.evaluate_output(stdout, ("Memory",), returncode=rc).fatal is False
    assert dcgm.evaluate_output(stdout, (), returncode=rc).fatal is False


@pytest.mark.parametrize(
    ("entry", "test_name", "category", "fatal"),
    [
        ("PCIe", "PCIe", "Integration", True),
        ("PCIe", "pcie", "Integration", True),
        ("GPU Memory", "GPU Memory", "Hardware", True),
        ("GPU Memory", "memory", "Hardware", True),
        ("GPU Memory", "Memtest", "Stress", True),
        ("GPU Memory", "memory_bandwidth", "Stress", False),
        ("GPU Memory", "Memory Bandwidth", "Stress", False),
        ("NVLink", "nvlink", "Integration", True),
        ("NVLink", "nvbandwidth", "Integration", False),
        ("NVLink", "pcie", "Integration", False),
        ("ECC", "Page Retirement/Row Remap", "Deployment", True),
        ("ECC", "software", "Deployment", False),
        ("ECC", "sm_stress", "Stress", False),
        ("Hardware", "diagnostic", "Hardware", True),
        ("Memory Bandwidth", "memory_bandwidth", "Stress", True),
        ("SM Stress", "sm_stress", "Stress", True),
        ("Memory", "memory", "Hardware", True),
        ("Memory", "memory_bandwidth", "Stress", False),
        ("", "pcie", "Integration", False),
    ],
)
def test_fatal_matching_is_exact(entry: str, test_name: str, category: str, fatal: bool) -> None:
    assert dcgm.is_fatal(outcome(test_name, F, category=category), [entry]) is fatal


def test_fixture_dcgm4_fatal_pcie_through_the_engine() -> None:
    runner = FakeRunner.from_dir(DATA / "dcgm" / "dcgm4-pcie-fail")
    result = execution.run_check("dcgm", ctx_for(runner, gpus=4), {"r": 1})
    assert runner.calls == [("dcgmi", "diag", "-r", "1", "-j")]
    assert result.status is Status.FAIL and result.fatal is True
    assert result.node == "n1" and result.params == {"r": 1}
    assert result.summary == "DCGM failed: pcie failed on GPU 1 (fatal); dcgmi exited 205"
    assert result.data["failure_string"] == "pcie.1"
    assert result.data["level"] == 1 and result.data["timeout_s"] == 120.0
    assert result.data["metadata"]["version"] == "4.0.0-synthetic"
    assert [(d.id, d.status, d.detail) for d in result.devices] == [
        ("0", Status.OK, ""),
        ("1", Status.FAIL, "failed: pcie (fatal)"),
        ("2", Status.OK, ""),
        ("3", Status.OK, ""),
    ]
    assert by_name(result)["pcie"] == {
        "name": "pcie",
        "category": "Integration",
        "status": "fail",
        "gpus": {"0": "pass", "1": "fail", "2": "pass", "3": "pass"},
        "info": [],
        "warnings": ["synthetic: GPU 1 PCIe replay rate too high"],
        "fatal_category": True,
        "could_not_run": False,
        "severe": True,
    }
    json.dumps(result.to_dict())


def test_warn_is_reported_and_skips_are_ignored() -> None:
    tests = [
        outcome("pcie", P, {"0": P, "1": P}),
        outcome("sm_stress", W, {"0": P, "1": W}),
        outcome("memory_bandwidth", S, {"0": S, "1": S}),
    ]
    result = dcgm.evaluate(tests, DEFAULT_FATAL)
    assert result.status is Status.WARN and result.fatal is False
    assert result.summary == "DCGM warnings: sm_stress warned on GPU 1"
    assert [(d.id, d.status, d.detail) for d in result.devices] == [
        ("0", Status.OK, ""),
        ("1", Status.WARN, "warned: sm_stress"),
    ]
    assert result.data["failure_string"] == ""


def test_all_pass_with_skips() -> None:
    tests = [outcome("pcie", P, {"0": P}), outcome("diagnostic", S, {"0": S})]
    result = dcgm.evaluate(tests, DEFAULT_FATAL)
    assert result.status is Status.OK
    assert result.summary == "DCGM diagnostics passed: 1 tests on 1 GPU, 1 skipped"


def test_nothing_ran_is_an_error() -> None:
    assert dcgm.evaluate([outcome("diagnostic", S, {"0": S})], DEFAULT_FATAL).status is Status.ERROR
    assert dcgm.evaluate([], DEFAULT_FATAL).status is Status.ERROR


def test_nonzero_exit_without_a_failing_test_is_an_error() -> None:
    result = dcgm.evaluate([outcome("pcie", P, {"0": P})], DEFAULT_FATAL, returncode=1, stderr="synthetic: oops\n")
    assert result.status is Status.ERROR
    assert result.summary == "DCGM found no failing test; dcgmi exited 1: synthetic: oops"
    assert result.data["stderr"] == "synthetic: oops"


def test_failure_string_format() -> None:
    tests = [
        outcome("Memory Bandwidth", F, {"3": F, "10": F, "2": P, "1": F}),
        outcome("PCIe", P, {"0": P}),
        outcome(" Page Retirement/Row Remap ", F),
        outcome("a|b\tc", F, {"0": F}),
        outcome("sm_stress", W, {"0": W}),
    ]
    # GPUs in numeric order; tests joined with ","; a test with no GPU is its bare name
    assert dcgm.failure_string(tests) == "memory_bandwidth.1.3.10,page_retirement_row_remap,a_b_c.0"
    assert dcgm.failure_string([]) == ""
    assert dcgm.normalise_test_name("  GPU Memory ") == "gpu_memory"


@pytest.mark.parametrize(
    ("stdout", "returncode", "needle"),
    [
        ("", 0, "printed nothing"),
        ("   \n", 3, "exited 3 and printed nothing"),
        ("Segmentation fault\n", 139, "exited 139"),
        ('{"DCGM GPU Diagnostic": {"test_categories": [', 0, "invalid JSON"),
        ("[1, 2]", 0, "no DCGM result table"),
        ('{"other": {}}', 0, "JSON has none of"),
    ],
)
def test_garbage_output_is_an_error(stdout: str, returncode: int, needle: str) -> None:
    result = dcgm.evaluate_output(stdout, DEFAULT_FATAL, returncode=returncode)
    assert result.status is Status.ERROR
    assert needle in result.summary


def test_parsers_raise_on_what_they_cannot_read() -> None:
    with pytest.raises(dcgm.ParseError, match="not an object"):
        dcgm.parse_json("[1, 2]")
    with pytest.raises(dcgm.ParseError, match="no DCGM result table"):
        dcgm.parse_text("Error: synthetic\n")


# ---------------------------------------------------------------- collect, through the engine


def test_nonzero_exit_with_garbage_through_the_engine() -> None:
    runner = FakeRunner.from_dir(DATA / "dcgm" / "hostengine-down")
    result = execution.run_check("dcgm", ctx_for(runner), {"r": 1})
    assert result.status is Status.ERROR
    assert result.summary.startswith("dcgmi exited 255: no DCGM result table")
    assert "synthetic: connection refused" in result.summary
    assert "unable to establish a connection" in result.data["stdout"]


def test_level_defaults_to_settings_and_command_gets_the_level_timeout() -> None:
    class TimeoutRecorder(FakeRunner):
        def __init__(self) -> None:
            super().__init__()
            self.timeouts: list[float] = []

        def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
            self.timeouts.append(timeout)
            return super().run(argv, timeout=timeout, env=env)

    stdout, _ = fixture_stdout("dcgm3-membw-fail")
    runner = TimeoutRecorder()
    runner.add(["dcgmi", "diag", "-r", "2", "-j"], stdout, returncode=226)
    result = execution.run_check("dcgm", ctx_for(runner, dcgm_level=2), {})
    assert runner.calls == [("dcgmi", "diag", "-r", "2", "-j")]
    assert runner.timeouts == [600.0]
    assert result.status is Status.FAIL and result.data["level"] == 2
    assert result.params == {}

    # an operator's AUTOPILOT_CHECK_TIMEOUTS for dcgm also caps the command
    runner = TimeoutRecorder()
    runner.add(["dcgmi", "diag", "-r", "4", "-j"], stdout)
    execution.run_check("dcgm", ctx_for(runner, check_timeouts={"dcgm": 900.0}), {"r": "4"})
    assert runner.timeouts == [900.0]


@pytest.mark.parametrize(("level", "seconds"), [(1, 120.0), (2, 600.0), (3, 2400.0), (4, 7200.0)])
def test_level_timeouts_fit_the_registered_timeout(level: int, seconds: float) -> None:
    spec = registry.REGISTRY.get("dcgm")
    assert dcgm.LEVEL_TIMEOUT_S[level] == seconds
    assert spec.timeout_s > seconds
    assert spec.uses_gpu is True and spec.evaluate_text is dcgm.evaluate_text


def test_timeout_is_an_error() -> None:
    runner = FakeRunner()
    runner.add(["dcgmi", "diag", "-r", "3", "-j"], raises="timeout")
    result = execution.run_check("dcgm", ctx_for(runner), {"r": 3})
    assert result.status is Status.ERROR
    assert result.summary == "dcgmi timed out after 2400 s"
    assert runner.calls == [("dcgmi", "diag", "-r", "3", "-j")]


@pytest.mark.parametrize("bad", [0, 5, "abc", "1.5", True, -1])
def test_level_validation(bad: object) -> None:
    spec = registry.REGISTRY.get("dcgm")
    with pytest.raises(errors.BadParameter) as info:
        spec.validate({"r": bad})
    assert info.value.field == "r"


def test_level_validation_accepts_and_defaults() -> None:
    spec = registry.REGISTRY.get("dcgm")
    assert spec.validate({"r": "3"}) == {"r": 3}
    assert spec.validate({}) == {}  # the level then comes from Settings.dcgm_level
    with pytest.raises(errors.BadParameter):
        spec.validate({"level": 1})


def test_bad_level_through_the_engine_runs_nothing() -> None:
    runner = FakeRunner()
    result = execution.run_check("dcgm", ctx_for(runner), {"r": 5})
    assert result.status is Status.ERROR and "r: must be <= 4" in result.summary
    assert runner.calls == []


def test_no_gpu_is_skipped_without_running_dcgmi() -> None:
    runner = FakeRunner(installed=["dcgmi"])
    result = execution.run_check("dcgm", ctx_for(runner, gpus=0), {"r": 1})
    assert (result.status, result.summary) == (Status.SKIPPED, "no NVIDIA GPU")
    assert runner.calls == []


def test_no_driver_is_skipped() -> None:
    runner = FakeRunner(installed=["dcgmi"])
    ctx = CheckContext(
        node="n1",
        settings=Settings(),
        commands=runner,
        gpus=FakeTelemetry(unavailable="synthetic: NVML not found"),
        clock=FakeClock(),
        checks=shipped_checks(),
    )
    result = execution.run_check("dcgm", ctx, {"r": 1})
    assert result.status is Status.SKIPPED
    assert runner.calls == []


def test_missing_dcgmi_is_an_error() -> None:
    runner = FakeRunner()
    result = execution.run_check("dcgm", ctx_for(runner), {"r": 1})
    assert (result.status, result.summary) == (Status.ERROR, "dcgmi not found")
    assert runner.calls == []


def test_fatal_list_comes_from_settings() -> None:
    stdout, rc = fixture_stdout("dcgm3-membw-fail")
    runner = FakeRunner()
    runner.add(["dcgmi", "diag", "-r", "2", "-j"], stdout, returncode=rc)
    result = execution.run_check("dcgm", ctx_for(runner, dcgm_fatal_errors=("Memory Bandwidth",)), {"r": 2})
    assert result.status is Status.FAIL and result.fatal is True
    assert result.data["fatal_categories"] == ["Memory Bandwidth"]


def test_evaluate_text_uses_settings_fatal_list() -> None:
    stdout, _ = fixture_stdout("dcgm4-pcie-fail")
    assert dcgm.evaluate_text(stdout, {}, Settings()).fatal is True
    assert dcgm.evaluate_text(stdout, {}, Settings(dcgm_fatal_errors=("GPU Memory",))).fatal is False


def test_fixture_files_are_recordings() -> None:
    # tests/data/dcgm holds handwritten recordings only, in the form FakeRunner.from_dir loads
    for path in sorted(Path(DATA / "dcgm").rglob("*.json")):
        raw = json.loads(path.read_text())
        assert raw["argv"][:2] == ["dcgmi", "diag"], path
        assert "synthetic" in raw["stdout"] + raw["stderr"], path


# ---------------------------------------------------------------- a tool failure is not a hardware failure

SHAPES = DATA / "dcgm-shapes"


def shape(name: str) -> str:
    return (SHAPES / name).read_text()


@pytest.mark.parametrize(
    ("name", "test", "message"),
    [
        ("dcgm3x-text_targeted-stress-cuinit.txt", "Targeted Stress", "CUDA_ERROR_SYSTEM_NOT_READY"),
        ("dcgm4x-text_memory-child-exited.txt", "memory", "child process exited with a non-zero code (139)"),
        ("dcgm4x-json_pcie-cuinit-fabric-manager.json", "pcie", "Error using CUDA API cuInit"),
    ],
)
def test_test_that_could_not_run_is_an_error_not_a_fatal_fail(name: str, test: str, message: str) -> None:
    result = dcgm.evaluate_text(shape(name), {}, Settings())
    assert result.status is Status.ERROR and result.fatal is False
    assert result.summary.startswith(f"DCGM could not test: {test} (")
    assert message in result.summary
    assert result.data["failure_string"] == ""
    assert by_name(result)[test]["could_not_run"] is True
    # no GPU is blamed for it, not even the one the message mentions
    assert all(d.status is Status.OK for d in result.devices)


def test_could_not_run_beside_a_real_gpu_failure_keeps_the_failure() -> None:
    result = dcgm.evaluate_text(shape("dcgm2x-json_diagnostic-internal-error_sm-stress-fail.json"), {}, Settings())
    assert result.status is Status.FAIL and result.fatal is False
    assert result.data["failure_string"] == "sm_stress.1"
    assert "SM Stress failed on GPU 1" in result.summary
    assert "could not test: Diagnostic (There was an internal error during the test" in result.summary
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]


def test_internal_error_attributed_to_a_gpu_keeps_its_category_rules() -> None:
    failing = dcgm.TestOutcome(
        "pcie", "Integration", F, {"0": F, "1": P}, warnings=("There was an internal error during the test: 'x'",)
    )
    result = dcgm.evaluate([failing], DEFAULT_FATAL)
    assert (result.status, result.fatal) == (Status.FAIL, True)


def test_a_gpu_free_failure_without_a_tool_message_still_fails() -> None:
    failing = dcgm.TestOutcome(
        "pcie", "Integration", F, {"0": P}, warnings=("Only 3 NvLinks are up out of the expected 12",)
    )
    result = dcgm.evaluate([failing], DEFAULT_FATAL)
    assert (result.status, result.fatal) == (Status.FAIL, True)


@pytest.mark.parametrize(
    "message",
    [
        "There was an internal error during the test: 'Failed to initialize the plugin.'",
        "The plugin's child process exited with code 1",
        "Child process terminated by signal 9",
        "The output of the memtest plugin couldn't be parsed",
        "Could not parse the plugin output",
        "Cannot open library libcuda.so.1: 'libcuda.so.1: cannot open shared object file'",
        "Couldn't find plugin directory /usr/libexec/datacenter-gpu-manager-4/plugins/cuda12",
        "The helper binary dcgmproftester12 is missing",
        "Error using CUDA API cuInit",
        "cuda error 802: system not yet initialized",
        "Could not connect to the host engine: 'Host engine connection invalid/disconnected'",
        "Error using DCGM API dcgmGetDeviceAttributes",
        "Unable to add field watches to DCGM: error",
        "Test was aborted early due to user signal",
        "Cannot get pointer to nvmlDeviceGetCount_v2 from libnvidia-ml.so",
        "No valid GPUs passed to plugin",
        "Unable to get field information for field id 155",
    ],
)
def test_could_not_run_messages(message: str) -> None:
    assert dcgm.could_not_run(dcgm.TestOutcome("diagnostic", "Hardware", F, {"0": P}, warnings=(message,)))


@pytest.mark.parametrize(
    "message",
    [
        "Found 12 faulty memory elements on GPU 0",
        "GPU 0 had memory errors and row remappings are pending",
        "Persistence mode for GPU 1 is disabled.",
        "Only 3 NvLinks are up out of the expected 12",
        "GPU 0 only achieved a memory bandwidth of 1200.00 GB/s, failing to meet 1500.00 GB/s for test 0",
        "NVVS has detected processes with graphics contexts open running on at least one GPU.",
    ],
)
def test_findings_are_not_tool_failures(message: str) -> None:
    assert not dcgm.could_not_run(dcgm.TestOutcome("diagnostic", "Hardware", F, {}, warnings=(message,)))


def test_could_not_run_through_the_engine() -> None:
    runner = FakeRunner()
    runner.add(["dcgmi", "diag", "-r", "1", "-j"], shape("dcgm4x-json_pcie-cuinit-fabric-manager.json"), returncode=226)
    result = execution.run_check("dcgm", ctx_for(runner, gpus=2), {"r": 1})
    assert result.status is Status.ERROR and result.fatal is False
    assert "could not test: pcie" in result.summary and "dcgmi exited 226" in result.summary


# ---------------------------------------------------------------- DCGM 1.x/2.x names


@pytest.mark.parametrize(
    ("name", "failing"),
    [
        ("dcgm1x-json_page-retirement-fail.json", "page_retirement.2"),
        ("dcgm1x-text_page-retirement-fail.txt", "page_retirement.3"),
    ],
)
def test_dcgm1_page_retirement_is_in_the_ecc_category(name: str, failing: str) -> None:
    result = dcgm.evaluate_text(shape(name), {}, Settings())
    assert (result.status, result.fatal) == (Status.FAIL, True)
    assert result.data["failure_string"] == failing


@pytest.mark.parametrize(
    ("entry", "test_name", "category"),
    [
        ("Page Retirement", "Page Retirement/Row Remap", "Deployment"),
        ("page_retirement_row_remap", "Page Retirement", "Deployment"),
        ("Blacklist", "Denylist", "Deployment"),
        ("denylist", "BLACKLIST", "Deployment"),
        ("Diagnostic", "diagnostic", "Hardware"),
        ("SM Stress", "sm_stress", "Stress"),
        ("sm_stress", "SM  Stress", "Performance"),
        ("Targeted Stress", "targeted_stress", "Stress"),
        ("targeted power", "Targeted Power", "Performance"),
        ("MEMORY_BANDWIDTH", "Memory Bandwidth", "Performance"),
        ("PCIe", "PCIe", "Integration"),
        ("pcie", "PCIe", "Integration"),
        ("memory", "GPU Memory", "Hardware"),
        ("GPU Memory", "memory", "Hardware"),
        ("Stress", "SM Stress", "Performance"),
        ("Performance", "sm_stress", "Stress"),
    ],
)
def test_old_and_new_test_names_match_the_same_entries(entry: str, test_name: str, category: str) -> None:
    assert dcgm.is_fatal(outcome(test_name, F, category=category), [entry])


@pytest.mark.parametrize(
    ("test_name", "fatal"), [("Page Retirement", True), ("Blacklist", False), ("Memory Bandwidth", False)]
)
def test_default_fatal_list_over_old_names(test_name: str, fatal: bool) -> None:
    assert dcgm.is_fatal(outcome(test_name, F, category="Deployment"), DEFAULT_FATAL) is fatal


def test_a_report_followed_by_more_output_is_still_read() -> None:
    stdout, returncode = fixture_stdout("dcgm4-pcie-fail")
    doc = json.loads(stdout)
    for tail in ("\nsome line dcgmi printed afterwards\n", "\n" + json.dumps({"other": 1})):
        result = dcgm.evaluate_output(json.dumps(doc) + tail, DEFAULT_FATAL, returncode=returncode)
        assert result.status is Status.FAIL and result.fatal
        assert result == dcgm.evaluate_output(json.dumps(doc), DEFAULT_FATAL, returncode=returncode)


def test_json_dcgm4_entity_fail_under_a_test_summary_of_warn_is_a_warning() -> None:
    # The JSON twin of the text rule above: a 4.x test whose own summary says "Warn" has no failed
    # entity (the summary is the worst of its entities), so an entity written "Fail" under it was
    # warned. A memory warning must not evict; a summary of "Fail" with DCGM's ISOLATE severity still does.
    def report(summary: str, severity: int | None = None) -> str:
        warning: dict[str, Any] = {"error_category": 10, "error_id": 95, "warning": "Some memory warning on GPU 1"}
        if severity is not None:
            warning["error_severity"] = severity
        test = {
            "name": "memory",
            "results": [
                {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Pass"},
                {
                    "entity_group": "GPU",
                    "entity_group_id": 1,
                    "entity_id": 1,
                    "status": "Fail",
                    "warnings": [warning],
                },
            ],
            "test_summary": {"status": summary},
        }
        return json.dumps({"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [test]}]}})

    result = dcgm.evaluate_text(report("Warn"), {}, Settings())
    assert (result.status, result.fatal) == (Status.WARN, False)
    assert {d.id: d.status for d in result.devices} == {"0": Status.OK, "1": Status.WARN}
    assert dcgm.evaluate_text(report("Fail", severity=2), {}, Settings()).fatal  # an ISOLATE failure evicts
    # without a severity, a 4.x "Fail" may be a warning: a failure, never fatal
    unsure = dcgm.evaluate_text(report("Fail"), {}, Settings())
    assert (unsure.status, unsure.fatal) == (Status.FAIL, False)


def test_json_dcgm4_test_summary_repeating_its_entities_errors_lists_each_once() -> None:
    # dcgmi 4.x writes every error of a test again under its test_summary (HelperJsonAddTestSummary with
    # includeAllErrors): the test's messages, and the summary naming them, must not say each twice.
    warning = {"error_category": 4, "error_id": 95, "error_severity": 2, "warning": "Invented DBE text for GPU 1."}
    test = {
        "name": "memory",
        "results": [
            {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Pass", "info": ["ran 30 s"]},
            {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 1, "status": "Fail", "warnings": [warning]},
        ],
        "test_summary": {"status": "Fail", "warnings": [warning]},
    }
    text = json.dumps({"DCGM Diagnostic": {"test_categories": [{"category": "Hardware", "tests": [test]}]}})
    result = dcgm.evaluate_text(text, {}, Settings())
    assert (result.status, result.fatal) == (Status.FAIL, True)
    assert by_name(result)["memory"]["warnings"] == ["Invented DBE text for GPU 1."]
    assert by_name(result)["memory"]["info"] == ["ran 30 s"]


@pytest.mark.parametrize(
    "name",
    [
        "dcgm1x-text_page-retirement-fail.txt",
        "dcgm3x-text_targeted-stress-cuinit.txt",
        "dcgm4x-text_memory-child-exited.txt",
    ],
)
@pytest.mark.parametrize("margin", ["    ", "\t"])
def test_a_table_indented_as_a_whole_reads_as_the_table(name: str, margin: str) -> None:
    # Quoted in a Markdown or reStructuredText code block (DCGM's user guide prints its examples so).
    text = shape(name)
    shifted = "\n".join(margin + line if line.strip() else line for line in text.splitlines()) + "\n"
    plain, quoted = dcgm.evaluate_text(text, {}, Settings()), dcgm.evaluate_text(shifted, {}, Settings())
    assert (quoted.status, quoted.fatal, quoted.summary) == (plain.status, plain.fatal, plain.summary)
    assert quoted.data["tests"] == plain.data["tests"]
    assert [(d.id, d.status) for d in quoted.devices] == [(d.id, d.status) for d in plain.devices]


# ---------------------------------------------------------------- DCGM 4.x JSON writes a warning as "Fail"
# dcgmi 4.x (Diag::HelperJsonAddResult) writes each status with HelperDisplayDiagResult and no
# DDR_DISPLAY_WARN: DCGM_DIAG_RESULT_WARN comes out "Fail", in entity results and test_summary alike.
# Only the error entries' error_severity (dcgm_errors.c, per code) says what DCGM asks for.


def test_dcgm4_persistence_mode_warning_written_as_fail_is_a_warning_through_the_engine() -> None:
    # The GB10 shape: 4.x checkPersistenceMode sets WARN, dcgmi writes "Fail" and exits 226 for the
    # error entry (DCGM_FR_PERSISTENCE_MODE, CONFIG, SOFTWARE_OTHER). The table would say "Warn".
    runner = FakeRunner.from_dir(DATA / "dcgm" / "dcgm4-persistence-warn")
    result = execution.run_check("dcgm", ctx_for(runner, gpus=1), {"r": 1})
    assert (result.status, result.fatal) == (Status.WARN, False)
    assert result.summary == "DCGM warnings: software warned on GPU 0; dcgmi exited 226"
    assert result.data["failure_string"] == ""
    assert [(d.id, d.status, d.detail) for d in result.devices] == [("0", Status.WARN, "warned: software")]
    software = by_name(result)["software"]
    assert (software["status"], software["gpus"]) == ("warn", {"0": "warn"})
    assert software["info"] == ["synthetic: SRAM threshold count for GPU 0 could not be read"]


@pytest.mark.parametrize(
    ("name", "test", "gpu"),
    [
        ("dcgm4x-json_memory-thermal-monitor.json", "memory", "1"),  # MONITOR: can perform workload
        ("dcgm4x-json_pcie-latency-triage.json", "pcie", "0"),  # TRIAGE: to be looked into
    ],
)
def test_dcgm4_fail_without_isolate_severity_in_a_fatal_category_never_evicts(name: str, test: str, gpu: str) -> None:
    # A warning or a failure, JSON cannot tell; DCGM does not ask to isolate or reset the GPU. It stays a
    # failure (never turned into a warning) but the node WARNs, it is not EVICTed for eight GPUs.
    result = dcgm.evaluate_output(shape(name), DEFAULT_FATAL, returncode=226)
    assert (result.status, result.fatal) == (Status.FAIL, False)
    assert result.summary == f"DCGM failed: {test} failed on GPU {gpu}; dcgmi exited 226"
    assert result.data["failure_string"] == f"{test}.{gpu}"
    entry = by_name(result)[test]
    assert (entry["status"], entry["fatal_category"], entry["severe"]) == ("fail", True, False)
    assert {d.id: (d.status, d.detail) for d in result.devices}[gpu] == (Status.FAIL, f"failed: {test}")


def test_dcgm4_isolate_failure_in_a_fatal_category_still_evicts() -> None:
    result = dcgm.evaluate_output(shape("dcgm4x-json_memory-dbe-isolate.json"), DEFAULT_FATAL, returncode=205)
    assert (result.status, result.fatal) == (Status.FAIL, True)
    assert result.summary == "DCGM failed: memory failed on GPU 1 (fatal); dcgmi exited 205"
    assert result.data["failure_string"] == "memory.1"
    assert by_name(result)["memory"]["severe"] is True
    assert [(d.id, d.status) for d in result.devices] == [("0", Status.OK), ("1", Status.FAIL)]


def _entry(severity: object, category: object = 13, message: str = "synthetic finding") -> dict[str, Any]:
    return {"error_category": category, "error_id": 30, "error_severity": severity, "warning": message}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([_entry(2)], (F, True)),  # ISOLATE
        ([_entry(6, 10)], (F, True)),  # RESET: drain and reset
        ([_entry(5, 8), _entry(2)], (F, True)),  # one isolating entry decides
        ([_entry(5, 8)], (W, False)),  # CONFIG, software: a setting
        ([_entry(5, 3), _entry(5, 4)], (W, False)),
        ([_entry(5, 13)], (F, False)),  # CONFIG of a hardware category (PCIe width): not excused
        ([_entry(5, 8, "The test was aborted early due to user signal")], (F, False)),  # could not run
        ([_entry(5, 8), _entry(1, 9)], (F, False)),  # one MONITOR entry: may be a failure
        ([_entry(1)], (F, False)),
        ([_entry(4)], (F, False)),
        ([_entry(3)], (F, False)),  # UNKNOWN
        ([_entry(0)], (F, False)),
        ([], (F, False)),  # no entries at all
        ([{"warning": "no severity", "error_id": 30, "error_category": 8}], (F, False)),
        ([_entry("2")], (F, False)),  # not a number: not evidence
        ([_entry(True)], (F, False)),
        ([_entry(5, None)], (F, False)),
    ],
)
def test_judge_dcgm4_fail(entries: list[dict[str, Any]], expected: tuple[Outcome, bool]) -> None:
    assert dcgm.judge_dcgm4_fail(entries) == expected


def test_dcgm4_entity_judged_on_its_own_entries_and_the_summary_on_all() -> None:
    # GPU 0 warned on a setting, GPU 1 failed with an ISOLATE entry: the test fails and may evict,
    # GPU 0 only warns.
    cfg, iso = _entry(5, 8, "synthetic setting"), _entry(2, 10, "synthetic DBE")
    results = [
        {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Fail", "warnings": [cfg]},
        {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 1, "status": "Fail", "warnings": [iso]},
    ]
    test = {"name": "memory", "results": results, "test_summary": {"status": "Fail"}}
    [parsed] = dcgm.parse_json(json.dumps({"DCGM Diagnostic": {"tests": [test]}}))
    assert (parsed.status, dict(parsed.gpus), parsed.severe) == (F, {"0": W, "1": F}, True)
    # a summary "Fail" whose only entry is a test-wide setting warns; the entity rows that passed stay passes
    test = {
        "name": "software",
        "results": [{"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Pass"}],
        "test_summary": {"status": "Fail", "warnings": [cfg]},
    }
    [parsed] = dcgm.parse_json(json.dumps({"DCGM Diagnostic": {"tests": [test]}}))
    assert (parsed.status, dict(parsed.gpus)) == (W, {"0": P})


def test_dcgm3_json_fail_keeps_its_meaning_whatever_its_severity() -> None:
    # 2.x/3.x JSON wrote "Warn" itself, and before 3.3 the severity enum was numbered otherwise: the
    # 4.x reading never applies to a "DCGM GPU Diagnostic" document.
    doc = {
        "DCGM GPU Diagnostic": {
            "test_categories": [
                {
                    "category": "Hardware",
                    "tests": [
                        {
                            "name": "GPU Memory",
                            "results": [
                                {"gpu_ids": "0", "status": "Pass"},
                                {
                                    "gpu_ids": "1",
                                    "status": "Fail",
                                    "warnings": [_entry(1, 0, "synthetic memory failure on GPU 1")],
                                },
                            ],
                        }
                    ],
                }
            ],
            "version": "3.1.8",
        }
    }
    result = dcgm.evaluate_output(json.dumps(doc), DEFAULT_FATAL, returncode=226)
    assert (result.status, result.fatal) == (Status.FAIL, True)
    assert by_name(result)["GPU Memory"]["severe"] is True


def test_exit_226_is_explained_by_a_warning_other_exits_are_not() -> None:
    warned = [outcome("software", W, {"0": W})]
    assert dcgm.evaluate(warned, DEFAULT_FATAL, returncode=226).status is Status.WARN
    assert dcgm.evaluate(warned, DEFAULT_FATAL, returncode=1).status is Status.ERROR
    assert dcgm.evaluate([outcome("software", P, {"0": P})], DEFAULT_FATAL, returncode=226).status is Status.ERROR
