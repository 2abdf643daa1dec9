"""What a request handler may use: settings, store, dispatcher, cluster seam, check registry.

One ``Services`` object lives in ``app.extensions["autopilot"]``; handlers reach it through
``services()``. The clock and sleep are here so tests can drive a gather without waiting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import cast

from flask import current_app

from autopilot import config
from autopilot.cluster import ClusterClient
from autopilot.registry import CheckRegistry
from workers.dispatch import Dispatcher
from workers.store import ResultsStore

EXTENSION = "autopilot"


@dataclasses.dataclass
class Services:
    settings: config.Settings
    store: ResultsStore
    dispatcher: Dispatcher
    checks: CheckRegistry
    cluster: ClusterClient | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


def services() -> Services:
    """The services of the app handling the current request."""
    return cast(Services, current_app.extensions[EXTENSION])
