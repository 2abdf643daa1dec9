"""The GPU seam: what the checks ask NVML, behind a Protocol with one real implementation.

Only this module imports ``pynvml`` (nvidia-ml-py). Every NVML error is translated into
``GpuError`` (with the NVML code) or, when there is no driver or no GPU, ``GpuUnavailable`` so
that GPU checks report ``skipped`` quickly on a CPU-only machine. The records returned here are
plain dataclasses, which the fake in ``autopilot.testing`` fills from recorded snapshots.
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


@dataclasses.dataclass(frozen=True)
class GpuIdentity:
    index: int
    name: str
    uuid: str
    pci_bus_id: str


class GpuTelemetry(Protocol):
    """What the checks may ask about the GPUs. Raises ``GpuUnavailable`` / ``GpuError``."""

    def driver_version(self) -> str: ...

    def count(self) -> int: ...

    def identity(self, index: int) -> GpuIdentity: ...

    def remapped_rows(self, index: int) -> RemappedRows: ...

    def clock_event_reasons(self, index: int) -> frozenset[str]: ...

    def pcie_link(self, index: int) -> PcieLink: ...

    def sample(self, index: int) -> GpuSample: ...


class NvmlTelemetry:
    """The real telemetry, through nvidia-ml-py. NVML is initialised lazily, once per process."""

    _init_lock = threading.Lock()

    def __init__(self) -> None:
        self._nvml: Any = None
        self._unavailable: str | None = None

    def _lib(self) -> Any:
        with self._init_lock:
            if self._unavailable is not None:
                raise errors.GpuUnavailable(self._unavailable)
            if self._nvml is None:
                try:
                    import pynvml
                except ImportError as exc:  # pragma: no cover - it is a dependency
                    self._unavailable = f"nvidia-ml-py is not installed ({exc})"
                    raise errors.GpuUnavailable(self._unavailable) from exc
                try:
                    pynvml.nvmlInit()
                except pynvml.NVMLError as exc:
                    self._unavailable = f"no NVIDIA driver: NVML could not start ({exc})"
                    raise errors.GpuUnavailable(self._unavailable) from exc
                self._nvml = pynvml
            return self._nvml

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        nvml = self._lib()
        try:
            return fn(nvml)
        except nvml.NVMLError as exc:
            code = getattr(exc, "value", None)
            raise errors.GpuError(f"{what}: {exc}", code) from exc

    def _handle(self, nvml: Any, index: int) -> Any:
        return nvml.nvmlDeviceGetHandleByIndex(index)

    def driver_version(self) -> str:
        return self._call("driver version", lambda n: _text(n.nvmlSystemGetDriverVersion()))

    def count(self) -> int:
        return int(self._call("device count", lambda n: n.nvmlDeviceGetCount()))

    def identity(self, index: int) -> GpuIdentity:
        def read(n: Any) -> GpuIdentity:
            h = self._handle(n, index)
            return GpuIdentity(
                index=index,
                name=_text(n.nvmlDeviceGetName(h)),
                uuid=_text(n.nvmlDeviceGetUUID(h)),
                pci_bus_id=_text(n.nvmlDeviceGetPciInfo(h).busId),
            )

        return self._call(f"GPU {index} identity", read)

    def remapped_rows(self, index: int) -> RemappedRows:
        def read(n: Any) -> RemappedRows:
            corr, unc, pending, failure = n.nvmlDeviceGetRemappedRows(self._handle(n, index))
            return RemappedRows(int(corr), int(unc), bool(pending), bool(failure))

        return self._call(f"GPU {index} remapped rows", read)

    def clock_event_reasons(self, index: int) -> frozenset[str]:
        def read(n: Any) -> frozenset[str]:
            h = self._handle(n, index)
            # Older nvidia-ml-py releases only have the "throttle reasons" name of the same call.
            getter = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
            getter = getter or n.nvmlDeviceGetCurrentClocksThrottleReasons
            return decode_reasons(int(getter(h)))

        return self._call(f"GPU {index} clock event reasons", read)

    def pcie_link(self, index: int) -> PcieLink:
        def read(n: Any) -> PcieLink:
            h = self._handle(n, index)
            return PcieLink(
                current_gen=int(n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
                max_gen=int(n.nvmlDeviceGetMaxPcieLinkGeneration(h)),
                current_width=int(n.nvmlDeviceGetCurrPcieLinkWidth(h)),
                max_width=int(n.nvmlDeviceGetMaxPcieLinkWidth(h)),
            )

        return self._call(f"GPU {index} PCIe link", read)

    def sample(self, index: int) -> GpuSample:
        def read(n: Any) -> GpuSample:
            h = self._handle(n, index)
            return GpuSample(
                temperature_c=_maybe(lambda: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)), n),
                power_w=_maybe(lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0, n),
                sm_clock_mhz=_maybe(lambda: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)), n),
            )

        return self._call(f"GPU {index} sample", read)


def _maybe(fn: Callable[[], float], nvml: Any) -> float | None:
    # A sensor a board does not expose is a missing reading, not a failed check.
    try:
        return fn()
    except nvml.NVMLError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
