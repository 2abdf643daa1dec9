"""Pure parsers of ``nvidia-smi`` output: the ``-q`` report and ``--format=csv`` queries.

No I/O and no judgement here: text in, plain records out. The checks decide what a reading
means; this module only promises that what it returns was really in the text, and raises
``ParseError`` for anything it cannot read with confidence (truncated or corrupted reports,
unknown words, CSV rows of the wrong width), because an unreadable answer must never pass.

The ``-q`` report (drivers 510 to 570, Volta to Blackwell) is a header followed by one section
per GPU, in nvidia-smi index order, each a tree of ``Key : Value`` lines nested by indentation::

    ==============NVSMI LOG==============

    Timestamp                                 : Wed Sep 25 10:40:24 2024
    Driver Version                            : 535.129.03
    Attached GPUs                             : 1
    GPU 00000000:07:00.0
        Product Name                          : NVIDIA A10
        Clocks Event Reasons
            Idle                              : Active
            HW Slowdown                       : Not Active
                HW Thermal Slowdown           : Not Active
        Remapped Rows
            Correctable Error                 : 0
            Uncorrectable Error               : 4
            Pending                           : Yes
            Remapping Failure Occurred        : No

``-q -d ROW_REMAPPER`` (and other ``-d`` filters) print the same layout with fewer keys; copies
quoted in reports sometimes lack the header or elide lines as ``[...]``, which is tolerated and
marks the report as an excerpt. Also read, into the same tree:

- ``-q -i <id>``: the system's ``Attached GPUs : 8`` above one complete GPU section. Its position
  (0) is not the GPU's index, which nvidia-smi does not print, so ``QReport.device_id`` names such
  a GPU by its bus id;
- a copy whose indentation was lost (pasted into a form or chat): every line at column 0. It is
  nested again from the known headings of the report (``_FLAT_PARENT``) and the keys of the blocks
  the checks read (``_FLAT_MEMBERS``);
- ``-q -x`` (XML, ``nvsmi_device_v11.dtd`` of driver 470 to ``v12`` of 535-580): parsed with
  ``xml.etree``, defused (a document that declares entities or has an internal DTD subset is
  refused, and its size is bounded by ``MAX_XML_CHARS``), its elements renamed to the labels of
  the text form (``remapped_row_pending`` -> ``Remapped Rows > Pending``,
  ``clocks_throttle_reason_hw_slowdown`` -> ``HW Slowdown``), so one set of readers serves both.
 The driver's ``WARNING: infoROM is corrupted at gpu <bus>`` lines, which nvidia-smi prints on
stdout before or after any answer, are set aside (``QReport.warnings``), not read as part of it.
 CSV queries print ``name [unit], ...`` headers (unless
``noheader``) and one row per GPU; a field the driver does not know is answered with
``Field "x" is not a valid field to query.``, raised here as ``InvalidField``.
 A GPU nvidia-smi cannot open is answered, in every form, by ``Unable to determine the device
handle for GPU0000:04:00.0: Unknown Error`` (newer drivers: ``for GPU3: 0000:04:00.0: ...``, its
index first; ``for GPU0: ...``, the index alone, when even its bus id cannot be read, then ``No devices
were found`` if it was the only GPU) on stderr, while the other GPUs are answered: it becomes a
section in error (``-q``) or a ``LostGpu`` (``parse_csv_gpus``) at its index, so the GPUs after it keep
theirs. When the reason is ``GPU is lost.  Reboot the system to recover this GPU`` (what nvidia-smi prints for NVML's
``NVML_ERROR_GPU_IS_LOST``) it is marked so (``GpuSection.lost``, ``LostGpu.is_lost``): the GPU fell off
the bus, which the checks judge as NVML's lost GPU; any other reason only says it could not be read.
A GPU that fell off the bus after nvidia-smi opened it is still listed, its readings written as that
error (``Pending : GPU is lost``, in XML ``<current_link_gen>GPU is lost</current_link_gen>``): its
section is marked lost too (``Processes`` aside, whose names are the programs' own).

The readers of one GPU's block (``remapped_rows_from_q``, ``clock_reasons_from_q``,
``pcie_link_from_q``, ``retired_pages_from_q``) do not name the GPU in their messages; the caller
knows which it asked for.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from xml.etree import ElementTree

from autopilot import errors, gpus

# One parse error for every reader of tool output (kept under this name for callers).
ParseError = errors.ParseError


class InvalidField(ParseError):
    """The driver rejected a ``--query-*`` field name (older and newer drivers name some fields differently)."""

    def __init__(self, field: str) -> None:
        super().__init__(f'nvidia-smi does not know the field "{field}"')
        self.field = field


# What nvidia-smi prints (and exits non-zero with) on a machine without GPUs / without a loaded driver.
NO_DEVICES = "No devices were found"
NO_DRIVER = "couldn't communicate with the NVIDIA driver"


# ---------------------------------------------------------------- the -q report


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of a ``-q`` report: ``key : value`` (``value`` None for a heading) and the lines under it."""

    key: str
    value: str | None = None
    children: tuple[Entry, ...] = ()
    line: int = 0

    def get(self, key: str) -> Entry | None:
        """The first child called ``key`` (case and inner spacing ignored); keys repeat under ``Processes``."""
        wanted = _norm(key)
        return next((c for c in self.children if _norm(c.key) == wanted), None)

    def find(self, *path: str) -> Entry | None:
        """The entry at ``path`` below this one, or None."""
        node: Entry | None = self
        for key in path:
            node = node.get(key) if node is not None else None
        return node

    def value_at(self, *path: str) -> str | None:
        found = self.find(*path)
        return found.value if found is not None else None

    def walk(self) -> Iterator[Entry]:
        """Every entry below this one, depth first, in report order."""
        for child in self.children:
            yield child
            yield from child.walk()


@dataclasses.dataclass(frozen=True)
class GpuSection:
    """One ``GPU <bus id>`` section. ``index`` is its position, which is nvidia-smi's (and NVML's) index.

    ``error`` is set instead of a tree when nvidia-smi could not open the GPU
    (``Unable to determine the device handle for ...``), so later GPUs keep their index.
    """

    index: int
    bus_id: str
    root: Entry
    error: str | None = None
    # The line said ``GPU is lost`` (NVML_ERROR_GPU_IS_LOST): the GPU fell off the bus, which is a finding
    # about it, not a reading that failed (``LostGpu.is_lost``).
    lost: bool = False

    def find(self, *path: str) -> Entry | None:
        return self.root.find(*path)


@dataclasses.dataclass(frozen=True)
class QReport:
    """A parsed ``nvidia-smi -q`` report (full, ``-d`` filtered, or a quoted excerpt)."""

    header: Mapping[str, str]
    gpus: tuple[GpuSection, ...]
    attached: int | None = None
    excerpt: bool = False
    xml: bool = False  # read from ``nvidia-smi -q -x``
    # Driver warnings nvidia-smi prints on stdout around any answer ("WARNING: infoROM is
    # corrupted at gpu 0000:0B:00.0"): not part of the report, kept so a reader can say them.
    warnings: tuple[str, ...] = ()

    @property
    def driver_version(self) -> str | None:
        return self.header.get("Driver Version")

    @property
    def full(self) -> bool:
        """True for a plain ``-q`` report (every section), False for a ``-d`` filtered one."""
        return any(g.find("Product Name") is not None for g in self.gpus)

    @property
    def partial(self) -> bool:
        """A capture of fewer GPUs than the system has: ``nvidia-smi -q -i N`` (``Attached GPUs`` counts
        the system) or a quoted excerpt. Positions in it are not nvidia-smi indexes."""
        return self.attached is not None and len(self.gpus) < self.attached

    def device_id(self, section: GpuSection) -> str:
        """The id to report ``section`` under: its index, or its bus id in a partial capture.

        ``-q -i N`` does not print N, and the section's position (0) is not the GPU's index.
        """
        return section.bus_id if self.partial else str(section.index)


_GPU_LINE = re.compile(r"^GPU\s+(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
# Older drivers name the GPU by its bus id alone (``for GPU0000:0B:00.0: Unknown Error``); newer ones
# put its index first (``for GPU3: 0000:04:00.0: Unknown Error``), which is then the GPU's index.
_NO_HANDLE = re.compile(
    r"^Unable to determine the device handle for (?:gpu\s*(?:(?P<index>\d{1,4})\s*:\s*)?)?"
    r"(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*:\s*(?P<why>.*)$",
    re.IGNORECASE,
)
# When it cannot even read the GPU's bus id, nvidia-smi names the GPU by its index alone (``for GPU0: Unknown
# Error``, then ``No devices were found`` when it was the only GPU). The colon is followed by a blank, so a bus
# id (``GPU0000:0B:00.0``) the line above did not take is never read as an index.
_NO_HANDLE_INDEX = re.compile(
    r"^Unable to determine the device handle for gpu\s*(?P<index>\d{1,4})\s*:(?=\s|$)\s*(?P<why>.*)$", re.IGNORECASE
)
# nvidia-smi's words for NVML_ERROR_GPU_IS_LOST after "Unable to determine the device handle for ...: ", and for
# NVML_ERROR_RESET_REQUIRED ("GPU requires reset": the GPU cannot be used again until it is reset, what the driver
# answers after a fault such as an uncontained ECC error or a GPU that stopped responding). Both say the GPU is out
# of service, not that it could not be read: a GPU in either state runs no job (``LostGpu.is_lost``).
# NVML_ERROR_INSUFFICIENT_POWER ("Insufficient External Power": its power cables are not attached) is a GPU out of
# service too, as ``gpus.OUT_OF_SERVICE`` judges NVML's own answer.
_OUT_OF_SERVICE_WORDS = r"(?:GPU\s+(?:is\s+lost|requires\s+(?:a\s+)?reset)|Insufficient\s+External\s+Power)\b"
_GPU_IS_LOST = re.compile(rf"^{_OUT_OF_SERVICE_WORDS}", re.IGNORECASE)
# A key never contains ':'; the value starts after ':' and at least one blank, so bus ids such as
# ``GPU 00000000:07:00.0`` (no blank after their colons) are headings, not key/value lines.
_KEY_VALUE = re.compile(r"^(?P<key>[^:\s][^:]*?)\s*:(?:\s+(?P<value>.*?))?\s*$")
_BANNER = re.compile(r"^=+\s*NVSMI LOG\s*=+$")
_ELISION = frozenset({"[...]", "...", "\u2026", "[ ... ]"})
# What the driver makes nvidia-smi print on stdout, before or after its answer, for a GPU whose
# infoROM is corrupted (any query, -q or CSV); the answer itself is intact.
_DRIVER_WARNING = re.compile(r"^WARNING: infoROM is corrupted at gpu \S+$", re.IGNORECASE)


def split_driver_warnings(text: str) -> tuple[list[tuple[int, str]], tuple[str, ...]]:
    """``text``'s lines other than driver warnings, each with its 1-based line number (so a
    parser still names the line of the answer it read), and the warnings, stripped, in order."""
    kept: list[tuple[int, str]] = []
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if _DRIVER_WARNING.match(line.strip()):
            warnings.append(line.strip())
        else:
            kept.append((number, line))
    return kept, tuple(warnings)


def _without_margin(lines: list[str]) -> list[str]:
    """``lines`` less the indentation every non-blank one shares: a report quoted in a Markdown or
    reStructuredText code block (nvidia-smi output in docs and issues) is shifted as a whole."""
    margin = min((len(line) - len(line.lstrip(" ")) for line in lines if line.strip()), default=0)
    return [line[margin:] for line in lines] if margin else lines


@dataclasses.dataclass
class _Building:
    key: str
    value: str | None
    line: int
    indent: int
    children: list[_Building] = dataclasses.field(default_factory=list)

    def freeze(self) -> Entry:
        return Entry(self.key, self.value, tuple(c.freeze() for c in self.children), self.line)


def looks_like_q(text: str) -> bool:
    """Whether ``text`` is a ``-q`` report: a ``GPU <bus id>`` section heading, the line that stands
    for a GPU nvidia-smi could not open (a report whose only GPU is lost has no heading), or XML.

    A CSV answer carries that line too, among its rows (``parse_csv_gpus``): beside comma-separated
    lines it does not make the text a report."""
    if _looks_like_xml(text):
        return True
    lines = text.splitlines()
    if any(_GPU_LINE.match(line) for line in _without_margin([line.expandtabs(4).rstrip() for line in lines])):
        return True
    lost = [line for line in lines if lost_gpu(line) is not None]
    return bool(lost) and not any("," in line for line in lines if line not in lost)


@dataclasses.dataclass(frozen=True)
class LostGpu:
    """A GPU nvidia-smi could not open, from ``Unable to determine the device handle for ...``.

    ``index`` is the one the line names (newer drivers), else None: it then stands where the GPU
    would have been. ``bus_id`` is empty when the line names the index alone."""

    bus_id: str
    why: str
    index: int | None = None

    @property
    def error(self) -> str:
        which = f"the GPU at {self.bus_id}" if self.bus_id else f"GPU {self.index}"
        return f"nvidia-smi could not open {which}: {self.why or 'no reason given'}"

    @property
    def is_lost(self) -> bool:
        """Whether the reason is NVML's ``NVML_ERROR_GPU_IS_LOST`` (``GPU is lost.  Reboot the system to recover
        this GPU``): the GPU fell off the bus, as NVML's own lost GPU; or ``NVML_ERROR_RESET_REQUIRED`` (``GPU
        requires reset``): out of service until reset, judged alike, as is ``NVML_ERROR_INSUFFICIENT_POWER``
        (``Insufficient External Power``, ``gpus.OUT_OF_SERVICE``). Other reasons (``Unknown Error``,
        ``Insufficient Permissions``, ...) say only that nvidia-smi could not open it."""
        return _GPU_IS_LOST.match(self.why) is not None


# In a CSV answer nvidia-smi writes an NVML error in brackets in place of a value. ``[GPU is lost]`` is
# NVML_ERROR_GPU_IS_LOST for a GPU it had opened (one that fell off the bus since: nvidia-smi still lists it).
# The ``-q`` report (text and XML) writes the same error without brackets (``Pending : GPU is lost``). So for
# NVML_ERROR_RESET_REQUIRED: ``[GPU requires reset]`` in a CSV cell, ``GPU requires reset`` in the report.
_LOST_CELL = re.compile(rf"^\[?{_OUT_OF_SERVICE_WORDS}", re.IGNORECASE)


def lost_in_row(row: Mapping[str, str]) -> str:
    """nvidia-smi's words when a CSV row says its GPU is lost (``[GPU is lost]`` for a value), else ''. Other
    bracketed errors (``[Unknown Error]``, ``[Insufficient Permissions]``) say only that a value was not read."""
    said = next((value for value in row.values() if _LOST_CELL.match(value.strip())), None)
    if said is None:
        return ""
    bus = row.get("pci.bus_id") or row.get("gpu_bus_id")
    if bus and not bus.startswith("["):
        return f"nvidia-smi answered {said} for the GPU at {bus}"
    # The remapped-rows query names its GPU by UUID alone; the lost GPU's own cells may be bracketed too.
    uuid = row.get("gpu_uuid") or row.get("uuid")
    if uuid and not uuid.startswith("["):
        return f"nvidia-smi answered {said} for {uuid}"
    return f"nvidia-smi answered {said} for the GPU (no bus id or UUID in its row)"


def no_devices(said: str) -> bool:
    """Whether nvidia-smi's answer (stdout and stderr) says there is no GPU here: ``No devices were found``
    with no line of a GPU it could not open. After such a line (``for GPU0: Unknown Error``) the words mean
    only that it could open none: a GPU is there, unread."""
    return NO_DEVICES in said and not any(lost_gpu(line) is not None for line in said.splitlines())


def lost_gpu(line: str) -> LostGpu | None:
    """The GPU of one ``Unable to determine the device handle ...`` line, or None for any other line."""
    found = _NO_HANDLE.match(line.strip())
    if found is None:
        alone = _NO_HANDLE_INDEX.match(line.strip())
        return LostGpu("", alone.group("why").strip(), int(alone.group("index"))) if alone else None
    index = found.group("index")
    return LostGpu(found.group("bus").upper(), found.group("why").strip(), int(index) if index else None)


def _indexes(named: Sequence[int | None], buses: Sequence[str | None] = (), lost: Sequence[bool] = ()) -> list[int]:
    """The nvidia-smi index of each entry, in output order: the one it names, else the lowest that no
    entry names and no earlier one took. A GPU nvidia-smi could not open is named on stderr, which
    a saved copy may print ahead of every row, so position alone would shift every later GPU.
    With ``buses`` and ``lost`` (each entry's PCI bus id, and whether it is such a GPU), a lost GPU
    that names no index (older drivers) stands before the first other GPU of a higher bus id:
    nvidia-smi numbers GPUs in PCI bus order."""
    taken = [i for i in named if i is not None]
    unique = set(taken)
    if len(unique) != len(taken):
        raise ParseError(f"GPU index named twice: {sorted(i for i in unique if taken.count(i) > 1)}")
    free = (i for i in itertools.count() if i not in unique)
    order = [n for n in range(len(named)) if named[n] is None]
    if len(buses) == len(named) and len(lost) == len(named):
        keys = [_bus_key(bus) for bus in buses]
        for n in [n for n in order if lost[n] and keys[n] is not None]:
            order.remove(n)
            after = [p for p, m in enumerate(order) if not lost[m] and (keys[m] or ()) > (keys[n] or ())]
            order.insert(after[0] if after else len(order), n)
    out = list(named)
    for n in order:
        out[n] = next(free)
    return [i for i in out if i is not None]


_BUS = re.compile(r"^(?:PCI:)?([0-9A-Fa-f]{1,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])$")


def _bus_key(bus: str | None) -> tuple[int, ...] | None:
    """A PCI bus id as numbers (domain, bus, device, function) to order by; None for anything else."""
    found = _BUS.match((bus or "").strip())
    return tuple(int(part, 16) for part in found.groups()) if found else None


def parse_q(text: str, *, whole: bool = False) -> QReport:
    """Parse a ``nvidia-smi -q`` report (any ``-d`` filter, text or ``-x`` XML). Raises ``ParseError``.

    Corruption checks: a report that announces ``Attached GPUs : N`` must hold N sections, and
    the last section of a full report must reach its ``Processes`` entry (nvidia-smi prints it
    for every GPU); otherwise the report was cut short. Both are relaxed for quoted excerpts.
    One section under ``Attached GPUs : N`` is a capture of one GPU (``-q -i <id>``, which prints
    the system's count) when that section is complete; ``whole=True`` (our own query of every GPU)
    refuses it. A copy whose indentation was lost (pasted) is nested again from the report's
    known headings (``_FLAT_PARENT``).
    """
    if _looks_like_xml(text):
        kept, said = split_driver_warnings(text)
        # GPUs nvidia-smi could not open are named on stderr, not in the document; a copy saved
        # with both streams has their lines around it.
        unopened = [found for _, line in kept if (found := lost_gpu(line)) is not None]
        document = "\n".join(line for _, line in kept if lost_gpu(line) is None)
        report = dataclasses.replace(_with_lost(_parse_xml(document), unopened), warnings=said)
        return _checked(_lost_readings(report), whole=whole)
    header: dict[str, str] = {}
    sections: list[tuple[str, _Building, str | None]] = []
    named: list[int | None] = []  # the index a section's line names (a GPU nvidia-smi could not open)
    # Lost-GPU lines ahead of the report (stderr printed first in a saved copy): placed by the index
    # they name, after the sections.
    early: list[tuple[LostGpu, int, str]] = []
    stack: list[_Building] = []
    excerpt = False
    numbered, warnings = split_driver_warnings(text)
    lines = _without_margin([raw.expandtabs(4).rstrip() for _, raw in numbered])
    flat = _indentation_lost(lines)
    for (number, _), line in zip(numbered, lines, strict=True):
        stripped = line.strip()
        # "No devices were found" follows the line of the only GPU nvidia-smi could not open: that line
        # is the answer.
        if not stripped or _BANNER.match(stripped) or stripped == NO_DEVICES:
            continue
        if stripped in _ELISION:
            excerpt = True
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            gpu = _GPU_LINE.match(line)
            if gpu:
                root = _Building("GPU", gpu.group("bus"), number, 0)
                sections.append((gpu.group("bus").upper(), root, None))
                named.append(None)
                stack = [root]
                continue
            lost = lost_gpu(line)
            if lost and not header and not sections:
                early.append((lost, number, stripped))
                continue
            if lost:
                sections.append((lost.bus_id, _Building("GPU", None, number, 0), stripped))
                named.append(lost.index)
                stack = []
                continue
            kv = _KEY_VALUE.match(line)
            if kv and not sections:
                header[kv.group("key")] = kv.group("value") or ""
                continue
            if flat and stack:
                _place_flat(stack, kv, stripped, number)
                continue
            where = "after the GPU sections" if sections else "before any GPU section"
            raise ParseError(f"line {number}: unexpected text {where}: {stripped[:80]!r}")
        if not stack:
            raise ParseError(f"line {number}: indented line outside a GPU section: {stripped[:80]!r}")
        while len(stack) > 1 and stack[-1].indent >= indent:
            stack.pop()
        kv = _KEY_VALUE.match(stripped)
        node = (
            _Building(kv.group("key"), kv.group("value") or "", number, indent)
            if kv
            else _Building(stripped, None, number, indent)
        )
        stack[-1].children.append(node)
        stack.append(node)

    for gone, number, line_said in early:
        sections.append((gone.bus_id, _Building("GPU", None, number, 0), line_said))
        named.append(gone.index)
    if not sections:
        raise ParseError("no 'GPU <bus id>' section: not nvidia-smi -q output")
    indexes = _indexes(named, [bus for bus, _, _ in sections], [error is not None for _, _, error in sections])
    report = QReport(
        header=header,
        gpus=tuple(
            GpuSection(index, bus, root.freeze(), error, lost=_said_lost(error))
            for index, (bus, root, error) in zip(indexes, sections, strict=True)
        ),
        attached=_attached(header),
        excerpt=excerpt,
        warnings=warnings,
    )
    return _checked(_lost_readings(report), whole=whole)


def _lost_readings(report: QReport) -> QReport:
    """``report`` with each GPU whose section reads ``GPU is lost`` marked lost (``GpuSection.lost``).

    A GPU that falls off the bus after nvidia-smi opened it is still listed, each value it could not
    read written as NVML's error (``Pending : GPU is lost``, ``<current_link_gen>GPU is lost</...>``):
    the same NVML_ERROR_GPU_IS_LOST as the ``Unable to determine the device handle`` line of a GPU it
    could not open, and as ``[GPU is lost]`` in a CSV row, so it is judged as the lost GPU it is."""
    sections = []
    for section in report.gpus:
        said = None if section.error is not None else _lost_reading(section.root)
        if said is not None:
            why = f"nvidia-smi answered {said} for the GPU at {section.bus_id}"
            section = dataclasses.replace(section, error=why, lost=True)
        sections.append(section)
    return dataclasses.replace(report, gpus=tuple(sections))


def _lost_reading(root: Entry) -> str | None:
    """``'GPU is lost' (Remapped Rows > Pending)``: the first reading below ``root`` that says the GPU is lost.
    ``Processes`` is not read: its names are whatever programs call themselves."""
    path: list[str] = []

    def walk(node: Entry) -> str | None:
        for child in node.children:
            if _norm(child.key) == "processes":
                continue
            path.append(child.key)
            if child.value is not None and _LOST_CELL.match(child.value.strip()):
                return f"{child.value.strip()!r} ({' > '.join(path)})"
            found = walk(child)
            path.pop()
            if found is not None:
                return found
        return None

    return walk(root)


def _said_lost(line: str | None) -> bool:
    """Whether a section's error (the ``Unable to determine the device handle`` line) says the GPU is lost."""
    gone = lost_gpu(line) if line is not None else None
    return gone is not None and gone.is_lost


def _checked(report: QReport, *, whole: bool) -> QReport:
    """``report`` if it is complete (or a complete one-GPU capture); else ``ParseError`` (``parse_q``)."""
    if report.excerpt:
        return report
    last = report.gpus[-1]
    cut = report.full and last.error is None and last.find("Processes") is None
    count = len(report.gpus)
    if report.attached is not None and report.attached != count:
        one_gpu_capture = count == 1 and report.attached > 1 and not cut and not whole
        if not one_gpu_capture:
            raise ParseError(
                f"report announces {report.attached} GPUs but holds {count} sections: truncated or corrupted"
            )
    if cut:
        raise ParseError(f"section of GPU {last.index} ({last.bus_id}) ends early: truncated output")
    return report


# ---------------------------------------------------------------- words


_NA = frozenset({"n/a", "[n/a]", "not supported", "[not supported]", "not available", "[not available]"})
_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})


def is_na(value: str | None) -> bool:
    """True for nvidia-smi's "no such reading here" words (``N/A``, ``[Not Supported]``)."""
    return value is not None and value.strip().lower() in _NA


def flag(value: str | None, what: str) -> bool | None:
    """``Yes``/``No`` (also ``1``/``0``, as some CSV fields print) -> bool; N/A -> None; else ``ParseError``."""
    word = _word(value, what)
    if word is None:
        return None
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise ParseError(f"{what}: unreadable value {value!r}")


def active(value: str | None, what: str) -> bool | None:
    """``Active``/``Not Active`` -> bool; N/A -> None; anything else (``[Unknown Error]``) -> ``ParseError``."""
    word = _word(value, what)
    if word is None:
        return None
    if word == "active":
        return True
    if word in ("not active", "inactive"):
        return False
    raise ParseError(f"{what}: unreadable value {value!r}")


def integer(value: str | None, what: str, *, suffix: str = "") -> int | None:
    """A whole number (optionally followed by ``suffix``, e.g. ``x`` in ``16x``); N/A -> None."""
    word = _word(value, what)
    if word is None:
        return None
    if suffix and word.endswith(suffix.lower()):
        word = word[: -len(suffix)].strip()
    try:
        return int(word)
    except ValueError:
        raise ParseError(f"{what}: not a number: {value!r}") from None


def _word(value: str | None, what: str) -> str | None:
    if value is None:
        raise ParseError(f"{what}: no value")
    word = " ".join(value.split()).lower()
    if not word:
        raise ParseError(f"{what}: empty value")
    return None if word in _NA else word


def _norm(key: str) -> str:
    return " ".join(key.split()).lower()


# ---------------------------------------------------------------- CSV queries


_INVALID_FIELD = re.compile(r'Field "(?P<field>[^"]+)" is not a valid field to query', re.IGNORECASE)
_UNIT = re.compile(r"\s*\[[^\]]*\]\s*$")


def raise_for_invalid_field(text: str) -> None:
    """Raise ``InvalidField`` when nvidia-smi rejected a query field name in ``text`` (stdout or stderr)."""
    match = _INVALID_FIELD.search(text)
    if match:
        raise InvalidField(match.group("field"))


def first_line(text: str) -> str:
    """The first line of an answer that says something: not blank, not a driver warning, and not
    a GPU nvidia-smi could not open (its line may come first, from stderr) unless nothing else is there."""
    said = [line for _, line in split_driver_warnings(text)[0] if line.strip()]
    return next((line for line in said if lost_gpu(line) is None), said[0] if said else "")


def parse_csv(text: str, fields: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Rows of a ``--format=csv`` answer as dicts keyed by field name, in output (= GPU index) order.

    With ``fields`` None the first line is the header (units such as `` [MiB]`` dropped from the
    names); pass the queried ``fields`` for ``--format=csv,noheader``. Every row must have one
    value per field. A GPU nvidia-smi could not open is a ``ParseError`` here: the rows alone would
    hide it; ``parse_csv_gpus`` reads it.
    """
    rows: list[dict[str, str]] = []
    for entry in _csv_entries(text, fields):
        if isinstance(entry, LostGpu):
            raise ParseError(entry.error)
        rows.append(entry)
    return rows


def parse_csv_gpus(text: str, fields: Sequence[str] | None = None) -> list[tuple[int, dict[str, str] | LostGpu]]:
    """Every GPU of a ``--format=csv`` answer with its nvidia-smi index: its row, or, for a GPU
    nvidia-smi could not open, the ``LostGpu`` of its ``Unable to determine the device handle`` line.

    nvidia-smi answers for the GPUs it can still reach and writes that line (on stderr, exit code 0
    on some drivers) for the others: the GPU is there, unread. A row's index is its ``index`` field
    where the query has one; else rows are in index order and fill the indexes no line names.
    ``ParseError`` as ``parse_csv``, and for an index that is not a number or is named twice.
    """
    entries = _csv_entries(text, fields)
    named: list[int | None] = []
    for number, entry in enumerate(entries, start=1):
        if isinstance(entry, LostGpu):
            named.append(entry.index)
        elif "index" in entry:
            raw = entry["index"]
            if not raw.isdigit():
                raise ParseError(f"CSV row {number}: GPU index is not a number: {raw[:40]!r}")
            named.append(int(raw))
        else:
            named.append(None)
    buses = [e.bus_id if isinstance(e, LostGpu) else e.get("pci.bus_id") or e.get("gpu_bus_id") for e in entries]
    lost = [isinstance(e, LostGpu) for e in entries]
    return sorted(zip(_indexes(named, buses, lost), entries, strict=True), key=lambda pair: pair[0])


def _csv_entries(text: str, fields: Sequence[str] | None) -> list[dict[str, str] | LostGpu]:
    """The rows of a CSV answer and the GPUs it could not open, in output order (``parse_csv_gpus``)."""
    raise_for_invalid_field(text)
    # "No devices were found" is no row: it follows the lines of GPUs nvidia-smi could not open when
    # it could open none.
    lines = [line.strip() for _, line in split_driver_warnings(text)[0] if line.strip() not in ("", NO_DEVICES)]
    if fields is None:
        header = next((line for line in lines if lost_gpu(line) is None), None)
        if header is None:
            raise ParseError("empty CSV answer: no header")
        names = [_UNIT.sub("", name).strip() for name in header.split(",")]
        lines.remove(header)
    else:
        names = list(fields)
    entries: list[dict[str, str] | LostGpu] = []
    for number, line in enumerate(lines, start=1):
        lost = lost_gpu(line)
        if lost is not None:
            entries.append(lost)
            continue
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(names):
            raise ParseError(f"CSV row {number} has {len(values)} values for {len(names)} fields: {line[:80]!r}")
        entries.append(dict(zip(names, values, strict=True)))
    return entries


# ---------------------------------------------------------------- readings of one GPU


def remapped_rows_from_q(section: GpuSection) -> gpus.RemappedRows | None:
    """The ``Remapped Rows`` block of one GPU; None where the GPU has no row remapper.

    None means "not supported": the block says ``N/A`` (pre-Ampere GPUs such as the TITAN V
    with driver 560) or is absent from a full report. ``ParseError`` for a block that is there
    but unreadable or incomplete.
    """
    if section.error is not None:
        raise ParseError(section.error)
    block = section.find("Remapped Rows")
    if block is None:
        return None
    if not block.children:
        if block.value is None or not block.value.strip() or is_na(block.value):
            return None
        raise ParseError(f"Remapped Rows: unreadable value {block.value!r}")
    what = "Remapped Rows"
    entries = {
        "correctable": block.get("Correctable Error"),
        "uncorrectable": block.get("Uncorrectable Error"),
        "pending": block.get("Pending"),
        "failure_occurred": block.get("Remapping Failure Occurred"),
    }
    missing = [name for name, entry in entries.items() if entry is None]
    if missing:
        raise ParseError(f"{what}: missing {', '.join(missing)}")
    values = {name: entry.value for name, entry in entries.items() if entry is not None}
    return _remapped_rows(values, what)


# The ``--query-remapped-rows`` field of each ``gpus.RemappedRows`` figure.
REMAPPED_CSV_FIELDS: Mapping[str, str] = {
    "correctable": "remapped_rows.correctable",
    "uncorrectable": "remapped_rows.uncorrectable",
    "pending": "remapped_rows.pending",
    "failure_occurred": "remapped_rows.failure",
}


def remapped_rows_from_csv_row(row: Mapping[str, str]) -> gpus.RemappedRows | None:
    """One row of ``--query-remapped-rows=...remapped_rows.{correctable,uncorrectable,pending,failure}``."""
    missing = [field for field in REMAPPED_CSV_FIELDS.values() if field not in row]
    if missing:
        raise ParseError(f"remapped rows CSV lacks {', '.join(missing)}")
    return _remapped_rows({name: row[field] for name, field in REMAPPED_CSV_FIELDS.items()}, "remapped rows CSV")


def remapped_fields_from_csv_row(row: Mapping[str, str]) -> dict[str, int | bool | None]:
    """The figures a ``--query-remapped-rows`` row holds, by ``gpus.RemappedRows`` name (N/A -> None), for a
    query of some of the four fields (``remapped_rows.failure`` alone, or with ``pending``, as health scripts
    ask). ``ParseError`` for a value that is unreadable, or a row with none of the four."""
    out: dict[str, int | bool | None] = {}
    for name, field in REMAPPED_CSV_FIELDS.items():
        if field in row:
            read = integer if name in ("correctable", "uncorrectable") else flag
            out[name] = read(row[field], field)
    if not out:
        raise ParseError(f"remapped rows CSV has none of {', '.join(REMAPPED_CSV_FIELDS.values())}")
    return out


def _remapped_rows(values: Mapping[str, str | None], what: str) -> gpus.RemappedRows | None:
    correctable = integer(values["correctable"], f"{what} correctable")
    uncorrectable = integer(values["uncorrectable"], f"{what} uncorrectable")
    pending = flag(values["pending"], f"{what} pending")
    failure = flag(values["failure_occurred"], f"{what} failure occurred")
    readings = (correctable, uncorrectable, pending, failure)
    if all(r is None for r in readings):
        return None
    if correctable is None or uncorrectable is None or pending is None or failure is None:
        raise ParseError(f"{what}: some values are N/A: {dict(values)}")
    return gpus.RemappedRows(correctable, uncorrectable, pending, failure)


def remap_histogram_from_q(section: GpuSection) -> dict[str, int]:
    """``Bank Remap Availability Histogram`` as ``{"max": 192, "high": 0, ...}`` (banks per level of spare rows).

    Best effort: absent or unreadable levels are left out; nothing here decides a status.
    """
    block = section.find("Remapped Rows", "Bank Remap Availability Histogram")
    out: dict[str, int] = {}
    for entry in block.children if block is not None else ():
        value = (entry.value or "").replace("bank(s)", "").strip()
        if value.isdigit():
            out[_norm(entry.key)] = int(value)
    return out


# nvidia-smi's label of each NVML clock event reason (gpus.REASON_BITS names).
REASON_LABELS: dict[str, str] = {
    "gpu_idle": "Idle",
    "applications_clocks_setting": "Applications Clocks Setting",
    "sw_power_cap": "SW Power Cap",
    "hw_slowdown": "HW Slowdown",
    "sync_boost": "Sync Boost",
    "sw_thermal_slowdown": "SW Thermal Slowdown",
    "hw_thermal_slowdown": "HW Thermal Slowdown",
    "hw_power_brake_slowdown": "HW Power Brake Slowdown",
    "display_clock_setting": "Display Clock Setting",
}
_REASON_BY_LABEL = {_norm(label): name for name, label in REASON_LABELS.items()}
# Old drivers printed an always-"Not Active" catch-all; it names no NVML bit.
_IGNORED_REASON_LABELS = frozenset({"unknown"})
# "Clocks Event Reasons" since driver 535; "Clocks Throttle Reasons" before; "Clocks Reasons" in some
# intermediate builds. "Clocks Event Reasons Counters" (550+) holds cumulative microseconds and is
# a different section: matching keys by name alone would read "0 us" as a reason state.
REASON_SECTIONS = ("Clocks Event Reasons", "Clocks Throttle Reasons", "Clocks Reasons")
CSV_REASON_PREFIXES = ("clocks_event_reasons.", "clocks_throttle_reasons.")


@dataclasses.dataclass(frozen=True)
class ClockReasons:
    """Clock event reasons of one GPU: which are active, inactive, or unknown (N/A / not reported)."""

    active: frozenset[str]
    inactive: frozenset[str] = frozenset()
    unknown: frozenset[str] = frozenset()

    @classmethod
    def from_active(cls, names: frozenset[str]) -> ClockReasons:
        """From a complete reading such as NVML's bit mask: every reason not named is inactive."""
        return cls(active=names, inactive=frozenset(gpus.REASON_BITS) - names)


def clock_reasons_from_q(section: GpuSection) -> ClockReasons:
    """The ``Clocks Event Reasons`` (or older ``Clocks Throttle Reasons``) block of one GPU.

    ``HW Thermal Slowdown`` and ``HW Power Brake Slowdown`` are nested under ``HW Slowdown`` and
    read like the others. An unknown label or a word other than Active/Not Active/N/A raises
    ``ParseError``; reasons the block does not mention are ``unknown``.
    """
    if section.error is not None:
        raise ParseError(section.error)
    block = next((b for b in (section.find(name) for name in REASON_SECTIONS) if b is not None), None)
    if block is None or not block.children:
        raise ParseError("no Clocks Event Reasons section")
    states: dict[str, bool | None] = {}
    for entry in block.walk():
        label = _norm(entry.key)
        if label in _IGNORED_REASON_LABELS:
            continue
        name = _REASON_BY_LABEL.get(label)
        if name is None:
            raise ParseError(f"unknown clock event reason {entry.key!r}")
        if entry.value is None:
            # A bare heading (``HW Slowdown`` over its sub-reasons, no value of its own).
            states.setdefault(name, None)
            continue
        states[name] = active(entry.value, REASON_LABELS[name])
    return _reasons(states)


def clock_reasons_from_csv_row(row: Mapping[str, str]) -> ClockReasons:
    """One row of ``--query-gpu=clocks_event_reasons.*`` (or ``clocks_throttle_reasons.*``).

    ``*.active`` (a hex bit mask) is decoded with ``gpus.decode_reasons``; other reason fields are
    ``Active``/``Not Active``. Fields that are not reasons (``index``, ``pci.bus_id``) are ignored.
    """
    states: dict[str, bool | None] = {}
    for field, value in row.items():
        prefix = next((p for p in CSV_REASON_PREFIXES if field.startswith(p)), None)
        if prefix is None:
            continue
        name = field[len(prefix) :]
        if name == "active":
            mask = _word(value, field)
            if mask is None:
                continue
            try:
                bits = int(mask, 16) if mask.startswith("0x") else int(mask)
            except ValueError:
                raise ParseError(f"{field}: unreadable mask {value!r}") from None
            for reason in gpus.REASON_BITS:
                states.setdefault(reason, reason in gpus.decode_reasons(bits))
            continue
        if name == "supported":
            continue
        if name not in gpus.REASON_BITS:
            raise ParseError(f"unknown clock event reason field {field!r}")
        states[name] = active(value, field)
    if not states:
        raise ParseError("no clock event reason fields in the CSV row")
    return _reasons(states)


def _reasons(states: Mapping[str, bool | None]) -> ClockReasons:
    return ClockReasons(
        active=frozenset(n for n, s in states.items() if s is True),
        inactive=frozenset(n for n, s in states.items() if s is False),
        unknown=frozenset(n for n in gpus.REASON_BITS if states.get(n) is None),
    )


def pcie_link_from_q(section: GpuSection) -> dict[str, int | None]:
    """PCIe link generation and width of one GPU, from ``PCI > GPU Link Info`` of a ``-q`` report.

    Returns ``current_gen``, ``max_gen``, ``current_width``, ``max_width`` (the names of
    ``gpus.PcieLink``), plus ``device_current_gen``, ``device_max_gen`` and ``host_max_gen``
    where the driver prints them (535+); a value the report gives as N/A is None, as is one of
    those three that the driver could not read (``Unknown Error``). ``max_gen`` is
    what nvidia-smi calls ``Max`` (on 535+ the lower of device and host maximum). Note that an
    idle GPU may downtrain its link (an idle RTX 4090 reads Current 1, Max 4): a low
    ``current_gen`` at idle is power saving, not a fault. ``ParseError`` when the block is
    missing or a value is not a number.
    """
    if section.error is not None:
        raise ParseError(section.error)
    info = section.find("PCI", "GPU Link Info")
    if info is None:
        raise ParseError("no PCI > GPU Link Info section")
    gen = info.get("PCIe Generation")
    width = info.get("Link Width")
    if gen is None or width is None:
        raise ParseError("PCIe Generation or Link Width missing")
    what = "PCIe"

    def read(block: Entry, key: str, *, required: bool, suffix: str = "") -> int | None:
        entry = block.get(key)
        if entry is None:
            if required:
                raise ParseError(f"{what} {block.key} {key}: missing")
            return None
        try:
            return integer(entry.value, f"{what} {block.key} {key}", suffix=suffix)
        except ParseError:
            if required:
                raise
            # The device/host figures only inform: a GPU in a VM answers ``Host Max : Unknown
            # Error`` (its host bridge is virtual), which says nothing about the link itself.
            return None

    return {
        "current_gen": read(gen, "Current", required=True),
        "max_gen": read(gen, "Max", required=True),
        "current_width": read(width, "Current", required=True, suffix="x"),
        "max_width": read(width, "Max", required=True, suffix="x"),
        "device_current_gen": read(gen, "Device Current", required=False),
        "device_max_gen": read(gen, "Device Max", required=False),
        "host_max_gen": read(gen, "Host Max", required=False),
    }


# ---------------------------------------------------------------- pasted reports (indentation lost)

# The parent heading of each nested heading of the -q report; any other heading is a GPU's own.
_FLAT_PARENT: Mapping[str, str] = {
    "gpu link info": "pci",
    "pcie generation": "gpu link info",
    "link width": "gpu link info",
    "bridge chip": "pci",
    "bank remap availability histogram": "remapped rows",
    "volatile": "ecc errors",
    "aggregate": "ecc errors",
    "aggregate uncorrectable sram sources": "ecc errors",
}
# The key/value lines of the blocks the checks read; a line that is not one of them closes the
# block (``Sparse Operation Mode`` after ``Clocks Event Reasons``). Other blocks take any line.
_REASON_KEYS = frozenset(_norm(label) for label in (*REASON_LABELS.values(), "Unknown"))
_FLAT_MEMBERS: Mapping[str, frozenset[str]] = {
    **{_norm(name): _REASON_KEYS for name in ("Clocks Event Reasons", "Clocks Throttle Reasons", "Clocks Reasons")},
    # Cumulative microseconds per reason (550+): a different block, whose names overlap the reasons'.
    "clocks event reasons counters": frozenset(
        {"sw power capping", "sync boost", "sw thermal slowdown", "hw thermal slowdown", "hw power braking"}
    ),
    "remapped rows": frozenset({"correctable error", "uncorrectable error", "pending", "remapping failure occurred"}),
    "bank remap availability histogram": frozenset({"max", "high", "partial", "low", "none"}),
    "gpu link info": frozenset(),
    "pcie generation": frozenset({"max", "current", "device current", "device max", "host max"}),
    "link width": frozenset({"max", "current"}),
    "retired pages": frozenset(
        {"single bit ecc", "double bit ecc", "pending page blacklist", "pending page retirement", "pending"}
    ),
}
# Key/value lines that always belong to the GPU itself (the truncation check looks for them there).
_FLAT_ROOT_KEYS = frozenset({"product name", "processes"})


def _indentation_lost(lines: Sequence[str]) -> bool:
    """Whether no line after the first GPU heading is indented although there are lines under it."""
    inside = False
    body = False
    for line in lines:
        if not line.strip():
            continue
        if _GPU_LINE.match(line) or lost_gpu(line) is not None:
            inside = True
            continue
        if not inside or line.strip() in _ELISION or _BANNER.match(line.strip()):
            continue
        if line[:1] == " ":
            return False
        body = True
    return body


def _place_flat(stack: list[_Building], kv: re.Match[str] | None, stripped: str, number: int) -> None:
    """Add one line of an unindented report under the block it belongs to (``_FLAT_PARENT``)."""
    if kv is None:  # a heading
        parent = _FLAT_PARENT.get(_norm(stripped))
        depth = next((d for d in range(len(stack) - 1, 0, -1) if _norm(stack[d].key) == parent), 0)
        del stack[depth + 1 :]
        node = _Building(stripped, None, number, len(stack))
        stack[-1].children.append(node)
        stack.append(node)
        return
    key = _norm(kv.group("key"))
    if key in _FLAT_ROOT_KEYS:
        del stack[1:]
    while len(stack) > 1:
        members = _FLAT_MEMBERS.get(_norm(stack[-1].key))
        if members is None or key in members:
            break
        stack.pop()
    stack[-1].children.append(_Building(kv.group("key"), kv.group("value") or "", number, len(stack)))


def _attached(header: Mapping[str, str]) -> int | None:
    raw = header.get("Attached GPUs")
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ParseError(f"Attached GPUs: not a number: {raw[:40]!r}") from None


# ---------------------------------------------------------------- the -q -x (XML) report

# Bigger than any real report (8 GPUs with every supported clock listed are a few MB): a bound on
# what we hand to the XML parser.
MAX_XML_CHARS = 32 * 1024 * 1024
# Defused: expat expands internal entities (the "billion laughs") and an internal DTD subset can
# declare them; nvidia-smi's own output has neither (only ``<!DOCTYPE nvidia_smi_log SYSTEM
# "nvsmi_device_vNN.dtd">``, which ElementTree never fetches), so any such document is refused.
_XML_REFUSED = re.compile(r"<!ENTITY|<!DOCTYPE[^>\[]*\[", re.IGNORECASE)
# Characters XML 1.0 forbids. nvidia-smi run concurrently has been seen to print arbitrary bytes
# inside ``<process_name>`` (common-workflow-language/cwltool#1910), which made expat refuse the
# whole report; they become U+FFFD, so only a field we read and that holds them is unreadable.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XML_HEADER = {
    "timestamp": "Timestamp",
    "driver_version": "Driver Version",
    "cuda_version": "CUDA Version",
    "attached_gpus": "Attached GPUs",
}
# XML element -> the label of the same field in the text report (nvsmi_device_v10-v12.dtd, drivers
# 470-580), so that one set of readers serves both forms. Elements not listed keep their tag.
_XML_LABELS: Mapping[str, str] = {
    "product_name": "Product Name",
    "product_architecture": "Product Architecture",
    "minor_number": "Minor Number",
    "uuid": "GPU UUID",
    "processes": "Processes",
    "performance_state": "Performance State",
    "pci": "PCI",
    "pci_bus_id": "Bus Id",
    "pci_gpu_link_info": "GPU Link Info",
    "pcie_gen": "PCIe Generation",
    "max_link_gen": "Max",
    "current_link_gen": "Current",
    "device_current_link_gen": "Device Current",
    "max_device_link_gen": "Device Max",
    "max_host_link_gen": "Host Max",
    "link_widths": "Link Width",
    "max_link_width": "Max",
    "current_link_width": "Current",
    "pci_bridge_chip": "Bridge Chip",
    "clocks_event_reasons": "Clocks Event Reasons",
    "clocks_throttle_reasons": "Clocks Throttle Reasons",
    "clocks_event_reasons_counters": "Clocks Event Reasons Counters",
    "remapped_rows": "Remapped Rows",
    "remapped_row_corr": "Correctable Error",
    "remapped_row_unc": "Uncorrectable Error",
    "remapped_row_pending": "Pending",
    "remapped_row_failure": "Remapping Failure Occurred",
    "row_remapper_histogram": "Bank Remap Availability Histogram",
    "row_remapper_histogram_max": "Max",
    "row_remapper_histogram_high": "High",
    "row_remapper_histogram_partial": "Partial",
    "row_remapper_histogram_low": "Low",
    "row_remapper_histogram_none": "None",
    "retired_pages": "Retired Pages",
    "multiple_single_bit_retirement": "Single Bit ECC",
    "double_bit_retirement": "Double Bit ECC",
    "pending_blacklist": "Pending Page Blacklist",
    "pending_retirement": "Pending Page Retirement",
    "ecc_mode": "ECC Mode",
    "ecc_errors": "ECC Errors",
    "volatile": "Volatile",
    "aggregate": "Aggregate",
}
# Children of <clocks_event_reasons> / <clocks_throttle_reasons>: a prefix and the NVML reason name
# (``display_clocks_setting`` in XML is the text form's ``Display Clock Setting``).
_XML_REASON_PREFIXES = ("clocks_event_reason_", "clocks_throttle_reason_")
_XML_REASON_NAMES = {**{name: name for name in REASON_LABELS}, "display_clocks_setting": "display_clock_setting"}
# Blocks whose XML holds a count under <retired_count> where the text form prints the count itself.
_XML_COUNTED = frozenset({"multiple_single_bit_retirement", "double_bit_retirement"})


def _looks_like_xml(text: str) -> bool:
    head = text.lstrip()
    # Only the lines ahead of the document matter here (a warning per GPU whose infoROM is
    # corrupted, a line per GPU nvidia-smi could not open): they are stepped over line by line,
    # not by splitting the whole report.
    while _DRIVER_WARNING.match(first := head.partition("\n")[0].strip()) or lost_gpu(first):
        head = head.partition("\n")[2].lstrip()
    return head[:512].startswith("<?xml") or "<nvidia_smi_log" in head[:512]


def _parse_xml(text: str) -> QReport:
    """``nvidia-smi -q -x``: the same ``QReport`` as the text form, with the text form's labels."""
    if len(text) > MAX_XML_CHARS:
        raise ParseError(f"XML report larger than {MAX_XML_CHARS} characters: refused")
    if _XML_REFUSED.search(text):
        raise ParseError("XML with entity declarations or an internal DTD subset: refused (not nvidia-smi output)")
    try:
        root = ElementTree.fromstring(_XML_FORBIDDEN.sub("\ufffd", text.strip()))
    except ElementTree.ParseError as exc:
        raise ParseError(f"invalid XML: {exc}") from None
    if root.tag != "nvidia_smi_log":
        raise ParseError(f"XML root is <{root.tag}>, not <nvidia_smi_log>: not nvidia-smi -q -x output")
    header = {
        label: (root.findtext(tag) or "").strip() for tag, label in _XML_HEADER.items() if root.find(tag) is not None
    }
    sections = []
    for index, gpu in enumerate(root.findall("gpu")):
        bus = (gpu.get("id") or gpu.findtext("pci/pci_bus_id") or "").strip().upper()
        if not bus:
            raise ParseError(f"<gpu> number {index} has no id (bus id)")
        children = tuple(_xml_entry(child, gpu.tag) for child in gpu)
        sections.append(GpuSection(index, bus, Entry("GPU", bus, children)))
    if not sections:
        raise ParseError("no <gpu> element: not nvidia-smi -q -x output")
    return QReport(header=header, gpus=tuple(sections), attached=_attached(header), xml=True)


def _with_lost(report: QReport, lost: Sequence[LostGpu]) -> QReport:
    """``report`` with a section in error for each GPU nvidia-smi could not open, every GPU at its index."""
    if not lost:
        return report
    named = [None] * len(report.gpus) + [gpu.index for gpu in lost]
    sections = [*report.gpus, *(GpuSection(0, gpu.bus_id, Entry("GPU"), gpu.error, lost=gpu.is_lost) for gpu in lost)]
    indexes = _indexes(named, [s.bus_id for s in sections], [s.error is not None for s in sections])
    placed = (dataclasses.replace(s, index=i) for i, s in zip(indexes, sections, strict=True))
    return dataclasses.replace(report, gpus=tuple(sorted(placed, key=lambda s: s.index)))


def _xml_entry(element: ElementTree.Element, parent: str) -> Entry:
    tag = element.tag
    label = _XML_LABELS.get(tag, tag)
    if parent in ("clocks_event_reasons", "clocks_throttle_reasons"):
        prefix = next((p for p in _XML_REASON_PREFIXES if tag.startswith(p)), None)
        name = _XML_REASON_NAMES.get(tag[len(prefix) :]) if prefix else None
        # An element we cannot name keeps its tag, which the reader reports as an unknown reason.
        label = REASON_LABELS[name] if name else ("Unknown" if tag.endswith("_unknown") else tag)
    children = tuple(_xml_entry(child, tag) for child in element)
    if tag in _XML_COUNTED:
        return Entry(label, (element.findtext("retired_count") or "").strip(), children)
    if children:
        return Entry(label, None, children)
    return Entry(label, (element.text or "").strip())


def retired_pages_from_q(section: GpuSection) -> dict[str, int | bool | None] | None:
    """``Retired Pages`` of one GPU (pre-Ampere page retirement): counts and the pending flag.

    None where the block is absent or N/A throughout (GPUs with row remapping instead). Best
    effort, for ``data``: ``ParseError`` for a value that is there but unreadable.
    """
    if section.error is not None:
        raise ParseError(section.error)
    block = section.find("Retired Pages")
    if block is None or not block.children:
        return None
    # "Pending Page Retirement" / "Pending Page Blacklist"; drivers of the 418 era print "Pending".
    pending_entry = block.get("Pending Page Retirement") or block.get("Pending Page Blacklist") or block.get("Pending")
    values: dict[str, int | bool | None] = {
        "single_bit_ecc": _count_of(block.get("Single Bit ECC"), "Retired Pages Single Bit ECC"),
        "double_bit_ecc": _count_of(block.get("Double Bit ECC"), "Retired Pages Double Bit ECC"),
        "pending": flag(pending_entry.value, "Retired Pages pending") if pending_entry is not None else None,
    }
    return None if all(v is None for v in values.values()) else values


def _count_of(entry: Entry | None, what: str) -> int | None:
    if entry is None:
        return None
    # Some drivers print the count under the heading (``Retired Count``) rather than beside it.
    value = entry.value if entry.value else entry.value_at("Retired Count")
    return integer(value, what) if value is not None else None
