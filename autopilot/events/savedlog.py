"""``autopilot evaluate events FILE``: a saved kernel log judged as the live follower would have judged it.

Every kernel message of the log (``logformats``) is classified (``kmsg.classify``) and submitted to a
``Follower`` of its own, with no sources and a sink that keeps nothing: the follower's own fold
(``Findings``: the storm window of ``AUTOPILOT_EVENTS_STORM_WINDOW``, ``ignore`` never written) gives
the ``events`` result it would have stored. Three differences, all from the log being saved: no hold
(every finding in the log counts, however old), devices by PCI bus id (a saved log has no NVML index
to name GPUs by), and each message's time is the log's own (seconds since boot or since the epoch;
where a line has none, one second after the message before it). A log in which nothing is a kernel
message is ``error``, never ``ok``: ``ok`` says the kernel reported no GPU fault.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import math
from collections.abc import Sequence

from autopilot.events import follower as follower_mod
from autopilot.events import kmsg, logformats
from autopilot.events.catalogue import Action
from autopilot.events.model import Event
from autopilot.results import CheckResult, Status

CHECK = follower_mod.CHECK
_NAME_MAX, _SOURCES_MAX = 64, 20
# Files that are no text: said by name, since reading them as lines would find no kernel message.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed (zcat it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed (zstdcat it first)"),
    (b"\xfd7zXZ\x00", "xz-compressed (xzcat it first)"),
    (b"BZh", "bzip2-compressed (bzcat it first)"),
    (b"\x04\x22\x4d\x18", "lz4-compressed (lz4cat it first)"),
    (b"LPKSHHRH", "a binary journal file (give journalctl --file FILE -k -o export, or any -o, instead)"),
)


class _Discard:
    """The follower's sink for a saved log: nothing is stored, nothing was read before."""

    def emit(self, node: str, result: CheckResult | None, counted: Sequence[Event], timed: Sequence[Event]) -> None:
        return None

    def last_result(self, node: str) -> CheckResult | None:
        return None

    def kmsg_position(self, node: str) -> tuple[str, int] | None:
        return None

    def save_kmsg_position(self, node: str, boot: str, seq: int) -> None:
        return None


def decode(data: bytes | str) -> str:
    """A saved log's text: UTF-16 where it starts with its byte-order mark, else UTF-8 (a mark dropped),
    the bytes that are no UTF-8 kept as lone surrogates (the journal's export format counts bytes)."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="surrogateescape")


def judge(data: bytes | str, *, storm_window_s: float, node: str = "", name: str = "saved log") -> CheckResult:
    """The ``events`` result the follower would have stored after reading the log ``data``."""
    if isinstance(data, bytes):
        for magic, what in _MAGIC:
            if data.startswith(magic):
                return _error(f"{name} is {what}: no kernel messages read")
    messages = list(logformats.log_messages(decode(data)))
    judged = [m for m in messages if m.judged]
    follower = follower_mod.Follower(
        node, _Discard(), storm_window_s=storm_window_s, hold_s=math.inf, boot_id=lambda: "", clock=lambda: 0.0
    )
    follower.sources["kmsg"] = f"{name}: {len(judged)} kernel messages"
    ignored: collections.Counter[str] = collections.Counter()
    seen = 0
    at = -1.0
    for message in judged:
        at = message.at if message.at is not None else at + 1.0  # no time: one second after the one before
        events = kmsg.classify(message.text, written_at=at)
        seen += len(events)
        ignored.update(e.code for e in events if e.action is Action.IGNORE)
        follower.submit(events)
    kernel = sum(1 for m in judged if m.source == logformats.KERNEL)
    # A source's name comes from the log (syslog's program, RFC 5424's APP-NAME): bounded, as is their number.
    others = collections.Counter(m.source[:_NAME_MAX] for m in messages if not m.judged)
    log = {"messages": len(messages), "kernel_messages": kernel, "unprefixed_messages": len(judged) - kernel,
           "other_sources": dict(others.most_common(_SOURCES_MAX)), "ignored": dict(ignored)}  # fmt: skip
    if not kernel and not seen:
        return _error(_nothing_read(name, len(judged), others), log)
    result = follower.findings.result(node, 0.0, follower.sources)
    # started_at stays empty, as in every evaluated result: the log was judged now, not run then
    return dataclasses.replace(result, data={**result.data, "log": log}, started_at="")


def _nothing_read(name: str, unprefixed: int, others: collections.Counter[str]) -> str:
    if unprefixed:
        return (
            f"{name}: {unprefixed} lines name no source (no dmesg, journalctl, syslog or /dev/kmsg prefix) and "
            "none is a GPU event: cannot tell they are kernel messages"
        )
    if others:
        named = ", ".join(f"{source} {n}" for source, n in others.most_common(5))
        return f"no kernel messages in {name}: {sum(others.values())} messages that are not the kernel's ({named})"
    return f"no kernel messages in {name}: it holds no log lines"


def _error(summary: str, log: dict[str, object] | None = None) -> CheckResult:
    return CheckResult(CHECK, Status.ERROR, summary, data={"log": log or {}})
