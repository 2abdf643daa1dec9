"""The one set of value parsers: durations, integers, numbers, booleans, lists and maps.

Settings (``autopilot.config``), check parameters (``autopilot.registry``) and API inputs
(``api/inputs.py``) all read text through these, so a value means the same wherever it is given.
Each raises ``BadParameter`` naming the field; none accepts what ``int``/``float`` would take beyond
a canonical form (``0_3``, ``+3``, ``３``, ``nan``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from autopilot import errors

# ASCII digits only: ``\d`` would also take "３" or "٣", which ``float`` then reads as a number.
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
# Canonical numbers: what ``int``/``float`` accept beyond these ("0_3", "+3", " 3", "３", "1e400",
# "nan") is a typo or an attack, never a value someone meant.
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
MAX_DURATION_S = 100 * 365 * 86400.0  # 100 years: longer than anything means, short of every overflow
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str, *, field: str = "duration") -> float:
    """``"1h"`` -> 3600.0, ``"30m"``, ``"15s"``, ``"250ms"``, bare numbers are seconds; ``0`` disables."""
    match = _DURATION.match(text)
    if not match:
        raise errors.BadParameter(field, f"not a duration: {text[:64]!r} (use e.g. 1h, 30m, 15s)")
    value = float(match.group(1)) * _UNIT_S[match.group(2)]
    if value > MAX_DURATION_S:
        # 400 digits read as inf, and a timedelta, a sleep or a Redis TTL past this overflows
        raise errors.BadParameter(field, f"longer than {MAX_DURATION_S / 86400 / 365:g} years: {text[:64]!r}")
    return value


def parse_list(text: str) -> tuple[str, ...]:
    """A comma-separated list, items stripped, empty items dropped (``"a, b,"`` -> ``("a", "b")``)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_entries(text: str, *, field: str, most: int | None = None) -> tuple[str, ...]:
    """A comma-separated list where every entry counts (``"a, b"`` -> ``("a", "b")``): an empty entry
    (``"a,,b"``, ``",,,"``, a trailing comma) is ``BadParameter``, never dropped, since dropping one can
    turn a list that names nothing into one that means everything; more than ``most`` entries too."""
    entries = tuple(item.strip() for item in text.split(","))
    if most is not None and len(entries) > most:
        raise errors.BadParameter(field, f"at most {most} entries")
    if "" in entries:
        raise errors.BadParameter(field, f"empty entry in {text[:64]!r}")
    return entries


def parse_int(text: str, *, field: str) -> int:
    """A canonical decimal integer: ASCII digits, "-" for a negative (no "+", underscore or whitespace)."""
    if not isinstance(text, str) or len(text) > 32 or not _INT.fullmatch(text):
        raise errors.BadParameter(field, f"expected an integer (ASCII digits only), got {str(text)[:64]!r}")
    return int(text)


PORT_RANGE = (1, 65535)


def check_port(port: int, *, field: str) -> int:
    """``port`` if it is a TCP port one can bind (1..65535); a tool given -5 or 99999 fails late or never binds."""
    if not PORT_RANGE[0] <= port <= PORT_RANGE[1]:
        raise errors.BadParameter(field, f"must be between {PORT_RANGE[0]} and {PORT_RANGE[1]}, got {port}")
    return port


def parse_port(text: str, *, field: str) -> int:
    """A TCP port written as a canonical decimal integer in 1..65535."""
    return check_port(parse_int(text, field=field), field=field)


def parse_number(text: str, *, field: str) -> float:
    """A canonical finite decimal number (``1``, ``-0.5``, ``2e3``); ``BadParameter`` otherwise."""
    if not isinstance(text, str) or len(text) > 64 or not _FLOAT.fullmatch(text):
        raise errors.BadParameter(field, f"expected a number, got {str(text)[:64]!r}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise errors.BadParameter(field, f"out of range: {text[:64]!r}")
    return value


TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


def shown(raw: Any) -> str:
    """A refused value as its sender wrote it, cut to 64 characters: a string quoted, anything else (a JSON
    body's ``true``, ``1000.0``, a list) in JSON, where ``str`` said ``'True'`` to a client that sent ``true``."""
    if isinstance(raw, str):
        return repr(raw[:64])
    try:
        return json.dumps(raw)[:64]
    except (TypeError, ValueError):
        return repr(str(raw)[:64])


def parse_bool(text: str, *, field: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, any case, spaces around ignored."""
    lowered = str(text).strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise errors.BadParameter(field, f"not a boolean: {str(text)[:64]!r} (true or false)")


def parse_float(text: str, *, field: str, minimum: float | None = None) -> float:
    try:
        value = parse_number(text.strip(), field=field)
    except errors.BadParameter:
        raise errors.BadParameter(field, f"not a number: {text!r}") from None
    if minimum is not None and value < minimum:
        raise errors.BadParameter(field, f"must be a number >= {minimum}: {text!r}")
    return value


def parse_mapping(text: str, *, field: str, keys: Collection[str] | None = None) -> dict[str, float]:
    """``"dcgm=900, pciebw=120"`` -> ``{"dcgm": 900.0, "pciebw": 120.0}``; a key outside ``keys``
    (when given) is an error naming it, not an override that silently never applies."""
    out: dict[str, float] = {}
    for item in parse_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise errors.BadParameter(field, f"expected key=value, got {item!r}")
        if keys is not None and key.strip() not in keys:
            raise errors.BadParameter(field, f"unknown key {key.strip()[:64]!r} (known: {', '.join(sorted(keys))})")
        out[key.strip()] = parse_float(value.strip(), field=f"{field}.{key.strip()}", minimum=0)
    return out
