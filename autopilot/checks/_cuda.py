"""What ``pciebw`` and ``gpumem`` share about the ``cuda_src`` programs they run.

- ``parse_tool_json``: the one JSON line each program prints;
- ``same_gpu``: CUDA's and NVML's spelling of a PCI bus id compared;
- ``Sampler``: telemetry of one GPU sampled in the background while a program runs on it (by
  one thread per process for all GPUs). A
  bandwidth figure means little without the temperature, power and SM clock the GPU ran at,
  since a hot or power-capped GPU measures low for reasons that are neither link nor memory.
  Samples go through ``ctx.gpus`` (the NVML seam) only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from autopilot import errors, gpus

_FIELDS = ("temperature_c", "power_w", "sm_clock_mhz")


# One parse error for every reader of tool output (kept under this name for callers).
ParseError = errors.ParseError


def parse_tool_json(text: str, tool: str) -> dict[str, Any]:
    """The JSON line a ``cuda_src`` program printed (the last line that parses and names ``tool``)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("tool") == tool:
            devices = doc.get("devices", [])
            if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
                raise ParseError(f"{tool}: 'devices' is not a list of objects")
            return doc
    raise ParseError(f"no {tool} JSON line in the output: {tail(text)!r}")


def number_field(device: Mapping[str, Any], field: str) -> float:
    """A finite non-negative number from a device entry, or ``ParseError``."""
    value = device.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or not 0 <= value < float("inf"):
        raise ParseError(f"device {device.get('index')}: {field} is not a non-negative number: {value!r}")
    return float(value)


def _bus_key(bus_id: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"\s*([0-9A-Fa-f]+):([0-9A-Fa-f]+):([0-9A-Fa-f]+)\.([0-9A-Fa-f])\s*", bus_id or "")
    return tuple(int(g, 16) for g in match.groups()) if match else None


def same_gpu(cuda_bus_id: str, nvml_bus_id: str) -> bool:
    """CUDA prints ``0000:19:00.0`` where NVML prints ``00000000:19:00.0``; unreadable ids never mismatch."""
    a, b = _bus_key(cuda_bus_id), _bus_key(nvml_bus_id)
    return a is None or b is None or a == b


def identity_mismatch(telemetry: gpus.GpuTelemetry, index: int, cuda_bus_id: str) -> str | None:
    """Why CUDA device ``index`` is not NVML GPU ``index`` (None when they agree or NVML cannot tell)."""
    if not cuda_bus_id:
        return None
    try:
        nvml_bus = telemetry.identity(index).pci_bus_id
    except errors.GpuUnavailable:
        raise
    except errors.GpuError:
        return None
    if same_gpu(cuda_bus_id, nvml_bus):
        return None
    return f"CUDA device {index} is {cuda_bus_id} but NVML GPU {index} is {nvml_bus}"


def device_entry(tool: str, returncode: int, stdout: str, stderr: str, index: int) -> tuple[dict[str, Any], str]:
    """GPU ``index``'s entry of a ``cuda_src`` program's JSON line, and the run's error text ("" if none).

    Exit codes (cuda_src/README.md): 0 ok, 1 CUDA error (JSON still printed), 2 usage, 3 no CUDA
    device. Raises ``ParseError`` with the reason when there is no entry to judge.
    """
    try:
        doc = parse_tool_json(stdout, tool)
    except ParseError as exc:
        raise ParseError(f"{tool} exited {returncode}: {exc}{stderr_note(stderr)}") from None
    top_error = str(doc.get("error") or "")
    if returncode == 3:
        raise ParseError(f"CUDA sees no device although NVML lists GPU {index}: {top_error}")
    if returncode == 2:
        raise ParseError(f"{tool} usage error: {top_error}")
    device = next((d for d in doc.get("devices", []) if d.get("index") == index), None)
    if device is None:
        raise ParseError(f"{tool} exited {returncode} without GPU {index}: {top_error or 'no entry'}")
    run_error = f"{tool} exited {returncode}: {top_error or 'no error text'}" if returncode != 0 else ""
    return device, run_error


def tail(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def stderr_note(stderr: str) -> str:
    return f" (stderr: {tail(stderr)})" if stderr.strip() else ""


class _SamplingThread:
    """The one background thread that samples every open ``Sampler``, each every its interval.

    Started on first use and kept for the life of the process (it waits without a timeout while
    no sampler is open). Entering a sampler registers it and wakes the thread only when it sleeps
    longer than the new sampler's first interval; a program that ends within that interval is
    never sampled here. ``remove`` returns only once the thread is not sampling that sampler, so
    no sample lands after its exit sample.
    """

    def __init__(self) -> None:
        lock = threading.Lock()
        self._wakeup = threading.Condition(lock)  # the thread waits here for the next due sample
        self._sampled = threading.Condition(lock)  # ``remove`` waits here for a sample in progress
        self._due: dict[Sampler, float] = {}  # open sampler -> when its next sample is due (monotonic)
        self._busy: frozenset[Sampler] = frozenset()
        self._wake_at: float | None = None  # when the sleeping thread looks again; None: idle or busy
        self._thread: threading.Thread | None = None

    def add(self, sampler: Sampler) -> None:
        with self._wakeup:
            due = time.monotonic() + sampler.interval_s
            self._due[sampler] = due
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
                self._thread.start()
            elif self._wake_at is None or due < self._wake_at:
                self._wakeup.notify()

    def remove(self, sampler: Sampler) -> None:
        with self._wakeup:
            self._due.pop(sampler, None)
            while sampler in self._busy:
                self._sampled.wait()

    def _loop(self) -> None:
        with self._wakeup:
            while True:
                if not self._due:
                    self._wake_at = None
                    self._wakeup.wait()
                    continue
                now = time.monotonic()
                next_due = min(self._due.values())
                if next_due > now:
                    self._wake_at = next_due
                    self._wakeup.wait(next_due - now)
                    continue
                self._wake_at = None
                busy = frozenset(s for s, due in self._due.items() if due <= now)
                for s in busy:
                    self._due[s] = now + s.interval_s
                self._busy = busy
                self._wakeup.release()
                try:
                    # NVML is slow only when something is wrong; the lock is free meanwhile, so
                    # samplers open and close without waiting for it.
                    for s in busy:
                        s.take()
                finally:
                    self._wakeup.acquire()
                    self._busy = frozenset()
                    self._sampled.notify_all()


_SAMPLING = _SamplingThread()


class Sampler:
    """``with Sampler(ctx.gpus, i) as s: run(...)``, then ``s.summary()``.

    One sample is taken on entry and one on exit, so even a program shorter than the interval
    has readings; while the program runs, the process's one sampling thread takes one every
    ``interval_s`` (one thread for every GPU and every check, not one per GPU). A failed NVML
    query loses that sample and is counted, never raised.
    """

    def __init__(self, telemetry: gpus.GpuTelemetry, index: int, *, interval_s: float = 0.2) -> None:
        self._telemetry = telemetry
        self._index = index
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self.samples: list[gpus.GpuSample] = []
        self.failures = 0

    def take(self) -> None:
        """One sample now (a failure is counted, never raised)."""
        try:
            sample = self._telemetry.sample(self._index)
        except errors.GpuError:
            with self._lock:
                self.failures += 1
            return
        with self._lock:
            self.samples.append(sample)

    def __enter__(self) -> Sampler:
        self.take()
        _SAMPLING.add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _SAMPLING.remove(self)
        self.take()

    def summary(self) -> dict[str, Any]:
        """``{"samples": n, "temperature_c": {"min", "max", "mean"}, ...}``; fields never read are left out."""
        with self._lock:
            samples = list(self.samples)
            failures = self.failures
        out: dict[str, Any] = {"samples": len(samples)}
        if failures:
            out["failed_samples"] = failures
        for field in _FIELDS:
            values = [v for v in (getattr(s, field) for s in samples) if v is not None]
            if values:
                out[field] = {
                    "min": round(min(values), 1),
                    "max": round(max(values), 1),
                    "mean": round(sum(values) / len(values), 1),
                }
        return out
