"""Request validation: query strings and JSON bodies into a checked ``RunRequest``.

Everything a request carries is validated here, before a node is selected or a task enqueued:
check names against the registry, node names as DNS-1123 subdomains, ``nodelabel`` and ``job``
selectors, ``batch``, ``deadline``, ``r`` and every check parameter through its ``CheckSpec``.
A bad value raises ``BadParameter`` naming the field, which the error handlers turn into a 400.

Query strings keep upstream's habits: the first value counts, an empty value means the default,
``host=all`` and ``check=all`` mean "not given". ``host`` and ``check`` may also be repeated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from werkzeug.datastructures import MultiDict

from autopilot import config, errors, gpuident, names, parsing
from autopilot.registry import CheckRegistry
from workers.runs import RunRequest

MAX_NODES = 10_000
MAX_BATCH = 10_000
DEADLINE_RANGE = config.NODE_DEADLINE_RANGE_S
R_RANGE = (1, 4)
FORMATS = ("text", "json")
MAX_DURATION_CHARS = 32  # "7200.000000s" fits many times over

# Query parameters of /status itself; any other name must be a parameter of a selected check.
STATUS_QUERY = ("host", "check", "job", "nodelabel", "batch", "r", "deadline", "format")
RUN_BODY = ("checks", "hosts", "nodelabel", "job", "params", "deadline", "batch")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# ------------------------------------------------------------------ scalar parsers


def parse_int(raw: Any, *, field: str, lo: int, hi: int) -> int:
    """A JSON integer, or a string of ASCII digits: ``r=0_3``, ``+3``, `` 3`` or ``３`` are not 3."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise errors.BadParameter(field, f"expected an integer, got {parsing.shown(raw)}")
    value = raw if isinstance(raw, int) else parsing.parse_int(raw, field=field)
    if not lo <= value <= hi:
        raise errors.BadParameter(field, f"must be between {lo} and {hi}, got {value}")
    return value


def parse_seconds(raw: Any, *, field: str, lo: float, hi: float) -> float:
    """Seconds as a JSON number or a duration as sent (``90``, ``1.5``, ``30s``, ``2m``), within [lo, hi].

    A string is read whole: cutting it to a length first made ``"5" + 31 spaces + "x"`` read as 5,
    and `` 5`` is no more a duration here than `` 3`` is an integer (``parse_int``)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise errors.BadParameter(field, f"expected seconds, got {type(raw).__name__}")
    if isinstance(raw, str):
        if len(raw) > MAX_DURATION_CHARS or raw != raw.strip():
            raise errors.BadParameter(field, f"not a duration: {raw[:MAX_DURATION_CHARS]!r} (use e.g. 90, 30s, 2m)")
        value = parsing.parse_duration(raw, field=field)
    else:
        value = float(raw)  # a JSON number: 1e-05 is out of range, not "not a duration"
    if not lo <= value <= hi:
        raise errors.BadParameter(field, f"must be between {lo:g} and {hi:g} seconds, got {value:g}")
    return value


def parse_batch(raw: Any, *, field: str = "batch") -> int | None:
    """``batch``: nodes in flight at once, 1..10000; upstream's ``0`` means "all at once"."""
    value = parse_int(raw, field=field, lo=0, hi=MAX_BATCH)
    return value or None


def run_id(raw: str) -> str:
    if not _RUN_ID.fullmatch(raw):
        raise errors.BadParameter("id", "a run id is 32 lowercase hex digits")
    return raw


def gpu_uuid(raw: str) -> str:
    """A GPU UUID as NVML writes it (``GPU-`` and 8-4-4-4-12 hex digits), before it reaches a store key."""
    return gpuident.checked_uuid(raw)


def gpus_flag(raw: str) -> bool:
    """``gpus`` of ``GET /api/v1/nodes``: true (``parsing.parse_bool``) adds every node's per-GPU verdicts;
    absent or blank: false."""
    return bool(raw.strip()) and parsing.parse_bool(raw, field="gpus")


def _items(values: Iterable[Any], *, field: str, skip_blank: bool = True) -> list[str]:
    """The entries of comma-separated values. A blank query value means "not given" (upstream's
    habit; ``skip_blank``); an empty entry otherwise (``host=,,,``, ``host=a,,b``, ``["a", ""]``)
    is a 400: dropping it could turn a request that names nothing into one that runs everywhere."""
    out: list[str] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise errors.BadParameter(field, f"expected strings, got {type(value).__name__}")
        if not value.strip():
            if skip_blank:
                continue
            # A blank list item: "empty entry in ''" said neither where nor what (the CLI sends lists).
            raise errors.BadParameter(field, f"empty entry (item {index + 1} of the list)")
        out.extend(parsing.parse_entries(value, field=field))
    return out


def _all_alone(requested: Sequence[str], *, field: str) -> bool:
    """Whether the list is ``all``; ``all`` beside names is ambiguous, so a 400."""
    if "all" not in requested:
        return False
    if len(set(requested)) > 1:
        raise errors.BadParameter(field, "'all' cannot be combined with names")
    return True


# ------------------------------------------------------------------ lists


def check_names(
    requested: Sequence[str], reg: CheckRegistry, settings: config.Settings, *, field: str = "check"
) -> tuple[str, ...]:
    """Registered check names, deduplicated in order; nothing or ``all`` means the periodic checks."""
    if not requested or _all_alone(requested, field=field):
        default = tuple(c for c in settings.periodic_checks if c in reg)
        if not default:
            raise errors.BadParameter("check", "no check given and none of the periodic checks is registered")
        return default
    out: list[str] = []
    for name in requested:
        spec = reg.get(name)  # UnknownCheck names the field "check"
        if spec.name not in out:
            out.append(spec.name)
    return tuple(out)


def host_names(requested: Sequence[str], *, field: str = "host") -> tuple[str, ...]:
    if _all_alone(requested, field=field):
        return ()
    if len(requested) > MAX_NODES:
        raise errors.BadParameter(field, f"at most {MAX_NODES} hosts per request")
    return tuple(dict.fromkeys(names.node_name(name, field=field) for name in requested))


def check_params(
    raw: Mapping[str, Mapping[str, Any]], checks: Sequence[str], reg: CheckRegistry, *, prefix: str
) -> dict[str, dict[str, Any]]:
    """Every selected check's typed parameters (defaults filled in by its spec).

    ``prefix`` is prepended to the field of a bad value (``params.dcgm.`` for a JSON body, empty
    for a query string where the parameter name is the field).
    """
    out: dict[str, dict[str, Any]] = {}
    for check in checks:
        spec = reg.get(check)
        try:
            out[check] = spec.validate(raw.get(check, {}))
        except errors.BadParameter as exc:
            raise errors.BadParameter(f"{prefix}{check}.{exc.field}" if prefix else exc.field, exc.reason) from None
    return out


# ------------------------------------------------------------------ query strings


def from_query(
    args: MultiDict[str, str], reg: CheckRegistry, settings: config.Settings, *, fixed_check: str | None = None
) -> tuple[RunRequest, str]:
    """A ``/status`` (or per-check path) query -> (request, output format)."""
    allowed = [q for q in STATUS_QUERY if not (fixed_check and q == "check")]

    def first(name: str) -> str | None:
        # Blank means "not given"; otherwise the value as sent, so that " 3" is not read as 3.
        value = args.get(name)
        return value if value is not None and value.strip() else None

    fmt = first("format") or "text"
    if fmt not in FORMATS:
        raise errors.BadParameter("format", f"must be one of {', '.join(FORMATS)}, got {fmt[:32]!r}")
    checks = (fixed_check,) if fixed_check else check_names(_items(args.getlist("check"), field="check"), reg, settings)
    hosts = host_names(_items(args.getlist("host"), field="host"))
    nodelabel = names.label_selector(text) if (text := first("nodelabel")) else None
    job = names.job_selector(text) if (text := first("job")) else None
    batch = parse_batch(text) if (text := first("batch")) else None
    deadline = (
        parse_seconds(text, field="deadline", lo=DEADLINE_RANGE[0], hi=DEADLINE_RANGE[1])
        if (text := first("deadline"))
        else settings.node_deadline_s
    )
    r = parse_int(text, field="r", lo=R_RANGE[0], hi=R_RANGE[1]) if (text := first("r")) else None

    # The rest of the query must be parameters that one of the selected checks declares.
    raw: dict[str, dict[str, Any]] = {c: {} for c in checks}
    for name in args:
        if name in allowed:
            continue
        takers = [c for c in checks if any(p.name == name for p in reg.get(c).params)]
        if not takers:
            raise errors.BadParameter(
                name[:64], f"unknown query parameter (not a parameter of {', '.join(checks)} nor of /status)"
            )
        value = first(name)
        for check in takers:
            if value is not None:
                raw[check][name] = value
    if r is not None:
        # upstream passes r along whatever the checks; it only means something to those that take it
        for check in checks:
            if any(p.name == "r" for p in reg.get(check).params):
                raw[check]["r"] = r
    params = check_params(raw, checks, reg, prefix="")
    return RunRequest(checks, hosts, nodelabel, job, params, deadline, batch), fmt


# ------------------------------------------------------------------ JSON bodies


def from_json(body: Any, reg: CheckRegistry, settings: config.Settings) -> RunRequest:
    """A ``POST /api/v1/runs`` body -> request."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise errors.BadParameter("body", "expected a JSON object")
    for key in body:
        if key not in RUN_BODY:
            raise errors.BadParameter(str(key)[:64], f"unknown field (allowed: {', '.join(RUN_BODY)})")

    def text_or_none(key: str) -> str | None:
        value = body.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise errors.BadParameter(key, f"expected a string, got {type(value).__name__}")
        return value.strip()

    def string_list(key: str) -> list[str]:
        value = body.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return _items([value], field=key)  # "a,b" as in a query; "" is "not given"
        if not isinstance(value, list):
            raise errors.BadParameter(key, f"expected a list of strings, got {type(value).__name__}")
        return _items(value, field=key, skip_blank=False)

    checks = check_names(string_list("checks"), reg, settings)
    hosts = host_names(string_list("hosts"))
    nodelabel = names.label_selector(text) if (text := text_or_none("nodelabel")) else None
    job = names.job_selector(text) if (text := text_or_none("job")) else None
    batch = parse_batch(body["batch"]) if body.get("batch") is not None else None
    deadline = (
        parse_seconds(body["deadline"], field="deadline", lo=DEADLINE_RANGE[0], hi=DEADLINE_RANGE[1])
        if body.get("deadline") is not None
        else settings.node_deadline_s
    )
    raw_params = body.get("params")
    if raw_params is None:
        raw_params = {}
    if not isinstance(raw_params, Mapping):
        raise errors.BadParameter("params", "expected an object: {check: {name: value}}")
    for check, values in raw_params.items():
        if check not in checks:
            raise errors.BadParameter(
                f"params.{str(check)[:64]}", f"not among the selected checks ({', '.join(checks)})"
            )
        if not isinstance(values, Mapping):
            raise errors.BadParameter(f"params.{check}", "expected an object: {name: value}")
        for name, value in values.items():
            if not isinstance(value, str | int | float | bool):
                raise errors.BadParameter(f"params.{check}.{str(name)[:64]}", "expected a string, number or boolean")
    params = check_params(raw_params, checks, reg, prefix="params.")
    return RunRequest(checks, hosts, nodelabel, job, params, deadline, batch)
