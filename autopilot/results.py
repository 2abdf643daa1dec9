"""The result model of ARCHITECTURE.md section 4.1, and its JSON form.

One ``CheckResult`` is what every part of the system passes around: the CLI prints it, the
worker stores it in Redis, the API serves it. Only this module knows its JSON layout.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from autopilot import jsoncodec


class Status(enum.StrEnum):
    """Outcome of a check or of one device within it.

    ``BUSY`` is no finding: the check never started because another GPU check held the node's
    GPUs until the run's deadline. It appears in a run's answers only, never as a node's latest
    result or in its history (the store refuses it there), so it never moves a verdict.
    """

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"
    BUSY = "busy"


# Severity order used to fold device statuses into a check status. An error ranks above warn:
# a check that could not look is more urgent than one that saw something mildly off, but below
# fail, which is a positive finding of bad hardware. Busy says only "not looked at this time".
_SEVERITY = {Status.SKIPPED: 0, Status.OK: 1, Status.BUSY: 2, Status.WARN: 3, Status.ERROR: 4, Status.FAIL: 5}


# C0 controls but tab and newline, DEL, C1 controls (0x9b is a one-byte CSI) and the bidi overrides: rich
# passes ESC through into a table cell, kubectl and log viewers print it as it is, so a summary or an
# answer holding them could drive the terminal of whoever reads it.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
SUMMARY_LIMIT = 4096  # characters of a summary or a device's detail; a tool's words beyond are cut


def printable(text: str) -> str:
    """``text`` with its control characters written out (``\\x1b``), for text that came from a tool or
    another process and is about to reach a terminal, a text answer, a log or a Kubernetes object."""
    if text.isprintable():  # most text: one C loop, no regular expression
        return text
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _words(text: str) -> str:
    """A summary or detail as a result holds it: printable, at most ``SUMMARY_LIMIT`` characters."""
    text = printable(text)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 3] + "..."


def worst(statuses: Iterable[Status], default: Status = Status.OK) -> Status:
    """The most severe of ``statuses`` (``default`` when there are none)."""
    found = list(statuses)
    if not found:
        return default
    return max(found, key=_SEVERITY.__getitem__)


@dataclasses.dataclass(frozen=True)
class DeviceResult:
    """The finding for one device (a GPU, a remote node/interface pair, ...).

    For a GPU, ``id`` is what the tool calls it (its index, or its bus id when NVML cannot see
    it); ``uuid``, ``bus_id`` and ``serial`` (the board's) are its identity, filled in by the
    engine (``gpuident.attach``), and appear in the JSON only when known.
    """

    id: str
    status: Status
    value: float | int | str | None = None
    unit: str | None = None
    detail: str = ""
    uuid: str = ""
    bus_id: str = ""
    serial: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "value": self.value,
            "unit": self.unit,
            "detail": self.detail,
        }
        if self.uuid:
            out["uuid"] = self.uuid
        if self.bus_id:
            out["bus_id"] = self.bus_id
        if self.serial:
            out["serial"] = self.serial
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DeviceResult:
        return cls(
            id=str(raw["id"]),
            status=Status(raw["status"]),
            value=raw.get("value"),
            unit=raw.get("unit"),
            detail=str(raw.get("detail") or ""),
            uuid=str(raw.get("uuid") or ""),
            bus_id=str(raw.get("bus_id") or ""),
            serial=str(raw.get("serial") or ""),
        )


def utc_now_iso(now: datetime | None = None) -> str:
    """``2026-11-29T22:00:00Z``: the one timestamp format of results."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def on_node_clock(shared: datetime, offset: float | None) -> datetime:
    """``shared`` (the store's clock) as the node's worker's clock read it, ``offset`` being that clock minus the
    store's at its last heartbeat (None: not known, the store's clock as it is). Its results are stamped on that
    clock: judged against this, a result's age is (shared now) - (stamp - offset). One rule for the reconcile,
    remediation and GPU incident history alike."""
    if offset is None:
        return shared
    try:
        return shared + timedelta(seconds=offset)
    except OverflowError:  # an offset no date can hold (another writer's record): judged as stamped
        return shared


def parse_iso(text: str) -> datetime:
    """Inverse of :func:`utc_now_iso` (also accepts fractional seconds and offsets)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What one check found on one node (ARCHITECTURE.md 4.1).

    Checks fill ``status``, ``summary``, ``devices``, ``data`` and ``fatal``; the execution
    engine fills ``check``, ``node``, ``params``, ``started_at`` and ``duration_s``.
    """

    check: str
    status: Status
    summary: str = ""
    node: str = ""
    fatal: bool = False
    devices: tuple[DeviceResult, ...] = ()
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0

    @property
    def is_bad(self) -> bool:
        """True for warn, fail and error: anything that keeps a node from ``PASS``."""
        return self.status in (Status.WARN, Status.FAIL, Status.ERROR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "node": self.node,
            "status": self.status.value,
            "fatal": self.fatal,
            "summary": self.summary,
            "devices": [d.to_dict() for d in self.devices],
            "data": dict(self.data),
            "params": dict(self.params),
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
        }

    def to_json(self) -> str:
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """``to_json`` as UTF-8, what the results store writes."""
        return jsoncodec.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CheckResult:
        """The result ``raw`` describes. Raises ``ValueError`` for anything of another shape (a list,
        a missing ``check``, devices that are not objects...): what another writer left in the store
        or a log is data to refuse, never a ``TypeError`` deep in a reader."""
        try:
            started_at = str(raw.get("started_at") or "")
            if started_at:
                parse_iso(started_at)  # every reader of a verdict compares it: one that cannot is refused here
            duration_s = float(raw.get("duration_s") or 0.0)
            if not math.isfinite(duration_s):
                raise ValueError(f"duration_s {duration_s}")
            return cls(
                check=str(raw["check"]),
                node=str(raw.get("node") or ""),
                status=Status(raw["status"]),
                fatal=bool(raw.get("fatal", False)),
                summary=str(raw.get("summary") or ""),
                devices=tuple(DeviceResult.from_dict(d) for d in raw.get("devices") or ()),
                data=dict(raw.get("data") or {}),
                params=dict(raw.get("params") or {}),
                started_at=started_at,
                duration_s=duration_s,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a check result ({type(exc).__name__}: {str(exc)[:80]})") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckResult:
        """The result ``text`` holds; ``ValueError`` for what is not JSON (or not UTF-8) or not a result."""
        return cls.from_dict(jsoncodec.loads(text))

    @classmethod
    def dict_from_json(cls, text: str | bytes) -> dict[str, Any]:
        """``from_json(text).to_dict()``, without building the objects when ``text`` is already in
        the layout ``to_dict`` writes (what the store holds): an API answer of 5,000 results
        spent a third of its CPU building and unbuilding them. Raises as ``from_json`` does."""
        raw = jsoncodec.loads(text)
        if (
            isinstance(raw, dict)
            and raw.keys() == _DICT_KEYS
            and isinstance(raw["status"], str)
            and raw["status"] in _STATUS_VALUES
            and isinstance(raw["check"], str)
            and isinstance(raw["node"], str)
            and isinstance(raw["summary"], str)
            and isinstance(raw["devices"], list)
            and all(isinstance(d, dict) for d in raw["devices"])
            and isinstance(raw["data"], dict)
            and isinstance(raw["params"], dict)
        ):
            return raw
        return cls.from_dict(raw).to_dict()


def tidy(result: CheckResult) -> CheckResult:
    """``result`` with its summary and its devices' ids and details printable and at most ``SUMMARY_LIMIT``
    characters: what a check made of a tool's words (a dcgmi excerpt, a kernel log line) reaches
    terminals, logs and Kubernetes objects. The result itself when nothing changes (the usual case)."""
    devices = tuple(map(_tidy_device, result.devices))
    summary = _words(result.summary)
    if summary == result.summary and all(a is b for a, b in zip(devices, result.devices, strict=True)):
        return result
    return dataclasses.replace(result, summary=summary, devices=devices)


def _tidy_device(device: DeviceResult) -> DeviceResult:
    # Most devices are already tidy: answered with three C calls, not two calls through ``printable``.
    if device.id.isprintable() and device.detail.isprintable() and len(device.detail) <= SUMMARY_LIMIT:
        return device
    ident, detail = printable(device.id), _words(device.detail)
    if ident == device.id and detail == device.detail:
        return device
    return dataclasses.replace(device, id=ident, detail=detail)


_DICT_KEYS = frozenset(CheckResult("", Status.OK).to_dict())
_STATUS_VALUES = frozenset(s.value for s in Status)

# The first and last fields of a result as ``to_dict`` lays it out and ``jsoncodec.dumps`` writes it
# (compact, keys in ``to_dict``'s order): what ``StoredResult.of`` recognises without decoding.
_HEAD = re.compile(
    rb'\{"check":"([^"\\]*)","node":"([^"\\]*)","status":"('
    + b"|".join(v.encode() for v in sorted(_STATUS_VALUES))
    + rb')","fatal":(?:true|false),"summary":"'
)
_TAIL = re.compile(rb'\},"started_at":"[^"\\]*","duration_s":-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\}\Z')
_TAIL_BYTES = 96  # "},"started_at":"<an ISO time>","duration_s":<a number>} and some room


class StoredResult(Mapping[str, Any], jsoncodec.Preencoded):
    """A result as the store holds it (its JSON text), decoded only when something reads inside it.

    An answer of a 1,000-node run holds 5,000 results, about 20 MiB of JSON, and the API's own
    work was mostly decoding them to encode them again. A ``StoredResult`` knows its ``status``
    without decoding (all a run's totals need) and is written into an answer as the JSON it was
    stored as (``json_bytes``; ``jsoncodec.dumps`` and the API's encoder splice it in). Reading any
    other field decodes it once. As a ``Mapping`` it reads as ``CheckResult.to_dict`` would.

    ``of`` takes the text as stored only when it is in the layout ``to_dict`` and
    ``jsoncodec.dumps`` write (its first fields and its last, checked); anything else (a worker of
    an older version, another encoder) is decoded, put in that layout and encoded again, as
    ``CheckResult.dict_from_json`` does.
    """

    __slots__ = ("_decoded", "_json", "status")

    def __init__(self, text: bytes, status: str, decoded: dict[str, Any] | None = None) -> None:
        self._json = text
        self.status = status
        self._decoded = decoded

    @classmethod
    def of(cls, text: str | bytes, *, node: str | None = None, check: str | None = None) -> StoredResult:
        """The result stored as ``text``. Raises as ``CheckResult.from_json`` does for what is not a result,
        and ``ValueError`` for a result of another node or check than ``node``/``check`` (when given): a
        writer that stored it under the wrong key must not lend one node's finding to another."""
        blob = text.encode() if isinstance(text, str) else bytes(text)
        head = _HEAD.match(blob)
        if head is not None and _TAIL.search(blob, max(0, len(blob) - _TAIL_BYTES)) is not None:
            named_check, named_node, status = (g.decode() for g in head.groups())
            out = cls(blob, status)
        else:
            raw = CheckResult.dict_from_json(blob)
            named_check, named_node = raw["check"], raw["node"]
            out = cls(jsoncodec.dumps(raw), raw["status"], raw)
        if (node is not None and named_node != node) or (check is not None and named_check != check):
            raise ValueError(f"a result of {named_node[:80]!r}/{named_check[:40]!r} stored as {node!r}/{check!r}")
        return out

    @classmethod
    def from_result(cls, result: CheckResult) -> StoredResult:
        raw = result.to_dict()
        return cls(jsoncodec.dumps(raw), raw["status"], raw)

    @property
    def json_bytes(self) -> bytes:
        """The result's JSON, as stored."""
        return self._json

    def as_dict(self) -> dict[str, Any]:
        """The result as ``CheckResult.to_dict`` gives it (decoded on first use, then kept)."""
        if self._decoded is None:
            self._decoded = CheckResult.dict_from_json(self._json)
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        if key == "status":
            return self.status
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __repr__(self) -> str:
        return f"StoredResult({self._json[:80]!r}...)"


GROUP_NAMED = 8  # ids a grouped summary names per finding; past it the rest are counted


def _named(noun: str, ids: Sequence[str], of: int) -> str:
    """``ids`` (devices with one finding) as the phrase a grouped summary names them by: each, in natural order
    (``node-2`` before ``node-10``), or ``all N <noun>s`` when they are every one of the ``of`` devices of that
    noun, and the first ``GROUP_NAMED`` and a count past that: the summary of a node whose own link is down at
    1,000 nodes named 999 peers, and was cut at ``SUMMARY_LIMIT`` before it said what they had in common."""
    ordered = sorted(ids, key=_natural)
    if len(ordered) == 1:
        return f"{noun} {ordered[0]}"
    listed = ", ".join(ordered[:GROUP_NAMED])
    if len(ordered) > GROUP_NAMED:
        listed += f" and {len(ordered) - GROUP_NAMED} more"
    if len(ordered) == of:
        return f"all {of} {noun}s" + (f" ({listed})" if len(ordered) <= GROUP_NAMED else "")
    return f"{noun}s {listed}"


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the numbers inside ``text`` by value (``gpu-2`` before ``gpu-10``)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def from_devices(
    check: str,
    devices: Iterable[DeviceResult],
    *,
    ok_summary: str,
    fatal: bool = False,
    data: Mapping[str, Any] | None = None,
    what: str = "GPU",
    group: bool = False,
    what_of: Mapping[str, str] | None = None,
) -> CheckResult:
    """Fold per-device findings into one result whose summary names the bad devices.

    The check status is the worst device status; with no devices at all the check is an
    ``error`` (we looked and found nothing to judge, which is never a pass). ``group``: bad devices
    with the same detail are named together, once (``peers a/eth0, b/eth0: unreachable: ...``).
    ``what_of``: the noun of a device that is not a ``what`` (by its id): ``ping``'s own interface among its peers.
    """
    nouns = what_of or {}
    devs = tuple(devices)
    if not devs:
        return CheckResult(check, Status.ERROR, f"no {what} results", data=dict(data or {}))
    status = worst(d.status for d in devs)
    bad = [d for d in devs if d.status in (Status.WARN, Status.FAIL, Status.ERROR)]
    if not bad:
        summary = ok_summary
    elif group:
        alike: dict[tuple[str, str], list[DeviceResult]] = {}
        for d in bad:
            alike.setdefault((nouns.get(d.id, what), d.detail or d.status.value), []).append(d)
        # Worst finding first (a summary cut at its limit, or in a Node condition's message, keeps it), then
        # by the first device each names, in natural order.
        phrases = sorted(
            alike.items(),
            key=lambda kv: (-_SEVERITY[worst(d.status for d in kv[1])], min(_natural(d.id) for d in kv[1])),
        )
        counts = collections.Counter(nouns.get(d.id, what) for d in devs)
        summary = "; ".join(
            f"{_named(noun, [d.id for d in found], counts[noun])}: {detail}" for (noun, detail), found in phrases
        )
    else:
        summary = "; ".join(f"{nouns.get(d.id, what)} {d.id}: {d.detail or d.status.value}" for d in bad)
    return CheckResult(
        check,
        status,
        summary,
        fatal=fatal and status is Status.FAIL,
        devices=devs,
        data=dict(data or {}),
    )
