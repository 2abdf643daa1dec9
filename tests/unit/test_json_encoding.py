"""orjson on the hot paths changes speed, not meaning: results and API answers read back the same
as with the standard library, and what orjson refuses still goes through."""

from __future__ import annotations

import json
import math

import pytest
from flask import Flask, jsonify

from api.encoding import FastJSONProvider
from autopilot import jsoncodec
from autopilot.results import CheckResult, DeviceResult, Status


def test_a_result_round_trips_and_reads_the_same_with_the_standard_library() -> None:
    result = CheckResult(
        "pciebw",
        Status.WARN,
        "GPU 1: 12.5 Gb/s — below 20",
        node="node-a",
        devices=(DeviceResult("1", Status.WARN, 12.5, "GB/s", "x8"), DeviceResult("0", Status.OK, 25, "GB/s")),
        data={"per_gpu": {0: 25.0, 1: 12.5}, "ratio": 0.1},
        params={"threshold_gbps": 20.0},
        started_at="2026-11-29T22:00:00Z",
        duration_s=1.23456,
    )
    blob = result.to_json_bytes()
    assert CheckResult.from_json(blob) == CheckResult.from_json(result.to_json())
    assert json.loads(blob) == json.loads(json.dumps(result.to_dict(), default=str))
    again = CheckResult.from_json(blob)
    assert again.devices == result.devices and again.duration_s == 1.235
    assert again.data == {"per_gpu": {"0": 25.0, "1": 12.5}, "ratio": 0.1}  # JSON keys are strings


@pytest.mark.parametrize(
    "value",
    [2**70, "lone \udc80 surrogate", {"nested": [2**64, -(2**70)]}],
)
def test_what_orjson_refuses_goes_through_the_standard_library(value: object) -> None:
    assert jsoncodec.loads(jsoncodec.dumps({"v": value})) == {"v": value}


def test_text_written_by_the_standard_library_with_nan_still_reads() -> None:
    old = json.dumps({"value": float("nan"), "inf": float("inf")})
    got = jsoncodec.loads(old)
    assert math.isnan(got["value"]) and got["inf"] == math.inf


def test_not_json_raises_the_standard_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        jsoncodec.loads(b"{not json")


def app_with(provider: bool, *, debug: bool = False) -> Flask:
    app = Flask("t")
    if provider:
        app.json = FastJSONProvider(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.debug = debug

    @app.get("/x")
    def x() -> object:
        return jsonify({"b": 1, "a": [1.5, None, True, "é"], "id": 7})

    @app.get("/big")
    def big() -> object:
        return jsonify({"b": 1, "big": 2**70})  # past orjson's 64 bits

    return app


@pytest.mark.parametrize("path", ["/x", "/big"])
def test_the_api_answers_the_same_json_as_flask_s_own_provider(path: str) -> None:
    fast, plain = (app_with(p).test_client().get(path) for p in (True, False))
    assert fast.status_code == plain.status_code == 200
    assert fast.mimetype == plain.mimetype == "application/json"
    assert fast.get_json() == plain.get_json()
    assert list(fast.get_json())[0] == "b"  # the order the code gave, not sorted


def test_debug_answers_stay_indented() -> None:
    body = app_with(True, debug=True).test_client().get("/x").get_data(as_text=True)
    assert body.startswith('{\n  "b": 1')


def test_dict_from_json_is_from_json_then_to_dict() -> None:
    stored = CheckResult(
        "dcgm", Status.FAIL, "GPU 3 PCIe", node="n", fatal=True, devices=(DeviceResult("3", Status.FAIL),)
    )
    for blob in (stored.to_json_bytes(), json.dumps(stored.to_dict())):  # ours, and as json wrote it
        assert CheckResult.dict_from_json(blob) == CheckResult.from_json(blob).to_dict()
    # Another layout (a field missing, one more) is normalised the long way.
    odd = {"check": "ping", "status": "ok", "extra": 1}
    assert CheckResult.dict_from_json(json.dumps(odd)) == CheckResult.from_dict(odd).to_dict()
    with pytest.raises(ValueError):
        CheckResult.dict_from_json(json.dumps({**stored.to_dict(), "status": "bogus"}))


def test_first_document_skips_warnings_and_what_follows() -> None:
    text = 'warning: UDP block size {1460} exceeds TCP MSS\n{"a": 1}\n{"a": 2}\ntrailer\n'
    assert jsoncodec.first_document(text) == {"a": 1}


def test_first_document_refuses_text_without_a_document() -> None:
    with pytest.raises(ValueError):
        jsoncodec.first_document("warning: no {json} here\n")
