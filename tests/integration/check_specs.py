"""Checks with controllable timing for integration tests, as specs (importing this registers nothing).

``echo``    light, answers at once with the node and the worker's pid;
``sleepy``  light, logs ``sleepy: started on <node>`` (so a test knows the worker is mid-check)
            and sleeps ``seconds`` before answering ok.

Worker processes get them through ``AUTOPILOT_EXTRA_CHECKS=tests.integration.checks_for_tests``
(``workers.main.load_checks``); the test process builds its own registry with ``registry_with_specs``
so that the global ``REGISTRY`` of the test session (used by the unit tests) stays as shipped.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from autopilot import registry
from autopilot.context import CheckContext
from autopilot.results import CheckResult, Status

log = logging.getLogger(__name__)


def _echo(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    return CheckResult(
        "echo", Status.OK, f"echo from {ctx.node} (pid {os.getpid()})", data={"pid": os.getpid(), "node": ctx.node}
    )


def _sleepy(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    log.warning("sleepy: started on %s", ctx.node)
    time.sleep(float(params["seconds"]))
    return CheckResult("sleepy", Status.OK, f"slept {params['seconds']} s on {ctx.node}", data={"pid": os.getpid()})


SPECS = (
    registry.CheckSpec("echo", _echo, "test: answers at once", timeout_s=30.0),
    registry.CheckSpec(
        "sleepy",
        _sleepy,
        "test: sleeps, then answers",
        params=(registry.Param("seconds", float, 1.0, "how long to sleep", minimum=0, maximum=300),),
        timeout_s=310.0,
    ),
)


def registry_with_specs() -> registry.CheckRegistry:
    """The shipped checks plus ``SPECS``, in a registry of its own."""
    importlib.import_module("autopilot.checks")
    reg = registry.CheckRegistry()
    for spec in (*registry.REGISTRY, *SPECS):
        reg.add(spec)
    return reg
