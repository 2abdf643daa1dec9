"""A stored result goes into an answer as the JSON it was stored as: its status read without
decoding, the rest decoded only when read, and anything not in today's layout normalised first."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, jsonify

from api.encoding import FastJSONProvider
from autopilot import jsoncodec
from autopilot.results import CheckResult, DeviceResult, Status, StoredResult
from tests.unit.test_api_gather import Cluster
from workers import runs
from workers.runs import RunRequest, Selection

RESULT = CheckResult(
    "pciebw",
    Status.WARN,
    'GPU 1: "x8" — 12.5 GB/s',
    node="node-a",
    devices=(DeviceResult("1", Status.WARN, 12.5, "GB/s", "x8", uuid="GPU-1"),),
    data={"gpus": {"1": {"h2d": {"samples": [12.5, 12.4, 1e-7]}}}},
    params={"threshold_gbps": 20.0},
    started_at="2026-11-30T10:00:00Z",
    duration_s=0.25,
)


class NoDecoding:
    """Counts full decodes of a stored result (``CheckResult.dict_from_json``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = CheckResult.dict_from_json.__func__  # type: ignore[attr-defined]

        def counting(cls: type[CheckResult], text: str | bytes) -> dict[str, Any]:
            self.calls += 1
            result: dict[str, Any] = real(cls, text)
            return result

        monkeypatch.setattr(CheckResult, "dict_from_json", classmethod(counting))


def test_the_status_is_read_without_decoding_and_the_rest_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = NoDecoding(monkeypatch)
    stored = StoredResult.of(RESULT.to_json_bytes())
    assert stored.status == stored["status"] == "warn" and decodes.calls == 0
    assert stored["summary"] == RESULT.summary and decodes.calls == 1
    assert dict(stored) == RESULT.to_dict() and stored == RESULT.to_dict() and decodes.calls == 1


def test_an_answer_holds_the_stored_bytes_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = RESULT.to_json_bytes()
    decodes = NoDecoding(monkeypatch)
    stored = StoredResult.of(blob)
    assert jsoncodec.dumps({"results": [stored]}) == b'{"results":[' + blob + b"]}"
    assert decodes.calls == 0
    # What orjson refuses elsewhere in the answer goes through the standard library, which decodes it.
    fallback = jsoncodec.dumps({"big": 2**70, "results": [stored]})
    assert json.loads(fallback) == {"big": 2**70, "results": [RESULT.to_dict()]}


@pytest.mark.parametrize("debug", [False, True])
def test_the_api_writes_a_stored_result_as_its_dict(debug: bool) -> None:
    app = Flask(__name__)
    app.json = FastJSONProvider(app)
    app.debug = debug  # indented answers go through Flask's own encoder
    with app.app_context():
        body = jsonify({"results": [StoredResult.of(RESULT.to_json_bytes())]}).get_data()
    assert json.loads(body) == {"results": [json.loads(RESULT.to_json_bytes())]}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(RESULT.to_dict()),  # the standard library's spacing (an older worker)
        json.dumps({k: v for k, v in RESULT.to_dict().items() if k != "fatal"}),  # an older layout
        RESULT.to_json_bytes()[:-1] + b',"extra":1}',  # today's head, another tail
        json.dumps({"extra": 1, **RESULT.to_dict()}, separators=(",", ":")),  # another head
    ],
)
def test_other_layouts_are_put_in_today_s_before_they_are_spliced(text: str | bytes) -> None:
    stored = StoredResult.of(text)
    assert json.loads(stored.json_bytes) == stored.as_dict() == CheckResult.dict_from_json(text)
    assert set(json.loads(jsoncodec.dumps(stored))) == set(RESULT.to_dict())


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        RESULT.to_json_bytes()[:120],  # cut short: today's head, no tail
        b'{"check":"x"}',
    ],
)
def test_what_is_not_a_result_is_never_spliced(text: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        StoredResult.of(text)


def test_a_status_answer_decodes_no_result_it_only_passes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = tuple(f"n{i}" for i in range(5))
    c = Cluster({})
    decodes = NoDecoding(monkeypatch)
    report = runs.gather(c.services(), RunRequest(("remapped", "gpupower"), nodes, deadline_s=5), Selection(nodes))
    body = jsoncodec.dumps(report)
    assert report["totals"]["ok"] == 5 and decodes.calls == 0
    answer = json.loads(body)
    assert [r["check"] for r in answer["nodes"]["n3"]["results"]] == ["remapped", "gpupower"]


def test_statuses_that_share_ping_results_decode_each_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent statuses that joined one execution hold the same stored ping results: the
    network report reads each one's pairs once, and still localises from every pair."""
    nodes = ("p1", "p2", "p3")
    pairs = {
        n: [{"target": o, "interface": "eth0", "status": "fail" if "p3" in (n, o) else "ok"} for o in nodes if o != n]
        for n in nodes
    }
    blobs = {
        (n, "ping"): CheckResult("ping", Status.OK, "", node=n, data={"pairs": pairs[n]}).to_json_bytes() for n in nodes
    }
    run = runs.Run.new(("ping",), nodes, {}, deadline_s=60)
    runs._stored_ping_pairs.cache_clear()  # another test may have read equal results
    decodes = NoDecoding(monkeypatch)
    first = runs.network_report(run, {k: StoredResult.of(b) for k, b in blobs.items()}, set())
    again = runs.network_report(run, {k: StoredResult.of(bytes(b)) for k, b in blobs.items()}, set())
    assert first == again and first["ping"]["bad_pairs"] == 4 and first["ping"]["pairs"] == 6
    assert first["ping"]["suspects"]["nodes"] == ["p3"]
    assert decodes.calls == 3
