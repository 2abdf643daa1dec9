"""The NVML event and counter seam of the passive follower: the second module that imports pynvml.

``gpus.py`` answers what the periodic checks ask; this module answers what the follower waits
for and polls, and owns its own NVML session so neither blocks the other:

- ``NvmlEvents``: ``nvmlEventSetCreate``, ``nvmlDeviceRegisterEvents`` for Xid critical errors,
  single/double-bit ECC and GPU recovery-action changes on every GPU (each GPU only for the types
  it supports), and ``nvmlEventSetWait_v2`` with a timeout so the waiting thread can stop; an Xid 154
  or a recovery-action event reads the GPU's recovery action at once (the event names no action);
- ``NvmlCounters``: cheap per-GPU counters (volatile uncorrectable ECC, remapped rows pending and
  failed, retired pages pending, PCIe replays, NVLink CRC/replay/recovery and link state) and the
  driver's own states: its recovery action (field ``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION``, R565+) and
  pending channel/TPC repairs (``nvmlDeviceGetRepairStatus``, Blackwell-era drivers); and a GPU that
  answers it is out of service (``gpus.OUT_OF_SERVICE``: lost, requires a reset, no external power).

A counter a GPU, driver or binding does not support reads as None. Errors become
``GpuError``/``GpuUnavailable``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from autopilot import errors, gpus

T = TypeVar("T")

XID = "xid"
ECC_DBE = "ecc.dbe"
ECC_SBE = "ecc.sbe"
RECOVERY = "recovery"
XID_RECOVERY_ACTION = 154  # "GPU recovery action changed": the Xid that announces a new action


@dataclasses.dataclass(frozen=True)
class NvmlEvent:
    """One NVML event: its kind (``xid``, ``ecc.dbe``, ``ecc.sbe``, ``recovery``), the GPU's PCI bus id
    and, for an Xid, its code (``eventData``). ``action`` is the GPU's recovery action read when an
    Xid 154 or a ``recovery`` event arrived (None: not read, or not supported)."""

    kind: str
    bus_id: str
    data: int = 0
    action: int | None = None


@dataclasses.dataclass(frozen=True)
class GpuCounters:
    """One poll of one GPU; None where the GPU does not support the counter."""

    bus_id: str
    ecc_uncorrected_volatile: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    retired_pages_pending: bool | None = None
    pcie_replay: int | None = None
    nvlink_up: tuple[bool, ...] = ()
    nvlink_crc: int | None = None
    nvlink_replay: int | None = None
    nvlink_recovery: int | None = None
    recovery_action: int | None = None  # nvmlDeviceGpuRecoveryAction_t: 0 NONE, 1 GPU_RESET, 2 NODE_REBOOT, ...
    channel_repair_pending: bool | None = None
    tpc_repair_pending: bool | None = None
    out_of_service: str | None = None
    """NVML's words when the GPU answered that it is out of service (``gpus.OUT_OF_SERVICE``: lost,
    requires a reset, insufficient power); the other readings are then None. None: it answered."""


class EventSource(Protocol):
    def open(self) -> None: ...

    def wait(self, timeout_s: float) -> NvmlEvent | None: ...

    def close(self) -> None: ...


class _Session:
    """An NVML session of its own (nvmlInit is reference counted, so it never ends gpus.py's)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._lock = threading.Lock()

    def lib(self) -> Any:
        with self._lock:
            if self._nvml is None:
                self._nvml = gpus.start_nvml()
            return self._nvml

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        nvml = self.lib()
        try:
            return fn(nvml)
        except nvml.NVMLError as exc:
            raise errors.GpuError(f"{what}: {exc}", int(getattr(exc, "value", 0) or 0)) from None

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    pass
                self._nvml = None


class NvmlEvents:
    """The real event source."""

    def __init__(self) -> None:
        self._s = _Session()
        self._set: Any = None
        self._bus: dict[int, str] = {}  # handle address -> bus id
        self.out_of_service: dict[int, str] = {}
        """GPU index -> NVML's words, for GPUs left out of the event set because they are out of service."""

    def open(self) -> None:
        def register(n: Any) -> None:
            self._set = n.nvmlEventSetCreate()
            wanted = (
                n.nvmlEventTypeXidCriticalError
                | n.nvmlEventTypeDoubleBitEccError
                | n.nvmlEventTypeSingleBitEccError
                | _recovery_event_type(n)
            )
            for i in range(n.nvmlDeviceGetCount()):
                try:
                    handle = n.nvmlDeviceGetHandleByIndex(i)
                    self._bus[_key(handle)] = gpus.nvml_text(n.nvmlDeviceGetPciInfo(handle).busId)
                    supported = n.nvmlDeviceGetSupportedEventTypes(handle) & wanted
                    if supported:
                        n.nvmlDeviceRegisterEvents(handle, supported, self._set)
                except n.NVMLError as exc:
                    if not gpus.out_of_service(exc):
                        raise
                    # A GPU out of service sends no events; the counters' poll reports it (gpu.out_of_service).
                    # Failing here would leave every other GPU's events unread, the source restarting for ever.
                    self.out_of_service[i] = gpus.nvml_cause(exc)

        self._s.call("registering NVML events", register)

    def wait(self, timeout_s: float) -> NvmlEvent | None:
        def wait(n: Any) -> NvmlEvent | None:
            try:
                data = n.nvmlEventSetWait_v2(self._set, max(1, int(timeout_s * 1000)))
            except n.NVMLError as exc:
                if getattr(exc, "value", None) == n.NVML_ERROR_TIMEOUT:
                    return None
                raise
            bus = self._bus.get(_key(data.device)) or gpus.nvml_text(n.nvmlDeviceGetPciInfo(data.device).busId)
            if data.eventType & n.nvmlEventTypeXidCriticalError:
                code = int(data.eventData)
                # The event carries no message: the action this Xid announces is read from the GPU now.
                action = recovery_action(n, data.device) if code == XID_RECOVERY_ACTION else None
                return NvmlEvent(XID, bus, code, action)
            if data.eventType & _recovery_event_type(n):
                return NvmlEvent(RECOVERY, bus, int(data.eventData), recovery_action(n, data.device))
            if data.eventType & n.nvmlEventTypeDoubleBitEccError:
                return NvmlEvent(ECC_DBE, bus)
            return NvmlEvent(ECC_SBE, bus)

        return self._s.call("waiting for NVML events", wait)

    def close(self) -> None:
        if self._set is not None:
            event_set, self._set = self._set, None
            try:
                self._s.call("freeing the NVML event set", lambda n: n.nvmlEventSetFree(event_set))
            except errors.GpuError:
                pass
        self._s.close()


def _key(handle: Any) -> int:
    """A handle's identity: NVML gives the same device pointer for the same GPU (read from the
    pointer, not asked of the GPU, which may be the one that just fell off the bus)."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
    except (TypeError, ValueError, ctypes.ArgumentError):  # not a ctypes pointer (a stand-in)
        return id(handle)


class NvmlCounters:
    """The real counter source."""

    def __init__(self) -> None:
        self._s = _Session()
        self._bus: dict[int, str] = {}  # index -> bus id, as last read: a GPU out of service may not say it

    def read(self) -> list[GpuCounters]:
        def read_all(n: Any) -> list[GpuCounters]:
            found: list[GpuCounters] = []
            for i in range(n.nvmlDeviceGetCount()):
                try:
                    counters = _read_one(n, n.nvmlDeviceGetHandleByIndex(i))
                except n.NVMLError as exc:
                    if not gpus.out_of_service(exc):
                        raise
                    # A GPU out of service is a finding, as the checks judge it, never a poll that
                    # failed (every GPU unread) nor a GPU whose counters are merely unsupported.
                    # Without its bus id the index names it, as the follower names the node's GPUs.
                    bus = self._bus.get(i) or _bus_of(n, i) or str(i)
                    found.append(GpuCounters(bus, out_of_service=gpus.nvml_cause(exc)))
                    continue
                self._bus[i] = counters.bus_id
                found.append(counters)
            return found

        return self._s.call("reading GPU counters", read_all)


def _bus_of(n: Any, index: int) -> str:
    """GPU ``index``'s bus id, or '' where NVML will not say it (a GPU out of service may, or may not)."""
    try:
        return gpus.nvml_text(n.nvmlDeviceGetPciInfo(n.nvmlDeviceGetHandleByIndex(index)).busId)
    except n.NVMLError:
        return ""


def _maybe(n: Any, fn: Callable[..., T], *args: Any) -> T | None:
    try:
        return fn(*args)
    except n.NVMLError as exc:  # not supported on this GPU (or this link): the counter is absent
        if gpus.out_of_service(exc):
            raise  # the GPU, not the counter: ``NvmlCounters.read`` reports it
        return None


def _recovery_event_type(n: Any) -> int:
    """``nvmlEventTypeGpuRecoveryAction``, or 0 where the binding predates it (nothing registered)."""
    return int(getattr(n, "nvmlEventTypeGpuRecoveryAction", 0))


# nvmlValueType_t -> the member of nvmlValue_t that holds it (nvml.h); a double is no enum.
_VALUE_MEMBERS = (
    ("NVML_VALUE_TYPE_UNSIGNED_INT", "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", "sllVal"),
    ("NVML_VALUE_TYPE_SIGNED_INT", "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", "usVal"),
)


def recovery_action(n: Any, h: Any) -> int | None:
    """The GPU's recovery action (``nvmlDeviceGpuRecoveryAction_t``), or None where the binding, the
    driver (before R565) or the GPU does not have it. ``nvmlDeviceGetFieldValues`` succeeds as a call
    and says per field whether it was read (``nvmlReturn``), so both are checked."""
    field = getattr(n, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
    get = getattr(n, "nvmlDeviceGetFieldValues", None)
    if field is None or get is None:
        return None
    values = _maybe(n, get, h, [field])
    if not values:
        return None
    value = values[0]
    if getattr(value, "nvmlReturn", None) != getattr(n, "NVML_SUCCESS", 0):
        return None
    for type_name, member in _VALUE_MEMBERS:
        if value.valueType == getattr(n, type_name, None):
            return int(getattr(value.value, member))
    return None


def _repair_status(n: Any, h: Any) -> tuple[bool | None, bool | None]:
    """(channel repair pending, TPC repair pending); (None, None) where not supported."""
    get = getattr(n, "nvmlDeviceGetRepairStatus", None)
    status = _maybe(n, get, h) if get is not None else None
    if status is None:
        return None, None
    channel, tpc = status
    return bool(channel), bool(tpc)


def _read_one(n: Any, h: Any) -> GpuCounters:
    remap = _maybe(n, lambda: n.nvmlDeviceGetRemappedRows(h))
    links: list[bool] = []
    crc = replay = recovery = 0
    for link in range(n.NVML_NVLINK_MAX_LINKS):
        state = _maybe(n, n.nvmlDeviceGetNvLinkState, h, link)
        if state is None:
            break
        links.append(bool(state))
        crc += _maybe(n, n.nvmlDeviceGetNvLinkErrorCounter, h, link, n.NVML_NVLINK_ERROR_DL_CRC_FLIT) or 0
        replay += _maybe(n, n.nvmlDeviceGetNvLinkErrorCounter, h, link, n.NVML_NVLINK_ERROR_DL_REPLAY) or 0
        recovery += _maybe(n, n.nvmlDeviceGetNvLinkErrorCounter, h, link, n.NVML_NVLINK_ERROR_DL_RECOVERY) or 0
    pending = _maybe(n, lambda: n.nvmlDeviceGetRetiredPagesPendingStatus(h))
    channel_repair, tpc_repair = _repair_status(n, h)
    return GpuCounters(
        bus_id=gpus.nvml_text(n.nvmlDeviceGetPciInfo(h).busId),
        ecc_uncorrected_volatile=_maybe(
            n, lambda: n.nvmlDeviceGetTotalEccErrors(h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC)
        ),
        remap_pending=bool(remap[2]) if remap is not None else None,
        remap_failure=bool(remap[3]) if remap is not None else None,
        retired_pages_pending=bool(pending) if pending is not None else None,
        pcie_replay=_maybe(n, lambda: n.nvmlDeviceGetPcieReplayCounter(h)),
        nvlink_up=tuple(links),
        nvlink_crc=crc if links else None,
        nvlink_replay=replay if links else None,
        nvlink_recovery=recovery if links else None,
        recovery_action=recovery_action(n, h),
        channel_repair_pending=channel_repair,
        tpc_repair_pending=tpc_repair,
    )
