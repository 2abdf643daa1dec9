"""What every follower source produces: an ``Event`` (one reading of one fault on one device)."""

from __future__ import annotations

import dataclasses

from autopilot.events.catalogue import Action, Entry


@dataclasses.dataclass(frozen=True)
class Event:
    """One fault read from a source.

    ``device`` is a normalised PCI bus id (``0000:9b:00.0``) for GPUs, NVSwitches and PCIe
    devices, or a name such as ``mlx5_0/1`` (an InfiniBand port) or ``kmsg``. ``written_at`` is
    when the fault reached the source (epoch seconds), the start of the event-to-label latency.
    """

    source: str
    entry: Entry
    device: str
    message: str
    written_at: float
    count: int = 1
    pid: str = ""

    @property
    def code(self) -> str:
        return self.entry.code

    @property
    def action(self) -> Action:
        return self.entry.action
