"""The results store as the core sees it: its records (``NodeState``, ``NodeRecord``, ``Run``, ...) and
the ``Store`` Protocol that the Redis store (``workers/store.py``) and the in-memory one
(``autopilot.memstore.MemoryStore``) both implement.

Every implementation raises ``errors.StoreUnavailable`` when its backend cannot be reached, never
its client's own exceptions, so callers handle one error whatever the backend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from autopilot import results
from autopilot.results import CheckResult, StoredResult
from autopilot.verdict import Cause, causes_from_json


@dataclasses.dataclass(frozen=True)
class NodeState:
    """A node's verdict state, as stored (one hash per node). None: the field is not set.

    Timestamps are ISO-8601 UTC strings as ``results.utc_now_iso`` writes them; ``reasons`` and
    ``evict_cause`` are JSON (read with ``reason_list`` and ``causes``); ``gpus`` is the per-GPU
    verdicts as ``gpuverdict.dumps`` writes them. Writes are partial: ``Store.set_state`` takes a
    mapping of these field names to a value, or None to delete (``check_fields`` names a typo).
    """

    verdict: str | None = None
    reasons: str | None = None  # JSON list of strings: the verdict's reasons and notes
    changed_at: str | None = None  # when ``verdict`` last changed
    published_verdict: str | None = None  # the verdict last written to the Node (labels, condition, Event)
    testing_since: str | None = None  # an invasive Job is running on the node since then
    testing_job: str | None = None  # that Job's name
    evicted_at: str | None = None  # set while evicted
    evict_cause: str | None = None  # JSON list of ``verdict.Cause``: why it was evicted
    cleared_by: str | None = None  # who lifted the last eviction (an operator, or a passing DCGM level 3)
    cleared_at: str | None = None
    cleared_cause: str | None = None  # what that eviction was, in words
    event_error: str | None = None  # while a verdict change's Event is refused: when and why
    event_failures: str | None = None  # how many times in a row it was refused (an integer)
    node_gone_at: str | None = None  # the cluster has had no Node of this name since then (retention)
    gpus: str | None = None  # per-GPU verdicts (``gpuverdict.dumps``)
    gpus_at: str | None = None  # the newest result start the per-GPU verdicts judged
    gpus_day: str | None = None  # the UTC day the GPU sightings were last written (YYYY-MM-DD)
    gpu_taints: str | None = None  # the device taints last synced (JSON mark)
    heard_ahead: str | None = None  # a heartbeat stamped ahead of the reconciler's clock and when it was first
    # seen so ("<stamp> <then>", epoch seconds): a worker whose clock runs ahead is lost once its stamp stands still

    FIELDS: ClassVar[frozenset[str]]

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> NodeState:
        """The state of a stored hash; a field this version does not know is ignored."""
        return cls(**{k: v for k, v in raw.items() if k in cls.FIELDS})

    def to_fields(self) -> dict[str, str]:
        """The hash fields that are set."""
        return {f: v for f in sorted(self.FIELDS) if (v := getattr(self, f)) is not None}

    @classmethod
    def check_fields(cls, changes: Mapping[str, str | None]) -> None:
        """Raise ``ValueError`` naming the fields of ``changes`` that a node state does not have."""
        unknown = sorted(set(changes) - cls.FIELDS)
        if unknown:
            raise ValueError(f"unknown node state fields: {', '.join(unknown)}")

    def updated(self, changes: Mapping[str, str | None]) -> NodeState:
        """This state with ``changes`` applied (None: the field deleted), as ``set_state`` would store it."""
        self.check_fields(changes)
        return dataclasses.replace(self, **changes)

    def changes_to(self, wanted: Mapping[str, str | None]) -> dict[str, str | None]:
        """The entries of ``wanted`` that this state does not already have (None: delete, if set)."""
        self.check_fields(wanted)
        return {k: v for k, v in wanted.items() if getattr(self, k) != v}

    @property
    def empty(self) -> bool:
        return not self.to_fields()

    @property
    def reason_list(self) -> list[str]:
        """``reasons`` decoded; a value that is not a JSON list reads as one reason."""
        return parse_reasons(self.reasons)

    @property
    def causes(self) -> tuple[Cause, ...]:
        return causes_from_json(self.evict_cause)

    @property
    def evicted_since(self) -> datetime | None:
        """When the node was evicted (None: it is not). A stamp that does not parse (another writer's)
        still says evicted, read as the epoch: an eviction is never lost to a bad write, nor a crash."""
        if not self.evicted_at:
            return None
        try:
            return results.parse_iso(self.evicted_at)
        except ValueError:
            return _EPOCH

    @property
    def cleared_since(self) -> datetime | None:
        """When the last eviction was cleared (None: never, or a stamp that does not parse)."""
        try:
            return results.parse_iso(self.cleared_at) if self.cleared_at else None
        except ValueError:
            return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

NodeState.FIELDS = frozenset(f.name for f in dataclasses.fields(NodeState))


def parse_reasons(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return [raw]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """What a worker says about its node in each heartbeat."""

    name: str
    addresses: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)  # interface -> addresses
    cpu_model: str = ""
    gpu_model: str = ""
    gpu_count: int = 0
    driver_version: str = ""  # NVIDIA driver (``535.129.03``): with gpu_model, the node's fleet cohort
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    version: str = ""
    last_seen: float = 0.0
    simulated: bool = False
    # Epoch s since when every worker thread has held its task past what it may take (0: not wedged). While it
    # is set the worker's ``last_seen`` stays at that moment, so the node goes lost as a silent one does.
    wedged_since: float = 0.0
    # The worker's clock minus the store's (Redis ``TIME``), in seconds, measured at this heartbeat; None: not
    # measured (a worker of an older release). Results keep the worker's stamps; their age is judged against the
    # store's clock with this taken off (``reconcile``), so every reconciler agrees whatever the worker's clock.
    clock_offset: float | None = None

    @property
    def shared_seen(self) -> float:
        """``last_seen`` on the store's clock (``clock_offset`` taken off; as stamped when it is not known): what
        the ``nodes`` set scores and the lost rule judges."""
        return self.last_seen - self.clock_offset if self.clock_offset is not None else self.last_seen

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"addresses": {k: list(v) for k, v in self.addresses.items()}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> NodeRecord:
        """The record ``raw`` describes; a field this version does not know is ignored. Raises
        ``ValueError`` for one of another shape (no name, a field of the wrong type): a heartbeat a buggy
        or older worker wrote is refused where it is read, not carried on to fail a reader later."""
        if not isinstance(raw, Mapping):
            raise ValueError("a node record is a JSON object")
        kept = {k: v for k, v in raw.items() if k in _RECORD_FIELDS}
        wrong = sorted(k for k, v in kept.items() if not _RECORD_FIELDS[k](v))
        if wrong or not kept.get("name"):
            raise ValueError(f"not a node record (fields of the wrong type: {', '.join(wrong) or 'name'})")
        return cls(**kept)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# NodeRecord's fields and the test of a stored value for each (``from_dict``).
_RECORD_FIELDS: dict[str, Callable[[Any], bool]] = {
    "name": _is_text,
    "addresses": lambda v: (
        isinstance(v, dict)
        and all(isinstance(k, str) and isinstance(a, list) and all(map(_is_text, a)) for k, a in v.items())
    ),
    "cpu_model": _is_text,
    "gpu_model": _is_text,
    "gpu_count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "driver_version": _is_text,
    "labels": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
    "version": _is_text,
    "last_seen": _is_number,
    "simulated": lambda v: isinstance(v, bool),
    "wedged_since": _is_number,
    "clock_offset": lambda v: v is None or _is_number(v),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One request to run checks on nodes. ``deadline`` is epoch seconds."""

    id: str
    checks: tuple[str, ...]
    nodes: tuple[str, ...]
    params: Mapping[str, Mapping[str, Any]]
    created_at: float
    deadline: float
    source: str = "api"
    lost: tuple[str, ...] = ()  # of ``nodes``: lost when the run was made, so sent nothing

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "checks": list(self.checks),
            "nodes": list(self.nodes),
            "params": {k: dict(v) for k, v in self.params.items()},
            "created_at": self.created_at,
            "deadline": self.deadline,
            "source": self.source,
            "lost": list(self.lost),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Run:
        return cls(
            id=raw["id"],
            checks=tuple(raw["checks"]),
            nodes=tuple(raw["nodes"]),
            params=raw.get("params") or {},
            created_at=float(raw["created_at"]),
            deadline=float(raw["deadline"]),
            source=raw.get("source", "api"),
            lost=tuple(raw.get("lost") or ()),
        )

    @classmethod
    def new(
        cls,
        checks: Sequence[str],
        nodes: Sequence[str],
        params: Mapping[str, Mapping[str, Any]],
        deadline_s: float,
        *,
        source: str = "api",
        now: float | None = None,
        lost: Sequence[str] = (),
    ) -> Run:
        created = time.time() if now is None else now
        run_id = uuid.uuid4().hex
        return cls(run_id, tuple(checks), tuple(nodes), params, created, created + deadline_s, source, tuple(lost))


@dataclasses.dataclass(frozen=True)
class RunNews:
    """``Store.run_news``: the next cursor, the new results, and how many fields the run has."""

    cursor: int
    found: dict[tuple[str, str], StoredResult]
    total: int


@dataclasses.dataclass(frozen=True)
class NodeView:
    """What a verdict is computed from (a node's latest result per check and its state), and the
    labels it last published. ``labels`` None: not read, so a reconcile writes every label it wants."""

    latest: dict[str, CheckResult]
    state: NodeState
    labels: dict[str, str] | None = None
    last_seen: float | None = None
    """The node's last heartbeat (epoch s); None: it never heartbeated (or it was not read)."""
    confirm_pending: frozenset[str] | None = None
    """The checks whose latest failure awaited confirmation (``Store.confirmation_marks``); None: not read."""
    clock_offset: float | None = None
    """The node's worker's clock minus the store's at its last heartbeat (``NodeRecord.clock_offset``); None:
    not known (no heartbeat, an older worker, or not read)."""
    # Not compared: two reads of the same node are the same view whenever they were made.
    now: float | None = dataclasses.field(default=None, compare=False)
    """The store's clock (Redis ``TIME``, epoch s) when this was read, in the same round trip, so the reconcile
    after a task judges by it without a ``TIME`` of its own; None: not read."""


@dataclasses.dataclass(frozen=True)
class NodeDetail:
    """One node as its API view shows it (``Store.node_detail``), read in one go: its heartbeat
    record, latest result per check, verdict state, local labels and newest results."""

    name: str
    record: NodeRecord | None
    latest: dict[str, CheckResult]
    state: NodeState
    labels: dict[str, str]
    history: list[CheckResult]
    now: float | None = None
    """The store's clock (Redis ``TIME``) when this was read; None: not read."""

    @property
    def known(self) -> bool:
        """Whether the store knows the node at all: it heartbeated or has a result."""
        return self.record is not None or bool(self.latest)


class Store(Protocol):
    """What the rest of Autopilot may ask of the results store (semantics: ``workers/store.py``).

    ``history_len`` results are kept per node; a run's keys live ``run_ttl_s`` after their last write, and
    no more than ``run_keep`` runs past their deadline are kept.
    """

    history_len: int
    run_ttl_s: int
    run_keep: int

    # results
    def save_result(self, result: CheckResult, run_id: str | None = None, *, latest: bool = True) -> None: ...
    def save_many(
        self, items: Sequence[tuple[CheckResult, bool]], run_id: str | None = None, *, view: str | None = None
    ) -> NodeView | None: ...
    def view(self, node: str) -> NodeView: ...
    def latest(self, node: str) -> dict[str, CheckResult]: ...
    def latest_many(self, nodes: Sequence[str]) -> dict[str, dict[str, CheckResult]]: ...
    def busy_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]: ...
    def history(self, node: str, limit: int = 50) -> list[CheckResult]: ...
    def node_detail(self, name: str, history_limit: int) -> NodeDetail: ...

    # runs
    def create_run(self, run: Run) -> None: ...
    def get_run(self, run_id: str) -> tuple[Run, dict[tuple[str, str], CheckResult]] | None: ...
    def get_run_stored(self, run_id: str) -> tuple[Run, dict[tuple[str, str], StoredResult]] | None: ...
    def run_answered(self, run_id: str) -> set[tuple[str, str]]: ...
    def run_news(self, run_id: str, cursor: int) -> RunNews: ...
    def run_progress(self, run_id: str) -> int: ...

    # nodes
    def server_time(self) -> float:
        """The store's clock (epoch s): the one clock every process shares, which verdicts are judged by."""
        ...

    def heartbeat(self, record: NodeRecord) -> None: ...
    def heartbeat_many(self, records: Iterable[NodeRecord]) -> None: ...
    def node_names(self, *, seen_since: float | None = None, heard_within: float | None = None) -> list[str]:
        """The nodes heard since ``seen_since`` (on the store's clock, as the ``nodes`` set is scored) and, with
        ``heard_within``, heard within that many seconds of the store's clock now (read with the set)."""
        ...

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeRecord]: ...
    def node(self, name: str) -> NodeRecord | None: ...
    def last_seen(self, names: Sequence[str] | None = None) -> dict[str, float]: ...
    def offsets_and_now(self, names: Sequence[str]) -> tuple[float, dict[str, float]]:
        """(``server_time()``, node -> its worker's ``clock_offset``, for those of ``names`` that measured one) read
        together: a sender puts a deadline on each worker's clock with them."""
        ...

    def seen_and_now(self, names: Sequence[str] | None = None) -> tuple[float, dict[str, float]]:
        """(``server_time()``, ``last_seen(names)``) read together: lost is judged on the clock the heartbeats are
        scored on."""
        ...

    def heard_ahead(self, nodes: Sequence[str]) -> dict[str, str]:
        """Node -> its state's ``heard_ahead`` mark, for those of ``nodes`` that have one (that field alone)."""
        ...

    def forget_node(self, name: str) -> None: ...

    # verdict state and labels
    def state(self, node: str) -> NodeState: ...
    def states(self, nodes: Sequence[str]) -> dict[str, NodeState]: ...
    def set_state(self, node: str, values: Mapping[str, str | None]) -> None: ...
    def set_state_and_labels(
        self, node: str, values: Mapping[str, str | None], labels: Mapping[str, str | None]
    ) -> None: ...
    def labels(self, node: str) -> dict[str, str]: ...
    def set_labels(self, node: str, labels: Mapping[str, str | None]) -> None: ...

    # confirmation and remediation
    def confirmation_marks(self, node: str) -> tuple[str, frozenset[str]]: ...
    def record_confirmations(
        self, node: str, *, runs: Iterable[str], prevented: Iterable[str], pending: Iterable[str]
    ) -> None: ...
    def confirmation_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]: ...
    def set_remediation_summary(self, values: Mapping[str, float]) -> None: ...
    def remediation_summary(self) -> dict[str, float]: ...

    # de-duplication
    def claim(self, name: str, ttl_s: float) -> bool: ...
    def claim_tick(self, name: str, now: float, interval_s: float) -> bool: ...
    def ping(self) -> bool: ...
