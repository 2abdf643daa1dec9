"""The GPU seam: what the checks ask NVML, behind a Protocol with one real implementation.

Only this module imports ``pynvml`` (nvidia-ml-py). Every NVML error is translated into
``GpuError`` (with the NVML code and its cause in words), ``GpuLost`` for a GPU out of service
(``OUT_OF_SERVICE``: lost, requires a reset, insufficient external power), or, when NVML cannot
start, ``GpuUnavailable`` naming why (library not found, driver not loaded, driver/library mismatch,
...). Whether that is "no GPU here"
(``skipped``) or a broken GPU node (``error``) is decided by the engine from the node's expected
GPUs (``autopilot.gpucensus``), not here. A failed start is never remembered: the next call tries
again, so a driver that comes back is seen on the next run. The records returned here are plain
dataclasses, which the fake in ``autopilot.testing`` fills from recorded snapshots.

``activity`` says whether someone else uses a GPU (our worker sees every GPU of its node without
requesting one, so a training job may be running there), read just before one of our programs
starts. The signals, and why these (docs/RESULTS.md "A GPU in use by others"):

- **memory allocated** (``nvmlDeviceGetMemoryInfo``, v2 where the library has it): device-wide,
  so it sees every process of every container, and a training job holds tens of GiB. The memory
  the driver reserves for itself is left out (v2's ``reserved``; ``total - free - reserved``
  whether a driver counts ``used`` with or without it). Read before our program starts, since
  our own buffers count once it runs.
- **kernel time** (``nvmlDeviceGetUtilizationRates``, ``gpu``: the percent of the last 1/6 to 1 s
  during which a kernel ran): device-wide too. Before our program starts it is someone else's;
  while ``ap-bandwidth`` runs it still is, since its copies (``cudaMemcpyAsync``) run on the copy
  engines, not as kernels (kept as evidence beside another signal, never alone: see
  ``_cuda.in_use_of``). ``ap-gpumem``'s own kernels count, so ``gpumem`` reads it only before, and
  neither reads it within a second of our own program's end on that GPU.
  It is also sampled with the rest of ``sample``.
- **compute processes** (``nvmlDeviceGetComputeRunningProcesses``), counted before our program
  starts, so none is ours. Evidence when present, never of an idle GPU: the driver translates
  each process's pid into the caller's PID namespace and leaves out those it cannot
  (``os_find_ns_pid`` returns ``NV_ERR_OBJECT_NOT_FOUND`` for ``pid_vnr() == 0``, and
  ``gpuGetProcWithObject`` skips them, open-gpu-kernel-modules), so a pod without ``hostPID``
  (ours) sees only its own; older drivers listed host pids (NVIDIA/nvidia-docker#1483).

Not used: ``nvmlDeviceGetPcieThroughput`` (one 20 ms window that counts our own copies while
they run; before they do, a job's bursty loads are missed as often as seen) and the per-process
utilisation samples (pids filtered as above). Each signal is read on its own: one that NVML
answers ``NOT_SUPPORTED`` or fails is ``None`` with the reason in ``unknown``, never "busy".
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from autopilot import errors

T = TypeVar("T")

# Clock event reason bits (nvml.h, stable since the "throttle reasons" days; NVML kept the
# values when it renamed them "clocks event reasons").
REASON_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


def decode_reasons(mask: int) -> frozenset[str]:
    """Names of the reason bits set in ``mask``."""
    return frozenset(name for name, bit in REASON_BITS.items() if mask & bit)


@dataclasses.dataclass(frozen=True)
class RemappedRows:
    correctable: int
    uncorrectable: int
    pending: bool
    failure_occurred: bool


@dataclasses.dataclass(frozen=True)
class RetiredPages:
    """Dynamic page retirement (pre-Ampere GPUs with ECC on: Kepler to Turing, V100 and T4 among them):
    pages retired for two single-bit errors at one address, for a double-bit error, and whether a
    retirement waits for the GPU's next reattach (reset or reboot)."""

    single_bit_ecc: int
    double_bit_ecc: int
    pending: bool


@dataclasses.dataclass(frozen=True)
class PcieLink:
    current_gen: int
    max_gen: int
    current_width: int
    max_width: int


@dataclasses.dataclass(frozen=True)
class GpuSample:
    """Telemetry at one moment, sampled while a bandwidth program runs."""

    temperature_c: float | None
    power_w: float | None
    sm_clock_mhz: float | None
    utilization_pct: float | None = None
    """Kernel time (``nvmlDeviceGetUtilizationRates().gpu``), None where NVML does not tell."""


@dataclasses.dataclass(frozen=True)
class GpuActivity:
    """What others do on a GPU, read before our program starts; None: NVML could not tell (see
    ``unknown``). The module docstring says why these signals."""

    processes: int | None
    """Compute processes NVML lists (only those in our PID namespace, on current drivers)."""
    memory_used_bytes: int | None
    """Device memory allocated, without what the driver reserves for itself."""
    utilization_pct: float | None
    """Percent of the last sample period (1/6 to 1 s) during which a kernel ran."""
    unknown: tuple[str, ...] = ()
    """One entry per signal not read: ``utilization: Not Supported``."""


@dataclasses.dataclass(frozen=True)
class GpuIdentity:
    index: int
    name: str
    uuid: str
    pci_bus_id: str
    serial: str = ""
    """The board serial (``nvmlDeviceGetSerial``); empty where the board does not report one."""


class GpuTelemetry(Protocol):
    """What the checks may ask about the GPUs. Raises ``GpuUnavailable`` / ``GpuError``."""

    def driver_version(self) -> str: ...

    def count(self) -> int: ...

    def identity(self, index: int) -> GpuIdentity: ...

    def remapped_rows(self, index: int) -> RemappedRows: ...

    def clock_event_reasons(self, index: int) -> frozenset[str]: ...

    def retired_pages(self, index: int) -> RetiredPages: ...

    def pcie_link(self, index: int) -> PcieLink: ...

    def sample(self, index: int) -> GpuSample: ...

    def activity(self, index: int) -> GpuActivity: ...


# What each pynvml error class means for an operator (pynvml makes one NVMLError subclass per
# NVML_ERROR_* code). The causes a broken GPU node shows most come first.
NVML_CAUSES: dict[str, str] = {
    "NVMLError_LibraryNotFound": "NVML library not found (libnvidia-ml.so.1 is not installed or not mounted)",
    "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
    "NVMLError_LibRmVersionMismatch": "driver/library version mismatch (NVML and the kernel driver differ; reboot "
    "or reload the driver)",
    "NVMLError_GpuIsLost": "GPU is lost (fell off the bus; reset or reboot needed)",
    "NVMLError_NoPermission": "no permission to use the GPUs",
    "NVMLError_InsufficientPower": "insufficient external power (the GPU's power cables are not properly attached)",
    "NVMLError_IrqIssue": "interrupt request issue with the kernel driver",
    "NVMLError_FunctionNotFound": "NVML function not found (library older than the call)",
    "NVMLError_CorruptedInforom": "corrupted infoROM",
    "NVMLError_ResetRequired": "GPU requires a reset",
    "NVMLError_OperatingSystem": "the operating system blocked the request",
    "NVMLError_Timeout": "NVML timed out",
    "NVMLError_Uninitialized": "NVML is not initialised",
    "NVMLError_Memory": "NVML ran out of memory",
    "NVMLError_GpuNotFound": "GPU not found",
    "NVMLError_Unknown": "unknown NVML error",
}


# NVML's answers that say the GPU itself is out of service, not that a reading failed: each is a fatal
# ``fail`` for that GPU (``GpuLost``), as nvidia-smi's words for the same codes are (``nvsmi.LostGpu``):
# GPU_IS_LOST (fell off the bus), RESET_REQUIRED (runs nothing until reset, e.g. after an uncontained
# error) and INSUFFICIENT_POWER (its external power cables are not attached: the driver will not run it).
# Every other code is the tool's or the host's (driver not loaded, version mismatch, no permission,
# uninitialised, timeout, IRQ issue, OS refusal, out of memory, unknown): ``GpuError``, which a check
# reports as ``error``: never a pass, never an eviction. NOT_SUPPORTED is a field this GPU lacks:
# each check skips that field (``remapped``: the device ``skipped``), never the whole check.
OUT_OF_SERVICE: dict[str, int] = {
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_INSUFFICIENT_POWER": 8,
}


def out_of_service(exc: BaseException) -> bool:
    """Whether a pynvml error says the GPU is out of service (``OUT_OF_SERVICE``), by its NVML code."""
    return getattr(exc, "value", None) in OUT_OF_SERVICE.values()


def nvml_cause(exc: BaseException) -> str:
    """The cause of a pynvml error in words: its class's entry in ``NVML_CAUSES``, else NVML's own text."""
    return NVML_CAUSES.get(type(exc).__name__) or f"{exc} (NVML code {getattr(exc, 'value', '?')})"


def start_nvml() -> Any:
    """``pynvml`` with NVML started (``nvmlInit`` is reference counted: each caller's session is its own).

    Raises ``GpuUnavailable`` naming the cause (``nvml_cause``) when it cannot start.
    """
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise errors.GpuUnavailable(f"NVML could not start: nvidia-ml-py is not installed ({exc})") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise errors.GpuUnavailable(f"NVML could not start: {nvml_cause(exc)}", exc.value) from exc
    return pynvml


class NvmlTelemetry:
    """The real telemetry, through nvidia-ml-py.

    NVML is started on first use and kept once it started. A start that fails is not kept: every
    call tries again (a failed ``nvmlInit`` costs a failed ``dlopen`` or driver open, well under
    a millisecond), so a worker that started before the driver finished loading, or whose driver
    was reinstalled, sees the GPUs on its next run instead of calling the node GPU-less for life.
    """

    _init_lock = threading.Lock()

    def __init__(self) -> None:
        self._nvml: Any = None

    def _lib(self) -> Any:
        with self._init_lock:
            if self._nvml is None:
                self._nvml = start_nvml()
            return self._nvml

    def _call(self, what: str, fn: Callable[[Any], T], index: int | None = None) -> T:
        nvml = self._lib()
        try:
            return fn(nvml)
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            if out_of_service(exc) and index is not None:
                raise errors.GpuLost(index, f"{what}: {nvml_cause(exc)}", int(code or 0)) from exc
            raise errors.GpuError(f"{what}: {exc}", code) from exc

    def _handle(self, nvml: Any, index: int) -> Any:
        return nvml.nvmlDeviceGetHandleByIndex(index)

    def driver_version(self) -> str:
        return self._call("driver version", lambda n: nvml_text(n.nvmlSystemGetDriverVersion()))

    def count(self) -> int:
        return int(self._call("device count", lambda n: n.nvmlDeviceGetCount()))

    def identity(self, index: int) -> GpuIdentity:
        def read(n: Any) -> GpuIdentity:
            h = self._handle(n, index)
            return GpuIdentity(
                index=index,
                name=nvml_text(n.nvmlDeviceGetName(h)),
                uuid=nvml_text(n.nvmlDeviceGetUUID(h)),
                pci_bus_id=nvml_text(n.nvmlDeviceGetPciInfo(h).busId),
                serial=_maybe_text(lambda: n.nvmlDeviceGetSerial(h), n),
            )

        return self._call(f"GPU {index} identity", read, index)

    def remapped_rows(self, index: int) -> RemappedRows:
        def read(n: Any) -> RemappedRows:
            corr, unc, pending, failure = n.nvmlDeviceGetRemappedRows(self._handle(n, index))
            return RemappedRows(int(corr), int(unc), bool(pending), bool(failure))

        return self._call(f"GPU {index} remapped rows", read, index)

    def retired_pages(self, index: int) -> RetiredPages:
        def read(n: Any) -> RetiredPages:
            h = self._handle(n, index)
            single = n.nvmlDeviceGetRetiredPages(h, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
            double = n.nvmlDeviceGetRetiredPages(h, n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
            pending = n.nvmlDeviceGetRetiredPagesPendingStatus(h) == n.NVML_FEATURE_ENABLED
            return RetiredPages(len(single), len(double), bool(pending))

        return self._call(f"GPU {index} retired pages", read, index)

    def clock_event_reasons(self, index: int) -> frozenset[str]:
        def read(n: Any) -> frozenset[str]:
            h = self._handle(n, index)
            # Older nvidia-ml-py releases only have the "throttle reasons" name of the same call.
            getter = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
            getter = getter or n.nvmlDeviceGetCurrentClocksThrottleReasons
            return decode_reasons(int(getter(h)))

        return self._call(f"GPU {index} clock event reasons", read, index)

    def pcie_link(self, index: int) -> PcieLink:
        def read(n: Any) -> PcieLink:
            h = self._handle(n, index)
            return PcieLink(
                current_gen=int(n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
                max_gen=int(n.nvmlDeviceGetMaxPcieLinkGeneration(h)),
                current_width=int(n.nvmlDeviceGetCurrPcieLinkWidth(h)),
                max_width=int(n.nvmlDeviceGetMaxPcieLinkWidth(h)),
            )

        return self._call(f"GPU {index} PCIe link", read, index)

    def sample(self, index: int) -> GpuSample:
        def read(n: Any) -> GpuSample:
            h = self._handle(n, index)
            return GpuSample(
                temperature_c=_maybe(lambda: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)), n),
                power_w=_maybe(lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0, n),
                sm_clock_mhz=_maybe(lambda: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)), n),
                utilization_pct=_maybe(lambda: float(n.nvmlDeviceGetUtilizationRates(h).gpu), n),
            )

        return self._call(f"GPU {index} sample", read, index)

    def activity(self, index: int) -> GpuActivity:
        def read(n: Any) -> GpuActivity:
            h = self._handle(n, index)
            unknown: list[str] = []
            processes = _signal("processes", lambda: len(n.nvmlDeviceGetComputeRunningProcesses(h)), n, unknown)
            memory = _signal("memory", lambda: allocated_bytes(n, h), n, unknown)
            util = _signal("utilization", lambda: float(n.nvmlDeviceGetUtilizationRates(h).gpu), n, unknown)
            return GpuActivity(processes, memory, util, tuple(unknown))

        return self._call(f"GPU {index} activity", read, index)


def allocated_bytes(nvml: Any, handle: Any) -> int:
    """Device memory allocated by processes: ``total - free - reserved`` from ``nvmlMemory_v2``
    (right whether the driver's ``used`` includes ``reserved``, as R525's documentation says, or
    not, as nvidia-smi shows it), else v1's ``used``, which includes the driver's reserve (about
    0.5 GiB on an H100)."""
    if hasattr(nvml, "nvmlMemory_v2"):
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
        except nvml.NVMLError_FunctionNotFound:
            pass  # a library older than nvmlDeviceGetMemoryInfo_v2: v1 below
        else:
            return max(0, int(info.total) - int(info.free) - int(info.reserved))
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)


def _signal(name: str, fn: Callable[[], T], nvml: Any, unknown: list[str]) -> T | None:
    # One signal NVML cannot give is unknown, never "busy"; a GPU out of service still raises (``_call``).
    try:
        return fn()
    except nvml.NVMLError as exc:
        if out_of_service(exc):
            raise
        unknown.append(f"{name}: {nvml_cause(exc)}")
        return None


def _maybe(fn: Callable[[], float], nvml: Any) -> float | None:
    # A sensor a board does not expose is a missing reading, not a failed check; a GPU out of service
    # is no missing sensor (``_call`` raises ``GpuLost``).
    try:
        return fn()
    except nvml.NVMLError as exc:
        if out_of_service(exc):
            raise
        return None


def _maybe_text(fn: Callable[[], bytes | str], nvml: Any) -> str:
    # Consumer boards answer NOT_SUPPORTED for the serial: the GPU is still identified by its UUID.
    try:
        return nvml_text(fn())
    except nvml.NVMLError as exc:
        if out_of_service(exc):
            raise
        return ""


def nvml_text(value: bytes | str) -> str:
    """NVML's strings: bytes from older nvidia-ml-py releases, str from newer ones."""
    return value.decode() if isinstance(value, bytes) else value
