"""Tool output that is hostile or broken (escape sequences, NUL, bytes that are not UTF-8, CR line ends,
an endless stream) on its way to a result and on to the store, a log and a Node condition: the runner
keeps a bounded amount, and what reaches a reader is printable and bounded."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import fakeredis
import pytest

from autopilot import commands, config, errors, execution, publish, registry
from autopilot.checks import dcgm
from autopilot.context import CheckContext
from autopilot.results import SUMMARY_LIMIT, CheckResult, DeviceResult, Status, printable
from autopilot.testing import FakeClock, FakeRunner, FakeTelemetry
from autopilot.verdict import Decision, Verdict
from workers.store import ResultsStore

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x00\x9b31m\u202eevil\r"


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_tool_that_prints_more_than_the_limit_is_an_error_not_a_truncated_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commands, "OUTPUT_LIMIT_BYTES", 1000)
    runner = commands.SubprocessRunner()
    with pytest.raises(errors.ToolOutputTooLarge, match="printed more than"):
        runner.run(_py("import sys; sys.stdout.write('x' * 5000)"), timeout=30)
    with pytest.raises(errors.ToolOutputTooLarge):
        runner.run(_py("import sys; sys.stderr.write('x' * 5000)"), timeout=30)
    assert runner.run(_py("import sys; sys.stdout.write('x' * 1000)"), timeout=30).stdout == "x" * 1000


def test_a_tool_that_overflows_is_an_error_result_of_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "OUTPUT_LIMIT_BYTES", 1000)
    reg = registry.CheckRegistry()

    @registry.check("loud", description="prints too much", registry=reg)
    def loud(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        done = ctx.commands.run(_py("print('PASS\\n' * 2000)"), timeout=30)
        return CheckResult("loud", Status.OK, done.stdout[:20])

    result = execution.run_check("loud", _ctx(commands.SubprocessRunner()), checks=reg)
    assert result.status is Status.ERROR
    assert "ToolOutputTooLarge" in result.summary


def test_output_is_read_as_before_newlines_translated_and_bad_bytes_replaced() -> None:
    # Both outputs well past a pipe's buffer, interleaved: neither blocks the other.
    code = "import sys\nfor _ in range(2000):\n sys.stdout.write('o' * 100); sys.stderr.write('e' * 100)\n"
    done = commands.SubprocessRunner().run(_py(code), timeout=30)
    assert (done.stdout, done.stderr) == ("o" * 200_000, "e" * 200_000)
    raw = commands.SubprocessRunner().run(_py("import sys; sys.stdout.buffer.write(b'a\\r\\nb\\rc\\xff')"), timeout=30)
    assert raw.stdout == "a\nb\nc\ufffd"


def _ctx(runner: Any) -> CheckContext:
    return CheckContext(
        node="node-a",
        settings=config.Settings(node_name="node-a"),
        commands=runner,
        gpus=FakeTelemetry(),
        clock=FakeClock(),
        checks=registry.shipped(),
    )


def test_a_checks_words_reach_the_result_and_the_log_written_out_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    reg = registry.CheckRegistry()

    @registry.check("echo", description="repeats a tool", registry=reg)
    def echo(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        device = DeviceResult(f"0{HOSTILE}", Status.FAIL, detail=HOSTILE)
        return CheckResult("echo", Status.FAIL, HOSTILE + "x" * 100_000, devices=(device,))

    with caplog.at_level(logging.INFO, logger="autopilot.execution"):
        result = execution.run_check("echo", _ctx(FakeRunner()), checks=reg)
    assert result.summary.startswith(r"\x1b[2J\x1b]0;owned\x07\x00\x9b31m\u202eevil\r")
    assert len(result.summary) == SUMMARY_LIMIT and result.summary.endswith("...")
    (device,) = result.devices
    assert printable(device.id) == device.id and printable(device.detail) == device.detail
    assert "\x1b" not in caplog.text and r"\x1b[2J" in caplog.text


def test_dcgmi_output_it_cannot_read_is_quoted_written_out() -> None:
    reg = registry.CheckRegistry()

    @registry.check("dcgm", description="dcgmi's words", registry=reg)
    def judge(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return dcgm.evaluate_output(f"{HOSTILE}\n| not a table", ())

    result = execution.run_check("dcgm", _ctx(FakeRunner()), checks=reg)
    assert result.status is Status.ERROR
    assert "\x1b" not in result.summary and r"\x1b]0;owned\x07" in result.summary


def test_a_result_from_any_writer_is_stored_written_out() -> None:
    store = ResultsStore(fakeredis.FakeRedis())
    # The follower, the ring and the invasive Job save results without the engine.
    store.save_result(
        CheckResult(
            "dcgm", Status.WARN, HOSTILE, node="node-a", devices=(DeviceResult("0", Status.WARN, detail=HOSTILE),)
        )
    )
    blob = store.r.hget("ap:latest:node-a", "dcgm")
    assert blob is not None and b"\\u001b" not in blob and b"\\\\x1b" in blob
    assert store.latest("node-a")["dcgm"].summary == printable(HOSTILE)


def test_a_node_condition_quotes_reasons_written_out() -> None:
    decision = Decision(Verdict.WARN, (f"dcgm: warn: {HOSTILE}",))
    message = publish.condition_for(decision).message
    assert message == printable(f"dcgm: warn: {HOSTILE}")
