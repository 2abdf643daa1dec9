"""The event catalogue: code -> meaning, fault owner and action, loaded from ``autopilot/data/events.json``.

Actions, from mildest: ``ignore`` (counted in metrics, no verdict change), ``warn``, ``reset`` (the
GPU needs a reset: the device and the result ``fail``), ``evict`` (the node must take no work: a
fatal ``fail``). The Xid table follows NVIDIA's published Resolution Buckets; the data file names
its source per section and says, per code, why the bucket maps to our action.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any


class Action(enum.StrEnum):
    IGNORE = "ignore"
    WARN = "warn"
    RESET = "reset"
    EVICT = "evict"

    @property
    def rank(self) -> int:
        return _RANK[self.value]


_RANK = {"ignore": 0, "warn": 1, "reset": 2, "evict": 3}
OWNERS = ("hardware", "driver", "application", "unknown")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One catalogue row. ``code`` is the full event code, e.g. ``xid.79``, ``aer.fatal``, ``ib.down``."""

    code: str
    meaning: str
    owner: str
    action: Action
    mnemonic: str = ""
    known: bool = True


@functools.cache
def data() -> Mapping[str, Any]:
    """The catalogue file as loaded (read once per process)."""
    text = resources.files("autopilot").joinpath("data/events.json").read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    return raw


def _row(code: str, row: Mapping[str, Any]) -> Entry:
    meaning, mnemonic = str(row.get("meaning", "")), str(row.get("mnemonic", ""))
    return Entry(code, meaning, str(row["owner"]), Action(row["action"]), mnemonic)


def lookup(section: str, number: str) -> Entry:
    """The entry of ``number`` in ``section`` (``xid``, ``sxid``, ``aer``, ``counters``, ``follower``).

    A code the catalogue does not know is ``warn`` with its number, never ignored and never evicting.
    """
    table = data()[section]
    code = number if section in ("counters", "follower") else f"{section}.{number}"
    row = table["codes"].get(number)
    if row is not None:
        return _row(code, row)
    unknown = table.get("unknown", {"owner": "unknown"})
    owner = str(unknown.get("owner", "unknown"))
    return Entry(code, f"unknown {section} code {number}", owner, Action.WARN, known=False)


_RECOVERY = re.compile(r"to (?P<value>0x[0-9a-fA-F]{1,8}) \((?P<name>[^)]*)\)")
_NVLINK5_FATAL = re.compile(r"\bfatal\b", re.IGNORECASE)
_NVLINK5_NONFATAL = re.compile(r"\bnon-?fatal\b", re.IGNORECASE)


def classify_xid(code: int, message: str = "") -> Entry:
    """Xid ``code`` with the decisions that need its message: Xid 154's recovery action, and the
    fatal/non-fatal word NVIDIA prints in Xid 144-150 (``WORKFLOW_NVLINK5_ERR``)."""
    entry = lookup("xid", str(code))
    if code == 154:
        found = _RECOVERY.search(message)
        if found is None:
            return entry
        # The name the driver printed, else the value (the same enum NVML reads): a name not seen yet
        # in public logs still takes its value's action.
        value = _log_names().get(found.group("name").strip(), int(found.group("value"), 16))
        return recovery_action(value) if str(value) in _recovery_rows() else entry
    if 144 <= code <= 150 and _NVLINK5_FATAL.search(message) and not _NVLINK5_NONFATAL.search(message):
        return dataclasses.replace(entry, action=Action.RESET)
    return entry


def _recovery_rows() -> Mapping[str, Mapping[str, str]]:
    rows: Mapping[str, Mapping[str, str]] = data()["xid"]["xid154"]["values"]
    return rows


def _log_names() -> dict[str, int]:
    return {row["log"]: int(value) for value, row in _recovery_rows().items() if "log" in row}


def recovery_name(value: int) -> str:
    """How the driver names recovery action ``value`` (``Node Reboot Required``), else its NVML name."""
    row = _recovery_rows().get(str(value))
    if row is None:
        return "unknown recovery action"
    return row.get("log") or row["nvml"]


def recovery_label(value: int) -> str:
    """A recovery action as the kernel's Xid 154 line writes it: ``0x2 (Node Reboot Required)``."""
    return f"{value:#x} ({recovery_name(value)})"


def recovery_action(value: int) -> Entry:
    """Xid 154 with the action of the driver's recovery action ``value`` (``nvmlDeviceGpuRecoveryAction_t``,
    as NVML reads it or the kernel prints it). A value the table does not list is ``warn``: never
    ignored, never evicting."""
    entry = lookup("xid", "154")
    section = data()["xid"]["xid154"]
    row = _recovery_rows().get(str(value))
    action = Action(row["action"] if row is not None else section["unknown"]["action"])
    return dataclasses.replace(entry, action=action, meaning=f"{entry.meaning}: {recovery_name(value)}")


def classify_sxid(code: int, message: str = "") -> Entry:
    """An NVSwitch SXid: the catalogue's row, else the severity the driver printed (``Fatal`` / ``Non-fatal``)."""
    entry = lookup("sxid", str(code))
    if entry.known:
        return entry
    severity: Mapping[str, str] = data()["sxid"]["severity_actions"]
    if _NVLINK5_NONFATAL.search(message):
        return dataclasses.replace(entry, action=Action(severity["non-fatal"]), owner="hardware")
    if _NVLINK5_FATAL.search(message):
        return dataclasses.replace(entry, action=Action(severity["fatal"]), owner="hardware")
    return entry


def counter(code: str) -> Entry:
    """A counter or follower code (``ib.down``, ``kmsg.gap``, ...)."""
    section = "follower" if code in data()["follower"]["codes"] else "counters"
    return lookup(section, code)


def all_xids() -> dict[int, Entry]:
    """Every Xid the catalogue lists."""
    return {int(k): lookup("xid", k) for k in data()["xid"]["codes"]}
