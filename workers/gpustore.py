"""GPU history in Redis: each GPU's incidents under its UUID, bounded by count and age.

Keys (prefix ``ap:``), none of them named after a node, so a GPU's history survives its node
being renamed, re-imaged or forgotten:

- ``gpu:<uuid>``          list of incident JSON, newest first, trimmed to ``gpu_history_len``
- ``gpuinfo:<uuid>``      hash: ``serial``, ``node`` (last seen on), ``index``, ``bus_id``, ``last_seen``
- ``gpuserial:<serial>``  set of UUIDs that board serial was seen with

Every key expires ``gpu_history_retention`` after its GPU's last incident or sighting, and
incidents older than that are dropped when read, so storage stays bounded by GPUs x count.
UUIDs reaching a key are validated here (``gpuident.valid_uuid``), whatever the caller checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from autopilot import gpuhistory, gpuident, results
from autopilot.gpuhistory import Incident
from autopilot.gpuverdict import GpuState
from workers.store import _record, decoded, server_seconds, translating

P = "ap:"
_SERIAL_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_")


def _serial_ok(serial: str) -> bool:
    return 0 < len(serial) <= 64 and set(serial) <= _SERIAL_CHARS


def record(
    client: redis.Redis[bytes],
    node: str,
    states: Mapping[str, GpuState],
    found: Sequence[Incident],
    *,
    now: datetime,
    history_len: int,
    retention_s: float,
) -> None:
    """Write ``found`` and refresh the sighting of every GPU of ``states`` (one pipeline)."""
    ttl = max(1, int(retention_s))
    stamp = results.utc_now_iso(now)
    pipe = client.pipeline(transaction=False)
    for incident in found:
        if not gpuident.valid_uuid(incident.uuid):
            continue
        key = f"{P}gpu:{incident.uuid}"
        pipe.lpush(key, json.dumps(incident.to_dict(), separators=(",", ":")))
        pipe.ltrim(key, 0, history_len - 1)
        pipe.expire(key, ttl)
    for state in states.values():
        if not gpuident.valid_uuid(state.uuid):
            continue
        info = {"node": node, "index": state.index, "bus_id": state.bus_id, "last_seen": stamp}
        if _serial_ok(state.serial):
            info["serial"] = state.serial
            pipe.sadd(f"{P}gpuserial:{state.serial}", state.uuid)
            pipe.expire(f"{P}gpuserial:{state.serial}", ttl)
        pipe.hset(f"{P}gpuinfo:{state.uuid}", mapping=info)  # type: ignore[arg-type]
        pipe.expire(f"{P}gpuinfo:{state.uuid}", ttl)
        pipe.expire(f"{P}gpu:{state.uuid}", ttl)
    if len(pipe):
        pipe.execute()


def incidents_many(
    client: redis.Redis[bytes], uuids: Iterable[str], *, now: datetime, retention_s: float
) -> dict[str, list[Incident]]:
    """UUID -> its retained incidents, newest first (one pipeline; invalid UUIDs are left out)."""
    wanted = [u for u in dict.fromkeys(uuids) if gpuident.valid_uuid(u)]
    if not wanted:
        return {}
    pipe = client.pipeline(transaction=False)
    for uuid in wanted:
        pipe.lrange(f"{P}gpu:{uuid}", 0, -1)
    out: dict[str, list[Incident]] = {}
    for uuid, raws in zip(wanted, pipe.execute(), strict=True):
        out[uuid] = gpuhistory.retained(_decode(raws), now=now, retention_s=retention_s)
    return out


def _retained(
    client: redis.Redis[bytes], found: list[Incident], *, now: datetime, retention_s: float
) -> list[Incident]:
    """``gpuhistory.retained`` at ``now`` (the store's clock), each incident on its node's clock (one MGET)."""
    offsets = _offsets(client, {i.node for i in found if i.node})
    return gpuhistory.retained(found, now=now, retention_s=retention_s, offsets=offsets)


def _offsets(client: redis.Redis[bytes], nodes: Iterable[str]) -> dict[str, float | None]:
    """Node -> its worker's last measured clock offset (None: not measured, or no readable record: its incidents
    judged as stamped). The record is read as every other reader reads it (``store._record``)."""
    wanted = sorted(nodes)
    if not wanted:
        return {}
    records = (_record(raw, n) for n, raw in zip(wanted, client.mget([f"{P}node:{n}" for n in wanted]), strict=True))
    return {n: r.clock_offset if r is not None else None for n, r in zip(wanted, records, strict=True)}


def _decode(raws: Iterable[bytes | str]) -> list[Incident]:
    found = []
    for raw in raws:
        try:
            found.append(Incident.from_dict(json.loads(raw)))
        except (ValueError, TypeError, AttributeError):
            continue  # a damaged entry is skipped, never the whole history
    return found


def gpu(
    client: redis.Redis[bytes], uuid: str, *, retention_s: float, now: datetime | None = None
) -> dict[str, Any] | None:
    """What ``GET /api/v1/gpus/<uuid>`` serves: identity, last sighting, incidents (and those of the
    other UUIDs its board serial was seen with); None when the GPU is unknown.

    Retention is judged on the store's clock (``now``; None: Redis ``TIME``, read in the pipeline that reads the
    GPU), each incident on the clock of the node that stamped it (that node's ``clock_offset``, one MGET), as that
    node's reconcile judges it: not on the reading host's clock, which may be minutes off."""
    uuid = gpuident.checked_uuid(uuid)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(f"{P}gpuinfo:{uuid}")
    pipe.lrange(f"{P}gpu:{uuid}", 0, -1)
    pipe.time()
    raw_info, raw_own, told = pipe.execute()
    shared = now or datetime.fromtimestamp(server_seconds(told), UTC)
    info = {decoded(k): decoded(v) for k, v in raw_info.items()}
    own = _retained(client, _decode(raw_own), now=shared, retention_s=retention_s)
    if not info and not own:
        return None
    serial = info.get("serial", "") or next((i.serial for i in own if i.serial), "")
    others: list[str] = []
    if _serial_ok(serial):
        others = sorted(u for u in (decoded(m) for m in client.smembers(f"{P}gpuserial:{serial}")) if u != uuid)
    merged = list(own)
    if others:
        pipe = client.pipeline(transaction=False)
        for other in others:
            pipe.lrange(f"{P}gpu:{other}", 0, -1)
        found = [i for raws in pipe.execute() for i in _decode(raws)]
        merged.extend(_retained(client, found, now=shared, retention_s=retention_s))
        merged.sort(key=lambda i: i.at, reverse=True)
    return {
        "uuid": uuid,
        "serial": serial,
        "node": info.get("node", ""),
        "index": info.get("index", ""),
        "bus_id": info.get("bus_id", ""),
        "last_seen": info.get("last_seen", ""),
        "same_serial": others,
        "incidents": [i.to_dict() for i in merged],
    }


@translating
class GpuHistory:
    """The functions above on one client, as ``ResultsStore.gpu_history()`` hands them out."""

    def __init__(self, client: redis.Redis[bytes], server_clock: Callable[[], float] | None = None) -> None:
        self._r = client
        self._server_clock = server_clock  # the store's stand-in for ``TIME`` (tests), as ``ResultsStore`` has it

    def record(
        self,
        node: str,
        states: Mapping[str, GpuState],
        found: Sequence[Incident],
        *,
        now: datetime,
        history_len: int,
        retention_s: float,
    ) -> None:
        record(self._r, node, states, found, now=now, history_len=history_len, retention_s=retention_s)

    def incidents_many(self, uuids: Iterable[str], *, now: datetime, retention_s: float) -> dict[str, list[Incident]]:
        return incidents_many(self._r, uuids, now=now, retention_s=retention_s)

    def gpu(self, uuid: str, *, retention_s: float, now: datetime | None = None) -> dict[str, Any] | None:
        """``gpu`` at ``now``, the store's clock (None: read from it)."""
        if now is None and self._server_clock is not None:
            now = datetime.fromtimestamp(self._server_clock(), UTC)
        return gpu(self._r, uuid, retention_s=retention_s, now=now)
