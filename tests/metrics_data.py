"""A results store holding a small GPU cluster, and a bare Flask app serving its ``/metrics``.

Shared by the unit tests of ``api.metrics`` and the Prometheus integration tests, so both scrape
the same data. The app is deliberately not the API's ``create_app``: it has only what
``api.metrics.init_app`` needs, plus two routes to exercise the request metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import flask

from autopilot import config
from autopilot.registry import shipped as shipped_checks
from autopilot.results import CheckResult, DeviceResult, Status, utc_now_iso
from workers.store import NodeRecord, ResultsStore


def populate(store: ResultsStore, names: Sequence[str], *, now: float | None = None) -> None:
    """Heartbeats, a few results and a verdict for every node in ``names``; the last node is sick."""
    moment = time.time() if now is None else now
    started = utc_now_iso()
    for i, name in enumerate(names):
        store.heartbeat(
            NodeRecord(
                name,
                cpu_model="Intel(R) Xeon(R) Platinum 8480+",
                gpu_model="NVIDIA H100 80GB HBM3",
                gpu_count=2,
                last_seen=moment,
            )
        )
        sick = i == len(names) - 1
        pcie = [DeviceResult(str(g), Status.OK, 24.0 + g, "GB/s") for g in range(2)]
        remap = [
            DeviceResult(str(g), Status.FAIL if sick and g == 1 else Status.OK, int(sick and g == 1)) for g in (0, 1)
        ]
        for r in (
            CheckResult("pciebw", Status.OK, "ok", devices=tuple(pcie)),
            CheckResult("remapped", Status.FAIL if sick else Status.OK, "", fatal=sick, devices=tuple(remap)),
            CheckResult("dcgm", Status.ERROR, "dcgmi not found"),
            CheckResult(
                "gpupower", Status.OK, "", devices=(DeviceResult("0", Status.OK, 0), DeviceResult("1", Status.OK, 0))
            ),
        ):
            store.save_result(
                CheckResult.from_dict(r.to_dict() | {"node": name, "started_at": started, "duration_s": 1.5})
            )
        store.set_state(name, {"verdict": "EVICT" if sick else "PASS"})


def make_app(store: ResultsStore, settings: config.Settings) -> flask.Flask:
    import api.metrics

    app = flask.Flask("metrics-test")

    @app.get("/api/v1/nodes/<name>")
    def node(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    api.metrics.init_app(app, store, settings, checks=shipped_checks())
    return app
