"""Per-GPU verdicts (issue 15 item 1): GPU identity on results, the verdict per GPU, its labels and annotation."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from autopilot import errors, execution, gpuident, gpuverdict, verdict
from autopilot.checks import remapped  # noqa: F401 - registers the check
from autopilot.gpus import GpuIdentity
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status
from autopilot.testing import FakeClock, FakeGpu, FakeTelemetry
from autopilot.verdict import Verdict
from workers import simulate

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
AGE = 3 * 3600.0


def uuid(i: int) -> str:
    return f"GPU-{i:08x}-0000-4000-8000-{i:012x}"


def gpu_result(check: str, statuses: dict[int, Status], *, fatal: bool = False, at: datetime = NOW) -> CheckResult:
    devices = tuple(
        DeviceResult(str(i), s, detail=f"{check} says {s.value}", uuid=uuid(i), bus_id=f"0000:{i:02x}:00.0")
        for i, s in sorted(statuses.items())
    )
    worst = max(statuses.values(), key=lambda s: ["ok", "warn", "error", "fail"].index(s.value))
    return CheckResult(
        check,
        worst,
        f"{check} summary",
        node="n1",
        fatal=fatal,
        devices=devices,
        started_at=at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def healthy(check: str, n: int = 8, at: datetime = NOW) -> CheckResult:
    return gpu_result(check, dict.fromkeys(range(n), Status.OK), at=at)


# ---------------------------------------------------------------- identity on results


def test_attach_stamps_uuid_bus_id_and_serial_on_gpu_devices() -> None:
    telemetry = FakeTelemetry(
        [FakeGpu(uuid=uuid(i), pci_bus_id=f"00000000:{i + 0x10:02X}:00.0", serial=f"13240{i}") for i in range(2)]
    )
    result = CheckResult(
        "remapped",
        Status.FAIL,
        devices=(
            DeviceResult("1", Status.FAIL),
            DeviceResult("0000:3b:00.0", Status.FAIL, detail="fell off"),
            DeviceResult("sim-1/eth0", Status.OK),
        ),
    )
    stamped = gpuident.attach(result, gpuident.read(telemetry))
    first, missing, other = stamped.devices
    assert (first.uuid, first.bus_id, first.serial) == (uuid(1), "0000:11:00.0", "132401")
    assert (missing.uuid, missing.bus_id) == ("", "0000:3b:00.0")
    assert (other.uuid, other.bus_id) == ("", "")
    assert CheckResult.from_json(stamped.to_json()) == stamped
    assert "uuid" not in other.to_dict()


def test_attach_keeps_every_other_field_of_a_device() -> None:
    # attach builds devices field by field: a field it forgot would be lost on every GPU result.
    given = DeviceResult("0", Status.WARN, 3.5, "GB/s", "slow")
    lost = DeviceResult("0000:3b:00.0", Status.FAIL, 1, "rows", "fell off", serial="99")
    identities = {0: GpuIdentity(0, "H100", uuid(0), "00000000:10:00.0", "1324")}
    stamped, unmatched = gpuident.attach(CheckResult("x", Status.FAIL, devices=(given, lost)), identities).devices
    identity = {"uuid", "bus_id", "serial"}
    for before, after in ((given, stamped), (lost, unmatched)):
        for field in dataclasses.fields(DeviceResult):
            if field.name not in identity:
                assert getattr(after, field.name) == getattr(before, field.name), field.name
    assert (stamped.uuid, stamped.bus_id, stamped.serial) == (uuid(0), "0000:10:00.0", "1324")
    assert (unmatched.uuid, unmatched.bus_id, unmatched.serial) == ("", "0000:3b:00.0", "99")


def test_engine_puts_gpu_identity_on_gpu_check_devices(make_ctx) -> None:  # type: ignore[no-untyped-def]
    telemetry = FakeTelemetry([FakeGpu(uuid=uuid(i)) for i in range(2)])
    result = execution.run_check("remapped", make_ctx(gpus=telemetry, clock=FakeClock()))
    assert result.status is Status.OK
    assert [d.uuid for d in result.devices] == [uuid(0), uuid(1)]
    assert [d.bus_id for d in result.devices] == ["0000:00:00.0", "0000:01:00.0"]


def test_simulated_nodes_have_stable_distinct_valid_uuids(settings) -> None:  # type: ignore[no-untyped-def]
    first = simulate.contexts(settings, 2, [], checks=shipped_checks())
    again = simulate.contexts(settings, 2, [], checks=shipped_checks())
    a0 = first["sim-0"].gpus.identity(0)
    assert gpuident.valid_uuid(a0.uuid) and a0.serial
    assert a0 == again["sim-0"].gpus.identity(0)
    assert a0.uuid != first["sim-1"].gpus.identity(0).uuid
    assert a0.uuid != first["sim-0"].gpus.identity(1).uuid


def test_a_simulated_gpu_lost_after_it_was_identified_is_lost(settings) -> None:  # type: ignore[no-untyped-def]
    # The fake UUIDs are kept per node; the device is still asked every time, so a loss shows at once.
    gpus = simulate.contexts(settings, 1, [], checks=shipped_checks())["sim-0"].gpus
    first = gpus.identity(3)
    assert isinstance(gpus, simulate.SimTelemetry)
    gpus.devices[3] = dataclasses.replace(gpus.devices[3], raises=errors.GpuError("GPU 3: GPU is lost", 15))
    with pytest.raises(errors.GpuError):
        gpus.identity(3)
    assert gpus.identity(2).uuid != first.uuid and gpuident.valid_uuid(first.uuid)


def test_uuid_validation() -> None:
    assert gpuident.valid_uuid("GPU-8c1b3a2e-1f4d-4e2a-9b1c-0123456789ab")
    for bad in ("GPU-fake-0", "gpu-8c1b3a2e", "GPU-8c1b3a2e-1f4d-4e2a-9b1c-0123456789ab/x", "MIG-x", "ap:*", ""):
        assert not gpuident.valid_uuid(bad)


# ---------------------------------------------------------------- the verdict per GPU


def test_one_gpu_with_a_failed_remap_is_the_only_evict() -> None:
    latest = {
        "remapped": gpu_result("remapped", {**dict.fromkeys(range(8), Status.OK), 5: Status.FAIL}, fatal=True),
        "pciebw": healthy("pciebw"),
    }
    states = gpuverdict.decide(latest, {}, now=NOW, max_age_s=AGE, checks=shipped_checks())
    assert states[uuid(5)].verdict is Verdict.EVICT
    assert "remapped: fail" in states[uuid(5)].reasons[0]
    assert all(states[uuid(i)].verdict is Verdict.PASS for i in range(8) if i != 5)
    assert gpuverdict.labels(states) == {
        gpuverdict.GPUS_EVICT: "1",
        gpuverdict.GPUS_WARN: "0",
        gpuverdict.GPUS_HEALTHY: "7",
    }
    # The node verdict (upstream's label) is unchanged: still EVICT.
    node = verdict.decide(latest, periodic=["remapped", "pciebw"], now=NOW, max_age_s=AGE)
    assert node.verdict is Verdict.EVICT


def test_warn_from_a_non_fatal_fail_and_since_is_kept_while_unchanged() -> None:
    first = gpuverdict.decide(
        {"pciebw": gpu_result("pciebw", {0: Status.OK, 1: Status.FAIL})},
        {},
        now=NOW,
        max_age_s=AGE,
        checks=shipped_checks(),
    )
    assert first[uuid(1)].verdict is Verdict.WARN
    later = NOW + timedelta(hours=1)
    again = gpuverdict.decide(
        {"pciebw": gpu_result("pciebw", {0: Status.OK, 1: Status.WARN}, at=later)},
        first,
        now=later,
        max_age_s=AGE,
        checks=shipped_checks(),
    )
    assert again[uuid(1)].since == first[uuid(1)].since == "2026-11-30T08:00:00Z"


def gpu0_evicted() -> dict[str, gpuverdict.GpuState]:
    """GPU 0 evicted at ``NOW`` by a failed row remap."""
    return gpuverdict.decide(
        {"remapped": gpu_result("remapped", {0: Status.FAIL}, fatal=True)},
        {},
        now=NOW,
        max_age_s=AGE,
        checks=shipped_checks(),
    )


def test_gpu_evict_is_sticky_until_a_level3_dcgm_pass_after_it() -> None:
    bad = gpu0_evicted()
    later = NOW + timedelta(hours=1)
    still = gpuverdict.decide(
        {"remapped": healthy("remapped", 1, at=later)}, bad, now=later, max_age_s=AGE, checks=shipped_checks()
    )
    assert still[uuid(0)].verdict is Verdict.EVICT
    assert still[uuid(0)].reasons[0].startswith("evicted since 2026-11-30T08:00:00Z")
    dcgm = CheckResult(
        "dcgm",
        Status.OK,
        devices=healthy("dcgm", 1, at=later).devices,
        params={"r": 3},
        started_at="2026-11-30T09:00:00Z",
    )
    cleared = gpuverdict.decide(
        {"remapped": healthy("remapped", 1, at=later), "dcgm": dcgm},
        still,
        now=later,
        max_age_s=AGE,
        checks=shipped_checks(),
    )
    assert cleared[uuid(0)].verdict is Verdict.PASS
    assert cleared[uuid(0)].evicted_at == ""


def test_operator_clear_lifts_a_gpu_evict() -> None:
    bad = gpu0_evicted()
    later = NOW + timedelta(hours=1)
    cleared = gpuverdict.decide(
        {"remapped": healthy("remapped", 1, at=later)},
        bad,
        now=later,
        max_age_s=AGE,
        cleared_at=later - timedelta(minutes=1),
        checks=shipped_checks(),
    )
    assert cleared[uuid(0)].verdict is Verdict.PASS


def test_a_gpu_that_fell_off_the_bus_is_judged_under_its_uuid() -> None:
    before = gpuverdict.decide(
        {"remapped": healthy("remapped", 2)}, {}, now=NOW, max_age_s=AGE, checks=shipped_checks()
    )
    lost = CheckResult(
        "remapped",
        Status.FAIL,
        fatal=True,
        started_at="2026-11-30T09:00:00Z",
        devices=(
            DeviceResult("0", Status.OK, uuid=uuid(0), bus_id="0000:00:00.0"),
            DeviceResult("0000:01:00.0", Status.FAIL, detail="fell off", bus_id="0000:01:00.0"),
        ),
    )
    later = NOW + timedelta(hours=1)
    after = gpuverdict.decide({"remapped": lost}, before, now=later, max_age_s=AGE, checks=shipped_checks())
    assert set(after) == {uuid(0), uuid(1)}
    assert after[uuid(1)].verdict is Verdict.EVICT


def test_stale_results_make_gpus_unknown_and_node_level_checks_make_no_gpu() -> None:
    before = gpuverdict.decide(
        {"remapped": healthy("remapped", 1)}, {}, now=NOW, max_age_s=AGE, checks=shipped_checks()
    )
    ping = CheckResult(
        "ping", Status.FAIL, devices=(DeviceResult("n2/eth0", Status.FAIL),), started_at="2026-11-30T12:00:00Z"
    )
    later = NOW + timedelta(hours=4)
    after = gpuverdict.decide(
        {"remapped": healthy("remapped", 1), "ping": ping}, before, now=later, max_age_s=AGE, checks=shipped_checks()
    )
    assert list(after) == [uuid(0)]
    assert after[uuid(0)].verdict is Verdict.UNKNOWN


def test_flags_add_a_reason_whatever_the_verdict() -> None:
    states = gpuverdict.decide(
        {"remapped": healthy("remapped", 1)},
        {},
        now=NOW,
        max_age_s=AGE,
        flags={uuid(0): "repeat offender: 3 incidents in the last 7 days"},
        checks=shipped_checks(),
    )
    assert states[uuid(0)].verdict is Verdict.PASS
    assert states[uuid(0)].reasons == ("repeat offender: 3 incidents in the last 7 days",)


def test_a_gpu_in_use_by_others_names_what_was_not_judged_on_it() -> None:
    # pciebw skipped GPU 3 as in use by others: its verdict stays that of what was judged
    # (PASS from remapped), and the per-GPU view names the skip with its evidence, as the
    # result's summary does; a GPU skipped for another reason gets no such note.
    busy = "in use by others (61 GiB used): H2D 21.3 GB/s not judged"
    devices = tuple(
        dataclasses.replace(d, status=Status.SKIPPED, detail=busy if d.id == "3" else "no link reading")
        if d.id in ("3", "4")
        else d
        for d in healthy("pciebw", 8).devices
    )
    gpus = {str(i): {"in_use": {"busy": i == 3}} for i in range(8)}
    pciebw = dataclasses.replace(healthy("pciebw", 8), devices=devices, data={"gpus": gpus})
    states = gpuverdict.decide(
        {"remapped": healthy("remapped"), "pciebw": pciebw}, {}, now=NOW, max_age_s=AGE, checks=shipped_checks()
    )
    assert states[uuid(3)].verdict is Verdict.PASS
    assert states[uuid(3)].reasons == (f"pciebw: skipped: {busy}",)
    assert states[uuid(4)].reasons == ()
    assert gpuverdict.labels(states)[gpuverdict.GPUS_HEALTHY] == "8"


def test_state_round_trips_through_node_state_json() -> None:
    states = gpuverdict.decide(
        {"remapped": gpu_result("remapped", {0: Status.FAIL, 1: Status.OK}, fatal=True)},
        {},
        now=NOW,
        max_age_s=AGE,
        checks=shipped_checks(),
    )
    assert gpuverdict.loads(gpuverdict.dumps(states)) == states
    assert gpuverdict.loads("not json") == {}


def test_annotation_is_bounded_and_keeps_every_gpu() -> None:
    reasons = tuple(f"dcgm: fail: {'x' * 400} {i}" for i in range(10))
    states = {
        uuid(i): gpuverdict.GpuState(uuid(i), Verdict.WARN, "2026-11-30T08:00:00Z", uuid(i), str(i), "", reasons)
        for i in range(16)
    }
    full = json.loads(gpuverdict.annotation(states, limit=1 << 20))
    assert full["truncated"] is False
    assert len(full["gpus"][0]["reasons"]) == gpuverdict.REASONS_PER_GPU
    assert all(len(r) <= gpuverdict.REASON_CHARS for r in full["gpus"][0]["reasons"])
    small = gpuverdict.annotation(states, limit=4096)
    assert len(small.encode()) <= 4096
    parsed = json.loads(small)
    assert parsed["truncated"] is True
    assert [g["index"] for g in parsed["gpus"]] == [str(i) for i in range(16)]
    assert all(g["verdict"] == "WARN" for g in parsed["gpus"])
    assert len(gpuverdict.annotation(states).encode()) <= gpuverdict.ANNOTATION_LIMIT


def test_nvml_identity_reads_the_serial_and_tolerates_boards_without_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pynvml

    from autopilot import gpus

    class Pci:
        busId = b"00000000:3B:00.0"

    def serial(handle: int) -> bytes:
        if handle == 1:  # a consumer board: NVML answers NOT_SUPPORTED
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return b"1652922012345"

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: i)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: b"NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", lambda h: uuid(h).encode())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPciInfo", lambda h: Pci())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetSerial", serial)
    telemetry = gpus.NvmlTelemetry()
    assert telemetry.identity(0) == gpus.GpuIdentity(
        0, "NVIDIA H100 80GB HBM3", uuid(0), "00000000:3B:00.0", "1652922012345"
    )
    assert telemetry.identity(1).serial == "" and telemetry.identity(1).uuid == uuid(1)
