"""The results store in memory: the ``Store`` Protocol without Redis, for tests and one-process tools.

It keeps what the Redis store (``workers/store.py``) keeps, with the same semantics, and passes the
same behaviour tests (``tests/unit/test_store.py``). One lock makes each call atomic, as a Redis
MULTI does. Expiry uses the given clock (``time.time`` by default), checked when a key is read.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from autopilot.results import CheckResult, Status, StoredResult
from autopilot.store import NodeDetail, NodeRecord, NodeState, NodeView, Run, RunNews, Store


@dataclasses.dataclass
class _RunEntry:
    """A run as the Redis store keeps it: its meta (None until created), its results, their write log."""

    run: Run | None = None
    results: dict[tuple[str, str], CheckResult] = dataclasses.field(default_factory=dict)
    log: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    expires_at: float = 0.0


class MemoryStore:
    """An ``autopilot.store.Store`` held in this process."""

    def __init__(
        self,
        *,
        history_len: int = 100,
        run_ttl_s: float = 86400,
        run_keep: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history_len = history_len
        self.run_ttl_s = int(run_ttl_s)
        self.run_keep = run_keep
        self._clock = clock
        self._lock = threading.RLock()
        self._latest: dict[str, dict[str, CheckResult]] = {}
        self._history: dict[str, list[CheckResult]] = {}  # newest first
        self._busy: dict[str, dict[str, int]] = {}
        self._runs: dict[str, _RunEntry] = {}
        self._records: dict[str, NodeRecord] = {}
        self._seen: dict[str, float] = {}
        self._state: dict[str, dict[str, str]] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._confirm: dict[str, dict[str, int]] = {}
        self._pending: dict[str, frozenset[str]] = {}
        self._remediation: dict[str, float] = {}
        self._claims: dict[str, float] = {}  # name -> expires at
        self._ticks: dict[str, tuple[int, float, float]] = {}  # name -> (slot, at, expires at)

    # ------------------------------------------------------------------ results

    def save_result(self, result: CheckResult, run_id: str | None = None, *, latest: bool = True) -> None:
        self.save_many([(result, latest)], run_id)

    def save_many(
        self, items: Sequence[tuple[CheckResult, bool]], run_id: str | None = None, *, view: str | None = None
    ) -> NodeView | None:
        with self._lock:
            for result, is_latest in items:
                if result.status is Status.BUSY:
                    counts = self._busy.setdefault(result.node, {})
                    counts[result.check] = counts.get(result.check, 0) + 1
                elif is_latest:
                    self._latest.setdefault(result.node, {})[result.check] = result
                    kept = self._history.setdefault(result.node, [])
                    kept.insert(0, result)
                    del kept[self.history_len :]
                if run_id:
                    entry = self._run(run_id, write=True)
                    assert entry is not None
                    entry.results[(result.node, result.check)] = result
                    entry.log.append((result.node, result.check))
            return None if view is None else self.view(view)

    def view(self, node: str) -> NodeView:
        with self._lock:
            pending = self._pending.get(node, frozenset())
            record = self._records.get(node)
            offset = record.clock_offset if record is not None else None
            latest, seen = self.latest(node), self._seen.get(node)
            return NodeView(latest, self.state(node), self.labels(node), seen, pending, offset, self._clock())

    def latest(self, node: str) -> dict[str, CheckResult]:
        with self._lock:
            return dict(self._latest.get(node, {}))

    def latest_many(self, nodes: Sequence[str]) -> dict[str, dict[str, CheckResult]]:
        return {n: self.latest(n) for n in nodes}

    def busy_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]:
        with self._lock:
            return {n: dict(self._busy.get(n, {})) for n in nodes}

    def history(self, node: str, limit: int = 50) -> list[CheckResult]:
        with self._lock:
            return list(self._history.get(node, [])[: max(1, limit)])

    def node_detail(self, name: str, history_limit: int) -> NodeDetail:
        with self._lock:
            return NodeDetail(
                name,
                self.node(name),
                self.latest(name),
                self.state(name),
                self.labels(name),
                self.history(name, history_limit),
                self.server_time(),
            )

    # ------------------------------------------------------------------ runs

    def _run(self, run_id: str, *, write: bool = False) -> _RunEntry | None:
        """The run's entry (made, and its expiry pushed back, when ``write``); None once it expired."""
        now = self._clock()
        entry = self._runs.get(run_id)
        if entry is not None and entry.expires_at <= now:
            del self._runs[run_id]
            entry = None
        if write:
            entry = entry or self._runs.setdefault(run_id, _RunEntry())
            entry.expires_at = now + self.run_ttl_s
        return entry

    def create_run(self, run: Run) -> None:
        with self._lock:
            entry = self._run(run.id, write=True)
            assert entry is not None
            entry.run = run
            made = [(e.run.deadline, rid) for rid, e in self._runs.items() if e.run is not None]
            done = sorted((d, rid) for d, rid in made if d < run.created_at)
            for _, rid in done[: max(0, len(made) - self.run_keep)]:
                del self._runs[rid]

    def get_run(self, run_id: str) -> tuple[Run, dict[tuple[str, str], CheckResult]] | None:
        with self._lock:
            entry = self._run(run_id)
            if entry is None or entry.run is None:
                return None
            return entry.run, dict(entry.results)

    def get_run_stored(self, run_id: str) -> tuple[Run, dict[tuple[str, str], StoredResult]] | None:
        got = self.get_run(run_id)
        return None if got is None else (got[0], {k: StoredResult.from_result(r) for k, r in got[1].items()})

    def run_answered(self, run_id: str) -> set[tuple[str, str]]:
        with self._lock:
            entry = self._run(run_id)
            return set(entry.results) if entry is not None else set()

    def run_news(self, run_id: str, cursor: int) -> RunNews:
        with self._lock:
            entry = self._run(run_id)
            if entry is None:
                return RunNews(cursor, {}, 0)
            names = entry.log[cursor:]
            found = {k: StoredResult.from_result(entry.results[k]) for k in dict.fromkeys(names)}
            return RunNews(cursor + len(names), found, len(entry.results))

    def run_progress(self, run_id: str) -> int:
        return len(self.run_answered(run_id))

    # ------------------------------------------------------------------ nodes

    def server_time(self) -> float:
        """This store's clock (``clock``): the one its reconciles judge by, as Redis's ``TIME`` is."""
        return self._clock()

    def heartbeat(self, record: NodeRecord) -> None:
        self.heartbeat_many([record])

    def heartbeat_many(self, records: Iterable[NodeRecord]) -> None:
        with self._lock:
            for record in records:
                self._records[record.name] = record
                self._seen[record.name] = record.shared_seen

    def node_names(self, *, seen_since: float | None = None, heard_within: float | None = None) -> list[str]:
        with self._lock:
            low = -math.inf if seen_since is None else seen_since
            if heard_within is not None:
                low = max(low, self._clock() - heard_within)
            return sorted(n for n, seen in self._seen.items() if seen >= low)

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeRecord]:
        with self._lock:
            wanted = list(names) if names is not None else self.node_names()
            return [self._records[n] for n in wanted if n in self._records]

    def node(self, name: str) -> NodeRecord | None:
        with self._lock:
            return self._records.get(name)

    def last_seen(self, names: Sequence[str] | None = None) -> dict[str, float]:
        with self._lock:
            if names is None:
                return dict(self._seen)
            return {n: self._seen[n] for n in names if n in self._seen}

    def offsets_and_now(self, names: Sequence[str]) -> tuple[float, dict[str, float]]:
        offsets = {r.name: r.clock_offset for r in self.nodes(names) if r.clock_offset is not None}
        return self.server_time(), offsets

    def seen_and_now(self, names: Sequence[str] | None = None) -> tuple[float, dict[str, float]]:
        return self.server_time(), self.last_seen(names)

    def heard_ahead(self, nodes: Sequence[str]) -> dict[str, str]:
        return {n: mark for n in nodes if (mark := self.state(n).heard_ahead) is not None}

    def forget_node(self, name: str) -> None:
        with self._lock:
            for held in (self._records, self._seen, self._latest, self._history, self._state, self._labels, self._busy):
                held.pop(name, None)

    # ------------------------------------------------------------------ verdict state and labels

    def state(self, node: str) -> NodeState:
        with self._lock:
            return NodeState.from_fields(self._state.get(node, {}))

    def states(self, nodes: Sequence[str]) -> dict[str, NodeState]:
        return {n: self.state(n) for n in nodes}

    def set_state(self, node: str, values: Mapping[str, str | None]) -> None:
        self.set_state_and_labels(node, values, {})

    def set_state_and_labels(
        self, node: str, values: Mapping[str, str | None], labels: Mapping[str, str | None]
    ) -> None:
        NodeState.check_fields(values)
        with self._lock:
            _update(self._state, node, values)
            _update(self._labels, node, labels)

    def labels(self, node: str) -> dict[str, str]:
        with self._lock:
            return dict(self._labels.get(node, {}))

    def set_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        self.set_state_and_labels(node, {}, labels)

    # ------------------------------------------------------------------ confirmation and remediation

    def confirmation_marks(self, node: str) -> tuple[str, frozenset[str]]:
        with self._lock:
            return self.state(node).verdict or "", self._pending.get(node, frozenset())

    def record_confirmations(
        self, node: str, *, runs: Iterable[str], prevented: Iterable[str], pending: Iterable[str]
    ) -> None:
        with self._lock:
            counts = self._confirm.setdefault(node, {})
            for check in runs:
                counts[f"runs|{check}"] = counts.get(f"runs|{check}", 0) + 1
            for check in prevented:
                counts[f"prevented|{check}"] = counts.get(f"prevented|{check}", 0) + 1
            self._pending[node] = frozenset(pending)

    def confirmation_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]:
        with self._lock:
            return {n: dict(self._confirm.get(n, {})) for n in nodes}

    def set_remediation_summary(self, values: Mapping[str, float]) -> None:
        with self._lock:
            self._remediation.update({k: float(v) for k, v in values.items()})

    def remediation_summary(self) -> dict[str, float]:
        with self._lock:
            return dict(self._remediation)

    # ------------------------------------------------------------------ de-duplication

    def claim(self, name: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            if self._claims.get(name, 0.0) > now:
                return False
            self._claims[name] = now + max(1, int(ttl_s))
            return True

    def claim_tick(self, name: str, now: float, interval_s: float) -> bool:
        with self._lock:
            slot = int(now // interval_s)
            last_slot, at, expires = self._ticks.get(name, (-1, float("-inf"), float("inf")))
            if expires <= self._clock():
                last_slot, at = -1, float("-inf")
            if slot <= last_slot or now - at < interval_s / 2:
                return False
            self._ticks[name] = (slot, now, self._clock() + int(3 * interval_s) + 1)
            return True

    def ping(self) -> bool:
        return True


def _update(held: dict[str, dict[str, str]], key: str, values: Mapping[str, str | None]) -> None:
    """Set the fields of ``values`` with a value and delete those that are None; an emptied hash is gone."""
    fields = held.setdefault(key, {})
    for k, v in values.items():
        if v is None:
            fields.pop(k, None)
        else:
            fields[k] = v
    if not fields:
        del held[key]


def _is_a_store(store: MemoryStore) -> Store:
    return store  # mypy checks here that MemoryStore has every method of the Protocol, with its types
