"""How a request handler reaches its services (``workers.runs.Services``): settings, store,
dispatcher, cluster seam, check registry, clock and sleep.

One ``Services`` object lives in ``app.extensions["autopilot"]``; handlers reach it through
``services()``.
"""

from __future__ import annotations

from typing import cast

from flask import current_app

from workers.runs import Services

EXTENSION = "autopilot"

__all__ = ["EXTENSION", "Services", "services"]


def services() -> Services:
    """The services of the app handling the current request."""
    return cast(Services, current_app.extensions[EXTENSION])
