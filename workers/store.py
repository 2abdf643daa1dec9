"""The results store in Redis: latest result per node and check, history, runs, node records.

Keys (all prefixed ``ap:``):

- ``node:<n>``       JSON node record (heartbeat); ``nodes`` sorted set node -> last seen (epoch s)
- ``latest:<n>``     hash check -> latest result JSON
- ``history:<n>``    list of result JSON, newest first, trimmed to ``history_len``
- ``run:<id>``       hash ``meta`` -> run JSON, ``<node>|<check>`` -> result JSON; expires after ``run_ttl_s``
- ``runlog:<id>``    list of the ``<node>|<check>`` fields written to ``run:<id>``, in order (same expiry)
- ``state:<n>``      hash: ``verdict``, ``reasons``, ``changed_at``, ``testing_since``, ``published_verdict``;
                     ``evicted_at`` and ``evict_cause`` while evicted, ``cleared_by``/``cleared_at``/``cleared_cause``
                     after a clear, ``event_error``/``event_failures`` while a verdict change is unannounced,
                     ``node_gone_at`` once the cluster has no Node of that name
- ``busy:<n>``       hash check -> how many times that check was answered ``busy`` (GPUs held by another
                     check until the deadline); counted here, never written to ``latest`` or ``history``
- ``labels:<n>``     hash: the local label store used when there is no Kubernetes cluster
- ``confirm:<n>``    hash: ``runs|<check>`` confirmation runs sent, ``prevented|<check>`` verdict flaps that
                     confirmation held back (counters), ``pending`` checks whose latest failure awaits confirmation
- ``remediation``    hash: beat's last remediation pass over the fleet (``budget``, ``held``, ``deferred``, ...)
- ``tick:<name>:<slot>`` set-once marker so a second beat (or a redelivered tick) does no work twice

Every write that belongs together goes in one MULTI pipeline, so a reader never sees a result in
``latest`` that is missing from its run.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis

from autopilot.results import CheckResult, Status

P = "ap:"
T = TypeVar("T")


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"addresses": {k: list(v) for k, v in self.addresses.items()}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> NodeRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})


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
    """``ResultsStore.run_news``: the next cursor, the new results, and how many fields the run has."""

    cursor: int
    found: dict[tuple[str, str], dict[str, Any]]
    total: int


@dataclasses.dataclass(frozen=True)
class NodeView:
    """What a verdict is computed from (a node's latest result per check and its state hash), and the
    labels it last published. ``labels`` None: not read, so a reconcile writes every label it wants."""

    latest: dict[str, CheckResult]
    state: dict[str, str]
    labels: dict[str, str] | None = None
    last_seen: float | None = None
    """The node's last heartbeat (epoch s); None: it never heartbeated (or it was not read)."""


class ResultsStore:
    """Typed access to the keys above. ``client`` is a ``redis.Redis`` (or fakeredis) with bytes replies."""

    def __init__(self, client: redis.Redis, *, history_len: int = 100, run_ttl_s: float = 86400) -> None:
        self.r = client
        self.history_len = history_len
        self.run_ttl_s = int(run_ttl_s)

    # ------------------------------------------------------------------ results

    def save_result(self, result: CheckResult, run_id: str | None = None, *, latest: bool = True) -> None:
        """Record ``result`` as the node's latest for its check, in its history, and in its run.

        ``latest=False`` records it in its run only (an answer that says nothing about the node).
        """
        self.save_many([(result, latest)], run_id)

    def save_many(
        self, items: Sequence[tuple[CheckResult, bool]], run_id: str | None = None, *, view: str | None = None
    ) -> NodeView | None:
        """Record several results in one MULTI, each as ``save_result(result, run_id, latest=flag)`` would.

        Later items count as newer (history, and the latest of a check named twice). A ``busy``
        result is never a latest result nor history, whatever its flag: it goes to its run and is
        counted in ``busy:<node>``. With
        ``view`` (a node name), the same MULTI also reads that node's latest results, state and
        labels as they are after the writes: the reconcile that follows a task costs no extra
        round trip and judges exactly what was written. Results this call wrote are not decoded
        again.
        """
        pipe = self.r.pipeline(transaction=True)
        written: dict[bytes, CheckResult] = {}
        latest: dict[str, dict[str, bytes]] = {}  # node -> check -> newest blob
        history: dict[str, list[bytes]] = {}  # node -> blobs, oldest first (LPUSH puts the last at the head)
        in_run: dict[str, bytes] = {}
        for result, is_latest in items:
            blob = result.to_json_bytes()
            written[blob] = result
            if result.status is Status.BUSY:
                pipe.hincrby(f"{P}busy:{result.node}", result.check, 1)
            elif is_latest:
                latest.setdefault(result.node, {})[result.check] = blob
                history.setdefault(result.node, []).append(blob)
            if run_id:
                in_run[f"{result.node}|{result.check}"] = blob
        for node, by_check in latest.items():
            pipe.hset(f"{P}latest:{node}", mapping=by_check)  # type: ignore[arg-type]
            pipe.lpush(f"{P}history:{node}", *history[node])
            pipe.ltrim(f"{P}history:{node}", 0, self.history_len - 1)
        if in_run:
            pipe.hset(f"{P}run:{run_id}", mapping=in_run)  # type: ignore[arg-type]
            pipe.expire(f"{P}run:{run_id}", self.run_ttl_s)
            # Every field written, in order: a gather reads only what is new (``run_news``).
            pipe.rpush(f"{P}runlog:{run_id}", *(f"{r.node}|{r.check}" for r, _ in items))
            pipe.expire(f"{P}runlog:{run_id}", self.run_ttl_s)
        if view is None:
            if len(pipe):
                pipe.execute()
            return None
        _queue_view(pipe, view)
        *_, raw_latest, raw_state, raw_labels, seen = pipe.execute()
        return NodeView(_latest(raw_latest, written), _state(raw_state), _state(raw_labels), _score(seen))

    def view(self, node: str) -> NodeView:
        """The node's latest results and verdict state, read in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        _queue_view(pipe, node)
        raw_latest, raw_state, raw_labels, seen = pipe.execute()
        return NodeView(_latest(raw_latest), _state(raw_state), _state(raw_labels), _score(seen))

    def latest(self, node: str) -> dict[str, CheckResult]:
        return _latest(self.r.hgetall(f"{P}latest:{node}"))

    def latest_many(self, nodes: Sequence[str]) -> dict[str, dict[str, CheckResult]]:
        return {n: _latest(raw) for n, raw in self._hashes("latest", nodes).items()}

    def _hashes(self, kind: str, nodes: Sequence[str]) -> dict[str, Any]:
        """Node -> its ``<kind>:<node>`` hash, every node in one pipeline."""
        pipe = self.r.pipeline(transaction=False)
        for n in nodes:
            pipe.hgetall(f"{P}{kind}:{n}")
        return dict(zip(nodes, pipe.execute(), strict=True))

    def busy_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]:
        """Node -> check -> how many times it was answered ``busy`` (one pipeline for every node)."""
        return {n: {_s(k): int(v) for k, v in raw.items()} for n, raw in self._hashes("busy", nodes).items()}

    def history(self, node: str, limit: int = 50) -> list[CheckResult]:
        return [CheckResult.from_json(v) for v in self.r.lrange(f"{P}history:{node}", 0, max(0, limit - 1))]

    # ------------------------------------------------------------------ runs

    def create_run(self, run: Run) -> None:
        key = f"{P}run:{run.id}"
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, "meta", json.dumps(run.to_dict()))
        pipe.expire(key, self.run_ttl_s)
        pipe.execute()

    def get_run(self, run_id: str) -> tuple[Run, dict[tuple[str, str], CheckResult]] | None:
        return self._run(run_id, CheckResult.from_json)

    def get_run_dicts(self, run_id: str) -> tuple[Run, dict[tuple[str, str], dict[str, Any]]] | None:
        """``get_run`` with each result as the dict ``CheckResult.to_dict`` gives (what an API answer holds)."""
        return self._run(run_id, CheckResult.dict_from_json)

    def _run(self, run_id: str, decode: Callable[[bytes], T]) -> tuple[Run, dict[tuple[str, str], T]] | None:
        raw = self.r.hgetall(f"{P}run:{run_id}")
        if b"meta" not in raw:
            return None
        run = Run.from_dict(json.loads(raw.pop(b"meta")))
        found: dict[tuple[str, str], T] = {}
        for k, v in raw.items():
            node, _, check = _s(k).partition("|")
            found[(node, check)] = decode(v)
        return run, found

    def run_answered(self, run_id: str) -> set[tuple[str, str]]:
        """The (node, check) pairs a run holds, read from field names without decoding results.

        Polled many times during a large gather, so it must stay cheap.
        """
        out: set[tuple[str, str]] = set()
        for field in self.r.hkeys(f"{P}run:{run_id}"):
            text = _s(field)
            if text != "meta":
                node, _, check = text.partition("|")
                out.add((node, check))
        return out

    def run_news(self, run_id: str, cursor: int) -> RunNews:
        """What was written to a run after its first ``cursor`` writes, read in one MULTI (and one
        HMGET when there is news): each new field's current result, decoded once, as the dict
        ``CheckResult.to_dict`` gives.

        ``total`` counts the run's fields, to tell a writer that bypassed the log (a worker of an
        older version) from news not read yet: a gather falls back to ``run_answered`` then.
        """
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(f"{P}runlog:{run_id}", cursor, -1)
        pipe.hlen(f"{P}run:{run_id}")
        names, hlen = pipe.execute()
        fields = list(dict.fromkeys(names))  # a field written twice is read once, as it is now
        found: dict[tuple[str, str], dict[str, Any]] = {}
        if fields:
            for field, blob in zip(fields, self.r.hmget(f"{P}run:{run_id}", fields), strict=True):
                if blob is not None:
                    node, _, check = _s(field).partition("|")
                    found[(node, check)] = CheckResult.dict_from_json(blob)
        return RunNews(cursor + len(names), found, max(0, int(hlen) - 1))

    def run_progress(self, run_id: str) -> int:
        """How many results a run has (the hash holds ``meta`` plus one field per result)."""
        return max(0, int(self.r.hlen(f"{P}run:{run_id}")) - 1)

    # ------------------------------------------------------------------ nodes

    def heartbeat(self, record: NodeRecord) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(f"{P}node:{record.name}", json.dumps(record.to_dict()))
        pipe.zadd(f"{P}nodes", {record.name: record.last_seen})
        pipe.execute()

    def heartbeat_many(self, records: Iterable[NodeRecord]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for record in records:
            pipe.set(f"{P}node:{record.name}", json.dumps(record.to_dict()))
            pipe.zadd(f"{P}nodes", {record.name: record.last_seen})
        pipe.execute()

    def node_names(self, *, seen_since: float | None = None) -> list[str]:
        low = "-inf" if seen_since is None else seen_since
        return sorted(_s(n) for n in self.r.zrangebyscore(f"{P}nodes", low, "+inf"))

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeRecord]:
        wanted = list(names) if names is not None else self.node_names()
        if not wanted:
            return []
        raws = self.r.mget([f"{P}node:{n}" for n in wanted])
        return [NodeRecord.from_dict(json.loads(raw)) for raw in raws if raw]

    def node(self, name: str) -> NodeRecord | None:
        raw = self.r.get(f"{P}node:{name}")
        return NodeRecord.from_dict(json.loads(raw)) if raw else None

    def last_seen(self, names: Sequence[str] | None = None) -> dict[str, float]:
        """Node -> its last heartbeat (epoch s), in one read: every node that ever heartbeated, or those of
        ``names`` that did."""
        if names is None:
            return {_s(n): float(score) for n, score in self.r.zrange(f"{P}nodes", 0, -1, withscores=True)}
        if not names:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.zscore(f"{P}nodes", n)
        return {n: float(score) for n, score in zip(names, pipe.execute(), strict=True) if score is not None}

    def forget_node(self, name: str) -> None:
        """Drop everything the store holds about ``name`` (a scan of the event counts, then one MULTI)."""
        # The follower's event counts are fields ``<node>|...`` of one hash (``workers.follower.COUNTS``):
        # a forgotten node's fields were kept for ever. Node names are DNS-1123: no glob characters.
        counted = [f for f, _ in self.r.hscan_iter(f"{P}events:counts", match=f"{name}|*", count=1000)]
        pipe = self.r.pipeline(transaction=True)
        # ``confirm`` too: a forgotten node's confirmation marks were otherwise kept for ever (round 4).
        kinds = ("node", "latest", "history", "state", "labels", "busy", "confirm", "kmsg", "inject")
        pipe.delete(*(f"{P}{kind}:{name}" for kind in kinds))
        if counted:
            pipe.hdel(f"{P}events:counts", *counted)
        pipe.zrem(f"{P}nodes", name)
        pipe.execute()

    # ------------------------------------------------------------------ verdict state and labels

    def state(self, node: str) -> dict[str, str]:
        return _state(self.r.hgetall(f"{P}state:{node}"))

    def states(self, nodes: Sequence[str]) -> dict[str, dict[str, str]]:
        return {n: _state(raw) for n, raw in self._hashes("state", nodes).items()}

    def set_state(self, node: str, values: Mapping[str, str | None]) -> None:
        """Set the state fields of ``values`` with a value, delete those that are None (one MULTI)."""
        self.set_state_and_labels(node, values, {})

    def set_state_and_labels(
        self, node: str, values: Mapping[str, str | None], labels: Mapping[str, str | None]
    ) -> None:
        """``set_state`` and ``set_labels`` in one MULTI (a reader never sees one without the other)."""
        pipe = self.r.pipeline(transaction=True)
        _queue_hash_update(pipe, f"{P}state:{node}", values)
        _queue_hash_update(pipe, f"{P}labels:{node}", labels)
        pipe.execute()

    def labels(self, node: str) -> dict[str, str]:
        return {_s(k): _s(v) for k, v in self.r.hgetall(f"{P}labels:{node}").items()}

    def set_labels(self, node: str, labels: Mapping[str, str | None]) -> None:
        """Set the labels of ``labels`` with a value, delete those that are None (one MULTI)."""
        self.set_state_and_labels(node, {}, labels)

    # ------------------------------------------------------------------ confirmation and remediation

    def confirmation_marks(self, node: str) -> tuple[str, frozenset[str]]:
        """The node's stored verdict and the checks whose latest failure was pending (one round trip)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(f"{P}state:{node}", "verdict")
        pipe.hget(f"{P}confirm:{node}", "pending")
        verdict, pending = pipe.execute()
        return (_s(verdict) if verdict else ""), frozenset(filter(None, _s(pending or b"").split(",")))

    def record_confirmations(
        self, node: str, *, runs: Iterable[str], prevented: Iterable[str], pending: Iterable[str]
    ) -> None:
        """Count confirmation runs and prevented flaps per check, and remember the pending checks (one MULTI)."""
        pipe = self.r.pipeline(transaction=True)
        for check in runs:
            pipe.hincrby(f"{P}confirm:{node}", f"runs|{check}", 1)
        for check in prevented:
            pipe.hincrby(f"{P}confirm:{node}", f"prevented|{check}", 1)
        waiting = ",".join(sorted(set(pending)))
        if waiting:
            pipe.hset(f"{P}confirm:{node}", "pending", waiting)
        else:
            pipe.hdel(f"{P}confirm:{node}", "pending")
        pipe.execute()

    def confirmation_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]:
        """Node -> ``runs|<check>`` / ``prevented|<check>`` -> count (one pipeline for every node)."""
        return {
            n: {_s(k): int(v) for k, v in raw.items() if _s(k) != "pending"}
            for n, raw in self._hashes("confirm", nodes).items()
        }

    def set_remediation_summary(self, values: Mapping[str, float]) -> None:
        self.r.hset(f"{P}remediation", mapping={k: str(v) for k, v in values.items()})  # type: ignore[arg-type]

    def remediation_summary(self) -> dict[str, float]:
        return {_s(k): float(v) for k, v in self.r.hgetall(f"{P}remediation").items()}

    # ------------------------------------------------------------------ de-duplication

    def claim(self, name: str, ttl_s: float) -> bool:
        """True for the first caller to claim ``name`` within ``ttl_s`` (beat ticks, invasive runs)."""
        return bool(self.r.set(f"{P}tick:{name}", str(time.time()), nx=True, ex=max(1, int(ttl_s))))

    def claim_tick(self, name: str, now: float, interval_s: float) -> bool:
        """True for the one caller that may do periodic work ``name`` at ``now``.

        At most once per interval slot (``floor(now / interval)``) and never within half an
        interval of the last time, so two beats, in phase or not, or a tick delivered twice,
        never double the work. Compare-and-set under WATCH, with the caller's clock.
        """
        key = f"{P}tick:{name}"
        slot = int(now // interval_s)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = {_s(k): _s(v) for k, v in pipe.hgetall(key).items()}
                    if slot <= int(raw.get("slot", -1)) or now - float(raw.get("at", "-inf")) < interval_s / 2:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={"slot": slot, "at": repr(now)})
                    pipe.expire(key, int(3 * interval_s) + 1)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def ping(self) -> bool:
        return bool(self.r.ping())


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _latest(raw: Mapping[Any, Any], known: Mapping[bytes, CheckResult] | None = None) -> dict[str, CheckResult]:
    """Decode a ``latest`` hash; a blob found in ``known`` (just written by this process) is not parsed again."""
    seen = known or {}
    return {_s(k): seen.get(v) or CheckResult.from_json(v) for k, v in raw.items()}


def _queue_view(pipe: Any, node: str) -> None:
    """What ``NodeView`` is made of, queued on ``pipe`` in the order it unpacks."""
    pipe.hgetall(f"{P}latest:{node}")
    pipe.hgetall(f"{P}state:{node}")
    pipe.hgetall(f"{P}labels:{node}")
    pipe.zscore(f"{P}nodes", node)


def _score(raw: Any) -> float | None:
    return None if raw is None else float(raw)


def _state(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _queue_hash_update(pipe: Any, key: str, values: Mapping[str, str | None]) -> None:
    """Set the fields of ``values`` with a value and delete those that are None (two commands at most)."""
    gone = [k for k, v in values.items() if v is None]
    kept = {k: v for k, v in values.items() if v is not None}
    if gone:
        pipe.hdel(key, *gone)
    if kept:
        pipe.hset(key, mapping=kept)
