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
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from autopilot import errors, gpus
from autopilot.cluster import NodeInfo
from autopilot.commands import CommandResult, CommandRunner

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
        bind = getattr(self.inner, "bind", None)
        clone = RecordingRunner(bind(scope) if callable(bind) else self.inner, self.out_dir)
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
    remapped: gpus.RemappedRows = gpus.RemappedRows(0, 0, False, False)
    reasons: frozenset[str] = frozenset()
    link: gpus.PcieLink = gpus.PcieLink(5, 5, 16, 16)
    sample: gpus.GpuSample = gpus.GpuSample(35.0, 70.0, 1980.0)
    raises: errors.GpuError | None = None


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
                remapped=gpus.RemappedRows(**g["remapped_rows"])
                if "remapped_rows" in g
                else gpus.RemappedRows(0, 0, False, False),
                reasons=frozenset(g.get("clock_event_reasons", ())),
                link=gpus.PcieLink(**g["pcie_link"]) if "pcie_link" in g else gpus.PcieLink(5, 5, 16, 16),
                sample=gpus.GpuSample(**g["sample"]) if "sample" in g else gpus.GpuSample(35.0, 70.0, 1980.0),
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
            index, g.name, g.uuid or f"GPU-fake-{index}", g.pci_bus_id or f"00000000:{index:02X}:00.0"
        )

    def remapped_rows(self, index: int) -> gpus.RemappedRows:
        return self._gpu(index).remapped

    def clock_event_reasons(self, index: int) -> frozenset[str]:
        return self._gpu(index).reasons

    def pcie_link(self, index: int) -> gpus.PcieLink:
        return self._gpu(index).link

    def sample(self, index: int) -> gpus.GpuSample:
        return self._gpu(index).sample


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
                "remapped_rows": dataclasses.asdict(telemetry.remapped_rows(i)),
                "clock_event_reasons": sorted(telemetry.clock_event_reasons(i)),
                "pcie_link": dataclasses.asdict(telemetry.pcie_link(i)),
                "sample": dataclasses.asdict(telemetry.sample(i)),
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


class FakeCluster:
    """An in-memory cluster that records every write in ``writes``."""

    def __init__(self, nodes: Iterable[NodeInfo] = (), pods: Iterable[tuple[str, str, Mapping[str, str]]] = ()) -> None:
        self.nodes: dict[str, NodeInfo] = {n.name: n for n in nodes}
        # (namespace, node, pod labels) of running pods
        self.pods = list(pods)
        self.writes: list[tuple[str, str, dict[str, Any]]] = []

    def list_nodes(self, label_selector: str | None = None) -> list[NodeInfo]:
        wanted = _parse_equality_selector(label_selector or "")
        return [n for n in self.nodes.values() if all(n.labels.get(k) == v for k, v in wanted.items())]

    def get_node(self, name: str) -> NodeInfo:
        try:
            return self.nodes[name]
        except KeyError:
            raise errors.NotFound(f"node {name} not found") from None

    def patch_node_labels(
        self, name: str, labels: Mapping[str, str | None], annotations: Mapping[str, str | None] | None = None
    ) -> None:
        node = self.get_node(name)
        new_labels = {**node.labels}
        new_ann = {**node.annotations}
        for target, patch in ((new_labels, labels), (new_ann, annotations or {})):
            for key, value in patch.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        self.nodes[name] = dataclasses.replace(node, labels=new_labels, annotations=new_ann)
        self.writes.append(("patch_node", name, {"labels": dict(labels), "annotations": dict(annotations or {})}))

    def nodes_running(self, namespace: str, label_selector: str) -> list[str]:
        wanted = _parse_equality_selector(label_selector)
        return sorted(
            {
                node
                for ns, node, labels in self.pods
                if ns == namespace and all(labels.get(k) == v for k, v in wanted.items())
            }
        )


def _parse_equality_selector(selector: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out
