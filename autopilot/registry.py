"""The check registry: ``@check(...)`` records a check's name, parameters, limits and what else is
known about it (GPU use, upstream names, periodic by default, ring, run as a Job).

The list of checks is the imports in ``autopilot/checks/__init__.py``; registering a name twice
is an error. Parameters are declared with their type and bounds so that every front end (CLI,
API, Celery task) validates a request the same way before anything runs or is enqueued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autopilot import errors, names, parsing

if TYPE_CHECKING:
    from autopilot.config import Settings
    from autopilot.context import CheckContext
    from autopilot.results import CheckResult

RunFn = Callable[["CheckContext", Mapping[str, Any]], "CheckResult"]
# evaluate_text(text, params, settings) -> result: a saved tool output judged without running it.
EvaluateTextFn = Callable[[str, Mapping[str, Any], Any], "CheckResult"]
# as_job(params, settings) -> whether a run of the check with these (validated or stored) parameters
# is a Kubernetes Job that takes the node's GPUs, not work for the worker's engine.
AsJobFn = Callable[[Mapping[str, Any], "Settings"], bool]

MAX_LIST_ITEMS = 10_000


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a check. ``default`` None with ``setting`` means "taken from Settings"."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, raw: Any) -> Any:
        """Validate one raw value (a string from a query or the CLI, or an already typed one)."""
        field = self.name
        try:
            if self.kind is bool:
                value: Any = raw if isinstance(raw, bool) else parsing.parse_bool(str(raw), field=field)
            elif self.kind is int:
                if isinstance(raw, bool) or not isinstance(raw, int | str):
                    raise ValueError
                # canonical digits only: "0_3", "+3", " 3" or "３" are not 3
                value = raw if isinstance(raw, int) else parsing.parse_int(raw, field=field)
            elif self.kind is float:
                if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                    raise ValueError
                value = float(raw) if not isinstance(raw, str) else parsing.parse_number(raw, field=field)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError
            else:
                value = str(raw)
        except (ValueError, OverflowError, errors.BadParameter):  # OverflowError: a JSON integer past float's range
            raise errors.BadParameter(field, f"expected {self.kind.__name__}, got {parsing.shown(raw)}") from None
        if self.minimum is not None and value < self.minimum:
            raise errors.BadParameter(field, f"must be >= {self.minimum:g}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise errors.BadParameter(field, f"must be <= {self.maximum:g}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise errors.BadParameter(field, f"must be one of {', '.join(self.choices)}, got {str(value)[:64]!r}")
        return value

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind.__name__,
            "default": self.default,
            "help": self.help,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "choices": list(self.choices) if self.choices else None,
        }


class NodeList(Param):
    """Comma-separated node names (``nodes`` of ``ping`` and ``iperf``), canonicalised to
    ``"a,b"``: every name a DNS-1123 subdomain, no empty entry. A bad one is rejected where the
    request is validated, so it never reaches a queue and never turns every node's result into
    an ``error``. ``""`` (the default) means "no narrowing"."""

    def parse(self, raw: Any) -> Any:
        if not isinstance(raw, str):
            raise errors.BadParameter(self.name, f"expected comma-separated node names, got {type(raw).__name__}")
        if not raw.strip():
            return ""
        entries = parsing.parse_entries(raw, field=self.name, most=MAX_LIST_ITEMS)
        return ",".join(dict.fromkeys(names.node_name(item, field=self.name) for item in entries))


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    """A registered check."""

    name: str
    run: RunFn
    description: str
    params: tuple[Param, ...] = ()
    timeout_s: float = 60.0
    uses_gpu: bool = False
    """Takes the node's GPUs: runs under the worker's per-node GPU lock, and its devices are GPUs."""
    invasive: bool = False
    evaluate_text: EvaluateTextFn | None = None
    health: str | None = None
    """Upstream's ``health`` label value on ``autopilot_health_checks`` (gpupower is upstream's
    ``power-slowdown``); None: the check has no upstream series."""
    tag: str = ""
    """Upstream's tag for the check in ``/status`` text (``GPU POWER``); empty: the name in capitals."""
    periodic: bool = False
    """In the default ``AUTOPILOT_PERIODIC_CHECKS``."""
    ring: bool = False
    """A network check over many nodes at once, run by the ring coordinator on the control queue,
    never as one node's task (so never re-run on one node to confirm a result)."""
    as_job: AsJobFn | None = None
    """Whether a run with given parameters is a Kubernetes Job (level-3 DCGM); None: never."""

    @property
    def upstream_tag(self) -> str:
        return self.tag or self.name.upper()

    def runs_as_job(self, params: Mapping[str, Any], settings: Settings) -> bool:
        """A run of this check with ``params`` (a stored result's are not trusted to be valid) is a Job."""
        if self.as_job is None:
            return False
        try:
            return self.as_job(params, settings)
        except (TypeError, ValueError, ArithmeticError):  # ArithmeticError: int(inf), JSON's Infinity
            return False

    def validate(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Typed parameters with defaults filled in; unknown names are rejected."""
        known = {p.name: p for p in self.params}
        for name in raw:
            if name not in known:
                allowed = ", ".join(known) or "none"
                raise errors.BadParameter(str(name)[:64], f"unknown parameter for {self.name} (allowed: {allowed})")
        out: dict[str, Any] = {}
        for param in self.params:
            if param.name in raw and raw[param.name] is not None:
                out[param.name] = param.parse(raw[param.name])
            elif param.default is not None:
                out[param.name] = param.default
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": [p.describe() for p in self.params],
            "timeout_s": self.timeout_s,
            "uses_gpu": self.uses_gpu,
            "invasive": self.invasive,
        }


class CheckRegistry:
    """Name -> ``CheckSpec``. Tests build their own; a process assembles ``shipped()`` and hands it down."""

    def __init__(self) -> None:
        self._specs: dict[str, CheckSpec] = {}

    def add(self, spec: CheckSpec) -> None:
        if spec.name in self._specs:
            raise errors.ConfigError(f"check {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> CheckSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise errors.UnknownCheck(str(name)[:64], sorted(self._specs)) from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __iter__(self) -> Iterator[CheckSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def gpu_checks(self, checks: Iterable[str]) -> tuple[str, ...]:
        """The checks of ``checks`` that take the GPUs, in the order given; a name not held here is
        light (it cannot ask for the GPU lock)."""
        return tuple(c for c in checks if c in self._specs and self._specs[c].uses_gpu)

    def health_names(self) -> dict[str, str]:
        """Check name -> upstream ``health`` value, for the checks that have an upstream series."""
        return {s.name: s.health for s in self._specs.values() if s.health is not None}

    def periodic(self) -> tuple[str, ...]:
        """The checks periodic by default, in registration order."""
        return tuple(s.name for s in self._specs.values() if s.periodic)


REGISTRY = CheckRegistry()
"""The checks registered at import by ``@check``. Read only where a process is assembled (the CLI,
the worker and API entry points and app factories, scripts, test fixtures), through ``shipped``;
everything else is handed the registry (a ``CheckContext``, ``runs.Services``, the worker's host,
the API's services) and never reads this global (``tests/unit/test_architecture.py``)."""


def shipped(extra: Sequence[str] = ()) -> CheckRegistry:
    """The process's registry: the built-in checks, plus those of the modules ``extra``
    (``Settings.extra_checks``, from ``AUTOPILOT_EXTRA_CHECKS``), registered by importing them."""
    import importlib

    importlib.import_module("autopilot.checks")
    for module in extra:
        importlib.import_module(module)
    return REGISTRY


def check(
    name: str,
    *,
    description: str,
    params: tuple[Param, ...] = (),
    timeout_s: float = 60.0,
    uses_gpu: bool = False,
    invasive: bool = False,
    evaluate_text: EvaluateTextFn | None = None,
    health: str | None = None,
    tag: str = "",
    periodic: bool = False,
    ring: bool = False,
    as_job: AsJobFn | None = None,
    registry: CheckRegistry | None = None,
) -> Callable[[RunFn], RunFn]:
    """Register the decorated ``run(ctx, params) -> CheckResult`` under ``name``."""

    def decorate(fn: RunFn) -> RunFn:
        (registry if registry is not None else REGISTRY).add(
            CheckSpec(
                name=name,
                run=fn,
                description=description,
                params=params,
                timeout_s=timeout_s,
                uses_gpu=uses_gpu,
                invasive=invasive,
                evaluate_text=evaluate_text,
                health=health,
                tag=tag,
                periodic=periodic,
                ring=ring,
                as_job=as_job,
            )
        )
        return fn

    return decorate
