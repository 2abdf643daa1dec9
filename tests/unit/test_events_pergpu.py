"""Passive events reach the per-GPU verdict: follower (fake kernel log) -> store -> reconcile -> FakeCluster.

The follower names a GPU by its index; the worker's sink stamps the GPU's UUID on it before saving,
so the GPU's own verdict, count labels, annotation, device taint (dry-run) and history follow the
event in the same immediate reconcile, even when the GPU fell off the bus and NVML no longer knows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest

from autopilot import config, errors, gpuverdict
from autopilot.context import CheckContext
from autopilot.events import follower as follower_mod
from autopilot.events import kmsg
from autopilot.registry import shipped as shipped_checks
from autopilot.testing import FakeCluster, FakeGpu, FakeRunner, FakeTelemetry, wait_until
from workers import follower as glue
from workers import gpustore
from workers.store import ResultsStore

NODE = "node-a"
GPUS = [
    FakeGpu(uuid=f"GPU-{i:08x}-1111-2222-3333-44445555666{i}", pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
            serial=f"165232000{i:04d}")
    for i in range(8)
]  # fmt: skip
XID79_GPU3 = "NVRM: Xid (PCI:0000:1b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
AER_BRIDGE = "pcieport 0000:00:01.0: AER: Uncorrected (Non-Fatal) error received: 0000:00:02.0"


@pytest.fixture
def stack() -> tuple[ResultsStore, FakeCluster, glue.StoreSink, FakeTelemetry]:
    store = ResultsStore(fakeredis.FakeRedis())
    cluster = FakeCluster()
    cluster.add_node(NODE, gpus=8)
    cluster.serve_device_taints()
    settings = dataclasses.replace(config.Settings(node_name=NODE, periodic_checks=()), device_taints="dry-run")
    telemetry = FakeTelemetry([dataclasses.replace(g) for g in GPUS])
    ctx = CheckContext(NODE, settings, FakeRunner(), telemetry, cluster=cluster, checks=shipped_checks())
    return store, cluster, glue.StoreSink(store, settings, {NODE: ctx}, checks=shipped_checks()), telemetry


def _follow(sink: glue.StoreSink, telemetry: FakeTelemetry, dev: kmsg.FakeKmsg, line: str, store: ResultsStore) -> None:
    ctx = sink.contexts[NODE]
    sink.identities(NODE)  # what ``glue.start`` does before following
    f = follower_mod.Follower(NODE, sink, gpu_index=glue._gpu_index(ctx), kmsg_device=dev, boot_id=lambda: "b")
    f.start()
    try:
        wait_until(lambda: dev.opened == 1, 5, "the follower")
        telemetry.devices[3].raises = errors.GpuLost(3, "GPU is lost")  # gone from NVML before the line is read
        dev.write(line)
        wait_until(lambda: "events" in store.latest(NODE), 10, "the events result")
    finally:
        f.stop()


def test_an_evicting_xid_evicts_that_gpu_by_uuid_at_once(stack: Any, caplog: pytest.LogCaptureFixture) -> None:
    store, cluster, sink, telemetry = stack
    caplog.set_level(logging.INFO, logger="autopilot.devicetaints")
    _follow(sink, telemetry, kmsg.FakeKmsg(), XID79_GPU3, store)
    uuid = GPUS[3].uuid
    device = store.latest(NODE)["events"].devices[0]
    assert (device.id, device.uuid, device.bus_id) == ("3", uuid, "0000:1b:00.0")
    # The GPU's own verdict, in the reconcile the follower ran (beat never ticked here).
    states = gpuverdict.loads(store.state(NODE).gpus)
    assert states[uuid].verdict.value == "EVICT" and states[uuid].index == "3"
    labels = cluster.nodes[NODE].labels
    assert labels["autopilot.ibm.com/gpuhealth"] == "EVICT"
    assert labels[gpuverdict.GPUS_EVICT] == "1"
    annotation = json.loads(cluster.nodes[NODE].annotations[gpuverdict.ANNOTATION])
    assert [(g["uuid"], g["verdict"]) for g in annotation["gpus"]] == [(uuid, "EVICT")]
    # Device taint: dry-run logs the NoSchedule rule for that GPU and writes nothing.
    assert cluster.device_taint_rules == {}
    assert json.loads(store.state(NODE).gpu_taints)["dry_run"] is True
    assert list(json.loads(store.state(NODE).gpu_taints)["rules"].values()) == ["NoSchedule"]
    assert any("would create DeviceTaintRule" in r.getMessage() for r in caplog.records)
    # The incident is in the GPU's history under its UUID.
    history = gpustore.gpu(store.r, uuid, now=datetime.now(UTC), retention_s=86400.0)
    assert history is not None
    assert {(i["kind"], i["verdict"]) for i in history["incidents"]} >= {("verdict", "EVICT")}


def test_an_aer_on_a_bridge_is_no_gpu(stack: Any) -> None:
    store, cluster, sink, telemetry = stack
    _follow(sink, telemetry, kmsg.FakeKmsg(), AER_BRIDGE, store)
    device = store.latest(NODE)["events"].devices[0]
    assert (device.id, device.uuid, device.bus_id) == ("0000:00:02.0", "", "")
    assert gpuverdict.loads(store.state(NODE).gpus) == {}
    assert store.state(NODE).verdict == "WARN"  # a node-level finding, still on the node's verdict


def test_an_nvlink_going_down_is_its_gpus_finding(stack: Any) -> None:
    from autopilot.events import catalogue
    from autopilot.events.model import Event

    store, cluster, sink, telemetry = stack
    f = follower_mod.Follower(NODE, sink, gpu_index=glue._gpu_index(sink.contexts[NODE]))
    down = Event("counters", catalogue.counter("nvlink.down"), "0000:1b:00.0/nvlink2", "NVLink 2 down", time.time())
    f.submit([down])
    device = store.latest(NODE)["events"].devices[0]
    assert (device.id, device.uuid) == ("3", GPUS[3].uuid)
    assert gpuverdict.loads(store.state(NODE).gpus)[GPUS[3].uuid].verdict.value == "WARN"


def test_inject_reaches_a_redis_that_wants_the_stacks_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose gives the password apart from the URL (AUTOPILOT_REDIS_PASSWORD): inject uses it."""
    from workers.store import NodeRecord

    server = fakeredis.FakeServer()
    ResultsStore(fakeredis.FakeRedis(server=server)).heartbeat(NodeRecord("sim-1", simulated=True, last_seen=1.0))
    seen: dict[str, Any] = {}

    def connect(url: str, **options: Any) -> fakeredis.FakeRedis:
        seen.update(options, url=url)
        return fakeredis.FakeRedis(server=server)

    monkeypatch.setenv("AUTOPILOT_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("AUTOPILOT_REDIS_PASSWORD", "s3cret-pass")
    monkeypatch.setattr(glue.redis.Redis, "from_url", staticmethod(connect))
    assert glue.inject_main(["sim-1", "xid", "79"]) == 0
    assert (seen["url"], seen["password"]) == ("redis://redis:6379/0", "s3cret-pass")


def test_a_gpu_out_of_service_when_the_follower_starts_leaves_the_others_named_by_index() -> None:
    # Before, one GPU NVML would not identify (lost, requires a reset) emptied the whole map: every GPU's
    # events were named by bus id while the checks named them by index.
    telemetry = FakeTelemetry([dataclasses.replace(g) for g in GPUS[:3]])
    telemetry.devices[1].raises = errors.GpuLost(1, "GPU 1 identity: GPU requires a reset", 16)
    ctx = CheckContext(NODE, config.Settings(node_name=NODE), FakeRunner(), telemetry, checks=shipped_checks())
    assert glue._gpu_index(ctx) == {"00000000:18:00.0": "0", "00000000:1A:00.0": "2"}
