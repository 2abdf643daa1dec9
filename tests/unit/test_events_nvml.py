"""The NVML event and counter seam over a stand-in pynvml (no GPU here): what it registers, waits and reads."""

from __future__ import annotations

import sys
import types
from typing import Any

import fakeredis
import flask
import pytest

from autopilot import config, errors
from autopilot.nvml_events import ECC_DBE, XID, NvmlCounters, NvmlEvents
from autopilot.registry import shipped as shipped_checks


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_pynvml(events: list[Any], *, supported: int = 0b1110) -> types.ModuleType:
    """The calls the seam makes, with nvml.h's constants and nvidia-ml-py's error type."""
    n = types.ModuleType("pynvml")
    n.NVMLError = NVMLError  # type: ignore[attr-defined]
    n.NVML_ERROR_TIMEOUT, n.NVML_ERROR_NOT_SUPPORTED = 10, 3  # type: ignore[attr-defined]
    n.nvmlEventTypeSingleBitEccError, n.nvmlEventTypeDoubleBitEccError = 0x1, 0x2  # type: ignore[attr-defined]
    n.nvmlEventTypeXidCriticalError = 0x8  # type: ignore[attr-defined]
    n.NVML_NVLINK_MAX_LINKS, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC = 4, 1, 0  # type: ignore[attr-defined]
    n.NVML_NVLINK_ERROR_DL_REPLAY, n.NVML_NVLINK_ERROR_DL_RECOVERY, n.NVML_NVLINK_ERROR_DL_CRC_FLIT = 0, 1, 2  # type: ignore[attr-defined]
    handles = [object(), object()]
    n.registered = []  # type: ignore[attr-defined]
    n.freed = []  # type: ignore[attr-defined]
    n.nvmlInit = lambda: None  # type: ignore[attr-defined]
    n.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    n.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    n.nvmlDeviceGetHandleByIndex = lambda i: handles[i]  # type: ignore[attr-defined]
    n.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(
        busId=f"00000000:{handles.index(h) + 0x18:02X}:00.0".encode()
    )  # type: ignore[attr-defined]
    n.nvmlEventSetCreate = lambda: "set"  # type: ignore[attr-defined]
    n.nvmlEventSetFree = lambda s: n.freed.append(s)  # type: ignore[attr-defined]
    n.nvmlDeviceGetSupportedEventTypes = lambda h: supported  # type: ignore[attr-defined]
    n.nvmlDeviceRegisterEvents = lambda h, types_, s: n.registered.append((handles.index(h), types_))  # type: ignore[attr-defined]

    def wait(event_set: Any, timeout_ms: int) -> Any:
        if not events:
            raise NVMLError(10)
        kind, index, data = events.pop(0)
        return types.SimpleNamespace(device=handles[index], eventType=kind, eventData=data)

    n.nvmlEventSetWait_v2 = wait  # type: ignore[attr-defined]

    def links(h: Any, link: int) -> int:
        if link >= 2:
            raise NVMLError(3)  # this GPU has two links
        return 1

    n.nvmlDeviceGetNvLinkState = links  # type: ignore[attr-defined]
    n.nvmlDeviceGetNvLinkErrorCounter = lambda h, link, c: 10 * (c + 1)  # type: ignore[attr-defined]
    n.nvmlDeviceGetRemappedRows = lambda h: (0, 1, 1, 0)  # type: ignore[attr-defined]
    n.nvmlDeviceGetRetiredPagesPendingStatus = lambda h: 0  # type: ignore[attr-defined]

    def no_replay(h: Any) -> int:
        raise NVMLError(3)

    n.nvmlDeviceGetPcieReplayCounter = no_replay  # type: ignore[attr-defined]
    n.nvmlDeviceGetTotalEccErrors = lambda h, kind, counter: 4  # type: ignore[attr-defined]
    return n


def test_events_are_registered_per_gpu_for_the_supported_types_and_a_wait_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = fake_pynvml([(0x8, 1, 79), (0x2, 0, 0)], supported=0b1010)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    source = NvmlEvents()
    source.open()
    assert nvml.registered == [(0, 0b1010), (1, 0b1010)]  # type: ignore[attr-defined]
    first, second, third = source.wait(0.5), source.wait(0.5), source.wait(0.5)
    assert (first.kind, first.bus_id, first.data) == (XID, "00000000:19:00.0", 79)  # type: ignore[union-attr]
    assert (second.kind, second.bus_id) == (ECC_DBE, "00000000:18:00.0")  # type: ignore[union-attr]
    assert third is None  # NVML_ERROR_TIMEOUT: the thread gets to look at its stop flag
    source.close()
    assert nvml.freed == ["set"]  # type: ignore[attr-defined]


def test_an_nvml_error_other_than_timeout_is_a_gpu_error(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml([])

    def broken(event_set: Any, timeout_ms: int) -> Any:
        raise NVMLError(15)  # GPU_IS_LOST

    nvml.nvmlEventSetWait_v2 = broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    source = NvmlEvents()
    source.open()
    with pytest.raises(errors.GpuError):
        source.wait(0.1)


def test_counters_read_what_each_gpu_supports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    first, _ = NvmlCounters().read()
    assert first.bus_id == "00000000:18:00.0"
    assert (first.ecc_uncorrected_volatile, first.remap_pending, first.remap_failure) == (4, True, False)
    assert first.retired_pages_pending is False and first.pcie_replay is None  # not supported: absent
    assert first.nvlink_up == (True, True)
    assert (first.nvlink_replay, first.nvlink_recovery, first.nvlink_crc) == (20, 40, 60)


def test_the_api_exports_the_event_series() -> None:
    from api import metrics as api_metrics
    from autopilot.events.catalogue import lookup
    from autopilot.events.model import Event
    from workers import follower as glue
    from workers.store import ResultsStore

    store = ResultsStore(fakeredis.FakeRedis())
    settings = config.Settings(node_name="n", periodic_checks=())
    event = Event("kmsg", lookup("xid", "79"), "3", "x", 0.0)
    glue.StoreSink(store, settings, {}, checks=shipped_checks()).emit("node-a", None, [event], [event])
    app = flask.Flask("t")
    api_metrics.init_app(app, store, settings, checks=shipped_checks())
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'autopilot_gpu_events_total{action="evict",code="xid.79",gpu="3",node="node-a",source="kmsg"} 1.0' in text
    assert 'autopilot_gpu_event_to_label_seconds_bucket{le="+Inf"} 1.0' in text
