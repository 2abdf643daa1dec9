"""Registers the test checks of ``check_specs`` in the global registry of the process importing it, and the
``hang`` hook: a task naming the check ``hang`` stops its pool thread for good.

Only worker processes started by the integration tests import this, through
``AUTOPILOT_EXTRA_CHECKS=tests.integration.checks_for_tests``.
"""

import logging
import threading
from typing import Any

from celery import signals

from autopilot import registry
from tests.integration.check_specs import SPECS

log = logging.getLogger(__name__)

for _spec in SPECS:
    if _spec.name not in registry.REGISTRY:
        registry.REGISTRY.add(_spec)

_NEVER = threading.Event()


def _hang(kwargs: Any = None, **_: Any) -> None:
    # A Python-level hang in a pool thread that no check timeout covers (the engine's watchdog frees a thread
    # whose check hangs, so no check can do this): what a stuck NVML or cluster call does to a real worker.
    if isinstance(kwargs, dict) and "hang" in (kwargs.get("checks") or ()):
        log.warning("hang: this pool thread is stuck for good")
        _NEVER.wait()


signals.task_prerun.connect(_hang, weak=False, dispatch_uid="tests-integration-hang")
