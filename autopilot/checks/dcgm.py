"""``dcgm``: run NVIDIA DCGM diagnostics (``dcgmi diag -r N -j``) and judge every test on every GPU.

The one job: turn a ``dcgmi diag`` report into per-test, per-GPU findings, a failing test in a
fatal category into a fatal ``fail`` (the node must not take work), and upstream's failure string
(``memory_bandwidth.0.1.2.3``) for the ``autopilot.ibm.com/dcgm.level.<r>.output`` annotation.

Formats read (``parse_json`` / ``parse_text``; ``evaluate_text`` picks one by the first character):

- DCGM 2.x/3.x JSON: ``{"DCGM GPU Diagnostic": {"test_categories": [{"category", "tests": [{"name",
  "results": [{"gpu_ids": "0,1" | 0 | "gpu_id": "0", "status", "info", "warnings"}]}]}]}}``. A
  Deployment result names no GPU (2.x) or the GPU of its error (3.x, ``-1`` for none); a failing
  one is attributed, as in the text table, to the GPUs its message names.
- DCGM 4.x JSON: ``{"DCGM Diagnostic": {"test_categories": [... {"name", "test_summary": {"status"},
  "results": [{"entity_group": "GPU", "entity_id": 0, "status", "warnings"}]}]}, "metadata": {...}}``;
  a flat ``"tests"`` list without categories is read too; the ``test_summary`` repeats its entities'
  errors, each kept once. An entity ``Fail`` under a
  ``test_summary`` of ``Warn`` is a warning, as in the 4.x text table. Results of other entity groups (CPU,
  switches) count for the test's status but are not GPUs, so they get no device entry.

  4.x JSON never writes ``Warn``: dcgmi's writer (``Diag::HelperJsonAddResult``, for entity results
  and ``test_summary`` alike) prints ``HelperDisplayDiagResult(result)`` without ``DDR_DISPLAY_WARN``,
  so ``DCGM_DIAG_RESULT_WARN`` comes out ``"Fail"``; only the text table's test row says ``Warn``. The
  JSON carries no result enum elsewhere. What it does carry is, per error entry, ``error_id``,
  ``error_category`` and ``error_severity``: the action DCGM asks for that error code
  (``dcgm_errors.c``, ``dcgmErrorSeverity_t``: 0 NONE, 1 MONITOR, 2 ISOLATE, 3 UNKNOWN, 4 TRIAGE,
  5 CONFIG, 6 RESET), the same whether the test warned or failed. So a 4.x ``"Fail"`` (an entity on
  its own entries, the ``test_summary`` on all of the test's) is read by ``judge_dcgm4_fail``:

  - any entry ISOLATE or RESET: a failure, fatal by category as ever (DCGM says the GPU must leave
    work or be reset; dcgmi then exits 205, ``DCGM_ST_NVVS_ISOLATE_ERROR``, for ISOLATE);
  - every entry CONFIG, outside the hardware categories (9-15) and not saying the test could not
    run: a warning, as DCGM 4.x itself rates persistence mode off, unreadable device files, missing
    CUDA libraries (``Software`` sets ``NVVS_RESULT_WARN`` for them);
  - anything else (MONITOR, TRIAGE, UNKNOWN, NONE, a hardware CONFIG, no entries, no numeric
    severity): a warning and a failure look alike, so it stays a ``fail`` (never turned into a
    warning) that is never fatal (``TestOutcome.severe`` false): the node WARNs, it is not EVICTed.
    A real 4.x failure that DCGM rates only MONITOR or TRIAGE (a thermal violation in ``memtest``, low
    PCIe bandwidth) therefore no longer evicts on its own (``pciebw`` and ``gpumem`` measure those
    links and that memory themselves).

  dcgmi exits 226 (``DCGM_ST_NVVS_ERROR``) for any error entry, a warning's too
  (``Diag::GetFailureResult``), so that exit beside a warned test is explained. 2.x/3.x JSON
  (``"DCGM GPU Diagnostic"``, per-GPU ``gpu_ids``) is read as before, its status words as written.
- The text table (fallback, e.g. a saved ``dcgmi diag -r 2`` without ``-j``), 3.x and 4.x layouts::

    +---------------------------+------------------------------------------------+
    | Diagnostic                | Result                                         |
    +===========================+================================================+
    |-----  Deployment  --------+------------------------------------------------|
    | Persistence Mode          | Fail                                           |
    | Error                     | Persistence mode for GPU 1 is currently disab  |
    |                           | led.                                           |
    +-----  Hardware  ----------+------------------------------------------------+
    | GPU Memory                | Pass - GPUs: 0, 2, 3                           |
    |                           | Fail - GPU: 1                                  |
    +-----  Integration  -------+------------------------------------------------+
    | pcie                      | Pass                                           |
    |                           | GPU0: Pass                                     |
    +---------------------------+------------------------------------------------+

  4.x prints each entity on its own row (``GPU0: Pass``; other groups, ``CPU0: Fail``, count for the
  test but are no GPU device) and prints a warned entity as ``Fail``: under a test whose own row
  says ``Warn`` those rows are read as warnings (dcgmi ``HelperDisplayDiagResult``). A table has no
  severities: where nvvs rates a test with any error entry ``FAIL`` (``GetOverallDiagResult`` in recent
  sources), its row says ``Fail`` for a warning too, and it is read as a failure.
  ``Error``/``Warning``/``Info`` rows belong to the test above them; DCGM wraps their text at a
  fixed width mid-word, so continuation cells are joined without stripping. A failing or warning
  test whose row names no GPU (3.x Deployment tests) is attributed to the GPUs its ``Error`` or
  ``Warning`` text names (``GPU 3 ...``); DCGM truncates long messages, so that list can be short.
  An ``Error``/``Warning`` row with no test above it (a trimmed paste) becomes a test of its own,
  ``"<section> error"``, so that the finding is not lost.

Status words are read case-insensitively (``Pass``/``PASS``, ``Fail``, ``Warn``/``Warning``,
``Skip``/``Skipped``, ``Not Run``); any other word makes the test ``unknown``, which is an
``error``: output we do not understand is never a pass.

Judgement (``evaluate``):

- any failing test -> ``fail``; ``fatal`` when one of them is in a fatal category (below) and, from
  4.x JSON, carries an ISOLATE or RESET severity (``severe``, above);
- else any ``unknown`` -> ``error``; else any ``warn`` -> ``warn`` (upstream ignored warnings);
- ``skip`` / ``not run`` are ignored (they stay in ``data``); if nothing at all ran -> ``error``;
- a failing test with no GPU at fault (no GPU result ``Fail``, e.g. the test ``Fail`` with every
  GPU ``Pass``) whose DCGM message says the test itself could not run (``COULD_NOT_RUN``: "There
  was an internal error during the test", a plugin's child process that exited non-zero, output
  that couldn't be parsed, a missing plugin, library or helper binary, ``cuInit`` failing or the
  fabric manager down, no host engine) is not a finding about the hardware: it is left out of the
  failures and the failure string, and the result is ``error`` ("DCGM could not test: <test>
  (<message>)") unless a real failure makes it ``fail``. A failure attributed to a GPU keeps the
  rules above, whatever its message;
- a non-zero exit is still judged from its output (upstream reported those runs as passes); if
  no failing test explains it the result is at least ``error``. No parseable output -> ``error``
  with an excerpt of stderr/stdout.

Fatal categories (``Settings.dcgm_fatal_errors``, default ``PCIe, NVLink, ECC, GPU Memory``) are
matched by exact comparison of normalised names (lowercase, each run of non-alphanumerics -> ``_``),
never by substring and never character by character as upstream did. Names that DCGM 1.x/2.x (or
the text table) give to the same test are compared as one (``CANONICAL_NAMES``): ``Blacklist`` is
``Denylist``, ``Page Retirement`` is ``Page Retirement/Row Remap``, ``GPU Memory`` is ``memory``,
the ``Performance`` category is ``Stress``; ``SM Stress``/``sm_stress``, ``Targeted Power``,
``Memory Bandwidth``, ``Diagnostic``, ``PCIe`` match in any case, spacing or underscores. An entry
matches a test when it equals the test's name, the test's category (``Hardware`` makes that whole
category fatal), or an alias of the entry:

=============  ==========================================================================
entry          also matches these tests
=============  ==========================================================================
PCIe           ``PCIe`` (3.x text) / ``pcie`` (JSON, 4.x): the PCIe/NVLink integration test
GPU Memory     ``GPU Memory`` / ``memory``, and ``Memtest`` / ``memtest``: tests that find
               faulty memory. ``Memory Bandwidth`` is a performance test and is not included.
NVLink         ``nvlink`` only. DCGM has no test by that name today (NVLink is exercised by
               ``pcie``), so the entry guards a future test; ``nvbandwidth`` is a performance
               test and is not included.
ECC            ``ecc`` and ``Page Retirement/Row Remap`` (1.x ``Page Retirement``): the test that fails on what
               uncorrectable ECC errors leave behind (pending retirement or row remap). In
               DCGM 4.x that check runs inside ``software``, which is not fatal as a whole
               (it also fails on persistence mode); the ``remapped`` check covers that case.
=============  ==========================================================================

Failure string (``failure_string``): for each failing test, its name normalised as upstream does
it (trim, lowercase, each ``/``, ``|`` or whitespace character -> ``_``) followed by ``.<gpu>`` for
each failing GPU, in GPU order; a failing test with no GPU attribution is the bare name (upstream
wrote ``NoGPUid``). Upstream concatenated tests with no separator (``gpu_memory.0pcie.1``); we put
``,`` between them (``gpu_memory.0,pcie.1``) so that the annotation can be split again.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from autopilot import errors, invasive, jsoncodec, registry
from autopilot.context import CheckContext
from autopilot.results import CheckResult, DeviceResult, Status

NAME = "dcgm"

# How long ``dcgmi diag -r N`` may take. NVIDIA quotes seconds / ~2 min / ~15 min / over an hour
# for levels 1-4 on 8 GPUs; these leave room for slow or large nodes.
LEVEL_TIMEOUT_S: Mapping[int, float] = {1: 120.0, 2: 600.0, 3: 2400.0, 4: 7200.0}
# The engine's watchdog must outlive the longest command, with time to unwind after it.
CHECK_TIMEOUT_S = LEVEL_TIMEOUT_S[4] + 300.0

_EXCERPT = 500
# dcgmi's exit status for DCGM_ST_NVVS_ERROR (-30 as a byte): the diagnostic ran and reported an error
# entry, which in 4.x a warning also carries (Diag::GetFailureResult). An ISOLATE one exits 205.
NVVS_ERROR_EXIT = 226


# One parse error for every reader of tool output (kept under this name for callers).
ParseError = errors.ParseError


class Outcome(enum.StrEnum):
    """The result of one DCGM test (or of one test on one GPU), normalised across versions."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    NOT_RUN = "not_run"
    UNKNOWN = "unknown"


# Worst-of order. ``unknown`` ranks under ``fail``: a test we cannot read is less damning than
# one DCGM says failed, but worse than a warning.
_RANK = {
    Outcome.SKIP: 0,
    Outcome.NOT_RUN: 0,
    Outcome.PASS: 1,
    Outcome.WARN: 2,
    Outcome.UNKNOWN: 3,
    Outcome.FAIL: 4,
}
_TO_STATUS = {
    Outcome.PASS: Status.OK,
    Outcome.WARN: Status.WARN,
    Outcome.FAIL: Status.FAIL,
    Outcome.SKIP: Status.SKIPPED,
    Outcome.NOT_RUN: Status.SKIPPED,
    Outcome.UNKNOWN: Status.ERROR,
}
_WORDS = {
    "pass": Outcome.PASS,
    "passed": Outcome.PASS,
    "fail": Outcome.FAIL,
    "failed": Outcome.FAIL,
    "warn": Outcome.WARN,
    "warning": Outcome.WARN,
    "skip": Outcome.SKIP,
    "skipped": Outcome.SKIP,
    "notrun": Outcome.NOT_RUN,
}
_IGNORED = (Outcome.SKIP, Outcome.NOT_RUN)


def outcome_of(word: object) -> Outcome:
    """``"Pass"``, ``"PASS"``, ``"Not Run"``, ``"not_run"`` ... -> ``Outcome``; anything else is UNKNOWN."""
    return _outcome_of_text(str(word))


# Cached, as ``canonical_name``: a report repeats a handful of status words for every GPU of every
# test, and a regex substitution each was a fifth of reading one. Pure and bounded.
@functools.lru_cache(maxsize=256)
def _outcome_of_text(text: str) -> Outcome:
    return _WORDS.get(re.sub(r"[\s_-]+", "", text).lower(), Outcome.UNKNOWN)


def worst_outcome(outcomes: Iterable[Outcome], default: Outcome = Outcome.NOT_RUN) -> Outcome:
    found = list(outcomes)
    return max(found, key=_RANK.__getitem__) if found else default


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    """One DCGM test: its overall outcome and the outcome per GPU index (as a string)."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name

    name: str
    category: str
    status: Outcome
    gpus: Mapping[str, Outcome] = dataclasses.field(default_factory=dict)
    info: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # False when DCGM 4.x JSON gave none of this test's failures an ISOLATE or RESET severity: DCGM
    # does not ask for the GPU to leave work, and a 4.x "Fail" may be a warning, so it never evicts.
    severe: bool = True

    def failing_gpus(self) -> list[str]:
        return _gpu_order(g for g, o in self.gpus.items() if o is Outcome.FAIL)

    def to_dict(self, *, fatal: bool = False) -> dict[str, Any]:
        """JSON form for ``CheckResult.data["tests"]``; ``fatal`` says whether it is in a fatal category."""
        return {
            "name": self.name,
            "category": self.category,
            "status": self.status.value,
            "gpus": {g: self.gpus[g].value for g in _gpu_order(self.gpus)},
            "info": list(self.info),
            "warnings": list(self.warnings),
            "fatal_category": fatal,
            "could_not_run": could_not_run(self),
            "severe": self.severe,
        }


def _gpu_order(ids: Iterable[str]) -> list[str]:
    return sorted(set(ids), key=lambda g: (0, int(g), "") if g.isdigit() else (1, 0, g))


# ---------------------------------------------------------------- names


def normalise_test_name(name: str) -> str:
    """Upstream's failure-string form: trim, lowercase, each ``/``, ``|`` or whitespace -> ``_``."""
    return re.sub(r"[/|\s]", "_", name.strip().lower())


def _key(name: str) -> str:
    """Matching form: lowercase, each run of non-alphanumerics -> ``_`` (``GPU Memory`` -> ``gpu_memory``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# Names that older DCGM releases (1.x/2.x), or the text table rather than the JSON, give to the same
# test or category -> the one key they are compared under. ``GPU Memory`` (text, 1.x-3.x) is the
# JSON ``memory`` test; 1.x ``Page Retirement`` became ``Page Retirement/Row Remap``; ``Blacklist``
# became ``Denylist``; 1.x put the stress tests under ``Performance``, later ``Stress``.
CANONICAL_NAMES: Mapping[str, str] = {
    "gpu_memory": "memory",
    "page_retirement": "page_retirement_row_remap",
    "blacklist": "denylist",
    "performance": "stress",
}

# Canonical keys of fatal entries -> canonical keys of the tests they also stand for (module docstring).
FATAL_ALIASES: Mapping[str, frozenset[str]] = {
    "pcie": frozenset({"pcie"}),
    "memory": frozenset({"memory", "memtest"}),
    "nvlink": frozenset({"nvlink"}),
    "ecc": frozenset({"ecc", "page_retirement_row_remap"}),
}


@functools.lru_cache(maxsize=512)
def canonical_name(name: str) -> str:
    """The key a test, category or fatal entry is compared under, the same for every DCGM version."""
    key = _key(name)
    return CANONICAL_NAMES.get(key, key)


def is_fatal(test: TestOutcome, fatal_categories: Iterable[str]) -> bool:
    """Whether ``test`` belongs to one of ``fatal_categories`` (exact, normalised names)."""
    name, category = canonical_name(test.name), canonical_name(test.category)
    for entry in fatal_categories:
        wanted = canonical_name(entry)
        if not wanted:
            continue
        if name == wanted or category == wanted or name in FATAL_ALIASES.get(wanted, frozenset()):
            return True
    return False


# What DCGM says when a test could not run at all, as opposed to a finding about a GPU. From
# dcgm_errors.h (DCGM_FR_INTERNAL, _HOSTENGINE_CONN, _CANNOT_OPEN_LIB, _DCGM_API, _CANNOT_SET_WATCHES,
# _ABORTED, _FILE_CREATE_PERMISSIONS, _MEMORY_ALLOC_HOST, _EUD_SPAWN_FAILURE/_NON_ZERO_EXIT_CODE)
# and from nvvs when a plugin's child process dies, prints what it cannot parse, or a plugin or
# helper binary is missing; and CUDA that cannot start on the node (``cuInit`` failing, e.g.
# CUDA_ERROR_SYSTEM_NOT_READY while the fabric manager is down). Only ever applied to a failing
# test that names no failing GPU: a failure attributed to a GPU keeps its category rules.
_CANNOT = r"(?:couldn'?t|could not|cannot|can'?t|unable to|failed to)"
COULD_NOT_RUN = re.compile(
    "|".join(
        (
            r"internal error during the test",
            r"\b(?:child|sub-?process|process|plugin|helper|binary)\b[^.]{0,80}?"
            r"\b(?:exited|terminated|crashed|killed|died|non-?zero exit|returned non-?zero)",
            _CANNOT + r" (?:be )?pars",
            _CANNOT + r" (?:open|load|find|locate|spawn|execute|exec|launch|start)\b[^.]{0,60}?"
            r"\b(?:plugin|library|lib\S*\.so\S*|binary|helper|executable|process)",
            r"\b(?:plugin|library|binary|helper|executable)\b[^.]{0,60}?"
            r"\b(?:not found|is missing|missing|no such file)",
            r"\bcuInit\b",
            r"CUDA_ERROR_SYSTEM_NOT_READY|system not yet initiali[sz]ed",
            r"fabric ?manager[^.]{0,40}?\b(?:not running|not started|down|not initiali[sz]ed|failed)",
            r"could not connect to the host ?engine",
            r"error using DCGM API",
            r"unable to add field watches",
            r"aborted early due to user signal",
            r"does not have permissions to create a file",
            r"cannot allocate \d+ bytes on the host",
            r"cannot get pointer to \S+ from lib",  # DCGM_FR_NVML_LIB_BAD
            r"no valid GPUs passed to plugin",  # DCGM_FR_EMPTY_GPU_LIST
            r"unable to get field information for field",  # DCGM_FR_CANNOT_GET_FIELD_TAG
        )
    ),
    re.IGNORECASE,
)


def could_not_run(test: TestOutcome) -> bool:
    """A failing test with no GPU at fault whose DCGM message says the test itself could not run."""
    if test.status is not Outcome.FAIL or test.failing_gpus():
        return False
    return any(COULD_NOT_RUN.search(message) for message in (*test.warnings, *test.info))


def failure_string(tests: Iterable[TestOutcome]) -> str:
    """``memory_bandwidth.0.1.2.3,pcie.1``: failing tests with their failing GPUs (module docstring)."""
    parts = []
    for test in tests:
        if test.status is Outcome.FAIL and not could_not_run(test):
            parts.append("".join([normalise_test_name(test.name), *(f".{g}" for g in test.failing_gpus())]))
    return ",".join(parts)


# ---------------------------------------------------------------- JSON

_DIAG_KEYS = ("DCGM GPU Diagnostic", "DCGM Diagnostic")


def parse_json(text: str) -> list[TestOutcome]:
    """The tests of a ``dcgmi diag -j`` report, DCGM 3.x or 4.x. Raises ``ParseError``."""
    return _parse_json(text)[0]


def _parse_json(text: str) -> tuple[list[TestOutcome], dict[str, str]]:
    body = text.strip()
    try:
        # The whole text is the document (the usual case): orjson reads it several times faster.
        doc = jsoncodec.loads(body)
    except ValueError:
        try:
            # A line dcgmi prints after the document (or a warning ahead of it) must not hide the report.
            doc = jsoncodec.first_document(body)
        except ValueError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ParseError("JSON is not an object")
    diag = next((doc[k] for k in _DIAG_KEYS if isinstance(doc.get(k), dict)), None)
    if diag is None:
        raise ParseError(f"JSON has none of {', '.join(repr(k) for k in _DIAG_KEYS)}")

    metadata = {str(k): str(v) for k, v in diag.items() if isinstance(v, (str, int, float)) and k != "runtime_error"}
    if isinstance(doc.get("metadata"), dict):
        metadata.update({str(k): str(v) for k, v in doc["metadata"].items() if isinstance(v, (str, int, float))})

    tests: list[TestOutcome] = []
    categories = diag.get("test_categories")
    if isinstance(categories, list):
        for cat in categories:
            if isinstance(cat, dict):
                name = str(cat.get("category") or "")
                tests.extend(_json_test(t, name) for t in _dicts(cat.get("tests")))
    tests.extend(_json_test(t, str(t.get("category") or "")) for t in _dicts(diag.get("tests")))

    runtime_error = diag.get("runtime_error") or doc.get("runtime_error")
    if runtime_error:
        if not tests:
            raise ParseError(f"DCGM runtime error: {str(runtime_error)[:_EXCERPT]}")
        # Tests plus a runtime error: the run stopped part-way; that must not read as a pass.
        tests.append(TestOutcome("runtime error", "", Outcome.UNKNOWN, warnings=(str(runtime_error),)))
    return tests, metadata


# dcgmErrorSeverity_t (dcgm_errors.h: 0 NONE, 1 MONITOR, 2 ISOLATE, 3 UNKNOWN, 4 TRIAGE, 5 CONFIG,
# 6 RESET): the action DCGM asks for an error code, looked up per code in dcgm_errors.c
# (DcgmError::SetCode), whatever the test's result.
_SEVERE = frozenset({2, 6})  # ISOLATE: cannot perform workload; RESET: drain and reset the GPU
_CONFIG = 5
# dcgmErrorCategory_t 9..15: DCGM_FR_EC_HARDWARE_THERMAL .. DCGM_FR_EC_HARDWARE_OTHER.
_HARDWARE_CATEGORIES = range(9, 16)


def _int_field(entry: Mapping[str, Any], key: str) -> int | None:
    value = entry.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _config_only(entry: Mapping[str, Any]) -> bool:
    """An error entry DCGM itself classes as a setting: CONFIG severity, no hardware category, and no
    message saying the test could not run (DCGM_FR_ABORTED is CONFIG too, and that is an ``error``)."""
    category = _int_field(entry, "error_category")
    return (
        _int_field(entry, "error_severity") == _CONFIG
        and category is not None
        and category not in _HARDWARE_CATEGORIES
        and not any(COULD_NOT_RUN.search(m) for m in _texts(entry))
    )


def judge_dcgm4_fail(entries: Sequence[Mapping[str, Any]]) -> tuple[Outcome, bool]:
    """What a DCGM 4.x JSON ``"Fail"`` stands for, from its error entries: ``(outcome, severe)``.

    dcgmi 4.x writes a warned result as ``"Fail"`` (module docstring), so the entries decide: any
    ISOLATE or RESET severity is a failure that may evict; entries that are all settings (CONFIG, not
    hardware) are a warning; anything else (MONITOR, TRIAGE, UNKNOWN, a hardware CONFIG, no entries or
    no severity) may be either, and is read as a failure that never evicts."""
    if any(_int_field(e, "error_severity") in _SEVERE for e in entries):
        return Outcome.FAIL, True
    if entries and all(_config_only(e) for e in entries):
        return Outcome.WARN, False
    return Outcome.FAIL, False


def _json_test(raw: Mapping[str, Any], category: str) -> TestOutcome:
    gpus: dict[str, Outcome] = {}
    outcomes: list[Outcome] = []
    info: list[str] = []
    warnings: list[str] = []
    results = _dicts(raw.get("results"))
    summary = raw.get("test_summary")
    # 4.x: entity results or a test summary (2.x/3.x name GPUs by ``gpu_ids``/``gpu_id`` and have neither).
    dcgm4 = isinstance(summary, dict) or any("entity_id" in r for r in results)
    entries = [e for r in (*results, raw, summary if isinstance(summary, dict) else {}) for e in _entries(r)]
    graves: list[bool] = []  # per 4.x "Fail" still read as a failure: did DCGM rate it ISOLATE/RESET?
    for res in results:
        outcome = outcome_of(res.get("status", ""))
        if dcgm4 and outcome is Outcome.FAIL:
            outcome, grave = judge_dcgm4_fail(_entries(res))
            graves += [grave] if outcome is Outcome.FAIL else []
        outcomes.append(outcome)
        for gpu in _result_gpus(res):
            gpus[gpu] = worst_outcome([gpus[gpu], outcome]) if gpu in gpus else outcome
        info.extend(_texts(res.get("info")))
        warnings.extend(_texts(res.get("warnings")) + _texts(res.get("errors")) + _texts(res.get("error")))
    # Messages about the test as a whole (no entity): where nvvs reports that a plugin could not run.
    warnings.extend(_texts(raw.get("warnings")) + _texts(raw.get("errors")))
    if isinstance(summary, dict) and "status" in summary:
        overall = word = outcome_of(summary["status"])
        if word is Outcome.FAIL:
            # The summary's "Fail" is judged on every entry of the test (older 4.x list only the test's
            # own there, newer repeat its entities'): a warned test reads as a warning, as in the table.
            overall, grave = judge_dcgm4_fail(entries)
            graves += [grave] if overall is Outcome.FAIL else []
        if word is Outcome.WARN:
            # As in the 4.x text table: the summary is the worst of the test's entities, so a test
            # that only warned has no failed entity; one written "Fail" under it was warned, and
            # must not read as a (fatal) failure.
            outcomes = [_warned(o) for o in outcomes]
            gpus = {g: _warned(o) for g, o in gpus.items()}
        outcomes.append(overall)
        info.extend(_texts(summary.get("info")))
        warnings.extend(_texts(summary.get("warnings")) + _texts(summary.get("errors")))
    status = worst_outcome(outcomes)
    if not gpus:
        # 2.x Deployment results carry no GPU id at all, 3.x one only when the error names a GPU.
        gpus = _gpus_named(status, warnings)
    # 4.x repeats every error of a test's entities in its ``test_summary`` (dcgmi HelperJsonAddTestSummary,
    # ``includeAllErrors``): each message is kept once.
    return TestOutcome(
        name=str(raw.get("name") or "?"),
        category=category,
        status=status,
        gpus=gpus,
        info=tuple(dict.fromkeys(info)),
        warnings=tuple(dict.fromkeys(warnings)),
        severe=not graves or any(graves),
    )


def _entries(holder: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The error entries (``{"warning", "error_id", "error_category", "error_severity"}``) of a result."""
    return [*_dicts(holder.get("warnings")), *_dicts(holder.get("errors"))]


def _result_gpus(res: Mapping[str, Any]) -> list[str]:
    if "entity_id" in res:  # 4.x
        group = str(res.get("entity_group", "GPU"))
        return [str(res["entity_id"])] if group.upper() == "GPU" else []
    ids = res.get("gpu_ids", res.get("gpu_id", ""))  # 3.x: "0,1,2,3", "0", or 0 (an int)
    # A negative id (-1: the error concerns no one GPU) is no GPU, never a device named "-1".
    return [p.strip() for p in str(ids).split(",") if p.strip() and not p.strip().startswith("-")]


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _texts(value: object) -> list[str]:
    """Messages from a field that DCGM versions write as a string, a list, or dicts with ``warning``."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        # 3.x Deployment entries key their text "warnings" (a string), plugin entries "warning".
        text = next(
            (value[k] for k in ("warning", "warnings", "error", "message") if isinstance(value.get(k), str)), None
        )
        return [str(text)] if text is not None else [json.dumps(value, sort_keys=True)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return [str(value)]


# ---------------------------------------------------------------- text table

_BORDER = re.compile(r"^\+(?P<left>[-=]+)\+(?P<right>[-=]+)\+\s*$")
_SECTION = re.compile(r"^[|+]-{2,}\s+(?P<name>[A-Za-z][\w /]*?)\s+-+\+")
_ROW = re.compile(r"^\|(?P<label>[^|]*)\|(?P<value>.*)\|\s*$")
_MESSAGE = re.compile(r"^(?P<kind>error|warning|info)\b", re.IGNORECASE)
_STATUS_ENTRY = re.compile(
    r"^(?P<word>pass(?:ed)?|fail(?:ed)?|warn(?:ing)?|skip(?:ped)?|not[ _]?run)\b\s*(?:-\s*(?P<who>.*))?$",
    re.IGNORECASE,
)
# 4.x entity rows: "GPU0: Pass", and for other entity groups "CPU0: Fail", "Switch3: Pass",
# "GPU_I1: Skip" (DcgmFieldsGetEntityGroupString); a result not run prints an empty word.
_ENTITY_ENTRY = re.compile(r"^(?P<group>[A-Za-z][A-Za-z_]*?)\s*(?P<id>\d+)\s*:\s*(?P<word>.*)$")
_GPU_IN_TEXT = re.compile(r"\bGPU\s*(\d+)\b")
_RETURN_CODE = re.compile(r"Code:\s*\(\d+\)")
_DEFAULT_CELL = 45  # characters of text in a 48-wide result cell: one space before, two after


@dataclasses.dataclass
class _TextTest:
    name: str
    category: str
    outcomes: list[Outcome]
    gpus: dict[str, Outcome]
    info: list[str]
    warnings: list[str]
    entity_rows: bool = False  # 4.x layout: per-entity "GPU0: Pass" rows under the test's own row
    others: list[Outcome] = dataclasses.field(default_factory=list)  # 4.x rows of entities that are no GPU


def parse_text(text: str) -> list[TestOutcome]:
    """The tests of a ``dcgmi diag`` text table (3.x or 4.x layout). Raises ``ParseError``."""
    return _parse_text(text)[0]


def _parse_text(text: str) -> tuple[list[TestOutcome], dict[str, str]]:
    tests: list[_TextTest] = []
    metadata: dict[str, str] = {}
    saw_table = False
    cell = _DEFAULT_CELL
    section = ""
    test: _TextTest | None = None
    # The row a continuation cell belongs to: ("test", None), ("message", parts), ("meta", key).
    last: tuple[str, Any] | None = None
    messages: list[tuple[_TextTest | None, str, list[str]]] = []  # owning test, kind, text chunks
    last_gpus: list[str] | None = None  # GPU list of the latest status entry, for wrapped lists

    # A table quoted in a Markdown or reStructuredText code block (as in DCGM's own user guide) is
    # shifted as a whole: its common margin is not part of the table.
    for line in textwrap.dedent(text).splitlines():
        line = line.rstrip("\r")
        border = _BORDER.match(line)
        if border:
            saw_table = True
            cell = max(1, len(border.group("right")) - 3)
            last = None
            continue
        sec = _SECTION.match(line)
        if sec:
            saw_table = True
            section, test, last = sec.group("name").strip(), None, None
            continue
        row = _ROW.match(line)
        if row is None:
            # Anything outside the table (a blank line between pasted fragments) ends its context.
            section, test, last = "", None, None
            continue
        saw_table = True
        label, value = row.group("label").strip(), row.group("value")
        chunk = value[1 : 1 + cell] if value.startswith(" ") else value[:cell]
        if label:
            if label == "Diagnostic" and value.strip() == "Result":
                continue
            if section.lower() == "metadata":
                metadata[label] = value.strip()
                last = ("meta", label)
            elif message_label := _MESSAGE.match(label):
                kind = message_label.group("kind").lower()
                owner = test
                if owner is None and kind != "info":
                    # An Error/Warning row with no test above it (a trimmed paste): a finding of its own.
                    outcome = Outcome.FAIL if kind == "error" else Outcome.WARN
                    owner = _TextTest(f"{section} error" if section else "error", section, [outcome], {}, [], [])
                    tests.append(owner)
                parts = [chunk]
                messages.append((owner, kind, parts))
                last = ("message", parts)
            else:
                test = _TextTest(label, section, [], {}, [], [])
                tests.append(test)
                last_gpus = _text_entry(test, value.strip(), None)
                last = ("test", None)
            continue
        # A continuation cell: same row as the last labelled one.
        if last is None:
            continue
        if last[0] == "message":
            last[1].append(chunk)
        elif last[0] == "meta":
            metadata[last[1]] = f"{metadata[last[1]]}{value.strip()}"
        elif last[0] == "test" and test is not None:
            last_gpus = _text_entry(test, value.strip(), last_gpus)

    if not saw_table:
        raise ParseError("no DCGM result table in the output")

    for owner, kind, parts in messages:
        message = "".join(parts).strip()
        if owner is not None and message:
            (owner.info if kind == "info" else owner.warnings).append(message)

    out = []
    for t in tests:
        if t.entity_rows and Outcome.WARN in t.outcomes and Outcome.FAIL not in t.outcomes:
            # dcgmi 4.x prints a warned entity as "Fail" (HelperDisplayDiagResult without
            # DDR_DISPLAY_WARN); only the test's own row says "Warn". A test that warns has no
            # failed entity, so those rows are warnings, never a (fatal) failure.
            t.gpus = {g: _warned(o) for g, o in t.gpus.items()}
            t.others = [_warned(o) for o in t.others]
        status = worst_outcome([*t.outcomes, *t.others, *t.gpus.values()], Outcome.UNKNOWN)
        gpus = dict(t.gpus) or _gpus_named(status, t.warnings)
        out.append(TestOutcome(t.name, t.category, status, gpus, tuple(t.info), tuple(t.warnings)))
    return out, metadata


def _warned(outcome: Outcome) -> Outcome:
    """``outcome`` of an entity under a test that, by its own word, only warned: a ``FAIL`` is a ``WARN``."""
    return Outcome.WARN if outcome is Outcome.FAIL else outcome


def _gpus_named(status: Outcome, warnings: Iterable[str]) -> dict[str, Outcome]:
    """GPUs a failing or warning test that names none is attributed to, from its messages.

    Deployment rows (text) and 2.x/3.x Deployment results (JSON) name no GPU; their messages do
    ("Persistence mode for GPU 1 ..."). A message saying the test could not run names no GPU at
    fault, whatever GPU it mentions."""
    gpus: dict[str, Outcome] = {}
    if status not in (Outcome.FAIL, Outcome.WARN):
        return gpus
    for message in warnings:
        if COULD_NOT_RUN.search(message):
            continue
        for gpu in _GPU_IN_TEXT.findall(message):
            gpus[gpu] = status
    return gpus


def _text_entry(test: _TextTest, value: str, last_gpus: list[str] | None) -> list[str] | None:
    """Read one result cell (``Pass - All``, ``Fail - GPU: 0``, ``GPU0: Pass``) into ``test``."""
    if not value:
        return last_gpus
    entity = _ENTITY_ENTRY.match(value)
    if entity:  # 4.x: "GPU0: Pass", "CPU0: Fail"
        word = entity.group("word").strip()
        outcome = outcome_of(word) if word else Outcome.NOT_RUN
        test.entity_rows = True
        if entity.group("group").upper() != "GPU":
            test.others.append(outcome)  # counts for the test, but is no GPU device
            return None
        gpu = entity.group("id")
        test.gpus[gpu] = worst_outcome([test.gpus[gpu], outcome]) if gpu in test.gpus else outcome
        return None
    entry = _STATUS_ENTRY.match(value)
    if entry:  # 3.x: "Pass", "Pass - All", "Pass - GPUs: 1, 2, 3", "Fail - GPU: 0"
        outcome = outcome_of(entry.group("word"))
        who = (entry.group("who") or "").strip()
        ids = re.findall(r"\d+", who.partition(":")[2]) if re.match(r"GPUs?\s*:", who, re.IGNORECASE) else []
        if not ids:
            test.outcomes.append(outcome)
        for gpu in ids:
            test.gpus[gpu] = worst_outcome([test.gpus[gpu], outcome]) if gpu in test.gpus else outcome
        return ids or None
    if _RETURN_CODE.fullmatch(value):
        # "Warn - All" of the Diagnostic test is followed by the EUD return code (dcgmi Diag.cpp).
        test.info.append(value)
        return last_gpus
    if last_gpus is not None and re.fullmatch(r"[\d,\s]+", value):  # a wrapped GPU list
        outcome = test.gpus[last_gpus[-1]]
        ids = re.findall(r"\d+", value)
        for gpu in ids:
            test.gpus[gpu] = outcome
        return [*last_gpus, *ids]
    # A result cell we cannot read: the test must not pass on it.
    test.outcomes.append(Outcome.UNKNOWN)
    test.info.append(value)
    return None


# ---------------------------------------------------------------- judgement


def evaluate(
    tests: Sequence[TestOutcome],
    fatal_categories: Iterable[str],
    returncode: int = 0,
    stderr: str = "",
) -> CheckResult:
    """Judge parsed DCGM tests (module docstring): status, fatal flag, devices per GPU, data."""
    fatal_list = list(fatal_categories)
    fatal_of = {id(t): is_fatal(t, fatal_list) for t in tests}
    # A failure evicts only in a fatal category and when DCGM did not rule out isolating the GPU.
    evicts = {id(t): fatal_of[id(t)] and t.severe for t in tests}
    data: dict[str, Any] = {
        "tests": [t.to_dict(fatal=fatal_of[id(t)]) for t in tests],
        "failure_string": failure_string(tests),
        "fatal_categories": fatal_list,
        "returncode": returncode,
    }
    if stderr.strip():
        data["stderr"] = _excerpt(stderr)

    devices = _devices(tests, evicts)
    ran = [t for t in tests if t.status not in _IGNORED]
    not_run = [t for t in tests if could_not_run(t)]
    failed = [t for t in tests if t.status is Outcome.FAIL and not could_not_run(t)]
    unknown = [t for t in tests if t.status is Outcome.UNKNOWN]
    warned = [t for t in tests if t.status is Outcome.WARN]
    fatal = any(evicts[id(t)] for t in failed)

    if failed:
        status = Status.FAIL
        summary = "DCGM failed: " + "; ".join(_describe(t, evicts[id(t)], "failed") for t in failed)
        if not_run:
            summary += "; " + _could_not_test(not_run)
    elif not_run:
        # The tool failed, not the hardware: could not test, never a (fatal) fail.
        status = Status.ERROR
        summary = _could_not_test(not_run)
    elif unknown:
        status = Status.ERROR
        summary = "DCGM result unreadable: " + "; ".join(
            f"{t.name} ({'; '.join(t.warnings) or 'unrecognised status'})"[:200] for t in unknown
        )
    elif not ran:
        status = Status.ERROR
        summary = "no DCGM test ran" + (f" ({len(tests)} skipped)" if tests else "")
    elif returncode and not (warned and returncode == NVVS_ERROR_EXIT):
        # Nothing failed, yet dcgmi says the run did not succeed: we do not know what it saw. (4.x
        # dcgmi exits 226 for a warning's error entry too, Diag::GetFailureResult: that is explained.)
        status = Status.ERROR
        summary = "DCGM found no failing test"
    elif warned:
        status = Status.WARN
        summary = "DCGM warnings: " + "; ".join(_describe(t, False, "warned") for t in warned)
    else:
        status = Status.OK
        skipped = len(tests) - len(ran)
        on = f" on {len(devices)} GPU{'s' if len(devices) != 1 else ''}" if devices else ""
        summary = f"DCGM diagnostics passed: {len(ran)} tests{on}" + (f", {skipped} skipped" if skipped else "")
    if returncode:
        summary += f"; dcgmi exited {returncode}"
        if stderr.strip():
            summary += f": {_excerpt(stderr, 200)}"
    return CheckResult(NAME, status, summary, fatal=fatal and status is Status.FAIL, devices=devices, data=data)


def _could_not_test(tests: Sequence[TestOutcome]) -> str:
    """``DCGM could not test: pcie (There was an internal error during the test: '...')``."""
    parts = []
    for test in tests:
        messages = [m for m in (*test.warnings, *test.info) if COULD_NOT_RUN.search(m)]
        parts.append(f"{test.name} ({_excerpt('; '.join(messages), 200)})")
    return "DCGM could not test: " + "; ".join(parts)


def _describe(test: TestOutcome, fatal: bool, verb: str) -> str:
    wanted = Outcome.FAIL if verb == "failed" else Outcome.WARN
    gpus = _gpu_order(g for g, o in test.gpus.items() if o is wanted)
    where = f" on GPU {', '.join(gpus)}" if gpus else ""
    return f"{test.name} {verb}{where}" + (" (fatal)" if fatal else "")


def _devices(tests: Sequence[TestOutcome], fatal_of: Mapping[int, bool]) -> tuple[DeviceResult, ...]:
    per_gpu: dict[str, list[tuple[TestOutcome, Outcome]]] = {}
    for test in tests:
        for gpu, outcome in test.gpus.items():
            per_gpu.setdefault(gpu, []).append((test, outcome))
    devices = []
    for gpu in _gpu_order(per_gpu):
        entries = per_gpu[gpu]
        outcome = worst_outcome(o for _, o in entries)
        failed = [t.name + (" (fatal)" if fatal_of[id(t)] else "") for t, o in entries if o is Outcome.FAIL]
        unknown = [t.name for t, o in entries if o is Outcome.UNKNOWN]
        warned = [t.name for t, o in entries if o is Outcome.WARN]
        parts = []
        if failed:
            parts.append("failed: " + ", ".join(failed))
        if unknown:
            parts.append("unreadable: " + ", ".join(unknown))
        if warned:
            parts.append("warned: " + ", ".join(warned))
        detail = "; ".join(parts) or ("all tests skipped" if outcome in _IGNORED else "")
        devices.append(DeviceResult(gpu, _TO_STATUS[outcome], detail=detail))
    return tuple(devices)


def _excerpt(text: str, limit: int = _EXCERPT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def evaluate_output(
    stdout: str, fatal_categories: Iterable[str], *, returncode: int = 0, stderr: str = ""
) -> CheckResult:
    """Parse ``dcgmi diag`` output (JSON, else the text table) and judge it; never raises."""
    if not stdout.strip():
        why = f"dcgmi exited {returncode} and printed nothing" if returncode else "dcgmi printed nothing"
        if stderr.strip():
            why += f"; stderr: {_excerpt(stderr)}"
        return CheckResult(NAME, Status.ERROR, why, data={"returncode": returncode, "stderr": _excerpt(stderr)})
    start = stdout.find("{")
    looks_json = start >= 0 and not stdout[:start].strip().startswith("+") and "|" not in stdout[:start]
    try:
        if looks_json:
            tests, metadata = _parse_json(stdout[start:])
            fmt = "json"
        else:
            tests, metadata = _parse_text(stdout)
            fmt = "text"
    except ParseError as exc:
        summary = f"unreadable dcgmi output ({exc})"
        if returncode:
            summary = f"dcgmi exited {returncode}: {exc}"
        detail = stderr if stderr.strip() else stdout
        summary += f"; {'stderr' if stderr.strip() else 'output'}: {_excerpt(detail, 300)}"
        return CheckResult(
            NAME,
            Status.ERROR,
            summary,
            data={"returncode": returncode, "stderr": _excerpt(stderr), "stdout": _excerpt(stdout)},
        )
    result = evaluate(tests, fatal_categories, returncode, stderr)
    return dataclasses.replace(result, data={**result.data, "format": fmt, "metadata": metadata})


def evaluate_text(text: str, params: Mapping[str, Any], settings: Any) -> CheckResult:
    """``autopilot evaluate dcgm FILE``: judge a saved ``dcgmi diag`` output (JSON or text table)."""
    result = evaluate_output(text, settings.dcgm_fatal_errors)
    if params.get("r") is None:
        return result
    return dataclasses.replace(result, data={**result.data, "level": params["r"]})


# ---------------------------------------------------------------- collect


@registry.check(
    NAME,
    description="NVIDIA DCGM diagnostics (dcgmi diag -r N): per-test, per-GPU results; fatal categories evict",
    params=(
        registry.Param(
            "r",
            int,
            None,
            "dcgmi diag level: 1 quick, 2 medium, 3 long, 4 extended (default: AUTOPILOT_DCGM_LEVEL)",
            minimum=1,
            maximum=4,
        ),
    ),
    timeout_s=CHECK_TIMEOUT_S,
    uses_gpu=True,
    evaluate_text=evaluate_text,
    health="dcgm",
    tag="DCGM",
    periodic=True,
    as_job=lambda params, settings: int(params.get("r") or settings.dcgm_level) >= invasive.LEVEL,
)
def run(ctx: CheckContext, params: Mapping[str, Any]) -> CheckResult:
    level = int(params.get("r") or ctx.settings.dcgm_level)
    # Raises GpuUnavailable on a machine without a driver: the engine reports ``skipped``.
    if ctx.gpus.count() == 0:
        return CheckResult(NAME, Status.SKIPPED, "no NVIDIA GPU", data={"level": level})
    if ctx.commands.which("dcgmi") is None:
        # A GPU node without DCGM cannot be judged: that is an error, never a pass.
        return CheckResult(NAME, Status.ERROR, "dcgmi not found", data={"level": level})
    timeout = min(LEVEL_TIMEOUT_S[level], ctx.timeout_for(NAME, CHECK_TIMEOUT_S))
    done = ctx.commands.run(["dcgmi", "diag", "-r", str(level), "-j"], timeout=timeout)
    result = evaluate_output(
        done.stdout, ctx.settings.dcgm_fatal_errors, returncode=done.returncode, stderr=done.stderr
    )
    return dataclasses.replace(result, data={**result.data, "level": level, "timeout_s": timeout})
