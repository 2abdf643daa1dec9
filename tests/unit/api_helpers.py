"""Test support for the API: stand-in checks, a fakeredis store, and a dispatcher that answers
like a worker (or stays silent, like a dead node)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from typing import Any

import fakeredis
from flask import Flask

from api.app import create_app
from autopilot import config, registry
from autopilot.registry import CheckRegistry, Param
from autopilot.results import CheckResult, Status, utc_now_iso
from workers.dispatch import Envelope, FakeDispatcher
from workers.store import NodeRecord, ResultsStore

NODES = ("node-a", "node-b", "node-c")


def _noop(ctx: Any, params: Mapping[str, Any]) -> CheckResult:  # never run: the API does not run checks
    raise AssertionError("the API must not run checks itself")


def stand_in_checks() -> CheckRegistry:
    """The checks' names and parameters as the API sees them, without their implementations.

    ``pvc`` is left out on purpose: its path must answer 404 in a build without it.
    """
    reg = CheckRegistry()
    add = reg.add
    add(
        registry.CheckSpec(
            "pciebw",
            _noop,
            "PCIe bandwidth",
            (Param("threshold_gbps", float, None, "min", minimum=0),),
            uses_gpu=True,
            health="pciebw",
            tag="PCIEBW",
            periodic=True,
        )
    )
    add(
        registry.CheckSpec(
            "remapped", _noop, "row remapping", uses_gpu=True, health="remapped", tag="REMAPPED ROWS", periodic=True
        )
    )
    add(registry.CheckSpec("gpumem", _noop, "memory bandwidth", uses_gpu=True, health="gpumem", tag="GPU-MEM"))
    add(
        registry.CheckSpec(
            "dcgm",
            _noop,
            "DCGM",
            (Param("r", int, None, "level", minimum=1, maximum=4),),
            uses_gpu=True,
            health="dcgm",
            tag="DCGM",
            periodic=True,
            as_job=lambda params, settings: int(params.get("r") or settings.dcgm_level) >= 3,
        )
    )
    add(
        registry.CheckSpec(
            "gpupower", _noop, "power slowdown", uses_gpu=True, health="power-slowdown", tag="GPU POWER", periodic=True
        )
    )
    add(registry.CheckSpec("ping", _noop, "reachability", health="ping", tag="PING", periodic=True))
    add(
        registry.CheckSpec(
            "iperf",
            _noop,
            "network bandwidth",
            (
                Param("workload", str, "ring", "traffic pattern", choices=("ring", "all")),
                Param("pclients", int, 8, "parallel clients", minimum=1, maximum=64),
                Param("startport", int, 5200, "first port", minimum=1024, maximum=65535),
            ),
            tag="IPERF",
            ring=True,
        )
    )
    return reg


@dataclasses.dataclass
class FakeWorkers:
    """Answers envelopes the way node workers would: one result per check into the store."""

    store: ResultsStore
    silent: set[str] = dataclasses.field(default_factory=set)  # nodes that never answer
    only: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # node -> the checks it answers
    outcomes: dict[tuple[str, str], tuple[Status, bool, str]] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0  # answer from a timer thread after this long (0: inline, during send)
    gate: threading.Event | None = None  # set: answer from a thread once it is set (the test says when)

    def __call__(self, env: Envelope) -> None:
        if env.node in self.silent:
            return
        if self.gate is not None:
            gate = self.gate
            threading.Thread(target=lambda: gate.wait(30) and self.answer(env), daemon=True).start()
        elif self.delay_s:
            threading.Timer(self.delay_s, self.answer, args=(env,)).start()
        else:
            self.answer(env)

    def answer(self, env: Envelope) -> None:
        for check in env.checks:
            if env.node in self.only and check not in self.only[env.node]:
                continue
            status, fatal, summary = self.outcomes.get((env.node, check), (Status.OK, False, f"{check} fine"))
            result = CheckResult(
                check,
                status,
                summary,
                node=env.node,
                fatal=fatal,
                params=dict(env.params.get(check, {})),
                started_at=utc_now_iso(),
                duration_s=0.01,
            )
            self.store.save_result(result, env.run_id)


@dataclasses.dataclass
class Api:
    app: Flask
    store: ResultsStore
    dispatcher: FakeDispatcher
    workers: FakeWorkers
    settings: config.Settings

    @property
    def client(self) -> Any:
        return self.app.test_client()

    def run_keys(self) -> list[bytes]:
        return list(self.store.r.scan_iter("ap:run:*"))


def make_api(
    *,
    token: str = "",
    nodes: tuple[str, ...] = NODES,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    cluster: Any = None,  # a ClusterClient (FakeCluster in tests)
    deadline_s: float = 2.0,
    checks: CheckRegistry | None = None,  # default: stand_in_checks()
) -> Api:
    settings = config.Settings(
        node_name="api-host",
        api_token=token,
        node_deadline_s=deadline_s,
        periodic_checks=("pciebw", "remapped", "dcgm", "ping", "gpupower"),
    )
    store = ResultsStore(
        fakeredis.FakeRedis(),
        history_len=settings.history_len,
        run_ttl_s=settings.run_ttl_s,
        run_keep=settings.run_keep,
    )
    now = time.time()
    store.heartbeat_many(
        NodeRecord(n, gpu_model="H100", gpu_count=8, labels=dict((labels or {}).get(n, {})), last_seen=now)
        for n in nodes
    )
    workers = FakeWorkers(store)
    dispatcher = FakeDispatcher(on_send=workers)
    app = create_app(settings, store=store, dispatcher=dispatcher, cluster=cluster, checks=checks or stand_in_checks())
    return Api(app, store, dispatcher, workers, settings)
