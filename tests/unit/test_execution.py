"""The engine's promises: nothing escapes, nothing hangs, a hung tool dies with its children."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from autopilot import commands, config, errors, execution, registry
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status
from autopilot.testing import FakeClock, FakeRunner, FakeTelemetry


@pytest.fixture
def reg() -> registry.CheckRegistry:
    return registry.CheckRegistry()


def ctx_with(runner: Any, **kw: Any) -> CheckContext:
    settings = kw.pop("settings", config.Settings(node_name="node-a"))
    kw.setdefault("checks", registry.shipped())
    return CheckContext(
        node="node-a", settings=settings, commands=runner, gpus=FakeTelemetry(), clock=FakeClock(), **kw
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_hung_tool_and_its_children_are_killed_and_reported_within_timeout(
    reg: registry.CheckRegistry, tmp_path: Any
) -> None:
    pidfile = tmp_path / "child.pid"

    @registry.check("hang", description="sleeps", timeout_s=1.0, registry=reg)
    def hang(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        # The tool forks a grandchild that would outlive a naive kill of the direct child.
        ctx.commands.run(
            ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
            timeout=60,
        )
        return CheckResult("hang", Status.OK)

    start = time.monotonic()
    result = execution.run_check("hang", ctx_with(commands.SubprocessRunner()), checks=reg)
    elapsed = time.monotonic() - start
    assert result.status is Status.ERROR
    assert result.summary == "timed out after 1 s"
    assert elapsed < 1.0 + 2.0
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while _pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(child), "the tool's child survived the watchdog"


def test_command_timeout_kills_process_group_and_becomes_error(reg: registry.CheckRegistry) -> None:
    @registry.check("slow", description="slow tool", timeout_s=30, registry=reg)
    def slow(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        ctx.commands.run(["sleep", "30"], timeout=0.5)
        return CheckResult("slow", Status.OK)

    start = time.monotonic()
    result = execution.run_check("slow", ctx_with(commands.SubprocessRunner()), checks=reg)
    assert result.status is Status.ERROR
    assert "timed out after 0.5 s" in result.summary
    assert time.monotonic() - start < 2.5


def test_check_timeout_override_from_settings(reg: registry.CheckRegistry) -> None:
    @registry.check("slow", description="slow", timeout_s=30, registry=reg)
    def slow(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        ctx.commands.run(["sleep", "30"], timeout=30)
        return CheckResult("slow", Status.OK)

    settings = config.Settings(node_name="node-a", check_timeouts={"slow": 0.5})
    result = execution.run_check("slow", ctx_with(commands.SubprocessRunner(), settings=settings), checks=reg)
    assert result.summary == "timed out after 0.5 s"


@pytest.mark.parametrize(
    "exc, status, words",
    [
        (RuntimeError("boom"), Status.ERROR, "check crashed: RuntimeError: boom"),
        (errors.ToolNotFound("dcgmi: not found on PATH"), Status.ERROR, "ToolNotFound"),
        (errors.GpuError("NVML: Unknown Error", 999), Status.ERROR, "GpuError"),
        (errors.GpuUnavailable("no NVIDIA driver"), Status.SKIPPED, "no NVIDIA driver"),
    ],
)
def test_exceptions_become_results(reg: registry.CheckRegistry, exc: Exception, status: Status, words: str) -> None:
    @registry.check("boom", description="raises", registry=reg)
    def boom(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        raise exc

    result = execution.run_check("boom", ctx_with(FakeRunner()), checks=reg)
    assert result.status is status
    assert words in result.summary
    assert result.node == "node-a" and result.check == "boom"


def test_unknown_check_and_bad_params_are_errors_not_exceptions(reg: registry.CheckRegistry) -> None:
    @registry.check(
        "p", description="param", params=(registry.Param("r", int, 1, "level", minimum=1, maximum=4),), registry=reg
    )
    def p(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("p", Status.OK, f"r={params['r']}")

    assert "unknown check 'nope'" in execution.run_check("nope", ctx_with(FakeRunner()), checks=reg).summary
    bad = execution.run_check("p", ctx_with(FakeRunner()), {"r": "9"}, checks=reg)
    assert bad.status is Status.ERROR and bad.summary.startswith("r: must be <= 4")
    good = execution.run_check("p", ctx_with(FakeRunner()), {"r": "3"}, checks=reg)
    assert good.status is Status.OK and good.params == {"r": 3} and good.summary == "r=3"


def test_results_are_stamped_and_fatal_only_with_fail(reg: registry.CheckRegistry) -> None:
    @registry.check("w", description="warns", registry=reg)
    def w(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        ctx.clock.sleep(2.5)
        return CheckResult("w", Status.WARN, "meh", fatal=True)

    result = execution.run_check("w", ctx_with(FakeRunner()), checks=reg)
    assert result.fatal is False
    assert result.started_at == "2026-11-29T22:00:00Z"
    assert result.duration_s == pytest.approx(2.5)


def test_a_failing_check_does_not_skip_the_rest(reg: registry.CheckRegistry) -> None:
    @registry.check("a", description="a", registry=reg)
    def a(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        raise ValueError("bad")

    @registry.check("b", description="b", registry=reg)
    def b(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("b", Status.OK)

    out = execution.run_checks(["a", "b"], ctx_with(FakeRunner()), checks=reg)
    assert [(r.check, r.status) for r in out] == [("a", Status.ERROR), ("b", Status.OK)]


def test_checks_reuse_an_idle_thread_and_a_hung_check_never_delays_the_next(reg: registry.CheckRegistry) -> None:
    release = threading.Event()

    @registry.check("stuck", description="blocks until released", timeout_s=0.2, registry=reg)
    def stuck(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        release.wait(30)
        return CheckResult("stuck", Status.OK)

    @registry.check("who", description="names its thread", timeout_s=5.0, registry=reg)
    def who(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("who", Status.OK, data={"thread": threading.get_ident()})

    ctx = ctx_with(FakeRunner())
    first, second = (execution.run_check("who", ctx, checks=reg) for _ in range(2))
    assert first.data["thread"] == second.data["thread"] != threading.get_ident()
    try:
        hung = execution.run_check("stuck", ctx, checks=reg)
        assert (hung.status, hung.summary) == (Status.ERROR, "timed out after 0.2 s")
        # The hung check keeps its thread; the next runs on another (behind it, it would time out).
        after = execution.run_check("who", ctx, checks=reg)
        assert after.status is Status.OK
    finally:
        release.set()


def test_duplicate_registration_is_an_error(reg: registry.CheckRegistry) -> None:
    registry.check("x", description="x", registry=reg)(lambda ctx, p: CheckResult("x", Status.OK))
    with pytest.raises(errors.ConfigError, match="already registered"):
        registry.check("x", description="x", registry=reg)(lambda ctx, p: CheckResult("x", Status.OK))


def test_runner_rejects_shell_strings_and_reports_missing_tools() -> None:
    runner = commands.SubprocessRunner()
    with pytest.raises(TypeError):
        runner.run("echo hi; rm -rf /", timeout=1)  # type: ignore[arg-type]
    with pytest.raises(errors.ToolNotFound, match="not found on PATH"):
        runner.run(["definitely-not-a-tool-xyz"], timeout=1)
    out = runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=5)
    assert (out.returncode, out.stdout, out.stderr) == (3, "out\n", "err\n")


def test_the_checks_of_one_call_run_in_order_on_one_thread(reg: registry.CheckRegistry) -> None:
    for name in ("a", "b", "c"):

        @registry.check(name, description=name, registry=reg)
        def who(ctx: CheckContext, params: Mapping[str, Any], name: str = name) -> CheckResult:
            return CheckResult(name, Status.OK, data={"thread": threading.get_ident()})

    out = execution.run_checks(["c", "a", "b"], ctx_with(FakeRunner()), checks=reg)
    assert [r.check for r in out] == ["c", "a", "b"]
    threads = {r.data["thread"] for r in out}
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_a_hung_check_in_a_sequence_times_out_and_the_rest_still_run_in_order(reg: registry.CheckRegistry) -> None:
    release = threading.Event()

    @registry.check("before", description="fine", registry=reg)
    def before(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("before", Status.OK, data={"thread": threading.get_ident()})

    @registry.check("stuck", description="blocks in Python: nothing to kill", timeout_s=0.3, registry=reg)
    def stuck(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        release.wait(30)
        return CheckResult("stuck", Status.OK)

    @registry.check("after", description="fine", timeout_s=5, registry=reg)
    def after(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("after", Status.OK, data={"thread": threading.get_ident()})

    start = time.monotonic()
    try:
        out = execution.run_checks(["before", "stuck", "after", "stuck", "after"], ctx_with(FakeRunner()), checks=reg)
    finally:
        release.set()
    elapsed = time.monotonic() - start
    assert [(r.check, r.status, r.summary) for r in out] == [
        ("before", Status.OK, ""),
        ("stuck", Status.ERROR, "timed out after 0.3 s"),
        ("after", Status.OK, ""),
        ("stuck", Status.ERROR, "timed out after 0.3 s"),
        ("after", Status.OK, ""),
    ]
    # Each hang costs its timeout plus the unwind allowance, no more.
    assert elapsed < 2 * (0.3 + 1.0) + 1.0
    # The abandoned threads stay with their hung checks: the rest ran on others.
    assert len({out[0].data["thread"], out[2].data["thread"], out[4].data["thread"]}) == 3


def test_progress_hands_over_finished_results_while_a_slow_check_runs(reg: registry.CheckRegistry) -> None:
    finished = threading.Event()
    called = threading.Event()
    handed: list[tuple[list[str], bool]] = []

    @registry.check("quick", description="fast", registry=reg)
    def quick(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("quick", Status.OK)

    @registry.check("slow", description="takes a while", timeout_s=10, registry=reg)
    def slow(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        # Runs until progress was called (bounded), not for a fixed time a busy machine could outlast.
        called.wait(5)
        finished.set()
        return CheckResult("slow", Status.OK)

    def progress(new: Any) -> None:
        handed.append(([r.check for r in new], finished.is_set()))
        called.set()

    out = execution.run_checks(["quick", "quick", "slow"], ctx_with(FakeRunner()), checks=reg, progress=(0.1, progress))
    assert [r.check for r in out] == ["quick", "quick", "slow"]
    # The quick results came out once, while the slow check was still running; the slow one is
    # only in the return value (the caller writes it with the rest).
    assert handed == [(["quick", "quick"], False)]


def test_no_progress_call_when_every_check_is_quick(reg: registry.CheckRegistry) -> None:
    @registry.check("quick", description="fast", registry=reg)
    def quick(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("quick", Status.OK)

    calls: list[Any] = []
    out = execution.run_checks(["quick"] * 5, ctx_with(FakeRunner()), checks=reg, progress=(5.0, calls.append))
    assert len(out) == 5 and calls == []


def test_a_failing_progress_call_is_logged_and_the_checks_go_on(
    reg: registry.CheckRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    @registry.check("quick", description="fast", registry=reg)
    def quick(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        return CheckResult("quick", Status.OK)

    called = threading.Event()

    @registry.check("slow", description="takes a while", timeout_s=10, registry=reg)
    def slow(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        called.wait(5)  # until progress was called (bounded): the call falls inside this check
        return CheckResult("slow", Status.OK)

    def broken(new: Any) -> None:
        called.set()
        raise ConnectionError("store down")

    out = execution.run_checks(["quick", "slow"], ctx_with(FakeRunner()), checks=reg, progress=(0.05, broken))
    assert [(r.check, r.status) for r in out] == [("quick", Status.OK), ("slow", Status.OK)]
    assert "progress of checks quick,slow failed" in caplog.text


class _Bindable:
    """A runner that says which scope each check's copy of it was bound to."""

    def __init__(self, scope: commands.ProcessScope | None = None) -> None:
        self.scope = scope

    def bind(self, scope: commands.ProcessScope) -> _Bindable:
        return _Bindable(scope)

    def run(self, argv: Any, *, timeout: float, env: Any = None) -> commands.CommandResult:
        raise AssertionError("not called")

    def which(self, name: str) -> str | None:
        return None


class _BindBlocked(_Bindable):
    bind = None  # type: ignore[assignment]  # a protocol method set to None: not a ScopedRunner


def test_each_check_gets_the_runner_bound_to_its_own_scope_and_a_blocked_bind_is_not_called(
    reg: registry.CheckRegistry,
) -> None:
    seen: list[Any] = []

    @registry.check("a", description="a", registry=reg)
    def a(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        seen.append(ctx.commands)
        return CheckResult("a", Status.OK)

    @registry.check("b", description="b", registry=reg)
    def b(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
        seen.append(ctx.commands)
        return CheckResult("b", Status.OK)

    bindable = _Bindable()
    assert [r.status for r in execution.run_checks(["a", "b"], ctx_with(bindable), checks=reg)] == [Status.OK] * 2
    assert all(isinstance(r, _Bindable) and r is not bindable for r in seen)
    first, second = seen
    assert first.scope is not None and second.scope is not None and first.scope is not second.scope

    seen.clear()
    blocked = _BindBlocked()
    assert execution.run_check("a", ctx_with(blocked), checks=reg).status is Status.OK
    assert seen == [blocked]  # as isinstance(blocked, ScopedRunner) says: used as it is
    assert not isinstance(blocked, commands.ScopedRunner)
