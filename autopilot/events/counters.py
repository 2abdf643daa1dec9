"""Polled counters as events: the rise of an error counter between two polls, or a state that turned bad.

Totals say little (a GPU may carry ECC counts from last year); a rise since the last poll is news.
So the first poll of a counter is its baseline, and an event is a counter that rose (its ``count``
is the rise) or a state that went bad: a remap pending or failed, retired pages pending, a channel or
TPC repair pending, a GPU NVML answers is out of service (``gpu.out_of_service``: lost, requires a
reset, insufficient power), an NVLink or InfiniBand port that was up and is not. A state is reported once,
again only after it cleared; a state already bad at the first poll is reported then (it may have
turned bad while no follower ran), except a port or link already down (it may be one no cable uses).
The driver's recovery action (NVML's ``nvmlDeviceGpuRecoveryAction_t``) is reported at each change,
as ``xid.154`` with that action, so it folds with the kernel's Xid 154 line of the same change: a
first poll that finds an action other than NONE reports it, and a change back to NONE is an
``ignore`` event (counted; the finding ages out as every finding does, and the next action is news
again).

A state that stays bad is no new event, but it is still a fault: each poll also leaves in
``standing`` the (device, code) of every state bad at that poll (a port or link down, an action
other than NONE), and the follower keeps the findings of those codes held (their last sighting is
that poll) without counting anything. A port down since before the first poll is named there too:
it keeps a finding an earlier follower reported (seeded from the store), and creates none.

InfiniBand ports are read from sysfs (``/sys/class/infiniband/<dev>/ports/<n>/state`` and
``counters/{link_downed,symbol_error,port_rcv_errors,link_error_recovery}``, Linux
``Documentation/ABI/stable/sysfs-class-infiniband``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from autopilot import errors
from autopilot.events import catalogue
from autopilot.events.model import Event
from autopilot.names import bus_id
from autopilot.nvml_events import GpuCounters

log = logging.getLogger(__name__)

IB_ROOT = "/sys/class/infiniband"
IB_COUNTERS = ("link_downed", "symbol_error", "port_rcv_errors", "link_error_recovery")
_GPU_RISES = (
    ("ecc_uncorrected_volatile", "ecc.dbe"),
    ("pcie_replay", "pcie.replay"),
    ("nvlink_crc", "nvlink.crc"),
    ("nvlink_replay", "nvlink.replay"),
    ("nvlink_recovery", "nvlink.recovery"),
)
_GPU_STATES = (
    ("remap_failure", "remap.failure"),
    ("remap_pending", "remap.pending"),
    ("retired_pages_pending", "pages.pending"),
    ("channel_repair_pending", "repair.channel"),
    ("tpc_repair_pending", "repair.tpc"),
)
_RECOVERY_NONE = 0  # NVML_GPU_RECOVERY_ACTION_NONE
_RECOVERY_CODE = "xid.154"  # the code of every recovery-action entry (``catalogue.recovery_action``)


@dataclasses.dataclass(frozen=True)
class IbPort:
    """One InfiniBand port: ``name`` is ``<device>/<port>``, ``state`` the word after the number
    in sysfs (``ACTIVE``, ``DOWN``, ``INIT``, ...), ``counters`` the error counters it has."""

    name: str
    state: str
    counters: Mapping[str, int]


def read_infiniband(root: str = IB_ROOT) -> list[IbPort]:
    """Every port under ``root``; a counter file that cannot be read is left out (no port has all)."""
    base = Path(root)
    if not base.is_dir():
        return []
    ports: list[IbPort] = []
    for port_dir in sorted(base.glob("*/ports/*")):
        try:
            state = (port_dir / "state").read_text().strip()
        except OSError:
            continue
        counters: dict[str, int] = {}
        for name in IB_COUNTERS:
            try:
                counters[name] = int((port_dir / "counters" / name).read_text().strip())
            except (OSError, ValueError):
                continue
        word = state.split(":", 1)[-1].strip()
        ports.append(IbPort(f"{port_dir.parent.parent.name}/{port_dir.name}", word, counters))
    return ports


class CounterPoller:
    """Turns successive polls into events. Not thread-safe: one follower thread owns it."""

    def __init__(
        self,
        gpus: Callable[[], list[GpuCounters]] | None,
        infiniband: Callable[[], list[IbPort]] | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._gpus = gpus
        self._ib = infiniband
        self._now = now
        self._last: dict[tuple[str, str], int] = {}
        self._bad: set[tuple[str, str]] = set()
        self._was_up: dict[str, bool] = {}
        self._action: dict[str, int] = {}  # bus id -> the recovery action read at the last poll
        self._seen: set[tuple[str, str]] = set()  # the states bad so far in the poll under way
        self.standing: frozenset[tuple[str, str]] = frozenset()
        """(device, code) of every state bad at the last complete poll (``Event.device``/``Event.code``)."""

    def poll(self) -> list[Event]:
        """One poll of every source; a source that fails raises (the follower's supervisor reports it)."""
        out: list[Event] = []
        at = self._now()
        self._seen = set()
        if self._gpus is not None:
            try:
                found = self._gpus()
            except errors.GpuUnavailable as exc:
                # No driver or no GPU here: nothing to poll on that side, ever; the ports still are.
                log.warning("counters: no GPU counters on this node: %s", exc)
                self._gpus, found = None, []
            for gpu in found:
                out.extend(self._gpu(gpu, at))
        if self._ib is not None:
            for port in self._ib():
                out.extend(self._port(port, at))
        self.standing = frozenset(self._seen)
        return out

    def _rise(self, device: str, code: str, value: int | None, at: float, what: str) -> Iterable[Event]:
        if value is None:
            return ()
        key = (device, code)
        before = self._last.get(key)
        self._last[key] = value
        if before is None or value <= before:  # baseline, or a counter reset (driver reload)
            return ()
        rise = value - before
        entry = catalogue.counter(code)
        return (Event("counters", entry, device, f"{what} rose by {rise} (to {value})", at, count=rise),)

    def _state(self, device: str, code: str, bad: bool | None, at: float, what: str) -> Iterable[Event]:
        if bad is None:
            return ()
        key = (device, code)
        if not bad:
            self._bad.discard(key)
            return ()
        self._seen.add(key)
        if key in self._bad:
            return ()
        self._bad.add(key)
        return (Event("counters", catalogue.counter(code), device, what, at),)

    def _gpu(self, gpu: GpuCounters, at: float) -> list[Event]:
        device = bus_id(gpu.bus_id)
        out: list[Event] = []
        for field, code in _GPU_RISES:
            out.extend(self._rise(device, code, getattr(gpu, field), at, field.replace("_", " ")))
        for field, code in _GPU_STATES:
            out.extend(self._state(device, code, getattr(gpu, field), at, field.replace("_", " ")))
        # A GPU NVML calls out of service (lost, requires a reset, no external power) is a state, held while
        # it lasts, as the checks judge the same answer (a fatal fail); cleared when the GPU answers again.
        out.extend(
            self._state(device, "gpu.out_of_service", gpu.out_of_service is not None, at, gpu.out_of_service or "")
        )
        out.extend(self._recovery(device, gpu.recovery_action, at))
        for link, up in enumerate(gpu.nvlink_up):
            name = f"{device}/nvlink{link}"
            if self._was_up.get(name) and not up:
                out.append(Event("counters", catalogue.counter("nvlink.down"), device, f"NVLink {link} went down", at))
            if not up:  # the finding is the GPU's (one per GPU, not per link)
                self._seen.add((device, "nvlink.down"))
            self._was_up[name] = up
        return out

    def _recovery(self, device: str, value: int | None, at: float) -> Iterable[Event]:
        if value is None:  # not supported here: nothing known, and nothing forgotten
            return ()
        before = self._action.get(device)
        self._action[device] = value
        if value != _RECOVERY_NONE:
            self._seen.add((device, _RECOVERY_CODE))
        if value == before or (before is None and value == _RECOVERY_NONE):
            return ()
        # The entry is built only for an event: every poll of every GPU passes here.
        entry = catalogue.recovery_action(value)
        now = catalogue.recovery_label(value)
        if before is None:
            what = f"GPU recovery action is {now}"
        else:
            what = f"GPU recovery action changed from {catalogue.recovery_label(before)} to {now}"
        return (Event("counters", entry, device, what, at),)

    def _port(self, port: IbPort, at: float) -> list[Event]:
        out: list[Event] = []
        up = port.state == "ACTIVE"
        if self._was_up.get(port.name) and not up:
            out.append(Event("counters", catalogue.counter("ib.down"), port.name, f"port state {port.state}", at))
        if not up:
            self._seen.add((port.name, "ib.down"))
        self._was_up[port.name] = up
        for name in IB_COUNTERS:
            out.extend(self._rise(port.name, f"ib.{name}", port.counters.get(name), at, name))
        return out
