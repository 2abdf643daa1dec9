"""Which physical GPU a device finding is about: UUID and bus id on every GPU device of a result.

Checks name a GPU as their tool does (its index, ``"3"``; or its bus id when NVML cannot see it).
Indexes move when a GPU falls off the bus or the node is re-imaged; the UUID does not. After each
GPU check the engine stamps the identities NVML gave, read once per sequence (``look``, shared
with the census), and ``attach`` stamps the
UUID and bus id on every device it can match, so per-GPU verdicts and history (``gpuverdict``,
``gpuhistory``) are keyed by the GPU itself. A device that matches nothing keeps its id only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping

from autopilot import errors
from autopilot.gpus import GpuIdentity, GpuTelemetry
from autopilot.names import bus_id
from autopilot.results import CheckResult, DeviceResult

# NVML's UUID: "GPU-" then 8-4-4-4-12 hex digits (MIG devices say "MIG-"; they are not GPUs here).
UUID_RE = re.compile(r"^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def valid_uuid(text: str) -> bool:
    """Whether ``text`` is a GPU UUID as NVML writes it (what may reach a store key)."""
    return bool(UUID_RE.fullmatch(text))


def checked_uuid(text: str) -> str:
    """``text`` when it is a GPU UUID; else ``BadParameter("uuid")`` naming what was given."""
    if not valid_uuid(text):
        raise errors.BadParameter("uuid", f"not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx): {text[:80]!r}")
    return text


@dataclasses.dataclass(frozen=True)
class Sighting:
    """What NVML says of the node's GPUs at one moment: one count and one identity query per GPU.

    The engine reads it once per check sequence and both the census (``gpucensus.take``) and the
    identities stamped on devices (``attach``) come from it, so NVML is walked once, not twice.
    """

    count: int | None
    """GPUs NVML counts (lost ones included); None when NVML could not start or count."""
    error: str = ""
    """Why NVML could not start or count (the ``GpuError`` text, naming the cause)."""
    identities: Mapping[int, GpuIdentity] = dataclasses.field(default_factory=dict)
    """Index -> identity of every GPU NVML identified."""
    lost: Mapping[int, str] = dataclasses.field(default_factory=dict)
    """GPU index -> NVML's words, for GPUs that answered ``NVML_ERROR_GPU_IS_LOST``."""


def look(telemetry: GpuTelemetry) -> Sighting:
    """Count and identify the GPUs through NVML, once. Never raises a ``GpuError``."""
    try:
        count = telemetry.count()
    except errors.GpuError as exc:
        return Sighting(None, str(exc))
    found: dict[int, GpuIdentity] = {}
    lost: dict[int, str] = {}
    for index in range(count):
        try:
            found[index] = telemetry.identity(index)
        except errors.GpuLost as exc:
            lost[index] = str(exc)
        except errors.GpuError:
            continue  # an identity NVML will not give: the check itself says what it can of that GPU
    return Sighting(count, "", found, lost)


def read(telemetry: GpuTelemetry) -> dict[int, GpuIdentity]:
    """Index -> identity of every GPU NVML will identify now; empty when NVML cannot start or count."""
    return dict(look(telemetry).identities)


def attach(result: CheckResult, identities: Mapping[int, GpuIdentity], *, unknown_bus: bool = True) -> CheckResult:
    """``result`` with ``uuid``, ``bus_id`` and ``serial`` on each device whose id is a known index or bus id.

    ``unknown_bus``: whether a device named by a bus id NVML does not identify is still a GPU (it
    gets that ``bus_id``). True for GPU checks, whose devices are GPUs; False for the follower's
    ``events``, whose unmatched bus ids are PCIe bridges and NICs (AER), not GPUs.
    """
    if not result.devices:
        return result
    # Only a device named by its bus id needs the identities by bus id: GPU checks name theirs by
    # index, and normalising every bus id for every result was a tenth of attaching (round 5).
    by_bus: dict[str, GpuIdentity] | None = None
    devices = []
    changed = False
    for device in result.devices:
        if device.id.isdigit():
            ident = identities.get(int(device.id))
        else:
            if by_bus is None:
                by_bus = {bus_id(i.pci_bus_id): i for i in identities.values()}
            ident = by_bus.get(bus_id(device.id))
        if device.uuid or (ident is None and (":" not in device.id or not unknown_bus)):
            devices.append(device)
            continue
        if ident is None:
            # A bus id NVML does not see (fell off the bus): the address is all that names it.
            devices.append(_identified(device, device.uuid, bus_id(device.id), device.serial))
            changed = True
            continue
        devices.append(_identified(device, ident.uuid, bus_id(ident.pci_bus_id), ident.serial))
        changed = True
    return dataclasses.replace(result, devices=tuple(devices)) if changed else result


def _identified(device: DeviceResult, uuid: str, bus: str, serial: str) -> DeviceResult:
    """``device`` with this identity. Built field by field: ``dataclasses.replace`` (the fields looked
    up, a dict of changes) for every GPU of every result was a third of attaching in a simulator."""
    return DeviceResult(
        id=device.id,
        status=device.status,
        value=device.value,
        unit=device.unit,
        detail=device.detail,
        uuid=uuid,
        bus_id=bus,
        serial=serial,
    )


def sim_uuid(node: str, index: int) -> str:
    """A stable, well-formed fake UUID for GPU ``index`` of simulated node ``node``."""
    digest = hashlib.sha256(f"{node}/{index}".encode()).hexdigest()
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def sim_serial(node: str, index: int) -> str:
    """A stable fake board serial (13 digits, as NVIDIA prints them) for a simulated GPU."""
    return str(int(hashlib.sha256(f"serial/{node}/{index}".encode()).hexdigest()[:12], 16) % 10**13).zfill(13)
