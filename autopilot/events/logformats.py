"""Saved kernel logs: the formats operators save them in, read into messages with their source and time.

The live follower reads ``/dev/kmsg`` records; a saved log comes in many shapes, all read here:

- ``dmesg`` (seconds since boot, ``-T``, ``-H``, ``--time-format=iso``, ``-x``), ``/proc/kmsg`` (``<4>[...]``),
  raw ``/dev/kmsg`` records (``PRI,SEQ,TS_USEC,FLAGS;MESSAGE``);
- ``journalctl -k`` ``-o short``/``short-precise``/``short-iso``/``short-iso-precise``/``short-full``/
  ``with-unit``/``short-monotonic``/``short-delta``/``short-unix``/``cat``, and the structured ones:
  ``-o verbose`` (a header line ``<weekday> <date> <time> <zone> [s=..;..;t=<µs, hex>;..]``, then
  ``    KEY=value`` fields, a multi-line value's later lines indented past its ``=``), ``-o export``
  (``KEY=value`` lines, entries apart by an empty line; a value with a newline or another control
  character is ``KEY``, newline, its length as 64-bit little-endian, the bytes, newline) and
  ``-o json``/``json-pretty``/``json-seq``/``json-sse`` (one object per entry; a value is a string, an
  array of byte values where it is not printable UTF-8, ``null`` past 4096 bytes, or an array of those
  where the field repeats);
- kern.log/syslog: BSD lines (``Jun  1 10:11:12 host kernel: ...``, with a ``<PRI>`` or without, RFC 3339
  times too) and RFC 5424 (``<4>1 2025-06-01T10:11:12.000Z host kernel - - - msg``, structured data
  ``-`` or ``[id k="v"]`` elements);
- any of these collected through a container: the CRI log file (``<RFC 3339 time> stdout|stderr P|F
  <line>``, ``P`` a part of a line the next ones finish), ``kubectl logs --timestamps``
  (``<RFC 3339 time> <line>``), Docker's json-file (``{"log": "...", "stream": ..., "time": ...}``).

Each message says where it came from (``source``): ``kernel`` when the format says so, ``""`` when
the line names no source (``dmesg -t``, ``journalctl -o cat``: a kernel log by what it holds, never
by its shape), else the program or log it is (syslog's program, ``klog``, Fabric Manager), which
``autopilot evaluate events`` never judges. ``at`` is the line's own time where it has one: seconds
since boot (dmesg, kmsg, ``short-monotonic``) or since the epoch (the rest; a syslog time without
a year is read in 2000, a leap year, and a year is added where the times wrap past December).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from autopilot.events import kmsg

KERNEL = "kernel"
BARE = ""  # the line names no source
UNREADABLE = "unreadable JSON"  # a journal or Docker JSON line that is no JSON (cut short, or not JSON at all)
_MAX_TIME = 1e11  # seconds; a larger "time" is no clock's (and past it datetime refuses)
_YEAR_S = 366 * 86400.0
_NO_TIME = (None, False, False)


@dataclasses.dataclass(frozen=True)
class LogMessage:
    """One message of a saved log: its text, its time (None: the line had none) and its source."""

    text: str
    at: float | None = None
    source: str = KERNEL

    @property
    def judged(self) -> bool:
        """Whether the follower would have read it: the kernel's, or a line that names no source."""
        return self.source in (KERNEL, BARE)


def messages_from_text(text: str) -> Iterator[str]:
    """The kernel messages of a saved log (and the lines that name no source), in order."""
    return (m.text for m in log_messages(text) if m.judged)


def log_messages(text: str) -> Iterator[LogMessage]:
    """Every message of a saved log, whichever format it is in (the module docstring lists them)."""
    first = _first_line(text)
    if first.startswith(("{", "\x1e", "data: {")):
        messages: Iterable[LogMessage] = _json_messages(text)
    elif _EXPORT_FIRST.match(first):
        messages = _export_messages(text)
    elif _VERBOSE_HEAD.match(first):
        messages = _verbose_messages(text)
    else:
        messages = _line_messages(_unwrap_cri(text.splitlines()))
    return (dataclasses.replace(m, text=_printable(m.text)) for m in _join_notices(messages))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            return line.lstrip(" \t")
    return ""


def _printable(text: str) -> str:
    """``text`` with the bytes that were no UTF-8 (kept as lone surrogates to find the journal's binary
    fields) as U+FFFD: a lone surrogate cannot be printed or written as UTF-8."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# ---------------------------------------------------------------- times


def _seconds(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value < _MAX_TIME else None


def _iso(text: str) -> float | None:
    """RFC 3339 / ISO 8601 (``,`` or ``.`` before the fraction, ``Z`` or an offset; none: UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _strptime(text: str, form: str) -> float | None:
    """A time without a zone, read as UTC: only the distance between a log's times counts."""
    whole, _, fraction = text.partition(".")
    try:
        moment = datetime.strptime(whole, form).replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


def _yearless(month: str, day: str, clock: str) -> float | None:
    form = "%Y %b %d %H:%M:%S" if clock.count(":") == 2 else "%Y %b %d %H:%M"
    return _strptime(f"2000 {month} {day.strip()} {clock}", form)


# ---------------------------------------------------------------- line formats

# (pattern, its time from the match: (seconds, a delta to add to the last time, a time without a year),
# its source: a name, or None: the match's ``prog`` group)
_When = Callable[[re.Match[str]], tuple[float | None, bool, bool]]
_ISO_TIME = r"\d{4}-\d\d-\d\dT[\d:]{8}(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
_ISO_DOT = r"\d{4}-\d\d-\d\dT[\d:]{8}(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"  # RFC 3339 as syslog writes it, never a comma
_PROG = r"(?P<prog>[A-Za-z_][\w.@/-]*?)(?:\[\d+\])?: "
_SD = r'(?:-|(?:\[(?:[^\]"\\]|\\.|"(?:[^"\\]|\\.)*")*\])+)'  # RFC 5424 STRUCTURED-DATA


def _at(group: str, read: Callable[[str], float | None]) -> _When:
    return lambda m: (read(m.group(group)), False, False)


def _dmesg_when(m: re.Match[str]) -> tuple[float | None, bool, bool]:
    return _seconds(m.group("t")), bool(m.group("plus")), False


def _yearless_when(m: re.Match[str]) -> tuple[float | None, bool, bool]:
    return _yearless(m.group("mon"), m.group("day"), m.group("hms")), False, True


def _usec(m: re.Match[str]) -> tuple[float | None, bool, bool]:
    return _usec_text(m.group("t")), False, False


def _usec_text(text: str | None) -> float | None:
    """Microseconds (the journal's and kmsg's unit) as seconds."""
    try:
        value = float(text or "") / 1e6
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value < _MAX_TIME else None


def _none(m: re.Match[str]) -> tuple[float | None, bool, bool]:
    return _NO_TIME


def _rfc5424_when(m: re.Match[str]) -> tuple[float | None, bool, bool]:
    return (None if m.group("t") == "-" else _iso(m.group("t"))), False, False


_SYSLOG_TIME = r"(?:<\d{1,3}>)?(?P<mon>[A-Z][a-z]{2}) (?P<day>[ \d]\d) (?P<hms>[\d:]{8}(?:\.\d+)?)"
_LINE_FORMATS: tuple[tuple[re.Pattern[str], _When, str | None], ...] = (
    (re.compile(r"^\d+,\d+,(?P<t>\d+),[^;]*;"), _usec, KERNEL),  # raw /dev/kmsg
    # journalctl -o short-monotonic / short-delta (``[ 12.345678 <    0.000004>] host kernel: ``),
    # short-unix (``1748772672.308145 host kernel: ``), short-full and with-unit
    # (``Sun 2025-06-01 10:11:12 UTC host kernel: ``: with-unit names the unit, and a kernel message has none)
    (re.compile(r"^\[\s*(?P<t>[\d.]+)(?:\s+<\s*[\d.]+>)?\] \S+ kernel: "), _at("t", _seconds), KERNEL),
    (re.compile(r"^(?P<t>\d+\.\d+) \S+ kernel: "), _at("t", _seconds), KERNEL),
    (
        re.compile(r"^[A-Z][a-z]{2} (?P<t>\d{4}-\d\d-\d\d [\d:]{8}(?:\.\d+)?) \S+ \S+ kernel: "),
        lambda m: (_strptime(m.group("t"), "%Y-%m-%d %H:%M:%S"), False, False),
        KERNEL,
    ),
    (  # short-full and with-unit, other programs (with-unit names the unit: ``gpud.service: ``)
        re.compile(rf"^[A-Z][a-z]{{2}} (?P<t>\d{{4}}-\d\d-\d\d [\d:]{{8}}(?:\.\d+)?) \S+ \S+ {_PROG}"),
        lambda m: (_strptime(m.group("t"), "%Y-%m-%d %H:%M:%S"), False, False),
        None,
    ),
    # dmesg; /proc/kmsg (``<4>[ 12.345678] ...``); dmesg -H's deltas (``[  +0.000004] ...``)
    (re.compile(r"^(?:<\d>)?\[\s*(?P<plus>\+)?(?P<t>[\d.]+)\]\s?"), _dmesg_when, KERNEL),
    (  # dmesg -T
        re.compile(r"^\[(?P<t>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d [\d:]{8} \d{4})\]\s?"),
        lambda m: (_strptime(" ".join(m.group("t").split()), "%a %b %d %H:%M:%S %Y"), False, False),
        KERNEL,
    ),
    (  # dmesg -H (``[Jun  1 10:11] ...``)
        re.compile(r"^\[(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2}) (?P<hms>[\d:]{5})\]\s?"),
        _yearless_when,
        KERNEL,
    ),
    # journalctl -o short / short-precise, syslog (a <PRI> first where it came off the wire);
    # journalctl -o short-iso / short-iso-precise, RFC 3339 syslog
    (re.compile(rf"^{_SYSLOG_TIME} \S+ kernel: "), _yearless_when, KERNEL),
    (re.compile(rf"^(?:<\d{{1,3}}>)?(?P<t>{_ISO_TIME}) \S+ kernel: "), _at("t", _iso), KERNEL),
    # RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]
    (
        re.compile(rf"^<\d{{1,3}}>\d{{1,2}} (?P<t>\S+) \S+ (?P<prog>\S+) \S+ \S+ {_SD}(?: \ufeff?|$)"),
        _rfc5424_when,
        None,
    ),
    # syslog, other programs (a program's name starts with a letter: ``pcieport 0000:00:01.0: `` is a
    # kernel message after dmesg's ISO time, below)
    (re.compile(rf"^{_SYSLOG_TIME} \S+ {_PROG}"), _yearless_when, None),
    (re.compile(rf"^(?:<\d{{1,3}}>)?(?P<t>{_ISO_DOT}) \S+ {_PROG}"), _at("t", _iso), None),
    # dmesg --time-format=iso: after the journal's ISO form, which has a host and "kernel:" too
    (re.compile(r"^(?P<t>\d{4}-\d\d-\d\dT[\d:]{8}[,.]\d+[+-]\d\d:\d\d)\s"), _at("t", _iso), KERNEL),
    # logs that are no kernel log, named so that a judgement of one says what it was given
    (re.compile(r"^[IWEF]\d{4} [\d:]{8}\.\d+\s+\d+ [^\s\]]+:\d+\] "), _none, "a Kubernetes component (klog)"),
    (re.compile(r"^\[[A-Z][a-z]{2} \d{1,2} \d{4} [\d:]{8}\] \[[A-Z]+\] \[tid \d+\] "), _none, "NVIDIA Fabric Manager"),
)
# journalctl's own lines between entries: ``-- Boot 3c1b... --``, ``-- No entries --``, ``-- Logs begin at ... --``.
_JOURNAL_MARK = re.compile(r"^-- .* --\s*$")
# ``dmesg -x`` (``--decode``) puts facility and level ahead of whichever time format follows.
_DECODED = re.compile(r"^[a-z0-9]+\s*:\s*(?:emerg|alert|crit|err|warn|notice|info|debug)\s*: ")
# The kernel's own timestamp that a syslog daemon reading /proc/kmsg keeps after its prefix.
_KERNEL_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s?")
# ``kubectl logs --timestamps``: the container runtime's RFC 3339 time before each line.
_RFC3339 = r"\d{4}-\d\d-\d\dT[\d:]{8}(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"
_KUBECTL_TIME = re.compile(rf"^(?P<t>{_RFC3339}) ")
# A CRI log file (/var/log/pods, /var/log/containers): time, stream, tag (P: part of a line), the line.
_CRI = re.compile(rf"^(?P<t>{_RFC3339}) (?:stdout|stderr) (?P<tag>[PF])(?::\S*)?(?: |$)")


@dataclasses.dataclass(frozen=True)
class _Line:
    body: str
    at: float | None = None
    delta: bool = False
    yearless: bool = False
    source: str = BARE


def _split(line: str, outer: float | None = None) -> _Line:
    """``line`` without its log prefix (``dmesg -x``'s facility and level, the first format of
    ``_LINE_FORMATS`` that matches, and a kernel timestamp after a kernel's), with the prefix's time
    and source. ``outer``: the time a container runtime gave the line, where its own has none."""
    line = _DECODED.sub("", line, count=1)
    for pattern, when, source in _LINE_FORMATS:
        found = pattern.match(line)
        if found:
            at, delta, yearless = when(found)
            body = line[found.end() :]
            name = source if source is not None else found.group("prog")
            if name == KERNEL:
                body = _KERNEL_TIME.sub("", body, count=1)
            return _Line(body, outer if at is None else at, delta and at is not None, yearless, name)
    stamped = _KUBECTL_TIME.match(line)
    if stamped:
        return _split(line[stamped.end() :], _iso(stamped.group("t")))
    return _Line(line, outer)


def _unwrap_cri(lines: Iterable[str]) -> Iterator[tuple[str, float | None]]:
    """(line, the container runtime's time): a CRI log file's lines unwrapped, their parts (``P``) joined;
    any other line as it is, without a time of its own."""
    partial: list[str] = []
    for line in lines:
        found = _CRI.match(line)
        if not found:
            yield line, None
            continue
        partial.append(line[found.end() :])
        if found.group("tag") == "F":
            yield "".join(partial), _iso(found.group("t"))
            partial = []
    if partial:
        yield "".join(partial), None


def _line_messages(lines: Iterable[tuple[str, float | None]]) -> Iterator[LogMessage]:
    """Messages from log lines: an indented line continues the message before it (how dmesg prints a
    multi-line printk), as does a line that names no source after another program's (Fabric
    Manager's log goes on over lines without a prefix). Lines starting with ``#`` are comments, and
    journalctl's markers (``-- Boot ... --``) no message."""
    current: list[str] = []
    head = _Line("")
    clock = _Clock()
    for line, outer in lines:
        if not line.strip() or line.startswith("#") or _JOURNAL_MARK.match(line):
            continue
        if current and line[:1].isspace():
            current.append(line.strip())
            continue
        split = _split(line, outer)
        if current and head.source not in (KERNEL, BARE) and split.source == BARE and split.at is None:
            current.append(line.strip())
            continue
        if current:
            yield LogMessage("\n".join(current), head.at, head.source)
        head = dataclasses.replace(split, at=clock.read(split))
        current = [split.body]
    if current:
        yield LogMessage("\n".join(current), head.at, head.source)


class _Clock:
    """The running time of a line log: dmesg -H's deltas add to the last time, and a year-less syslog
    time that falls far behind the last one is in the next year."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.last_yearless: float | None = None
        self.years = 0

    def read(self, line: _Line) -> float | None:
        at = line.at
        if at is None:
            return None
        if line.delta:
            at += self.last or 0.0
        elif line.yearless:
            if self.last_yearless is not None and at + self.years * _YEAR_S < self.last_yearless - _YEAR_S / 2:
                self.years += 1
            at += self.years * _YEAR_S
            self.last_yearless = at
        self.last = at
        return at


def _join_notices(messages: Iterable[LogMessage]) -> Iterator[LogMessage]:
    """The open driver's notice of a GPU that fell off the bus is one printk of three lines; a syslog
    daemon writes each with its own prefix, ``journalctl -o cat`` writes them bare, the journal keeps
    them as three entries: either way they are one message (``kmsg.continues``), never three."""
    pending: LogMessage | None = None
    for message in messages:
        if (
            pending is not None
            and pending.judged  # another program's line that quotes the headline is no kernel notice
            and message.judged
            and kmsg.continues(pending.text.split("\n"), message.text)
        ):
            pending = dataclasses.replace(pending, text=f"{pending.text}\n{message.text}")
            continue
        if pending is not None:
            yield pending
        pending = message
    if pending is not None:
        yield pending


# ---------------------------------------------------------------- journal entries


def _entry_message(fields: dict[str, str | None]) -> LogMessage | None:
    """A journal entry's message; None for an entry without one."""
    if "MESSAGE" not in fields:
        return None
    transport, ident = fields.get("_TRANSPORT"), fields.get("SYSLOG_IDENTIFIER")
    if transport is not None:
        source = KERNEL if transport == "kernel" else (ident or transport)
    else:
        source = KERNEL if ident in (None, "kernel") else str(ident)
    at = None
    if fields.get("__REALTIME_TIMESTAMP"):
        at = _usec_text(fields["__REALTIME_TIMESTAMP"])
    if at is None:
        at = _usec_text(fields.get("_SOURCE_MONOTONIC_TIMESTAMP") or fields.get("__MONOTONIC_TIMESTAMP") or "")
    return LogMessage(fields["MESSAGE"] or "", at, source)


def _json_value(value: object) -> str | None:
    """A JSON journal field: a string; an array of byte values (not printable UTF-8); ``null`` (past
    4096 bytes without ``--all``); an array of those where the field repeats (the first is kept)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, list) and value:
        return _json_value(value[0])
    return str(value)


def _json_messages(text: str) -> Iterator[LogMessage]:
    """``journalctl -o json`` and its kin, or Docker's json-file lines (whose ``log`` is a line of a
    kernel log in any of the line formats)."""
    decoder = json.JSONDecoder()
    docker: list[tuple[str, float | None]] = []
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and (text[pos] in " \t\r\n\x1e" or text.startswith("data: ", pos)):
            pos += 6 if text.startswith("data: ", pos) else 1
        if pos >= end:
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            newline = text.find("\n", pos)
            pos = end if newline < 0 else newline + 1  # an unreadable line: the next one may be whole
            yield LogMessage("", None, UNREADABLE)
            continue
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get("log"), str) and "MESSAGE" not in obj:
            docker.append((obj["log"].rstrip("\n"), _iso(str(obj.get("time", "")))))
            continue
        message = _entry_message({str(k): _json_value(v) for k, v in obj.items()})
        if message is not None:
            yield message
    yield from _line_messages(docker)


_EXPORT_FIRST = re.compile(r"^(?:__CURSOR|__REALTIME_TIMESTAMP|__MONOTONIC_TIMESTAMP|__SEQNUM|_BOOT_ID|_TRANSPORT)=")


def _export_messages(text: str) -> Iterator[LogMessage]:
    """``journalctl -o export``, read as bytes: a binary field's length counts bytes. The text keeps the
    bytes that were no UTF-8 as lone surrogates (``surrogateescape``), so this gives them back."""
    raw = text.encode("utf-8", "surrogateescape")
    fields: dict[str, str | None] = {}
    pos, end = 0, len(raw)
    while pos < end:
        newline = raw.find(b"\n", pos)
        line = raw[pos:] if newline < 0 else raw[pos:newline]
        pos = end if newline < 0 else newline + 1
        if not line.strip() or line.startswith(b"#"):
            if not line.strip() and fields:
                message = _entry_message(fields)
                if message is not None:
                    yield message
                fields = {}
            continue
        key, sep, value = line.partition(b"=")
        if not sep:  # binary: the length (64-bit little-endian), the bytes, a newline
            if pos + 8 > end:
                break
            size = int.from_bytes(raw[pos : pos + 8], "little")
            if size > end - pos - 8:
                break  # cut short: what was read stands
            value = raw[pos + 8 : pos + 8 + size]
            pos += 8 + size + 1
        fields.setdefault(key.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
    if fields:
        message = _entry_message(fields)
        if message is not None:
            yield message


_VERBOSE_HEAD = re.compile(r"^[A-Z][a-z]{2} (?P<t>\d{4}-\d\d-\d\d [\d:]{8}(?:\.\d+)?) \S+ \[(?P<cursor>[^\]]*)\]\s*$")
_VERBOSE_FIELD = re.compile(r"^    (?P<key>[A-Za-z0-9_]+)=(?P<value>.*)$")
_CURSOR_TIME = re.compile(r"(?:^|;)t=(?P<t>[0-9a-fA-F]{1,16})(?:;|$)")


def _verbose_messages(text: str) -> Iterator[LogMessage]:
    """``journalctl -o verbose``: the header's cursor holds the entry's time (``t=``, µs in hex)."""
    fields: dict[str, str | None] = {}
    key = ""
    at: float | None = None
    for line in text.splitlines():
        head = _VERBOSE_HEAD.match(line)
        if head:
            message = _entry_message(fields)
            if message is not None:
                yield dataclasses.replace(message, at=at if at is not None else message.at)
            fields, key = {}, ""
            cursor = _CURSOR_TIME.search(head.group("cursor"))
            at = _usec_text(str(int(cursor.group("t"), 16))) if cursor else None
            if at is None:
                at = _strptime(head.group("t"), "%Y-%m-%d %H:%M:%S")
            continue
        field = _VERBOSE_FIELD.match(line)
        if field and not line.startswith("     "):
            key = field.group("key")
            fields.setdefault(key, field.group("value"))
        elif key and line[:1].isspace() and fields.get(key) is not None:
            fields[key] = f"{fields[key]}\n{line.strip()}"
    message = _entry_message(fields)
    if message is not None:
        yield dataclasses.replace(message, at=at if at is not None else message.at)
