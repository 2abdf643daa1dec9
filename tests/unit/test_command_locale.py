"""Every program we run reads its messages and numbers in the C locale, whatever the node's environment says."""

from __future__ import annotations

import sys
import time

import pytest

from autopilot import commands

PRINT_LOCALE = [sys.executable, "-c", "import os; print(os.environ.get('LC_ALL'), os.environ.get('AP_MARK'))"]


@pytest.fixture
def german(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("AP_MARK", "kept")


@pytest.mark.usefixtures("german")
def test_a_program_runs_in_the_c_locale_with_the_rest_of_the_environment_kept() -> None:
    out = commands.SubprocessRunner().run(PRINT_LOCALE, timeout=30)
    assert out.stdout.split() == ["C", "kept"]


@pytest.mark.usefixtures("german")
def test_a_background_program_runs_in_the_c_locale() -> None:
    proc = commands.spawn(PRINT_LOCALE, lifetime_s=30)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert proc.output().split() == ["C", "kept"]
    finally:
        proc.terminate(grace_s=0)


def test_an_environment_given_by_the_caller_is_kept_and_its_own_locale_wins() -> None:
    assert commands.tool_env({"PATH": "/bin"}) == {"PATH": "/bin", "LC_ALL": "C"}
    assert commands.tool_env({"LC_ALL": "C.UTF-8"}) == {"LC_ALL": "C.UTF-8"}
