"""The NVML event and counter seam over a stand-in pynvml (no GPU here): what it registers, waits and reads."""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any

import fakeredis
import flask
import pytest

from autopilot import config, errors
from autopilot.events import catalogue
from autopilot.events.counters import CounterPoller
from autopilot.nvml_events import ECC_DBE, RECOVERY, XID, GpuCounters, NvmlCounters, NvmlEvents
from autopilot.registry import shipped as shipped_checks


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_pynvml(events: list[Any], *, supported: int | list[int] = 0b1110) -> types.ModuleType:
    """The calls the seam makes, with nvml.h's constants and nvidia-ml-py's error type. ``recovery``
    holds each GPU's recovery action (None: the field reads NOT_SUPPORTED), ``repair`` its repair status
    (None: the call raises NOT_SUPPORTED)."""
    n = types.ModuleType("pynvml")
    n.NVMLError = NVMLError  # type: ignore[attr-defined]
    n.NVML_SUCCESS, n.NVML_ERROR_TIMEOUT, n.NVML_ERROR_NOT_SUPPORTED = 0, 10, 3  # type: ignore[attr-defined]
    n.nvmlEventTypeSingleBitEccError, n.nvmlEventTypeDoubleBitEccError = 0x1, 0x2  # type: ignore[attr-defined]
    n.nvmlEventTypeXidCriticalError, n.nvmlEventTypeGpuRecoveryAction = 0x8, 0x8000  # type: ignore[attr-defined]
    n.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = 230  # type: ignore[attr-defined]
    n.NVML_VALUE_TYPE_DOUBLE, n.NVML_VALUE_TYPE_UNSIGNED_INT = 0, 1  # type: ignore[attr-defined]
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
    masks = supported if isinstance(supported, list) else [supported, supported]
    n.nvmlDeviceGetSupportedEventTypes = lambda h: masks[handles.index(h)]  # type: ignore[attr-defined]
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
    n.recovery = [None, None]  # type: ignore[attr-defined]
    n.repair = [None, None]  # type: ignore[attr-defined]

    def field_values(h: Any, fields: list[int]) -> list[Any]:
        # As nvmlDeviceGetFieldValues: the call succeeds, each value says whether it was read.
        out = []
        for field in fields:
            action = n.recovery[handles.index(h)] if field == 230 else None  # type: ignore[attr-defined]
            ret = 0 if action is not None else 3
            value = types.SimpleNamespace(uiVal=action or 0, dVal=0.0)
            out.append(types.SimpleNamespace(fieldId=field, nvmlReturn=ret, valueType=1, value=value))
        return out

    def repair_status(h: Any) -> list[int]:
        status = n.repair[handles.index(h)]  # type: ignore[attr-defined]
        if status is None:
            raise NVMLError(3)
        return list(status)

    n.nvmlDeviceGetFieldValues = field_values  # type: ignore[attr-defined]
    n.nvmlDeviceGetRepairStatus = repair_status  # type: ignore[attr-defined]
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


def test_counters_read_the_drivers_recovery_action_and_repair_status(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml([])
    nvml.recovery, nvml.repair = [2, None], [(1, 0), None]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    first, second = NvmlCounters().read()
    assert (first.recovery_action, first.channel_repair_pending, first.tpc_repair_pending) == (2, True, False)
    assert (second.recovery_action, second.channel_repair_pending, second.tpc_repair_pending) == (None, None, None)


@pytest.mark.parametrize("driver", ["binding without the names", "call fails", "not an integer"])
def test_a_recovery_action_nvml_cannot_give_reads_as_none_and_the_poll_goes_on(
    driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = fake_pynvml([])
    nvml.recovery, nvml.repair = [2, 2], [(1, 1), (1, 1)]  # type: ignore[attr-defined]
    if driver == "binding without the names":  # nvidia-ml-py before R565 / before the repair status
        for name in ("NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", "nvmlDeviceGetFieldValues", "nvmlDeviceGetRepairStatus"):
            delattr(nvml, name)
    elif driver == "call fails":  # e.g. NVML_ERROR_FUNCTION_NOT_FOUND from a driver without the symbols

        def missing(*args: Any) -> Any:
            raise NVMLError(13)

        nvml.nvmlDeviceGetFieldValues = nvml.nvmlDeviceGetRepairStatus = missing  # type: ignore[attr-defined]
    else:
        real = nvml.nvmlDeviceGetFieldValues  # type: ignore[attr-defined]
        nvml.nvmlDeviceGetFieldValues = lambda h, f: [  # type: ignore[attr-defined]
            types.SimpleNamespace(**{**vars(v), "valueType": 0}) for v in real(h, f)
        ]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    read = NvmlCounters().read()
    assert {g.recovery_action for g in read} == {None}
    if driver != "not an integer":
        assert {(g.channel_repair_pending, g.tpc_repair_pending) for g in read} == {(None, None)}
    assert read[0].ecc_uncorrected_volatile == 4  # the rest of the poll is read as before
    poller = CounterPoller(NvmlCounters().read)
    assert not [e for e in poller.poll() if e.code == "xid.154"]


def test_an_nvml_xid_154_reads_the_action_at_once_and_recovery_events_are_registered_where_supported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = fake_pynvml([(0x8, 0, 154), (0x8000, 0, 0), (0x8, 1, 154), (0x8, 0, 79)], supported=[0x800A, 0xA])
    nvml.recovery = [2, None]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    source = NvmlEvents()
    source.open()
    assert nvml.registered == [(0, 0x800A), (1, 0xA)]  # type: ignore[attr-defined]
    got = [source.wait(0.5) for _ in range(4)]
    assert [(e.kind, e.bus_id, e.data, e.action) for e in got if e is not None] == [
        (XID, "00000000:18:00.0", 154, 2),
        (RECOVERY, "00000000:18:00.0", 0, 2),
        (XID, "00000000:19:00.0", 154, None),  # not supported on that GPU: unread
        (XID, "00000000:18:00.0", 79, None),  # only Xid 154 announces an action
    ]


# ---------------------------------------------------------------- the real reading and the follower tests' fake


class RealCounters:
    """``NvmlCounters`` over the pynvml stand-in; ``set`` changes what the driver holds for GPU 0."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nvml = fake_pynvml([])
        monkeypatch.setitem(sys.modules, "pynvml", self.nvml)
        self.read = NvmlCounters().read

    def set(self, action: int | None, repair: tuple[int, int] | None = None) -> None:
        self.nvml.recovery[0] = action  # type: ignore[attr-defined]
        self.nvml.repair[0] = repair  # type: ignore[attr-defined]


class FakeCounters:
    """The readings as the follower tests hand ``GpuCounters`` to the poller."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gpu = GpuCounters("00000000:18:00.0")

    def set(self, action: int | None, repair: tuple[int, int] | None = None) -> None:
        channel, tpc = (bool(repair[0]), bool(repair[1])) if repair is not None else (None, None)
        self.gpu = dataclasses.replace(
            self.gpu, recovery_action=action, channel_repair_pending=channel, tpc_repair_pending=tpc
        )

    def read(self) -> list[GpuCounters]:
        return [self.gpu]


@pytest.fixture(params=[RealCounters, FakeCounters], ids=["nvml", "fake"])
def gpu0(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> RealCounters | FakeCounters:
    made: RealCounters | FakeCounters = request.param(monkeypatch)
    return made


def _driver_events(poller: CounterPoller) -> list[tuple[str, str]]:
    """GPU 0's recovery-action and repair events of one poll: (code, action)."""
    return [(e.code, e.action.value) for e in poller.poll()
            if e.device == "0000:18:00.0" and (e.code == "xid.154" or e.code.startswith("repair."))]  # fmt: skip


def test_an_action_set_while_no_follower_ran_is_seen_at_its_first_poll(gpu0: RealCounters | FakeCounters) -> None:
    gpu0.set(2)  # NODE_REBOOT, set before the follower started
    poller = CounterPoller(gpu0.read)
    assert _driver_events(poller) == [("xid.154", "evict")]
    assert _driver_events(poller) == []  # once per change, not once per poll


def test_each_change_of_the_recovery_action_is_one_event_and_back_to_none_is_counted(
    gpu0: RealCounters | FakeCounters,
) -> None:
    poller = CounterPoller(gpu0.read)
    found = []
    for action in (0, 3, 3, 4, 0, 0, 2):  # NONE, DRAIN_P2P, DRAIN_AND_RESET, NONE, NODE_REBOOT
        gpu0.set(action)
        found.append(_driver_events(poller))
    assert found == [[], [("xid.154", "warn")], [], [("xid.154", "reset")], [("xid.154", "ignore")], [],
                     [("xid.154", "evict")]]  # fmt: skip


def test_an_unsupported_recovery_action_is_no_event_and_no_error(gpu0: RealCounters | FakeCounters) -> None:
    gpu0.set(None)
    poller = CounterPoller(gpu0.read)
    assert _driver_events(poller) == [] and _driver_events(poller) == []


def test_a_pending_repair_is_reported_once_with_the_action_of_a_pending_remap(
    gpu0: RealCounters | FakeCounters,
) -> None:
    poller = CounterPoller(gpu0.read)
    remap = catalogue.counter("remap.pending").action.value
    found = []
    for repair in ((1, 0), (1, 0), (0, 0), (0, 1)):
        gpu0.set(None, repair)
        found.append(_driver_events(poller))
    assert found == [[("repair.channel", remap)], [], [], [("repair.tpc", remap)]]
    assert "reset the GPU" in catalogue.counter("repair.channel").meaning


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


# ---------------------------------------------------------------- a GPU out of service, as the counters read it


@pytest.mark.parametrize("code", [15, 16, 8])  # NVML_ERROR_GPU_IS_LOST, RESET_REQUIRED, INSUFFICIENT_POWER
def test_a_gpu_nvml_calls_out_of_service_is_an_evicting_state_while_it_lasts(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Before, each counter of that GPU read as "not supported": the follower said nothing of it.
    nvml = fake_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    rows = nvml.nvmlDeviceGetRemappedRows  # type: ignore[attr-defined]
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]  # type: ignore[attr-defined]
    broken = {"on": True}

    def remapped_rows(h: Any) -> Any:
        if broken["on"] and h is handles[1]:
            raise NVMLError(code)
        return rows(h)

    nvml.nvmlDeviceGetRemappedRows = remapped_rows  # type: ignore[attr-defined]
    poller = CounterPoller(NvmlCounters().read)
    first = [(e.device, e.code, e.action.value) for e in poller.poll() if e.code == "gpu.out_of_service"]
    assert first == [("0000:19:00.0", "gpu.out_of_service", "evict")]
    assert [e for e in poller.poll() if e.code == "gpu.out_of_service"] == []  # once, then held as standing
    assert ("0000:19:00.0", "gpu.out_of_service") in poller.standing
    broken["on"] = False
    poller.poll()
    assert ("0000:19:00.0", "gpu.out_of_service") not in poller.standing


def test_a_counter_a_gpu_does_not_support_is_still_no_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    poller = CounterPoller(NvmlCounters().read)  # the stand-in answers NOT_SUPPORTED for the PCIe replays
    assert [e for e in poller.poll() if e.code == "gpu.out_of_service"] == []


@pytest.mark.parametrize("code", [15, 16, 8])
def test_a_gpu_out_of_service_at_registration_leaves_the_others_events_read(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Before, GPU 1 refusing its event types made open() raise: no GPU's events were read, the source
    # restarting for ever; the counters' poll is what reports that GPU (gpu.out_of_service).
    nvml = fake_pynvml([(0x2, 0, 0)], supported=0b1010)
    supported = nvml.nvmlDeviceGetSupportedEventTypes  # type: ignore[attr-defined]
    second = nvml.nvmlDeviceGetHandleByIndex(1)  # type: ignore[attr-defined]

    def types_of(h: Any) -> int:
        if h is second:
            raise NVMLError(code)
        return int(supported(h))

    nvml.nvmlDeviceGetSupportedEventTypes = types_of  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    source = NvmlEvents()
    source.open()
    assert nvml.registered == [(0, 0b1010)]  # type: ignore[attr-defined]
    assert list(source.out_of_service) == [1]
    event = source.wait(0.5)
    assert event is not None and (event.kind, event.bus_id) == (ECC_DBE, "00000000:18:00.0")


def test_another_nvml_error_at_registration_still_fails_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml([])

    def unknown(h: Any) -> int:
        raise NVMLError(999)

    nvml.nvmlDeviceGetSupportedEventTypes = unknown  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with pytest.raises(errors.GpuError):
        NvmlEvents().open()
