"""The result JSON of ARCHITECTURE.md 4.1 round-trips and folds device findings."""

from __future__ import annotations

import json

from autopilot import results
from autopilot.results import CheckResult, DeviceResult, Status


def test_json_round_trip_has_the_contract_keys() -> None:
    r = CheckResult(
        "remapped",
        Status.WARN,
        "GPU 3 has a pending row remap",
        node="gpu-7",
        devices=(DeviceResult("3", Status.WARN, 1, None, "pending remap"),),
        started_at="2026-11-29T22:00:00Z",
        duration_s=1.9,
    )
    raw = json.loads(r.to_json())
    assert list(raw) == [
        "check",
        "node",
        "status",
        "fatal",
        "summary",
        "devices",
        "data",
        "params",
        "started_at",
        "duration_s",
    ]
    assert raw["devices"] == [{"id": "3", "status": "warn", "value": 1, "unit": None, "detail": "pending remap"}]
    assert CheckResult.from_json(r.to_json()) == r


def test_worst_and_from_devices() -> None:
    assert results.worst([Status.OK, Status.ERROR, Status.WARN]) is Status.ERROR
    assert results.worst([Status.ERROR, Status.FAIL]) is Status.FAIL
    assert results.worst([]) is Status.OK
    folded = results.from_devices(
        "pciebw",
        [DeviceResult("0", Status.OK), DeviceResult("1", Status.FAIL, 2.1, "GB/s", "2.1 GB/s < 4 GB/s")],
        ok_summary="all good",
        fatal=True,
    )
    assert folded.status is Status.FAIL and folded.fatal
    assert folded.summary == "GPU 1: 2.1 GB/s < 4 GB/s"
    assert results.from_devices("x", [], ok_summary="").status is Status.ERROR


def test_tidy_keeps_a_tidy_result_and_writes_out_every_untidy_device() -> None:
    fine = DeviceResult("0", Status.OK, detail="H2D 53 GB/s")
    tidy_result = CheckResult("x", Status.OK, "fine", devices=(fine,))
    assert results.tidy(tidy_result) is tidy_result
    at_limit = DeviceResult("1", Status.OK, detail="y" * results.SUMMARY_LIMIT)
    assert results.tidy(CheckResult("x", Status.OK, devices=(at_limit,))).devices[0] is at_limit
    escaped = DeviceResult("2\x1b[31m", Status.WARN, detail="ok")
    bidi = DeviceResult("3", Status.WARN, detail="a\u202eb")
    long = DeviceResult("4", Status.WARN, detail="z" * (results.SUMMARY_LIMIT + 1))
    out = results.tidy(CheckResult("x", Status.WARN, "s", devices=(fine, escaped, bidi, long))).devices
    assert out[0] is fine
    assert out[1].id == "2\\x1b[31m"
    assert out[2].detail == "a\\u202eb"
    assert len(out[3].detail) == results.SUMMARY_LIMIT and out[3].detail.endswith("...")
