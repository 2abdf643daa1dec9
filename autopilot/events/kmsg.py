"""The kernel log: ``/dev/kmsg`` records, the GPU lines in them, and the reader behind a seam.

(A saved log's formats, dmesg's, journalctl's, syslog's, are read in ``logformats``.)

A record is ``PRI,SEQ,TS_USEC,FLAGS[,...];MESSAGE`` followed by optional indented ``KEY=VALUE``
lines (Linux ``Documentation/ABI/testing/dev-kmsg``); non-printable bytes in MESSAGE are escaped
as ``\\xNN`` (a multi-line printk keeps its newlines as ``\\x0a``). One ``read()`` returns one
record; when the reader fell behind and its next record was overwritten, ``read()`` fails with
``EPIPE`` once and then goes on from the oldest record left. ``SEEK_END`` starts at the end.

Lines classified (``classify``):

- ``NVRM: Xid (PCI:0000:9b:00): 79, pid=..., ...``: an Xid (the catalogue decides), also with the
  MIG instance after the bus id (``NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, ...``), and with the bus
  id's PCI domain left out (``NVRM: Xid (PCI:3b:00): 79, ...``: domain 0);
- ``NVRM: GPU 0000:91:00.0: GPU has fallen off the bus.`` and the open driver's
  ``NVRM: The NVIDIA GPU 0000:b3:00.0 ... has fallen off the bus``: Xid 79 for that GPU;
- ``NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x62:0xffff:1863)``: the driver could not initialise
  that GPU (``driver.init_failed``; older drivers name no GPU: the device is ``kmsg``);
- ``nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 20034, Fatal, ...``: an NVSwitch SXid;
- ``pcieport 0000:00:01.0: AER: Uncorrected (Fatal) error received: 0000:01:00.0``: PCIe AER, for
  the device it names (kernels before 4.20: ``error received: id=3b00``, its requester id), the
  reporting port when it names none; a domain behind an Intel VMD bridge (``10000:e1:00.0``) kept whole.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import select
import threading
import time
from collections import deque
from typing import Protocol

from autopilot.events import catalogue
from autopilot.events.model import Event
from autopilot.names import bus_id

DEFAULT_PATH = "/dev/kmsg"
_READ_SIZE = 8192  # the kernel's record limit (CONSOLE_EXT_LOG_MAX) fits

# The driver prints the bus id with its PCI domain (``PCI:0000:3b:00``); a line copied from a host
# whose tools drop the domain (``Xid (PCI:3b:00)``, ``GPU at 3b:00.0``) names the same GPU in domain 0,
# and a missed Xid 79 is a wrong pass: the domain is optional (``bus_id`` reads both forms alike).
_ADDR = r"(?:PCI:)?(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?"
# With MIG enabled the driver names the GPU instance (and compute instance) after the bus id:
# ``NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, ...`` (NVIDIA, A100 GPU memory error management).
# An Xid or SXid code has at most five digits; a longer number is no driver's line (and past 4,300
# digits ``int`` refuses it, which took the follower down): such a line matches nothing.
_CODE = r"(?P<code>\d{1,9})(?!\d)"
# The rest of the line is read whether a comma follows the code (the driver's form) or a space (copies
# that drop it: ``149 NETIR_LINK_EVT Fatal ...``): the Fatal word and Xid 154's action are in it.
_XID = re.compile(rf"NVRM: Xid \((?P<bus>{_ADDR})(?: GPU-I:\s*\d+)?(?: GPU-CI:\s*\d+)?\): {_CODE}(?P<rest>.*)")
_PID = re.compile(r"pid=(?P<pid>'?[^,\s']+'?)")
_FALLEN = re.compile(
    rf"NVRM: (?:GPU at |The NVIDIA GPU |GPU )(?P<bus>{_ADDR})\b.*?fallen off the bus", re.IGNORECASE | re.DOTALL
)
_SXID = re.compile(rf"SXid \((?P<bus>{_ADDR})\): {_CODE}(?P<rest>.*)")
# The driver could not bring a GPU up (``RmInitAdapter`` failed in the resource manager): the GPU runs
# nothing until the cause is cleared (a GPU in a bad state, firmware that would not boot, a driver that
# cannot drive it). Current drivers name the GPU, ``NVRM: GPU 0000:01:00.0: RmInitAdapter failed!
# (0x62:0xffff:1863)`` (in a VM both addresses: ``GPU 0000:00:07.0 / 0000:00:0b.0: ...``, the first is
# the one this host's tools show); older ones do not, ``NVRM: RmInitAdapter failed! (0x27:0x38:1193)``.
# The line that follows (``rm_init_adapter failed, device minor number 0``, or ``rm_init_adapter(0)
# failed``) repeats the same failure and is not read again. ``RmInitAdapter: Cannot initialize GSP
# firmware RM`` and the like are the reasons printed before it, not another failure.
_INIT_FAILED = re.compile(rf"NVRM: (?:GPU (?P<bus>{_ADDR})(?: / {_ADDR})?: )?RmInitAdapter failed\b")
# The device of a failure whose line names no GPU: the kernel log as a whole says one could not start.
INIT_FAILED_DEVICE = "kmsg"
# A PCI domain has four hex digits, or five and more behind an Intel VMD bridge (``10000:e1:00.0``);
# a digit before the match would make a VMD address read as its last four digits' domain (another device).
_DEV = r"(?<![0-9a-fA-F])[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"
_AER = re.compile(rf"(?P<dev>{_DEV}): AER: (?P<text>.*)")
_AER_TARGET = re.compile(rf"(?:error received|error message received from)[: ]+(?:id=)?(?P<dev>{_DEV})")
# Kernels before 4.20 name the source by its requester id, ``error received: id=3b00`` (bus << 8 |
# device << 3 | function), in the reporting port's PCI domain.
_AER_REQUESTER = re.compile(r"error received: id=(?P<id>[0-9a-fA-F]{4})\b")
_AER_FATAL = re.compile(r"Uncorrect\w* \(Fatal\)|severity=Uncorrected \(Fatal\)")
_AER_NONFATAL = re.compile(r"Uncorrect\w* \(Non-Fatal\)|severity=Uncorrected \(Non-Fatal\)")
_AER_CORRECTED = re.compile(r"\bCorrect(?:ed|able)\b|severity=Correct")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclasses.dataclass(frozen=True)
class Record:
    """One ``/dev/kmsg`` record: its sequence number, monotonic timestamp (µs) and message."""

    seq: int
    ts_us: int
    message: str
    priority: int = 6


def parse_record(raw: bytes | str) -> Record | None:
    """``PRI,SEQ,TS,FLAGS;MESSAGE`` -> ``Record``; None for anything that is not a record."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    head, sep, rest = text.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        pri, seq, ts = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    message = rest.split("\n", 1)[0]  # what follows the first newline is KEY=VALUE dictionary lines
    message = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), message)
    return Record(seq, ts, message, pri & 7)


def classify(message: str, *, written_at: float = 0.0) -> list[Event]:
    """The GPU, NVSwitch and PCIe events in one kernel message (usually none)."""
    text = " ".join(part.strip() for part in message.splitlines())
    if "NVRM" in text:
        found = _XID.search(text)
        if found:
            code = int(found.group("code"))
            rest = found.group("rest") or ""
            pid = _PID.search(rest)
            entry = catalogue.classify_xid(code, rest)
            return [Event("kmsg", entry, bus_id(found.group("bus")), text, written_at, pid=_pid(pid))]
        fallen = _FALLEN.search(text)
        if fallen:
            entry = catalogue.classify_xid(79, text)
            return [Event("kmsg", entry, bus_id(fallen.group("bus")), text, written_at)]
        init = _INIT_FAILED.search(text) if "RmInitAdapter failed" in text else None
        if init:
            device = bus_id(init.group("bus")) if init.group("bus") else INIT_FAILED_DEVICE
            return [Event("kmsg", catalogue.lookup("driver", "init_failed"), device, text, written_at)]
        return []
    sxid = _SXID.search(text) if "SXid (" in text else None
    if sxid:
        entry = catalogue.classify_sxid(int(sxid.group("code")), sxid.group("rest") or "")
        return [Event("kmsg", entry, bus_id(sxid.group("bus")), text, written_at)]
    # Most kernel lines are neither: a substring test spares them the AER pattern (every line is parsed).
    aer = _AER.search(text) if ": AER: " in text else None
    if aer:
        body = aer.group("text")
        if _AER_FATAL.search(body):
            kind = "fatal"
        elif _AER_NONFATAL.search(body):
            kind = "nonfatal"
        elif _AER_CORRECTED.search(body):
            kind = "corrected"
        else:
            return []  # detail lines ("device [10de:2330] error status/mask=...") repeat the headline
        target = _AER_TARGET.search(body)
        requester = _AER_REQUESTER.search(body)
        if target:
            device = bus_id(target.group("dev"))
        elif requester:
            device = _requester_device(aer.group("dev"), int(requester.group("id"), 16))
        else:
            device = bus_id(aer.group("dev"))
        return [Event("kmsg", catalogue.lookup("aer", kind), device, text, written_at)]
    return []


def _requester_device(port: str, requester: int) -> str:
    """The device of a PCIe requester id, in the domain of ``port`` (the AER reporting port)."""
    domain = port.split(":", 1)[0]
    bus, devfn = requester >> 8, requester & 0xFF
    return bus_id(f"{domain}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}")


def _pid(found: re.Match[str] | None) -> str:
    if not found:
        return ""
    pid = found.group("pid").strip("'")
    return "" if pid == "<unknown>" else pid


# The open driver's notice of a GPU that fell off the bus is one printk of three lines ("NVRM: The
# NVIDIA GPU <bus>" / "NVRM: (PCI ID: ...) installed in this system has" / "NVRM: fallen off the
# bus and is not responding to commands."). dmesg and journalctl indent the second and third; a
# syslog daemon reading /proc/kmsg (rsyslog's imklog, kern.log) writes each with its own prefix,
# and ``journalctl -o cat`` writes them bare: either way they are one message, never three.
# The headline is the bus id alone in the driver's source; copies that fold the second line into it
# (``NVRM: The NVIDIA GPU 0000:01:00.0 (PCI ID: 10de:2d04) installed in this system has``) are read too.
_FALLEN_HEAD = re.compile(
    rf"^NVRM: The NVIDIA GPU {_ADDR}(?:\s*\(PCI ID: [0-9a-fA-F]{{4}}:[0-9a-fA-F]{{4}}\))?"
    r"(?:\s+installed in this system has)?\s*$"
)
_FALLEN_LINES = 3


def continues(current: list[str], body: str) -> bool:
    """Whether ``body`` is a later line of the open driver's fallen-off-the-bus notice in ``current``."""
    return (
        bool(_FALLEN_HEAD.match(current[0]))
        and len(current) < _FALLEN_LINES
        and "fallen off the bus" not in " ".join(current)
        and body.startswith("NVRM: ")
        and not _XID.search(body)
        and not _FALLEN.search(body)  # another GPU's own notice is its own message
        and not _FALLEN_HEAD.match(body)  # as is another GPU's headline (this one's other lines were lost)
    )


class Overrun(Exception):
    """The reader fell behind: records were overwritten before it read them (``EPIPE``)."""


class KmsgDevice(Protocol):
    """The kernel log as a stream of records (the seam: a real ``/dev/kmsg`` or ``FakeKmsg``)."""

    def open(self, *, at_end: bool) -> None:
        """Open; ``at_end`` starts after the newest record, else at the oldest one kept."""

    def read(self, timeout_s: float) -> bytes | None:
        """The next record, or None when none came within ``timeout_s``; raises ``Overrun``."""

    def close(self) -> None: ...


class DevKmsg:
    """The real ``/dev/kmsg``: non-blocking reads, ``poll`` for the wait, ``EPIPE`` as ``Overrun``."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        self._fd: int | None = None
        self._poll = select.poll()

    def open(self, *, at_end: bool) -> None:
        self.close()
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def read(self, timeout_s: float) -> bytes | None:
        if self._fd is None:
            raise OSError(errno.EBADF, "kmsg is not open")
        try:
            return os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            pass
        except BrokenPipeError as exc:
            raise Overrun(str(exc)) from None
        if not self._poll.poll(max(0, int(timeout_s * 1000))):
            return None
        try:
            return os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return None
        except BrokenPipeError as exc:
            raise Overrun(str(exc)) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FakeKmsg:
    """An in-memory kernel log of ``capacity`` records with the real one's semantics (for tests and
    the simulator): ``write`` appends a record with the next sequence number; a reader whose next
    record was pushed out gets ``Overrun`` once, then reads on from the oldest record kept."""

    def __init__(self, capacity: int = 1024, *, first_seq: int = 0) -> None:
        self.capacity = capacity
        self._records: deque[tuple[int, bytes]] = deque()
        self._next_seq = first_seq
        self._pos: int | None = None  # sequence number of the next record to read
        self._cond = threading.Condition()
        self.opened = 0

    def write(self, message: str, *, priority: int = 4) -> int:
        """Append ``message`` as the kernel would; returns its sequence number."""
        escaped = message.replace("\n", "\\x0a")
        with self._cond:
            seq = self._next_seq
            ts_us = int(time.monotonic() * 1e6)
            self._records.append((seq, f"{priority},{seq},{ts_us},-;{escaped}\n".encode()))
            self._next_seq += 1
            while len(self._records) > self.capacity:
                self._records.popleft()
            self._cond.notify_all()
            return seq

    def open(self, *, at_end: bool) -> None:
        with self._cond:
            self.opened += 1
            self._pos = self._next_seq if at_end else (self._records[0][0] if self._records else self._next_seq)

    def read(self, timeout_s: float) -> bytes | None:
        with self._cond:
            if self._pos is None:
                raise OSError(errno.EBADF, "kmsg is not open")
            if not self._cond.wait_for(lambda: self._pos is not None and self._pos < self._next_seq, timeout_s):
                return None
            oldest = self._records[0][0]
            if self._pos < oldest:
                self._pos = oldest
                raise Overrun("records were overwritten")
            record = self._records[self._pos - oldest][1]
            self._pos += 1
            return record

    def close(self) -> None:
        with self._cond:
            self._pos = None


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    """This boot's id: kmsg sequence numbers restart at each boot, so a saved position names its boot."""
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""
