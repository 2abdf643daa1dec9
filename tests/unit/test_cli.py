"""The `autopilot` command as a user meets it: tables, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopilot import cli
from autopilot.results import CheckResult, Status
from tests.conftest import SAMPLES

GPU_CHECKS = {"pciebw", "remapped", "gpumem", "dcgm", "gpupower"}
HAS_DRIVER = Path("/proc/driver/nvidia/version").exists()


def autopilot(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "autopilot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.skipif(HAS_DRIVER, reason="this machine has an NVIDIA driver")
def test_run_without_gpus_skips_every_gpu_check_with_reason() -> None:
    proc = autopilot("run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    by_check = {r["check"]: r for r in report["results"]}
    assert GPU_CHECKS <= set(by_check)
    for name in GPU_CHECKS:
        assert by_check[name]["status"] == "skipped", by_check[name]
        assert "NVIDIA" in by_check[name]["summary"] or "GPU" in by_check[name]["summary"]


@pytest.mark.skipif(HAS_DRIVER, reason="this machine has an NVIDIA driver")
def test_run_prints_a_table() -> None:
    proc = autopilot("run", "remapped")
    assert proc.returncode == 0
    assert "remapped" in proc.stdout and "SKIPPED" in proc.stdout


def test_checks_catalog_lists_every_gpu_check_with_parameters() -> None:
    proc = autopilot("checks", "--json")
    assert proc.returncode == 0
    catalog = {c["name"]: c for c in json.loads(proc.stdout)}
    assert GPU_CHECKS <= set(catalog)
    assert [p["name"] for p in catalog["dcgm"]["params"]] == ["r"]
    assert "Traceback" not in autopilot("checks").stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "nosuch"], "unknown check 'nosuch'"),
        (["run", ",,,"], "empty check name"),  # before: dropped to nothing, which meant every check
        (["run", "dcgm", "--param", "r=9"], "r: must be <= 4"),
        (["run", "remapped", "--param", "r=2"], "none of remapped takes a parameter 'r'"),
        (["run", "--param", "oops"], "expected NAME=VALUE"),
        (["evaluate", "dcgm", "/nonexistent/file"], "cannot read /nonexistent/file"),
        (["bogus-command"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], words: str) -> None:
    proc = autopilot(*args)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_setting_is_a_usage_error_naming_the_variable() -> None:
    proc = autopilot("run", "remapped", env={"AUTOPILOT_PERIODIC_INTERVAL": "soon"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "autopilot: error: AUTOPILOT_PERIODIC_INTERVAL: not a duration: 'soon' (use e.g. 1h, 30m, 15s)"
    ]


def test_evaluate_reads_stdin_and_sets_exit_code() -> None:
    text = SAMPLES / "nvidia-smi-q_h100x8_drv535.161.08_hw-power-brake-slowdown-active.txt"
    if not text.is_file():
        pytest.skip("samples absent")
    proc = autopilot("evaluate", "gpupower", "-", "--json", stdin=text.read_text())
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["check"] == "gpupower" and result["status"] == "fail"


@pytest.mark.parametrize(
    ("check", "name", "status", "code"),
    [
        ("remapped", "q-x_drv535.129.03_h100x2_remap-failure_width-x8.xml", "fail", 1),
        ("gpupower", "q-x_drv470.82.01_a100x2_throttle-hw-slowdown_remap-pending.xml", "fail", 1),
        ("remapped", "q-d-ECC_drv535.129.03_h100x2.txt", "error", 3),
    ],
)
def test_evaluate_reads_nvidia_smi_xml_and_section_captures(check: str, name: str, status: str, code: int) -> None:
    path = Path(__file__).resolve().parents[1] / "data" / "nvsmi" / name
    proc = autopilot("evaluate", check, str(path), "--json")
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["results"][0]["status"] == status


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_saved_report_with_a_byte_order_mark_is_read_as_without(encoding: str, tmp_path: Path) -> None:
    # Notepad saves UTF-8 with a byte-order mark; Windows PowerShell 5's ``nvidia-smi -q > out.txt``
    # writes UTF-16 with one. Before, the mark made the report's first line unreadable.
    text = (
        Path(__file__).resolve().parents[1] / "data" / "nvsmi" / "q_drv535.129.03_h100x2_remap-failure_width-x8.txt"
    ).read_text()
    saved = tmp_path / "out.txt"
    saved.write_bytes(text.replace("\n", "\r\n").encode(encoding))
    assert cli.read_saved_output(str(saved)).replace("\r\n", "\n") == text
    proc = autopilot("evaluate", "remapped", str(saved), "--json")
    assert json.loads(proc.stdout)["results"][0]["status"] == "fail", proc.stdout + proc.stderr


def test_evaluate_garbage_is_an_error_exit_3() -> None:
    proc = autopilot("evaluate", "remapped", "-", stdin="this is not nvidia-smi output\n")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ERROR" in proc.stdout


def test_evaluate_table_shows_markup_and_control_characters_of_the_output_as_text() -> None:
    # A tool's words reach the summary: rich markup in them crashed the table (a traceback, exit 1),
    # and an escape sequence went to the terminal as it was.
    proc = autopilot("evaluate", "dcgm", "-", stdin="[/bold]oops [red]B \x1b[31mX\n")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "[/bold]oops [red]B" in proc.stdout
    assert "\x1b" not in proc.stdout and "\\x1b[31mX" in proc.stdout


@pytest.mark.parametrize(
    "statuses, code",
    [
        ([Status.OK, Status.SKIPPED], 0),
        ([Status.OK, Status.WARN], 1),
        ([Status.FAIL, Status.ERROR], 1),
        ([Status.OK, Status.ERROR], 3),
        ([], 0),
    ],
)
def test_exit_codes(statuses: list[Status], code: int) -> None:
    assert cli.exit_code([CheckResult("x", s) for s in statuses]) == code


@pytest.mark.parametrize(("command", "words"), [("beat", ["last ran", "log level"]), ("worker", ["log level"])])
def test_runtime_help_explains_each_option(command: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # `autopilot beat --help` listed --schedule-file and --loglevel with no word on what they do.
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(word in text for word in words)


def test_flower_help_needs_no_broker(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `autopilot flower --help` stopped at "AUTOPILOT_REDIS_URL is not set" instead of saying how to run it.
    monkeypatch.delenv("AUTOPILOT_REDIS_URL", raising=False)
    assert cli.main(["flower", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--port=PORT" in text and "AUTOPILOT_FLOWER_BASIC_AUTH" in text
