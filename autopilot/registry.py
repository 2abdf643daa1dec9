"""The check registry: ``@check(...)`` records a check's name, parameters and limits.

The list of checks is the imports in ``autopilot/checks/__init__.py``; registering a name twice
is an error. Parameters are declared with their type and bounds so that every front end (CLI,
API, Celery task) validates a request the same way before anything runs or is enqueued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from autopilot import errors, names, parsing

if TYPE_CHECKING:
    from autopilot.context import CheckContext
    from autopilot.results import CheckResult

RunFn = Callable[["CheckContext", Mapping[str, Any]], "CheckResult"]
# evaluate_text(text, params, settings) -> result: a saved tool output judged without running it.
EvaluateTextFn = Callable[[str, Mapping[str, Any], Any], "CheckResult"]

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
        except (ValueError, errors.BadParameter):
            raise errors.BadParameter(field, f"expected {self.kind.__name__}, got {str(raw)[:64]!r}") from None
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
        entries = [item.strip() for item in raw.split(",")]
        if len(entries) > MAX_LIST_ITEMS:
            raise errors.BadParameter(self.name, f"at most {MAX_LIST_ITEMS} nodes")
        if "" in entries:
            raise errors.BadParameter(self.name, f"empty entry in {raw[:64]!r}: a list of node names has none")
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
    invasive: bool = False
    evaluate_text: EvaluateTextFn | None = None

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
    """Name -> ``CheckSpec``. Tests build their own; production uses ``REGISTRY``."""

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


REGISTRY = CheckRegistry()


def check(
    name: str,
    *,
    description: str,
    params: tuple[Param, ...] = (),
    timeout_s: float = 60.0,
    uses_gpu: bool = False,
    invasive: bool = False,
    evaluate_text: EvaluateTextFn | None = None,
    registry: CheckRegistry | None = None,
) -> Callable[[RunFn], RunFn]:
    """Register the decorated ``run(ctx, params) -> CheckResult`` under ``name``."""

    def decorate(fn: RunFn) -> RunFn:
        (registry or REGISTRY).add(
            CheckSpec(
                name=name,
                run=fn,
                description=description,
                params=params,
                timeout_s=timeout_s,
                uses_gpu=uses_gpu,
                invasive=invasive,
                evaluate_text=evaluate_text,
            )
        )
        return fn

    return decorate
