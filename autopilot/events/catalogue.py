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


_RECOVERY = re.compile(r"to 0x[0-9a-fA-F]+ \((?P<name>[^)]*)\)")
_NVLINK5_FATAL = re.compile(r"\bfatal\b", re.IGNORECASE)
_NVLINK5_NONFATAL = re.compile(r"\bnon-?fatal\b", re.IGNORECASE)


def classify_xid(code: int, message: str = "") -> Entry:
    """Xid ``code`` with the decisions that need its message: Xid 154's recovery action, and the
    fatal/non-fatal word NVIDIA prints in Xid 144-150 (``WORKFLOW_NVLINK5_ERR``)."""
    entry = lookup("xid", str(code))
    if code == 154:
        found = _RECOVERY.search(message)
        actions: Mapping[str, str] = data()["xid"]["xid154"]["actions"]
        name = found.group("name").strip() if found else ""
        if name in actions:
            return dataclasses.replace(entry, action=Action(actions[name]), meaning=f"{entry.meaning}: {name}")
        return entry
    if 144 <= code <= 150 and _NVLINK5_FATAL.search(message) and not _NVLINK5_NONFATAL.search(message):
        return dataclasses.replace(entry, action=Action.RESET)
    return entry


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
