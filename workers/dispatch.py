"""The one door from the API into the workers: create a run and enqueue its tasks.

``Dispatcher`` is what ``api`` may use; ``CeleryDispatcher`` sends real tasks, ``FakeDispatcher``
records what would have been sent. Each node gets at most two messages per run: one for its
light checks and one for its GPU checks, so a long GPU check never holds up a light one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from celery import Celery

from autopilot import names, registry

RUN_TASK = "autopilot.run_checks"


@dataclasses.dataclass(frozen=True)
class Envelope:
    run_id: str
    node: str
    checks: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    deadline: float


def split(checks: Sequence[str]) -> list[tuple[str, ...]]:
    """Light checks and GPU checks of one run, as separate task bodies (empty groups dropped)."""
    # Names are validated by the caller against its registry, which may hold checks this process's
    # REGISTRY does not (a test's extra checks): those count as light; the worker judges them.
    gpu = tuple(c for c in checks if c in registry.REGISTRY and registry.REGISTRY.get(c).uses_gpu)
    light = tuple(c for c in checks if c not in gpu)
    return [g for g in (light, gpu) if g]


class Dispatcher(Protocol):
    def send(self, envelope: Envelope) -> None: ...


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, envelope: Envelope) -> None:
        queue = names.node_queue(envelope.node)
        expires = datetime.fromtimestamp(envelope.deadline, UTC)
        for group in split(envelope.checks):
            self.app.send_task(
                RUN_TASK,
                kwargs={
                    "run_id": envelope.run_id,
                    "node": envelope.node,
                    "checks": list(group),
                    "params": {c: dict(envelope.params.get(c, {})) for c in group},
                    "deadline": envelope.deadline,
                },
                queue=queue,
                routing_key=queue,
                # A task still queued at its deadline is dropped by the worker: its run already
                # reported the node unreachable, and a check run that late answers nobody.
                expires=expires,
            )


class FakeDispatcher:
    """Records envelopes; ``on_send`` lets a test answer them (e.g. run the task inline)."""

    def __init__(self, on_send: Any = None) -> None:
        self.sent: list[Envelope] = []
        self.on_send = on_send

    def send(self, envelope: Envelope) -> None:
        self.sent.append(envelope)
        if self.on_send is not None:
            self.on_send(envelope)
