"""What every follower source produces: an ``Event`` (one reading of one fault on one device)."""

from __future__ import annotations

import dataclasses
import re

from autopilot.events.catalogue import Action, Entry

_BDF = re.compile(
    r"(?:(?P<dom>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})(?:\.(?P<fn>[0-7]))?"
)


def bus_id(text: str) -> str:
    """A PCI address in one form, ``dddd:bb:dd.f`` lower case, whatever form it came in.

    NVML says ``00000000:9B:00.0``, the driver's Xid line ``PCI:0000:9b:00`` (no function), the
    kernel ``0000:9b:00.0``; all three are ``0000:9b:00.0``. Text that is no PCI address comes back
    stripped and unchanged.
    """
    raw = text.strip().removeprefix("PCI:")
    found = _BDF.fullmatch(raw)
    if not found:
        return raw
    dom = int(found.group("dom") or "0", 16)
    return f"{dom:04x}:{int(found.group('bus'), 16):02x}:{int(found.group('dev'), 16):02x}.{found.group('fn') or '0'}"


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
