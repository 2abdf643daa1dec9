"""Fakes of every seam, shipped in the package for tests and for simulated nodes.

Each fake implements the same Protocol as its real twin and fails loudly where the real thing
would: ``FakeRunner`` raises on a command it has no recording for; ``FakeTelemetry`` raises
``GpuError`` for a GPU that does not exist. ``RecordingRunner`` wraps the real runner on a GPU
machine and writes the recordings that ``FakeRunner`` replays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from autopilot import apivalidation, errors, gpus, names, polling
from autopilot.cluster import (
    DEVICE_TAINT_EFFECTS,
    FINISHED_PHASES,
    TAINT_EFFECTS,
    UNSCHEDULABLE_TAINT,
    DeviceTaintRuleInfo,
    EventInfo,
    JobInfo,
    NodeCondition,
    NodeInfo,
    NodeTaint,
    PodInfo,
    RetryPolicy,
    event_manifest,
    merge_condition,
    pod_gpus,
    rfc3339,
    selector_matches,
    selector_safe,
    with_retries,
    with_taint,
)
from autopilot.commands import CommandResult, CommandRunner, ScopedRunner

# ---------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recorded call: argv, what it printed, how it ended (or ``timeout``/``not_found``)."""

    argv: tuple[str, ...]
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    raises: str | None = None  # "timeout" or "not_found": replay the error instead of output
    delay_s: float = 0.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Recording:
        return cls(
            argv=tuple(str(a) for a in raw["argv"]),
            returncode=int(raw.get("returncode", 0)),
            stdout=str(raw.get("stdout", "")),
            stderr=str(raw.get("stderr", "")),
            raises=raw.get("raises"),
            delay_s=float(raw.get("delay_s", 0.0)),
        )


class FakeRunner:
    """Replays recordings matched on the full argv; an unknown argv is an ``AssertionError``.

    Programs listed in ``installed`` (or named by a recording) are what ``which`` finds.
    """

    def __init__(self, recordings: Iterable[Recording] = (), *, installed: Iterable[str] = ()) -> None:
        self._by_argv: dict[tuple[str, ...], Recording] = {r.argv: r for r in recordings}
        self.installed = set(installed) | {os.path.basename(a[0]) for a in self._by_argv}
        self.calls: list[tuple[str, ...]] = []
        self.spawned: list[FakeProcess] = []
        # argv -> (exit status, output) of a spawned program that ends at once (a server that cannot bind)
        self.exits: dict[tuple[str, ...], tuple[int | None, str]] = {}

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> FakeRunner:
        recs = [Recording.from_dict(json.loads(p.read_text())) for p in sorted(Path(path).glob("*.json"))]
        return cls(recs, **kwargs)

    def add(
        self, argv: Sequence[str], stdout: str = "", *, returncode: int = 0, stderr: str = "", raises: str | None = None
    ) -> None:
        rec = Recording(tuple(argv), returncode, stdout, stderr, raises)
        self._by_argv[rec.argv] = rec
        self.installed.add(os.path.basename(rec.argv[0]))

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.installed or os.path.basename(name) in self.installed else None

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        if isinstance(argv, str):
            raise TypeError("argv must be a list, never a shell string")
        key = tuple(str(a) for a in argv)
        self.calls.append(key)
        rec = self._by_argv.get(key)
        if rec is None:
            raise AssertionError(f"unexpected command {list(key)}; recorded: {[list(k) for k in self._by_argv]}")
        if rec.delay_s:
            time.sleep(min(rec.delay_s, timeout))
        if rec.raises == "timeout" or rec.delay_s > timeout:
            raise errors.ToolTimeout(os.path.basename(key[0]), timeout)
        if rec.raises == "not_found":
            raise errors.ToolNotFound(f"{key[0]}: not found on PATH")
        return CommandResult(key, rec.returncode, rec.stdout, rec.stderr)

    def spawn(self, argv: Sequence[str], *, lifetime_s: float, env: Mapping[str, str] | None = None) -> FakeProcess:
        """A pretend background program: running until stopped, or exited at once when ``exits`` says so."""
        key = tuple(str(a) for a in argv)
        if self.which(key[0]) is None:
            raise errors.ToolNotFound(f"{key[0]}: not found on PATH")
        code, output = self.exits.get(key, (None, ""))
        proc = FakeProcess(key, lifetime_s, code, output)
        self.spawned.append(proc)
        return proc


@dataclasses.dataclass
class FakeProcess:
    """What ``FakeRunner.spawn`` returns: records whether (and how) it was stopped."""

    argv: tuple[str, ...]
    lifetime_s: float
    returncode: int | None = None
    printed: str = ""
    terminated: bool = False
    pid: int = 0

    def poll(self) -> int | None:
        return self.returncode

    def output(self) -> str:
        return self.printed

    def terminate(self, grace_s: float = 2.0) -> None:
        self.terminated = True
        if self.returncode is None:
            self.returncode = -15


class RecordingRunner:
    """Wraps a real runner and writes each call as a ``Recording`` JSON file into ``out_dir``."""

    def __init__(self, inner: CommandRunner, out_dir: str | os.PathLike[str], *, scrub: Iterable[str] = ()) -> None:
        self.inner = inner
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._scrub = [s for s in (*scrub, socket.gethostname()) if s]
        self._n = 0
        self._lock = threading.Lock()

    def bind(self, scope: Any) -> RecordingRunner:
        inner = self.inner.bind(scope) if isinstance(self.inner, ScopedRunner) else self.inner
        clone = RecordingRunner(inner, self.out_dir)
        clone._scrub, clone._n, clone._lock = self._scrub, self._n, self._lock
        return clone

    def which(self, name: str) -> str | None:
        return self.inner.which(name)

    def run(self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None) -> CommandResult:
        record: dict[str, Any] = {"argv": list(argv), "recorded_on": datetime.now(UTC).strftime("%Y-%m-%d")}
        try:
            result = self.inner.run(argv, timeout=timeout, env=env)
        except errors.ToolTimeout:
            record["raises"] = "timeout"
            self._write(record)
            raise
        except errors.ToolNotFound:
            record["raises"] = "not_found"
            self._write(record)
            raise
        record.update(
            returncode=result.returncode, stdout=self._clean(result.stdout), stderr=self._clean(result.stderr)
        )
        self._write(record)
        return result

    def _clean(self, text: str) -> str:
        for secret in self._scrub:
            text = text.replace(secret, "node-0")
        return text

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._n += 1
            stem = re.sub(r"[^A-Za-z0-9]+", "-", " ".join(os.path.basename(a) for a in record["argv"][:3])).strip("-")
            path = self.out_dir / f"{self._n:02d}-{stem[:60]}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------- GPUs


@dataclasses.dataclass
class FakeGpu:
    """One simulated GPU; ``raises`` makes every query fail with that error."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    pci_bus_id: str = ""
    serial: str = ""
    remapped: gpus.RemappedRows = gpus.RemappedRows(0, 0, False, False)
    reasons: frozenset[str] = frozenset()
    link: gpus.PcieLink = gpus.PcieLink(5, 5, 16, 16)
    sample: gpus.GpuSample = gpus.GpuSample(35.0, 70.0, 1980.0)
    raises: errors.GpuError | None = None
    activity: gpus.GpuActivity = gpus.GpuActivity(0, 0, 0.0)  # idle: nobody else on the GPU
    retired: gpus.RetiredPages | None = None
    """Page retirement (pre-Ampere GPUs); None: NVML answers NOT_SUPPORTED, as on GPUs with row remapping."""


class FakeTelemetry:
    """``GpuTelemetry`` over a list of ``FakeGpu``; ``unavailable`` simulates a machine with no driver."""

    def __init__(
        self, devices: Sequence[FakeGpu] = (), *, driver: str = "550.90.07", unavailable: str | None = None
    ) -> None:
        self.devices = list(devices)
        self.driver = driver
        self.unavailable = unavailable

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FakeTelemetry:
        """Load a snapshot written by ``snapshot()`` (or recorded on a GPU machine)."""
        devices = [
            FakeGpu(
                name=g.get("name", "NVIDIA H100 80GB HBM3"),
                uuid=g.get("uuid", ""),
                pci_bus_id=g.get("pci_bus_id", ""),
                serial=g.get("serial", ""),
                remapped=gpus.RemappedRows(**g["remapped_rows"])
                if "remapped_rows" in g
                else gpus.RemappedRows(0, 0, False, False),
                reasons=frozenset(g.get("clock_event_reasons", ())),
                link=gpus.PcieLink(**g["pcie_link"]) if "pcie_link" in g else gpus.PcieLink(5, 5, 16, 16),
                sample=gpus.GpuSample(**g["sample"]) if "sample" in g else gpus.GpuSample(35.0, 70.0, 1980.0),
                activity=_activity(g["activity"]) if "activity" in g else gpus.GpuActivity(0, 0, 0.0),
            )
            for g in raw.get("gpus", ())
        ]
        return cls(devices, driver=str(raw.get("driver_version", "550.90.07")))

    def _gpu(self, index: int) -> FakeGpu:
        if self.unavailable is not None:
            raise errors.GpuUnavailable(self.unavailable)
        if not 0 <= index < len(self.devices):
            raise errors.GpuError(f"GPU {index}: invalid argument", 2)
        gpu = self.devices[index]
        if gpu.raises is not None:
            raise gpu.raises
        return gpu

    def driver_version(self) -> str:
        if self.unavailable is not None:
            raise errors.GpuUnavailable(self.unavailable)
        return self.driver

    def count(self) -> int:
        if self.unavailable is not None:
            raise errors.GpuUnavailable(self.unavailable)
        return len(self.devices)

    def identity(self, index: int) -> gpus.GpuIdentity:
        g = self._gpu(index)
        return gpus.GpuIdentity(
            index, g.name, g.uuid or f"GPU-fake-{index}", g.pci_bus_id or f"00000000:{index:02X}:00.0", g.serial
        )

    def remapped_rows(self, index: int) -> gpus.RemappedRows:
        return self._gpu(index).remapped

    def clock_event_reasons(self, index: int) -> frozenset[str]:
        return self._gpu(index).reasons

    def retired_pages(self, index: int) -> gpus.RetiredPages:
        retired = self._gpu(index).retired
        if retired is None:
            raise errors.GpuError(f"GPU {index} retired pages: Not Supported", 3)  # NVML_ERROR_NOT_SUPPORTED
        return retired

    def pcie_link(self, index: int) -> gpus.PcieLink:
        return self._gpu(index).link

    def sample(self, index: int) -> gpus.GpuSample:
        return self._gpu(index).sample

    def activity(self, index: int) -> gpus.GpuActivity:
        return self._gpu(index).activity


def _activity(raw: Mapping[str, Any]) -> gpus.GpuActivity:
    return gpus.GpuActivity(
        raw.get("processes"), raw.get("memory_used_bytes"), raw.get("utilization_pct"), tuple(raw.get("unknown", ()))
    )


def snapshot(telemetry: gpus.GpuTelemetry) -> dict[str, Any]:
    """Read everything the checks use from a telemetry into the JSON ``FakeTelemetry.from_json`` loads."""
    out: dict[str, Any] = {"driver_version": telemetry.driver_version(), "gpus": []}
    for i in range(telemetry.count()):
        ident = telemetry.identity(i)
        out["gpus"].append(
            {
                "name": ident.name,
                "uuid": ident.uuid,
                "pci_bus_id": ident.pci_bus_id,
                "serial": ident.serial,
                "remapped_rows": dataclasses.asdict(telemetry.remapped_rows(i)),
                "clock_event_reasons": sorted(telemetry.clock_event_reasons(i)),
                "pcie_link": dataclasses.asdict(telemetry.pcie_link(i)),
                "sample": dataclasses.asdict(telemetry.sample(i)),
                "activity": dataclasses.asdict(telemetry.activity(i)),
            }
        )
    return out


# ---------------------------------------------------------------- clock


class FakeClock:
    """A manual clock: ``sleep`` and ``advance`` move both wall and monotonic time."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 29, 22, 0, 0, tzinfo=UTC)
        self._mono = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._mono

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._now += timedelta(seconds=seconds)


# ---------------------------------------------------------------- cluster


@dataclasses.dataclass
class _FakePod:
    info: PodInfo
    claims: tuple[str, ...] = ()
    log: str = ""
    job: str = ""


@dataclasses.dataclass
class _FakePvc:
    storage_class: str
    phase: str = "Pending"
    reads: int = 0
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)


def admission_refusal(labels: Mapping[str, str], quotas: Mapping[str, Sequence[str]], spec: Mapping[str, Any]) -> str:
    """Why admission refuses a pod of ``spec`` in a namespace with ``labels`` and ResourceQuotas ``quotas``
    (name -> the resources each tracks); '' when it does not: PodSecurity, then ResourceQuota, in the API
    server's order of validating admission plugins. Both fakes (this one and the stand-in API server) admit
    pods through it."""
    level = labels.get(apivalidation.PSA_ENFORCE_LABEL, "privileged")
    refusal = apivalidation.pod_security_refusal(spec, level)
    for quota, hard in sorted(quotas.items()):
        refusal = refusal or apivalidation.quota_refusal(quota, hard, spec)
    return refusal


def limit_range_invalid(limit_ranges: Mapping[str, Mapping[str, str]], spec: Mapping[str, Any]) -> str:
    """Why a pod of ``spec`` fails validation once the namespace's LimitRanges (name -> their Container ``default``
    limits, ``{"memory": "256Mi"}``) set the limits its containers leave out, in the API server's words ('' when
    it passes): a request above the limit LimitRanger gave it (``ValidateResourceRequirements``)."""
    for key in ("initContainers", "containers"):
        for i, container in enumerate(c for c in spec.get(key) or () if isinstance(c, Mapping)):
            resources = container.get("resources") or {}
            limits, requests = dict(resources.get("limits") or {}), resources.get("requests") or {}
            for _, defaults in sorted(limit_ranges.items()):  # each LimitRange in turn: the first sets a limit
                limits = {**defaults, **limits}
            for resource in sorted(requests):
                want, cap = apivalidation.quantity(requests[resource]), apivalidation.quantity(limits.get(resource))
                if want is not None and cap is not None and want > cap:
                    return (
                        f'spec.{key}[{i}].resources.requests: Invalid value: "{requests[resource]}": must be less '
                        f"than or equal to {resource} limit of {limits[resource]}"
                    )
    return ""


def job_pod_refusal(
    pod: str,
    labels: Mapping[str, str],
    quotas: Mapping[str, Sequence[str]],
    limit_ranges: Mapping[str, Mapping[str, str]],
    spec: Mapping[str, Any],
) -> str:
    """The Job controller's ``FailedCreate`` message for its pod ``pod`` of ``spec`` ('' when it is admitted): the
    pod's validation after LimitRanger's defaults (``is invalid``), then PodSecurity and ResourceQuota (``is
    forbidden``), in the API server's order. Both fakes make a Job's pod through it."""
    invalid = limit_range_invalid(limit_ranges, spec)
    if invalid:
        return f'Error creating: Pod "{pod}" is invalid: {invalid}'
    refusal = admission_refusal(labels, quotas, spec)
    return f'Error creating: pods "{pod}" is forbidden: {refusal}' if refusal else ""


def log_refusal(pod: str, node: str, phase: str, waiting: Sequence[str], container: str) -> str:
    """The API server's 400 to a log read of a pod that has none yet ('' when it has one): no node yet (the
    registry's ``does not have a host assigned``), or Pending with its container not started (the kubelet's
    ``is waiting to start: <reason>``, ``ContainerCreating`` before it has one). Both fakes answer through it."""
    if not node:
        return f"pod {pod} does not have a host assigned"
    if phase == "Pending":
        reason = waiting[0] if waiting else "ContainerCreating"
        return f'container "{container}" in pod "{pod}" is waiting to start: {reason}'
    return ""


class FakeCluster:
    """An in-memory cluster that implements ``ClusterClient`` and records every write in ``writes``.

    It behaves as the API server and controllers do where our code can tell: objects keep their
    labels we do not own, a second Job of one name is a ``Conflict``, a Job gets a pending pod on
    its node, a PVC binds after ``binds_after`` reads (a ``WaitForFirstConsumer`` class only once
    a pod mounts it), a namespace's Pod Security level and ResourceQuotas refuse pods as admission
    does (``label_namespace``, ``set_resource_quota``), and its LimitRanges' default limits make a Job's
    pod invalid (``set_limit_range``). Tests drive what controllers would do next (``finish_job``,
    ``refuse_job_pod``, ...), and ``fail_next`` injects API errors that go through the same
    bounded retries as the real client.
    """

    def __init__(
        self,
        nodes: Iterable[NodeInfo] = (),
        pods: Iterable[tuple[str, str, Mapping[str, str]]] = (),
        *,
        retry: RetryPolicy | None = None,
        clock: Any = None,
    ) -> None:
        self.nodes: dict[str, NodeInfo] = {n.name: n for n in nodes}
        self._pods: dict[tuple[str, str], _FakePod] = {}
        for i, (ns, node, labels) in enumerate(pods):
            # (namespace, node, pod labels) of running pods, the shape of the first version
            self.add_pod(ns, f"pod-{i}", node, labels=labels)
        self.jobs: dict[tuple[str, str], JobInfo] = {}
        self.job_manifests: dict[tuple[str, str], dict[str, Any]] = {}
        self.pvcs: dict[tuple[str, str], _FakePvc] = {}
        self.storage_classes: dict[str, tuple[str, int | None]] = {}
        self.events: list[EventInfo] = []
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        self.retry = retry or RetryPolicy(attempts=4, base_s=0.0)
        self.clock = clock
        self._faults: dict[str, list[int]] = {}
        self._seq = 0
        self._event_names: set[tuple[str, str]] = set()
        self.gc_paused = False  # test control: pods of a deleted Job stay until collect_garbage()
        self.namespace_labels: dict[str, dict[str, str]] = {}  # pod-security.kubernetes.io/enforce, ...
        self.quotas: dict[str, dict[str, list[str]]] = {}  # namespace -> ResourceQuota name -> resources tracked
        self.limit_ranges: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> LimitRange -> default limits

    # ---------------------------------------------------------- test controls

    def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        gpus: int = 0,
        annotations: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """``taints``: others' taints already on the Node, as Kubernetes JSON (``key``, ``effect``, ...)."""
        self.nodes[name] = NodeInfo(
            name,
            dict(labels or {}),
            dict(annotations or {}),
            allocatable_gpus=gpus,
            uid=f"uid-{name}",
            taints=tuple(NodeTaint.from_json(t) for t in taints),
        )

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        *,
        phase: str = "Running",
        gpus: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        info = PodInfo(name, namespace, node, phase, gpus, labels=dict(labels or {}))
        self._pods[(namespace, name)] = _FakePod(info)

    def label_namespace(self, namespace: str, labels: Mapping[str, str]) -> None:
        """A namespace's labels; ``pod-security.kubernetes.io/enforce`` makes the PodSecurity plugin refuse pods
        that violate its level (403 for a pod, ``FailedCreate`` for a Job's pod)."""
        self.namespace_labels[namespace] = dict(labels)

    def set_resource_quota(self, namespace: str, name: str, hard: Sequence[str]) -> None:
        """A ResourceQuota ``name`` in ``namespace`` tracking the resources ``hard`` names (``requests.cpu``,
        ``limits.memory``, ...): a pod whose containers do not say them is refused (403 ``failed quota``)."""
        self.quotas.setdefault(namespace, {})[name] = list(hard)

    def set_limit_range(self, namespace: str, name: str, default: Mapping[str, str]) -> None:
        """A LimitRange ``name`` in ``namespace`` whose Container ``default`` limits (``{"memory": "256Mi"}``) are
        given to a Job's pod where it sets none: a request above one makes the pod invalid (``FailedCreate``)."""
        self.limit_ranges.setdefault(namespace, {})[name] = dict(default)

    def _admission(self, namespace: str, spec: Mapping[str, Any]) -> str:
        return admission_refusal(self.namespace_labels.get(namespace, {}), self.quotas.get(namespace, {}), spec)

    def _job_pod_refusal(self, namespace: str, spec: Mapping[str, Any], pod: str) -> str:
        labels, quotas = self.namespace_labels.get(namespace, {}), self.quotas.get(namespace, {})
        return job_pod_refusal(pod, labels, quotas, self.limit_ranges.get(namespace, {}), spec)

    def add_storage_class(self, name: str, mode: str = "Immediate", *, binds_after: int | None = 1) -> None:
        """``binds_after``: reads of the claim's phase until it is Bound (None: the provisioner never binds)."""
        self.storage_classes[name] = (mode, binds_after)

    def fail_next(self, op: str, status: int, times: int = 1, *, applied: bool = False) -> None:
        """The next ``times`` attempts of ``op`` (a Protocol method name) fail as the API would with ``status``.

        ``applied``: the request takes effect and only its answer is lost (a 504 or a timeout after the
        server acted), so a retry meets what the first attempt did."""
        self._faults.setdefault(op, []).extend([-status if applied else status] * times)

    def finish_job(
        self, namespace: str, name: str, *, succeeded: bool, log: str = "", exit_code: int = 0, interim: bool = False
    ) -> None:
        """The Job's pod ran to the end: phase, log and the Job's Complete/Failed condition. ``interim``: only
        the controller's first word on it (``SuccessCriteriaMet``/``FailureTarget``, Kubernetes 1.31+), which
        the seam reports as the same outcome."""
        job = self.jobs[(namespace, name)]
        for pod in self._job_pods(namespace, name):
            pod.info = dataclasses.replace(
                pod.info,
                phase="Succeeded" if succeeded else "Failed",
                exit_codes=(exit_code if not succeeded else 0,),
            )
            pod.log = log
        self.jobs[(namespace, name)] = dataclasses.replace(
            job,
            active=0,
            succeeded=int(succeeded),
            failed=int(not succeeded),
            complete=succeeded,
            failed_reason="" if succeeded else "BackoffLimitExceeded",
            message="" if succeeded else "Job has reached the specified backoff limit",
        )

    def expire_finished_jobs(self, elapsed_s: float) -> list[str]:
        """The TTL-after-finished controller, ``elapsed_s`` after the Jobs finished: each finished Job whose
        ``ttlSecondsAfterFinished`` is at most that is deleted with its pods (it deletes with Foreground
        propagation), and their logs with them. Returns the names of the Jobs deleted."""
        gone: list[str] = []
        for (namespace, name), job in list(self.jobs.items()):
            ttl = ((self.job_manifests.get((namespace, name)) or {}).get("spec") or {}).get("ttlSecondsAfterFinished")
            if job.finished and ttl is not None and ttl <= elapsed_s:
                for pod in self._job_pods(namespace, name, job.uid):
                    del self._pods[(namespace, pod.info.name)]
                del self.jobs[(namespace, name)]
                gone.append(name)
        return gone

    def refuse_job_pod(self, namespace: str, name: str, message: str) -> None:
        """The Job controller could not create the pod (quota, admission webhook): no pod, a FailedCreate event."""
        for pod in self._job_pods(namespace, name):
            del self._pods[(pod.info.namespace, pod.info.name)]
        self.jobs[(namespace, name)] = dataclasses.replace(self.jobs[(namespace, name)], active=0)
        uid = self.jobs[(namespace, name)].uid
        self.events.append(EventInfo(namespace, "Job", name, "FailedCreate", message, "Warning", uid=uid))

    def admit_job_pod(self, namespace: str, name: str) -> None:
        """What refused the Job's pod cleared (a quota's usage dropped): the controller's next try makes the pod."""
        self._seq += 1
        job = self.jobs[(namespace, name)]
        spec = ((self.job_manifests[(namespace, name)].get("spec") or {}).get("template") or {}).get("spec") or {}
        self._start_job_pod(namespace, name, job.uid, spec, f"{name[:57]}-{self._seq:05x}")
        self.jobs[(namespace, name)] = dataclasses.replace(job, active=1)

    def suspend_job(self, namespace: str, name: str) -> None:
        """A queueing controller (Kueue's webhook, at creation) set ``spec.suspend``: the Job controller deletes its
        pods, counts none active and writes ``Suspended=True`` (reason ``JobSuspended``)."""
        for pod in self._job_pods(namespace, name):
            del self._pods[(namespace, pod.info.name)]
        self.jobs[(namespace, name)] = dataclasses.replace(self.jobs[(namespace, name)], active=0, suspended=True)

    def resume_job(self, namespace: str, name: str) -> None:
        """The queue admitted the Job (``spec.suspend`` false): the controller makes its pod (``Suspended=False``,
        ``JobResumed``)."""
        self.jobs[(namespace, name)] = dataclasses.replace(self.jobs[(namespace, name)], suspended=False)
        self.admit_job_pod(namespace, name)

    def kill_job_pod(
        self,
        namespace: str,
        name: str,
        *,
        exit_code: int = 137,
        terminated: str = "Error",
        reason: str = "",
        message: str = "",
        disruption: tuple[str, str] | None = None,
        log: str = "",
        phase: str = "Failed",
        terminated_message: str = "",
    ) -> None:
        """Something other than its program ended the Job's running pod: preemption or a node-pressure eviction
        (``disruption``: the DisruptionTarget condition's reason and message; an eviction also sets the pod's
        ``reason`` ``Evicted`` and ``message``), the OOM killer (``terminated`` ``OOMKilled``). Its container ends
        with ``exit_code`` (137: SIGKILL) and ``log`` (cut short); the Job fails (``backoffLimit: 0``). ``phase``
        ``Running``: the node was lost, its kubelet never says the pod ended (the taint manager's deletion leaves it
        terminating, which the Job controller counts as failed)."""
        said = f"{disruption[0]}: {disruption[1]}" if disruption else ""
        for pod in self._job_pods(namespace, name):
            pod.info = dataclasses.replace(
                pod.info,
                phase=phase,
                reason=reason,
                message=message,
                exit_codes=(exit_code,) if phase == "Failed" else (),
                terminated=(f"{terminated}: {terminated_message}".rstrip(": "),) if phase == "Failed" else (),
                disruption=said,
            )
            pod.log = log
        self.jobs[(namespace, name)] = dataclasses.replace(
            self.jobs[(namespace, name)],
            active=0,
            failed=1,
            failed_reason="BackoffLimitExceeded",
            message="Job has reached the specified backoff limit",
        )

    def hold_job_pod(self, namespace: str, name: str, reason: str, message: str = "") -> None:
        """The kubelet keeps the Job's pod Pending on its node, its container waiting with ``reason``
        (``ErrImagePull``, ``ImagePullBackOff``, ``CreateContainerError``, ``CreateContainerConfigError``)."""
        for pod in self._job_pods(namespace, name):
            pod.info = dataclasses.replace(pod.info, phase="Pending", waiting=(reason,))

    def reject_job_pod(self, namespace: str, name: str, reason: str, message: str) -> None:
        """The kubelet refused the pod at admission (e.g. ``UnexpectedAdmissionError``): pod Failed."""
        for pod in self._job_pods(namespace, name):
            pod.info = dataclasses.replace(pod.info, phase="Failed", reason=reason, message=message)

    def unschedulable_job_pod(self, namespace: str, name: str, message: str) -> None:
        for pod in self._job_pods(namespace, name):
            pod.info = dataclasses.replace(pod.info, unschedulable=message)

    def job_past_deadline(self, namespace: str, name: str, *, interim: bool = False) -> None:
        """``activeDeadlineSeconds`` passed: the controller kills the pod and fails the Job."""
        for pod in self._job_pods(namespace, name):
            pod.info = dataclasses.replace(pod.info, phase="Failed", reason="DeadlineExceeded")
        self.jobs[(namespace, name)] = dataclasses.replace(
            self.jobs[(namespace, name)],
            active=0,
            failed=1,
            failed_reason="DeadlineExceeded",
            message="Job was active longer than specified deadline",
        )

    def pods(self, namespace: str | None = None) -> list[PodInfo]:
        return [p.info for p in self._pods.values() if namespace is None or p.info.namespace == namespace]

    def pause_gc(self) -> None:
        """The garbage collector has not yet removed the pods of a Job deleted in the background (it works
        asynchronously; a pod on a sick node can stay terminating for long)."""
        self.gc_paused = True

    def collect_garbage(self) -> None:
        """The garbage collector catches up: pods whose Job is gone are deleted."""
        live = {j.uid for j in self.jobs.values()}
        for key, pod in list(self._pods.items()):
            if pod.info.owner_uid and pod.info.owner_uid not in live:
                del self._pods[key]

    def events_for(self, kind: str, name: str) -> list[EventInfo]:
        return [e for e in self.events if e.kind == kind and e.name == name]

    # ---------------------------------------------------------- plumbing

    def _do(self, op: str, fn: Callable[[], _T]) -> _T:
        def attempt() -> _T:
            queue = self._faults.get(op)
            if queue:
                status = queue.pop(0)
                if status < 0:  # applied, then the answer was lost
                    fn()
                raise _fault(op, abs(status))
            return fn()

        return with_retries(
            attempt, policy=self.retry, sleep=lambda s: None, what=op, retry_conflict=op not in _CREATES
        )

    def _record(self, op: str, target: str, payload: Mapping[str, Any]) -> None:
        self.writes.append((op, target, dict(payload)))

    def _name(self, meta: Mapping[str, Any]) -> str:
        if meta.get("name"):
            return str(meta["name"])
        return apivalidation.generated_name(str(meta.get("generateName") or ""))

    def _check_create(self, op: str, kind: str, namespace: str, manifest: Mapping[str, Any], name: str) -> None:
        """Refuse ``manifest`` as the API server would (400 for a namespace mismatch, 422 ``Invalid``)."""
        meta = dict(manifest.get("metadata") or {})
        wrong = apivalidation.wrong_types(kind, manifest)
        if wrong:  # the server's decoder cannot read it: a 400 before any validation
            raise errors.ClusterError(f"{op}: 400 {kind} cannot be handled as a {kind}: json: {'; '.join(wrong)}")
        unknown = apivalidation.unknown_fields(kind, manifest)
        if unknown:  # the client sends fieldValidation=Strict
            fields = ", ".join(f'unknown field "{f}"' for f in unknown)
            raise errors.ClusterError(f"{op}: 400 strict decoding error: {fields}")
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.ClusterError(
                f"{op}: 400 the namespace of the provided object does not match the namespace sent on the request"
            )
        problems = apivalidation.create_problems(kind, {**manifest, "metadata": {**meta, "name": name}})
        if problems:
            raise errors.ClusterError(f"{op}: 422 {invalid_message(kind, name, problems)}")

    def _check_node(self, op: str, node: NodeInfo) -> None:
        as_json = {
            "metadata": {"labels": dict(node.labels), "annotations": dict(node.annotations)},
            "spec": {"unschedulable": node.unschedulable, "taints": [t.to_json() for t in node.taints]},
        }
        self._check_decodes(op, "Node", as_json)
        problems = apivalidation.node_problems(as_json)
        if problems:
            raise errors.ClusterError(f"{op}: 422 {invalid_message('Node', node.name, problems)}")

    @staticmethod
    def _check_decodes(op: str, kind: str, body: Mapping[str, Any]) -> None:
        """The server's decoder refuses a value of the wrong JSON type or a time Go cannot parse: a 400."""
        wrong = apivalidation.wrong_types(kind, body)
        if wrong:
            raise errors.ClusterError(f"{op}: 400 {kind} cannot be handled as a {kind}: {'; '.join(wrong)}")

    @staticmethod
    def _check_selector(op: str, selector: str | None) -> None:
        problems = apivalidation.label_selector_problems(selector or "")
        if problems:
            raise errors.ClusterError(f"{op}: 400 unable to parse requirement: {'; '.join(problems)}")

    def _now(self) -> datetime:
        return self.clock.now() if self.clock is not None else datetime.now(UTC)

    def _schedule(self, spec: Mapping[str, Any]) -> tuple[str, str]:
        """(node, why not): the scheduler's part for a new pod, on the node its spec pins it to."""
        wanted = pod_node(spec)
        why = unschedulable_reason(self.nodes.get(wanted), spec) if wanted else ""
        return ("" if why else wanted), why

    def _job_pods(self, namespace: str, job: str, uid: str | None = None) -> list[_FakePod]:
        """The pods of Job ``job`` (of ``uid``; None: of the Job of that name now, as its controller sees them)."""
        if uid is None:
            uid = self.jobs[(namespace, job)].uid if (namespace, job) in self.jobs else ""
        return [
            p
            for p in self._pods.values()
            if p.info.namespace == namespace and p.job == job and (not uid or p.info.owner_uid == uid)
        ]

    # ---------------------------------------------------------- nodes

    def list_nodes(self, label_selector: str | None = None) -> list[NodeInfo]:
        self._check_selector("list_nodes", label_selector)
        return self._do(
            "list_nodes",
            lambda: [n for n in self.nodes.values() if selector_matches(label_selector or "", n.labels)],
        )

    def get_node(self, name: str) -> NodeInfo:
        def get() -> NodeInfo:
            try:
                return self.nodes[name]
            except KeyError:
                raise errors.NotFound(f"node {name} not found") from None

        return self._do("get_node", get)

    def patch_node_labels(
        self, name: str, labels: Mapping[str, str | None], annotations: Mapping[str, str | None] | None = None
    ) -> None:
        def patch() -> None:
            node = self.get_node(name)
            new_labels = {**node.labels}
            new_ann = {**node.annotations}
            for target, changes in ((new_labels, labels), (new_ann, annotations or {})):
                for key, value in changes.items():
                    if value is None:
                        target.pop(key, None)
                    else:
                        target[key] = value
            patched = dataclasses.replace(node, labels=new_labels, annotations=new_ann)
            self._check_node("patch_node_labels", patched)
            self.nodes[name] = patched
            self._record("patch_node", name, {"labels": dict(labels), "annotations": dict(annotations or {})})

        if labels or annotations:
            self._do("patch_node_labels", patch)

    def set_node_condition(self, name: str, condition: NodeCondition, now: datetime | None = None) -> NodeCondition:
        def write() -> NodeCondition:
            node = self.get_node(name)
            stored = merge_condition(node.condition(condition.type), condition, now or self._now())
            self._check_decodes("set_node_condition", "Node", {"status": {"conditions": [stored.to_json()]}})
            others = tuple(c for c in node.conditions if c.type != condition.type)
            self.nodes[name] = dataclasses.replace(node, conditions=(*others, stored))
            self._record("set_node_condition", name, stored.to_json())
            return stored

        return self._do("set_node_condition", write)

    def create_node_event(
        self, node: str, *, reason: str, message: str, type_: str, namespace: str, now: datetime | None = None
    ) -> None:
        info = self.get_node(node)
        manifest = event_manifest(
            info, reason=reason, message=message, type_=type_, namespace=namespace, now=now or self._now()
        )
        name = str(manifest["metadata"]["name"])

        def create() -> None:
            self._check_decodes("create_node_event", "Event", manifest)
            refusal = event_refusal(manifest)
            if refusal is not None:  # the real API server's 422, which no retry changes
                raise errors.ClusterError(f"create_node_event: 422 {refusal}")
            if (namespace, name) in self._event_names:
                raise errors.Conflict(f"events {name!r} already exists")
            self._event_names.add((namespace, name))
            event = EventInfo(namespace, "Node", node, reason, message[:1024], type_)
            self.events.append(event)
            self._record("create_node_event", node, dataclasses.asdict(event))

        try:
            self._do("create_node_event", create)
        except errors.Conflict:
            pass  # as the real client: an earlier attempt of this call made it

    def set_node_unschedulable(self, name: str, unschedulable: bool) -> None:
        def write() -> None:
            node = self.get_node(name)
            self.nodes[name] = dataclasses.replace(node, unschedulable=unschedulable)
            self._record("set_node_unschedulable", name, {"unschedulable": unschedulable})

        self._do("set_node_unschedulable", write)

    def set_node_taint(self, name: str, taint: NodeTaint, present: bool) -> bool:
        if taint.effect not in TAINT_EFFECTS:
            raise errors.BadParameter("effect", f"not a taint effect: {taint.effect!r}")

        def write() -> bool:
            node = self.get_node(name)
            wanted = with_taint(node.taints, taint, present)
            if wanted is None:
                return False
            patched = dataclasses.replace(node, taints=wanted)
            self._check_node("set_node_taint", patched)
            self.nodes[name] = patched
            self._record("set_node_taint", name, {"taints": [t.to_json() for t in wanted]})
            return True

        return self._do("set_node_taint", write)

    def nodes_running(self, namespace: str, label_selector: str) -> list[str]:
        self._check_selector("nodes_running", label_selector)
        return self._do(
            "nodes_running",
            lambda: sorted(
                {
                    p.info.node
                    for p in self._pods.values()
                    if p.info.namespace == namespace
                    and p.info.phase == "Running"
                    and p.info.node
                    and selector_matches(label_selector, p.info.labels)
                }
            ),
        )

    def gpu_pods_on_node(self, node: str) -> list[PodInfo]:
        selector_safe(node=node)
        return self._do(
            "gpu_pods_on_node",
            lambda: [
                p.info
                for p in self._pods.values()
                if p.info.node == node and p.info.gpus > 0 and p.info.phase not in FINISHED_PHASES
            ],
        )

    # ---------------------------------------------------------- jobs

    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        def create() -> str:
            meta = manifest.get("metadata") or {}
            name = self._name(meta)
            self._check_create("create_job", "Job", namespace, manifest, name)
            if (namespace, name) in self.jobs:
                raise errors.Conflict(f"jobs.batch {name!r} already exists")
            self._seq += 1
            uid = f"uid-{name[:40]}-{self._seq:05x}"  # a new one each time the name is made again
            self.jobs[(namespace, name)] = JobInfo(
                name,
                namespace,
                labels=dict(meta.get("labels") or {}),
                annotations=dict(meta.get("annotations") or {}),
                active=1,
                created_at=rfc3339(self._now()),
                uid=uid,
            )
            self.job_manifests[(namespace, name)] = json.loads(json.dumps(manifest))
            spec = ((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}
            pod = f"{name[:57]}-{self._seq:05x}"
            message = self._job_pod_refusal(namespace, spec, pod)
            if message:  # the Job is admitted; the controller's pod is not, and it says so in an Event
                self.jobs[(namespace, name)] = dataclasses.replace(self.jobs[(namespace, name)], active=0)
                self.events.append(EventInfo(namespace, "Job", name, "FailedCreate", message, "Warning", uid=uid))
                self._record("create_job", f"{namespace}/{name}", dict(manifest))
                return name
            self._start_job_pod(namespace, name, uid, spec, pod)
            self._record("create_job", f"{namespace}/{name}", dict(manifest))
            return name

        return self._do("create_job", create)

    def _start_job_pod(self, namespace: str, name: str, uid: str, spec: Mapping[str, Any], pod: str) -> None:
        """The Job controller's pod of Job ``name``, admitted: Pending on the node the scheduler gives it."""
        labels = {"job-name": name, "controller-uid": uid}
        node, why = self._schedule(spec)
        info = PodInfo(pod, namespace, node, "Pending", pod_gpus(spec), labels=labels, owner_uid=uid, unschedulable=why)
        self._pods[(namespace, pod)] = _FakePod(info, job=name)

    def get_job(self, namespace: str, name: str) -> JobInfo:
        def get() -> JobInfo:
            try:
                job = self.jobs[(namespace, name)]
            except KeyError:
                raise errors.NotFound(f"jobs.batch {name!r} not found") from None
            # As the real server's Date header: its own clock, the one it stamped creationTimestamp on.
            return dataclasses.replace(job, server_time=rfc3339(self._now()))

        return self._do("get_job", get)

    def delete_job(self, namespace: str, name: str) -> bool:
        def delete() -> bool:
            job = self.jobs.pop((namespace, name), None)
            if job is None:
                return False
            # Background propagation: the garbage collector deletes the pods after the Job, when it gets to them.
            for pod in [] if self.gc_paused else self._job_pods(namespace, name, job.uid):
                del self._pods[(namespace, pod.info.name)]
            self._record("delete_job", f"{namespace}/{name}", {})
            return True

        return self._do("delete_job", delete)

    def job_pods(self, namespace: str, job_name: str, job_uid: str = "") -> list[PodInfo]:
        selector_safe(job=job_name)
        return self._do("job_pods", lambda: [p.info for p in self._job_pods(namespace, job_name, job_uid)])

    def job_events(self, namespace: str, job_name: str, job_uid: str = "") -> list[EventInfo]:
        selector_safe(job=job_name, uid=job_uid)
        return self._do(
            "job_events",
            lambda: [
                e
                for e in self.events
                if e.namespace == namespace
                and e.kind == "Job"
                and e.name == job_name
                and (not job_uid or e.uid == job_uid)
            ],
        )

    def _pod(self, namespace: str, name: str) -> _FakePod:
        try:
            return self._pods[(namespace, name)]
        except KeyError:
            raise errors.NotFound(f"pods {name!r} not found in {namespace}") from None

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        def read() -> str:
            found = self._pod(namespace, pod)
            refusal = log_refusal(pod, found.info.node, found.info.phase, found.info.waiting, container or "main")
            if refusal:
                raise errors.ClusterError(f"pod_log: 400 {refusal}")
            return found.log

        return self._do("pod_log", read)

    # ---------------------------------------------------------- pods and volumes

    def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        def create() -> str:
            meta = manifest.get("metadata") or {}
            name = self._name(meta)
            self._check_create("create_pod", "Pod", namespace, manifest, name)
            if (namespace, name) in self._pods:
                raise errors.Conflict(f"pods {name!r} already exists")
            spec = manifest.get("spec") or {}
            refusal = self._admission(namespace, spec)
            if refusal:
                raise errors.ClusterError(f'create_pod: 403 pods "{name}" is forbidden: {refusal}')
            claims = tuple(
                str((v.get("persistentVolumeClaim") or {}).get("claimName"))
                for v in spec.get("volumes") or ()
                if v.get("persistentVolumeClaim")
            )
            node, why = self._schedule(spec)
            labels = dict(meta.get("labels") or {})
            info = PodInfo(name, namespace, node, "Pending", pod_gpus(spec), labels=labels, unschedulable=why)
            self._pods[(namespace, name)] = _FakePod(info, claims=claims)
            self._record("create_pod", f"{namespace}/{name}", dict(manifest))
            return name

        return self._do("create_pod", create)

    def get_pod(self, namespace: str, name: str) -> PodInfo:
        return self._do("get_pod", lambda: self._pod(namespace, name).info)

    def delete_pod(self, namespace: str, name: str) -> bool:
        def delete() -> bool:
            if self._pods.pop((namespace, name), None) is None:
                return False
            self._record("delete_pod", f"{namespace}/{name}", {})
            return True

        return self._do("delete_pod", delete)

    def create_pvc(self, namespace: str, manifest: Mapping[str, Any]) -> str:
        def create() -> str:
            meta = manifest.get("metadata") or {}
            name = self._name(meta)
            self._check_create("create_pvc", "PersistentVolumeClaim", namespace, manifest, name)
            if (namespace, name) in self.pvcs:
                raise errors.Conflict(f"persistentvolumeclaims {name!r} already exists")
            storage_class = str((manifest.get("spec") or {}).get("storageClassName") or "")
            self.pvcs[(namespace, name)] = _FakePvc(storage_class, manifest=json.loads(json.dumps(manifest)))
            self._record("create_pvc", f"{namespace}/{name}", dict(manifest))
            return name

        return self._do("create_pvc", create)

    def pvc_phase(self, namespace: str, name: str) -> str:
        def read() -> str:
            pvc = self.pvcs.get((namespace, name))
            if pvc is None:
                raise errors.NotFound(f"persistentvolumeclaims {name!r} not found")
            pvc.reads += 1
            mode, binds_after = self.storage_classes.get(pvc.storage_class, ("Immediate", None))
            # The provisioner acts for a WaitForFirstConsumer claim once the scheduler has put a pod using it on a node.
            consumed = any(
                name in p.claims and p.info.node for p in self._pods.values() if p.info.namespace == namespace
            )
            if binds_after is not None and pvc.reads >= binds_after and (mode != "WaitForFirstConsumer" or consumed):
                pvc.phase = "Bound"
            return pvc.phase

        return self._do("pvc_phase", read)

    def delete_pvc(self, namespace: str, name: str) -> bool:
        def delete() -> bool:
            if self.pvcs.pop((namespace, name), None) is None:
                return False
            self._record("delete_pvc", f"{namespace}/{name}", {})
            return True

        return self._do("delete_pvc", delete)

    def storage_class_binding_mode(self, name: str) -> str:
        def read() -> str:
            try:
                return self.storage_classes[name][0]
            except KeyError:
                raise errors.NotFound(f"storageclasses {name!r} not found") from None

        return self._do("storage_class_binding_mode", read)

    # ---------------------------------------------------------- DRA device taints

    # Test control: the resource.k8s.io version serving DeviceTaintRule (None: not served), and
    # the taint effects that version accepts (``None`` only from Kubernetes 1.35).
    device_taint_version: str | None = None
    device_taint_effects: tuple[str, ...] = DEVICE_TAINT_EFFECTS

    def serve_device_taints(self, version: str = "v1beta2", effects: tuple[str, ...] = DEVICE_TAINT_EFFECTS) -> None:
        self.device_taint_version = version
        self.device_taint_effects = effects
        self.device_taint_rules: dict[str, DeviceTaintRuleInfo] = {}

    def _served(self) -> str:
        if self.device_taint_version is None:
            raise errors.NotFound("this cluster serves no resource.k8s.io DeviceTaintRule")
        return self.device_taint_version

    def device_taint_api(self) -> str | None:
        return self.device_taint_version

    def list_device_taint_rules(self, label_selector: str) -> list[DeviceTaintRuleInfo]:
        self._check_selector("list_device_taint_rules", label_selector)

        def read() -> list[DeviceTaintRuleInfo]:
            self._served()
            return [r for r in self.device_taint_rules.values() if selector_matches(label_selector, r.labels)]

        return self._do("list_device_taint_rules", read)

    def create_device_taint_rule(self, rule: DeviceTaintRuleInfo) -> str:
        def create() -> str:
            version = self._served()
            body = rule.to_json(version)
            unknown = apivalidation.unknown_fields("DeviceTaintRule", body, version)
            if unknown:
                raise errors.ClusterError(f"400 strict decoding error: unknown field {unknown[0]!r}")
            problems = device_taint_rule_problems(body, version, self.device_taint_effects)
            if problems:
                raise errors.ClusterError(f"DeviceTaintRule {rule.name!r} is invalid: {'; '.join(problems)}")
            if rule.name in self.device_taint_rules:
                raise errors.Conflict(f"devicetaintrules {rule.name!r} already exists")
            self.device_taint_rules[rule.name] = rule
            self._record("create_device_taint_rule", rule.name, rule.to_json(version))
            return rule.name

        return self._do("create_device_taint_rule", create)

    def delete_device_taint_rule(self, name: str) -> bool:
        def delete() -> bool:
            self._served()
            if self.device_taint_rules.pop(name, None) is None:
                return False
            self._record("delete_device_taint_rule", name, {})
            return True

        return self._do("delete_device_taint_rule", delete)


def device_taint_rule_problems(body: Any, version: str, effects: Sequence[str] = DEVICE_TAINT_EFFECTS) -> list[str]:
    """Why the API server would refuse ``body`` as a DeviceTaintRule of ``resource.k8s.io/<version>`` (422).

    The rules of the API's validation that our rules can break: the name is a DNS-1123 subdomain,
    the selector's fields are ones the version has (driver a DNS subdomain, device a DNS label),
    the taint key is a qualified label name, its value a label value, its effect one the version knows.
    """
    if not isinstance(body, dict):
        return ["not an object"]
    problems: list[str] = []
    if body.get("apiVersion") != f"resource.k8s.io/{version}" or body.get("kind") != "DeviceTaintRule":
        problems.append(f"expected apiVersion resource.k8s.io/{version}, kind DeviceTaintRule")
    problems += apivalidation.meta_problems(body.get("metadata"))
    spec = body.get("spec") or {}
    selector = spec.get("deviceSelector")
    if not isinstance(selector, dict):
        problems.append("spec.deviceSelector: Required value")
        selector = {}
    allowed = {"driver", "pool", "device"} | ({"deviceClassName", "selectors"} if version == "v1alpha3" else set())
    for field in sorted(set(selector) - allowed):
        problems.append(f"spec.deviceSelector.{field}: unknown field")
    driver = str(selector.get("driver") or "")
    if driver and (len(driver) > 63 or not names.is_dns1123_subdomain(driver)):
        problems.append(f"spec.deviceSelector.driver: Invalid value: {driver!r}")
    device = str(selector.get("device") or "")
    if device and not names.is_dns1123_label(device):
        problems.append(f"spec.deviceSelector.device: Invalid value: {device!r}")
    taint = spec.get("taint") or {}
    problems += apivalidation.qualified_name_problems(str(taint.get("key") or ""), "spec.taint.key")
    problems += apivalidation.label_value_problems(str(taint.get("value") or ""), "spec.taint.value")
    effect = str(taint.get("effect") or "")
    if effect not in effects:
        problems.append(f"spec.taint.effect: Unsupported value: {effect!r}: supported values: {', '.join(effects)}")
    return problems


_T = TypeVar("_T")
# Creates are not retried on 409: "already exists" is an answer, not a race.
_CREATES = frozenset({"create_job", "create_pod", "create_pvc", "create_node_event", "create_device_taint_rule"})


def invalid_message(kind: str, name: str, problems: Sequence[str]) -> str:
    """The ``message`` of the server's 422 Status: ``Kind "name" is invalid: <cause>`` (``[a, b]`` for several)."""
    causes = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
    return f'{kind} "{name}" is invalid: {causes}'


def _fault(op: str, status: int) -> errors.ClusterError:
    message = f"{op}: injected {status}"
    if status == 404:
        return errors.NotFound(message)
    if status == 409:
        return errors.Conflict(message)
    if status == 429 or status >= 500:
        return errors.Transient(message)
    return errors.ClusterError(message)


def event_refusal(event: Mapping[str, Any]) -> str | None:
    """Why a real API server answers 422 to creating the core/v1 Event ``event``, or None if it accepts it.

    The rules of ``legacyValidateEvent`` (k8s.io/kubernetes pkg/apis/core/validation/events.go),
    which every Event created through core/v1 must pass; ``metadata.namespace`` is the namespace
    of the request's path (the server fills it in from there). An Event about a cluster-scoped
    object (a Node: ``involvedObject.namespace`` empty) is accepted only in ``default`` (or
    ``kube-system`` for a new-style Event with ``eventTime``); any other must be in its object's
    namespace. A new-style Event also needs ``reportingComponent`` (core/v1's JSON name of
    ``reportingController``: a qualified name), ``reportingInstance`` and ``action`` (at most 128
    bytes), a ``reason`` (at most 128) and a ``message`` of at most 1024 bytes (Go's ``len``).
    ``FakeCluster`` and the tests' stand-in API server both refuse with this.
    """
    namespace = str((event.get("metadata") or {}).get("namespace") or "")
    involved = str((event.get("involvedObject") or {}).get("namespace") or "")
    problems: list[str] = []
    mismatch = f'involvedObject.namespace: Invalid value: "{involved}": does not match event.namespace'
    if not event.get("eventTime"):
        if (not involved and namespace not in ("", "default")) or (involved and namespace != involved):
            problems.append(mismatch)
    else:
        if not involved and namespace not in ("default", "kube-system"):
            problems.append(mismatch)
        for name, limit in (("reportingComponent", 0), ("reportingInstance", 128), ("action", 128), ("reason", 128)):
            value = str(event.get(name) or "")
            if not value:
                problems.append(f"{name}: Required value")
            elif limit and len(value.encode()) > limit:
                problems.append(f'{name}: Invalid value: "": can have at most {limit} characters')
        problems += apivalidation.qualified_name_problems(
            str(event.get("reportingComponent") or "x"), "reportingComponent"
        )
        if len(str(event.get("message") or "").encode()) > 1024:
            problems.append('message: Invalid value: "": can have at most 1024 characters')
    if not names.is_dns1123_subdomain(namespace):
        problems.append(f'metadata.namespace: Invalid value: "{namespace}": a lowercase RFC 1123 subdomain')
    if not problems:
        return None
    name = (event.get("metadata") or {}).get("name") or (event.get("metadata") or {}).get("generateName") or ""
    return f'Event "{name}" is invalid: ' + ", ".join(problems)


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: NodeTaint) -> bool:
    """Whether one of ``tolerations`` tolerates ``taint`` (core/v1 ``Toleration.ToleratesTaint``): same effect or
    none, and the key with ``Exists`` (any value) or ``Equal`` (same value); an empty key with ``Exists``
    tolerates every taint."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.effect:
            continue
        operator = tol.get("operator") or "Equal"
        if not tol.get("key"):
            if operator == "Exists":
                return True
            continue
        if tol["key"] == taint.key and (operator == "Exists" or str(tol.get("value") or "") == taint.value):
            return True
    return False


def unschedulable_reason(node: NodeInfo | None, spec: Mapping[str, Any]) -> str:
    """Why the scheduler leaves a pod pinned to ``node`` Pending ('' when it binds it): no such node, the node
    cordoned (``NodeUnschedulable``: only a pod tolerating ``node.kubernetes.io/unschedulable:NoSchedule`` goes
    there), or a ``NoSchedule``/``NoExecute`` taint the pod does not tolerate (``TaintToleration``). A pod that
    names its node in ``nodeName`` skips the scheduler."""
    if spec.get("nodeName"):
        return ""
    if node is None:
        return "0/0 nodes are available: the node in its affinity does not exist."
    tolerations = list(spec.get("tolerations") or ())
    if node.unschedulable and not tolerates(tolerations, NodeTaint(UNSCHEDULABLE_TAINT, "NoSchedule")):
        return "0/1 nodes are available: 1 node(s) were unschedulable."
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            shown = f"{taint.key}: {taint.value}" if taint.value else taint.key
            return f"0/1 nodes are available: 1 node(s) had untolerated taint {{{shown}}}."
    return ""


def pod_node(spec: Mapping[str, Any]) -> str:
    """The node a pod spec is pinned to: ``nodeName``, else a required affinity on ``metadata.name`` or hostname."""
    if spec.get("nodeName"):
        return str(spec["nodeName"])
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or ():
        for field in term.get("matchFields") or ():
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and field.get("values"):
                return str(field["values"][0])
        for expr in term.get("matchExpressions") or ():
            if expr.get("key") == "kubernetes.io/hostname" and expr.get("operator") == "In" and expr.get("values"):
                return str(expr["values"][0])
    return ""


# ---------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], _T | None], timeout_s: float, what: str, interval_s: float = 0.1) -> _T:
    """The first truthy value of ``predicate()``; ``TimeoutError`` naming ``what`` after ``timeout_s``.

    For tests and benchmarks that wait on real processes: never a bare sleep, always a bound.
    """
    value = polling.poll_until(predicate, deadline=time.monotonic() + timeout_s, interval_s=interval_s)
    if not value:
        raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
    return value
