"""The results store in Redis: latest result per node and check, history, runs, node records.

Keys (all prefixed ``ap:``):

- ``node:<n>``       JSON node record (heartbeat); ``nodes`` sorted set node -> last seen (epoch s) on Redis's
                     clock (``NodeRecord.shared_seen``: the worker's stamp less its measured clock offset)
- ``latest:<n>``     hash check -> latest result JSON
- ``history:<n>``    list of result JSON, newest first, trimmed to ``history_len``
- ``run:<id>``       hash ``meta`` -> run JSON, ``<node>|<check>`` -> result JSON; expires after ``run_ttl_s``
- ``runlog:<id>``    list of the ``<node>|<check>`` fields written to ``run:<id>``, in order (same expiry)
- ``runs``           sorted set run id -> deadline (epoch s): past their deadline, the oldest runs beyond
                     ``run_keep`` are deleted when a run is made (``AUTOPILOT_RUN_KEEP``)
- ``state:<n>``      hash: ``verdict``, ``reasons``, ``changed_at``, ``testing_since``, ``published_verdict``;
                     ``evicted_at`` and ``evict_cause`` while evicted, ``cleared_by``/``cleared_at``/``cleared_cause``
                     after a clear, ``event_error``/``event_failures`` while a verdict change is unannounced,
                     ``node_gone_at`` once the cluster has no Node of that name, ``heard_ahead`` while its
                     heartbeat is stamped ahead of the reconciler's clock
- ``busy:<n>``       hash check -> how many times that check was answered ``busy`` (GPUs held by another
                     check until the deadline); counted here, never written to ``latest`` or ``history``
- ``labels:<n>``     hash: the local label store used when there is no Kubernetes cluster
- ``confirm:<n>``    hash: ``runs|<check>`` confirmation runs sent, ``prevented|<check>`` verdict flaps that
                     confirmation held back (counters), ``pending`` checks whose latest failure awaits confirmation
- ``remediation``    hash: beat's last remediation pass over the fleet (``budget``, ``held``, ``deferred``, ...)
- ``flight:<n>|<check>|<digest>`` who holds the single-flight claim of that check with those parameters
                     (``run_id deadline``; ``dispatch.Flights``), expiring at that run's deadline;
                     ``...|after:<run>``: the run that took the claim over from ``<run>`` (first one wins)
- ``ping_suspects``  JSON list: the fleet's ping suspects the last reconcile that looked found (10 minutes);
                     ``ping_suspect_spans``: node -> [first, last] epoch seconds it was named without a break
                     (kept three periodic intervals), so confirmation excuses a sample by the suspects of its time
- ``tick:<name>:<slot>`` set-once marker so a second beat (or a redelivered tick) does no work twice
- ``ring:<id>``      hash: the iperf ring's answers (``post_answer``/``answers``), expiring with the ring
- ``events:counts``, ``events:latency``, ``kmsg:<n>``, ``inject:<n>``: the events follower's (``EventStore``)

The stores beside this one share its client and are handed out by it, so no caller outside reaches
Redis: ``fleet()`` (``workers/fleet.py``: baselines), ``gpu_history()`` (``workers/gpustore.py``:
per-GPU incidents), ``flights()`` (``workers/dispatch.py``: coalescing claims), ``events()``. Each
raises ``StoreUnavailable`` (``autopilot.errors``) where redis-py or kombu would raise a connection or
timeout error: that translation happens here, at the boundary, and nowhere else.

Every write that belongs together goes in one MULTI pipeline, so a reader never sees a result in
``latest`` that is missing from its run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import kombu.exceptions
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from autopilot import config, names
from autopilot.errors import StoreUnavailable
from autopilot.events.metrics import BUCKETS, EventsSnapshot, bucket_of
from autopilot.events.model import Event
from autopilot.results import CheckResult, Status, StoredResult, tidy
from autopilot.store import NodeDetail, NodeRecord, NodeState, NodeView, Run, RunNews

if TYPE_CHECKING:  # the stores beside this one import this module; they are built on demand
    from workers import dispatch, gpustore
    from workers import fleet as fleet_mod

__all__ = ["EventStore", "P", "NodeRecord", "NodeState", "NodeView", "ResultsStore", "Run", "RunNews", "unavailable"]

log = logging.getLogger(__name__)

P = "ap:"
RUNS = f"{P}runs"
# A stored result larger than this is not read: a worker that wrote 100 MB would otherwise make every
# answer that shows it that large. The largest a check writes, ping's, grows with the fleet (a pair per
# peer address, about 260 bytes): 10,000 nodes on 8 interfaces is about 21 MB, and must still be read.
MAX_RESULT_BYTES = 32 * 1024 * 1024
T = TypeVar("T")
A = ParamSpec("A")
C = TypeVar("C", bound=type)

# What "the store cannot be reached" looks like from redis-py and kombu (both talk to the same Redis).
# A ResponseError (a bug, or a wrong key type) is not among them: it stays what it is.
UNREACHABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    kombu.exceptions.OperationalError,
)


def unavailable(fn: Callable[A, T]) -> Callable[A, T]:
    """``fn`` with the store's connection and timeout errors raised as ``StoreUnavailable``."""

    @functools.wraps(fn)
    def guarded(*args: A.args, **kwargs: A.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"results store unreachable: {type(exc).__name__}: {exc}") from exc

    return guarded


def translating(cls: C) -> C:
    """Every public method of ``cls`` guarded by ``unavailable``: the boundary where Redis errors stop.

    Plain functions only: a static or class method, or a property, is left as it is."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, unavailable(member))
    return cls


# The longest a suspect's span is kept after it was last named (``set_ping_suspects``).
_SPANS_MOST_S = 86_400.0
SUSPECTS = f"{P}ping_suspects"
SPANS = f"{P}ping_suspect_spans"


def _suspects(raw: bytes | None) -> frozenset[str] | None:
    """The ``ping_suspects`` value as read (None: none kept)."""
    return frozenset(json.loads(raw)) if raw is not None else None


def _spans(raw: bytes | None) -> dict[str, tuple[float, float]]:
    """The ``ping_suspect_spans`` value as read: node -> (first, last) epoch seconds."""
    try:
        found = json.loads(raw) if raw is not None else {}
        return {str(n): (float(v[0]), float(v[1])) for n, v in found.items()}
    except (ValueError, TypeError, AttributeError, IndexError, KeyError):
        return {}  # another release's or a damaged value: no spans, as before they were kept


@translating
class ResultsStore:
    """The ``autopilot.store.Store`` in Redis: typed access to the keys above. ``client`` is a
    ``redis.Redis`` (or fakeredis) with bytes replies. Its connection and timeout errors leave
    every method as ``StoreUnavailable``."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        history_len: int = 100,
        run_ttl_s: float = 86400,
        run_keep: int = 200,
        server_clock: Callable[[], float] | None = None,
    ) -> None:
        self.r = client
        self.history_len = history_len
        self.run_ttl_s = int(run_ttl_s)
        self.run_keep = run_keep
        # None: Redis's TIME. Tests give a manual clock here: fakeredis answers TIME from this host's clock.
        self._server_clock = server_clock

    # ------------------------------------------------------------------ results

    def save_result(self, result: CheckResult, run_id: str | None = None, *, latest: bool = True) -> None:
        """Record ``result`` as the node's latest for its check, in its history, and in its run.

        ``latest=False`` records it in its run only (an answer that says nothing about the node).
        """
        self.save_many([(result, latest)], run_id)

    def save_many(
        self,
        items: Sequence[tuple[CheckResult, bool]],
        run_id: str | None = None,
        *,
        view: str | None = None,
        figures: fleet_mod.FleetFigures | None = None,
    ) -> NodeView | None:
        """Record several results in one MULTI, each as ``save_result(result, run_id, latest=flag)`` would.

        Later items count as newer (history, and the latest of a check named twice). A ``busy``
        result is never a latest result nor history, whatever its flag: it goes to its run and is
        counted in ``busy:<node>``. With
        ``view`` (a node name), the same MULTI also reads that node's latest results, state and
        labels as they are after the writes: the reconcile that follows a task costs no extra
        round trip and judges exactly what was written. Results this call wrote are not decoded
        again. ``figures``: the fleet's figures of these results (``workers.fleet.FleetFigures``),
        written in the same MULTI.
        """
        pipe = self.r.pipeline(transaction=True)
        written: dict[bytes, CheckResult] = {}
        latest: dict[str, dict[str, bytes]] = {}  # node -> check -> newest blob
        history: dict[str, list[bytes]] = {}  # node -> blobs, oldest first (LPUSH puts the last at the head)
        in_run: dict[str, bytes] = {}
        for raw, is_latest in items:
            # Every writer's results (engine, follower, ring, invasive Job) enter here: a tool's words are
            # written out before a reader (a terminal, kubectl, a log) meets them.
            result = tidy(raw)
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
        # The figures' cohort count is the last reply they queue.
        counted = len(pipe) if figures is not None and figures.queue(pipe) else 0
        if view is not None:
            _queue_view(pipe, view)
        replies = pipe.execute() if len(pipe) else []
        if figures is not None and counted:
            figures.written(replies[counted - 1])
        if view is None:
            return None
        return self._told_time(_view(view, replies[-VIEW_REPLIES:], written))

    def view(self, node: str) -> NodeView:
        """The node's latest results and verdict state, and the store's clock, read in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        _queue_view(pipe, node)
        return self._told_time(_view(node, pipe.execute()))

    def _told_time(self, view: NodeView) -> NodeView:
        """``view`` with its ``now`` from the test clock (``server_clock``) when one was given: fakeredis answers
        ``TIME`` from this host's clock."""
        if self._server_clock is None:
            return view
        return dataclasses.replace(view, now=self._server_clock())

    def latest(self, node: str) -> dict[str, CheckResult]:
        return _latest(node, self.r.hgetall(f"{P}latest:{node}"))

    def latest_many(self, nodes: Sequence[str]) -> dict[str, dict[str, CheckResult]]:
        return {n: _latest(n, raw) for n, raw in self._hashes("latest", nodes).items()}

    def latest_of(self, check: str, nodes: Sequence[str]) -> dict[str, CheckResult]:
        """Node -> its latest ``check`` result (nodes without one left out), every node in one pipeline."""
        pipe = self.r.pipeline(transaction=False)
        for n in nodes:
            pipe.hget(f"{P}latest:{n}", check)
        found = {
            n: _result(raw, n, check, _check_result) if raw else None
            for n, raw in zip(nodes, pipe.execute(), strict=True)
        }
        return {n: result for n, result in found.items() if result is not None}

    def ping_suspects(self) -> frozenset[str] | None:
        """The nodes the fleet's pings named at the last reconcile that looked (None: none kept)."""
        return _suspects(self.r.get(SUSPECTS))

    def history_and_suspects(
        self, node: str, limit: int, *, suspects: bool = True
    ) -> tuple[list[CheckResult], frozenset[str] | None, dict[str, tuple[float, float]]]:
        """``history(node, limit)``, ``ping_suspects()`` (None without ``suspects``: not read) and
        ``ping_suspect_spans()``, in one round trip: what judging a node's failed ping reads (confirmation
        after a task and a node's reconcile read them one after the other before)."""
        pipe = self.r.pipeline(transaction=False)  # reads of keys that no write ties together
        pipe.lrange(f"{P}history:{node}", 0, max(0, limit - 1))
        pipe.get(SPANS)
        if suspects:
            pipe.get(SUSPECTS)
        raw_history, raw_spans, *raw_suspects = pipe.execute()
        kept = _suspects(raw_suspects[0]) if raw_suspects else None
        return _history(node, raw_history), kept, _spans(raw_spans)

    def set_ping_suspects(self, nodes: Collection[str], ttl_s: float, *, now: float = 0.0, keep_s: float = 0.0) -> None:
        """Keep ``nodes`` as the fleet's ping suspects for ``ttl_s``; with ``keep_s``, also extend each one's
        span (``ping_suspect_spans``) to ``now``, and forget spans that ended more than ``keep_s`` ago."""
        self.r.set(SUSPECTS, json.dumps(sorted(nodes)), px=max(1, int(ttl_s * 1000)))
        if keep_s <= 0:
            return
        # Periodic checks off: samples never go stale; a day still bounds what is kept.
        keep_s = min(keep_s, _SPANS_MOST_S)
        spans = self.ping_suspect_spans()
        for node in nodes:
            first, last = spans.get(node, (now, now))
            # Named again within ttl_s of the last look: the same span goes on; else a new one begins.
            spans[node] = (first if now - last <= ttl_s else now, now)
        kept = {n: [first, last] for n, (first, last) in spans.items() if now - last <= keep_s}
        # Read, then written: two reconciles at once may lose one's extension, which the next look makes again.
        self.r.set(SPANS, json.dumps(kept, sort_keys=True), px=max(1, int(keep_s * 1000)))

    def ping_suspect_spans(self) -> dict[str, tuple[float, float]]:
        """Node -> (first, last) epoch seconds of the looks that named it a ping suspect without a break: what
        confirmation excuses in samples taken then (``confirming.excuse``)."""
        return _spans(self.r.get(SPANS))

    def _hashes(self, kind: str, nodes: Sequence[str]) -> dict[str, Any]:
        """Node -> its ``<kind>:<node>`` hash, every node in one pipeline."""
        pipe = self.r.pipeline(transaction=False)
        for n in nodes:
            pipe.hgetall(f"{P}{kind}:{n}")
        return dict(zip(nodes, pipe.execute(), strict=True))

    def busy_counts(self, nodes: Sequence[str]) -> dict[str, dict[str, int]]:
        """Node -> check -> how many times it was answered ``busy`` (one pipeline for every node)."""
        return {n: _counts(raw) for n, raw in self._hashes("busy", nodes).items()}

    def history(self, node: str, limit: int = 50) -> list[CheckResult]:
        return _history(node, self.r.lrange(f"{P}history:{node}", 0, max(0, limit - 1)))

    def node_detail(self, name: str, history_limit: int) -> NodeDetail:
        """The node's record, latest results, state, local labels and ``history_limit`` newest results,
        in one round trip (five reads one after the other before)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(f"{P}node:{name}")
        pipe.hgetall(f"{P}latest:{name}")
        pipe.hgetall(f"{P}state:{name}")
        pipe.hgetall(f"{P}labels:{name}")
        pipe.lrange(f"{P}history:{name}", 0, max(0, history_limit - 1))
        if self._server_clock is None:
            pipe.time()
        raw_record, raw_latest, raw_state, raw_labels, raw_history, *told = pipe.execute()
        return NodeDetail(
            name,
            _record(raw_record, name),
            _latest(name, raw_latest),
            _node_state(raw_state),
            _state(raw_labels),
            _history(name, raw_history),
            server_seconds(told[0]) if told else self.server_time(),
        )

    # ------------------------------------------------------------------ runs

    def create_run(self, run: Run) -> None:
        """Record ``run``; then delete the oldest runs past their deadline beyond ``run_keep`` (``runs``)."""
        key = f"{P}run:{run.id}"
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, "meta", json.dumps(run.to_dict()))
        pipe.expire(key, self.run_ttl_s)
        pipe.zadd(RUNS, {run.id: run.deadline})
        pipe.zcard(RUNS)
        *_, count = pipe.execute()
        if int(count) > self.run_keep:
            self._drop_runs(int(count) - self.run_keep, now=run.created_at)

    def keep_run(self, run_id: str) -> None:
        """Let ``run_id``'s record and write log live ``run_ttl_s`` from now, as a write would, without one
        (the iperf ring's coordinator, while it runs). A run already gone stays gone."""
        pipe = self.r.pipeline(transaction=False)
        pipe.expire(f"{P}run:{run_id}", self.run_ttl_s)
        pipe.expire(f"{P}runlog:{run_id}", self.run_ttl_s)
        pipe.execute()

    def _drop_runs(self, excess: int, *, now: float) -> None:
        """Delete up to ``excess`` runs whose deadline passed before ``now``, earliest deadline first.

        A run still within its deadline is never dropped (its gather still reads it); one dropped is
        gone with its write log. A late result for it makes a run hash without ``meta`` (not a run to
        any reader), which expires after ``run_ttl_s``.
        """
        old = [decoded(r) for r in self.r.zrangebyscore(RUNS, "-inf", f"({now}", start=0, num=excess)]
        if old:
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(*(f"{P}run:{r}" for r in old), *(f"{P}runlog:{r}" for r in old))
            pipe.zrem(RUNS, *old)
            pipe.execute()

    def get_run(self, run_id: str) -> tuple[Run, dict[tuple[str, str], CheckResult]] | None:
        return self._run(run_id, _check_result, lambda result: result)

    def get_run_stored(self, run_id: str) -> tuple[Run, dict[tuple[str, str], StoredResult]] | None:
        """``get_run`` with each result as stored (``StoredResult``: what an API answer holds)."""
        return self._run(run_id, _stored_result, StoredResult.from_result)

    def _run(
        self, run_id: str, decode: Callable[[bytes, str, str | None], T], unreadable: Callable[[CheckResult], T]
    ) -> tuple[Run, dict[tuple[str, str], T]] | None:
        raw = self.r.hgetall(f"{P}run:{run_id}")
        if b"meta" not in raw:
            return None
        run = Run.from_dict(json.loads(raw.pop(b"meta")))
        found: dict[tuple[str, str], T] = {}
        for k, v in raw.items():
            node, _, check = decoded(k).partition("|")
            found[(node, check)] = _run_result(v, node, check, decode, unreadable)
        return run, found

    def run_answered(self, run_id: str) -> set[tuple[str, str]]:
        """The (node, check) pairs a run holds, read from field names without decoding results.

        Polled many times during a large gather, so it must stay cheap.
        """
        out: set[tuple[str, str]] = set()
        for field in self.r.hkeys(f"{P}run:{run_id}"):
            text = decoded(field)
            if text != "meta":
                node, _, check = text.partition("|")
                out.add((node, check))
        return out

    def run_news(self, run_id: str, cursor: int) -> RunNews:
        """What was written to a run after its first ``cursor`` writes, read in one MULTI (and one
        HMGET when there is news): each new field's current result as stored (``StoredResult``).

        ``total`` counts the run's fields, to tell a writer that bypassed the log (a worker of an
        older version) from news not read yet: a gather falls back to ``run_answered`` then.
        """
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(f"{P}runlog:{run_id}", cursor, -1)
        pipe.hlen(f"{P}run:{run_id}")
        names, hlen = pipe.execute()
        fields = list(dict.fromkeys(names))  # a field written twice is read once, as it is now
        found: dict[tuple[str, str], StoredResult] = {}
        if fields:
            for field, blob in zip(fields, self.r.hmget(f"{P}run:{run_id}", fields), strict=True):
                node, _, check = decoded(field).partition("|")
                if blob is not None:
                    found[(node, check)] = stored_result(blob, node, check)
        return RunNews(cursor + len(names), found, max(0, int(hlen) - 1))

    def run_progress(self, run_id: str) -> int:
        """How many results a run has (the hash holds ``meta`` plus one field per result)."""
        return max(0, int(self.r.hlen(f"{P}run:{run_id}")) - 1)

    # ------------------------------------------------------------------ nodes

    def server_time(self) -> float:
        """Redis's clock (``TIME``, epoch s): the one clock every worker, beat and API process shares."""
        if self._server_clock is not None:
            return self._server_clock()
        return server_seconds(self.r.time())

    def heartbeat(self, record: NodeRecord) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.set(f"{P}node:{record.name}", json.dumps(record.to_dict()))
        pipe.zadd(f"{P}nodes", {record.name: record.shared_seen})
        pipe.execute()

    def heartbeat_many(self, records: Iterable[NodeRecord]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for record in records:
            pipe.set(f"{P}node:{record.name}", json.dumps(record.to_dict()))
            pipe.zadd(f"{P}nodes", {record.name: record.shared_seen})
        pipe.execute()

    def node_names(self, *, seen_since: float | None = None, heard_within: float | None = None) -> list[str]:
        if heard_within is not None:
            # The scores are on the store's clock (NodeRecord.shared_seen), which this host's may be off by any
            # amount: that clock is read with them, in one round trip (``seen_and_now``).
            now, seen = self.seen_and_now()
            low = max(now - heard_within, -math.inf if seen_since is None else seen_since)
            return sorted(name for name, score in seen.items() if score >= low)
        low_arg = "-inf" if seen_since is None else seen_since
        return sorted(_node_names(self.r.zrangebyscore(f"{P}nodes", low_arg, "+inf")))

    def nodes(self, names: Sequence[str] | None = None) -> list[NodeRecord]:
        wanted = list(names) if names is not None else self.node_names()
        if not wanted:
            return []
        raws = self.r.mget([f"{P}node:{n}" for n in wanted])
        return [record for n, raw in zip(wanted, raws, strict=True) if (record := _record(raw, n)) is not None]

    def node(self, name: str) -> NodeRecord | None:
        return _record(self.r.get(f"{P}node:{name}"), name)

    def last_seen(self, names: Sequence[str] | None = None) -> dict[str, float]:
        """Node -> its last heartbeat (epoch s), in one read: every node that ever heartbeated, or those of
        ``names`` that did."""
        if names is None:
            scored = dict(self.r.zrange(f"{P}nodes", 0, -1, withscores=True))
            return {n: float(scored[n.encode()]) for n in _node_names(scored)}
        if not names:
            return {}
        # One ZMSCORE, not a ZSCORE per node: a 1,000-node answer asked a thousand (Redis 6.2, as SET GET).
        scores: list[float | None] = self.r.zmscore(f"{P}nodes", list(names))  # type: ignore[no-untyped-call]  # untyped in redis-py's stubs
        return {n: float(score) for n, score in zip(names, scores, strict=True) if score is not None}

    def _time_told(self, told: Any) -> float:
        """The store's clock from a ``TIME`` reply read in a pipeline (a test's ``server_clock`` when given)."""
        return self._server_clock() if self._server_clock is not None else server_seconds(told)

    def offsets_and_now(self, names: Sequence[str]) -> tuple[float, dict[str, float]]:
        """(the store's clock, node -> its worker's measured ``clock_offset``) in one round trip, for those of
        ``names`` whose record has one: what a sender adds to a deadline so its message says it on that worker's
        clock."""
        pipe = self.r.pipeline(transaction=False)
        pipe.time()
        if names:
            pipe.mget([f"{P}node:{n}" for n in names])
        told, *raws = pipe.execute()
        now = self._time_told(told)
        records = (_record(raw, n) for n, raw in zip(names, raws[0] if raws else [], strict=True))
        return now, {r.name: r.clock_offset for r in records if r is not None and r.clock_offset is not None}

    def seen_and_now(self, names: Sequence[str] | None = None) -> tuple[float, dict[str, float]]:
        """(the store's clock, ``last_seen(names)``) in one round trip: the heartbeats' scores are on that clock, so
        whoever judges them lost (``reconcile.lost_at``) reads the clock with them, not its own host's."""
        pipe = self.r.pipeline(transaction=False)
        pipe.time()
        if names is None:
            pipe.zrange(f"{P}nodes", 0, -1, withscores=True)
        elif names:
            pipe.zmscore(f"{P}nodes", list(names))  # type: ignore[no-untyped-call]  # untyped in redis-py's stubs
        told, *scored = pipe.execute()
        now = self._time_told(told)
        if names is None:
            every = dict(scored[0])
            return now, {n: float(every[n.encode()]) for n in _node_names(every)}
        if not names:
            return now, {}
        return now, {n: float(score) for n, score in zip(names, scored[0], strict=True) if score is not None}

    def heard_ahead(self, nodes: Sequence[str]) -> dict[str, str]:
        """Node -> its ``heard_ahead`` state mark (the reconcile's note of a heartbeat stamped ahead), those that have
        one, in one pipeline: only that field, not the whole state (whose ``gpus`` is the bulk of it)."""
        if not nodes:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for n in nodes:
            pipe.hget(f"{P}state:{n}", "heard_ahead")
        return {n: decoded(raw) for n, raw in zip(nodes, pipe.execute(), strict=True) if raw is not None}

    def forget_node(self, name: str) -> None:
        """Drop everything the store holds about ``name`` (a scan of the event counts, then one MULTI)."""
        # The follower's event counts are fields ``<node>|...`` of one hash (``EventStore.COUNTS``):
        # a forgotten node's fields were kept for ever. Node names are DNS-1123: no glob characters.
        counted = [f for f, _ in self.r.hscan_iter(EventStore.COUNTS, match=f"{name}|*", count=1000)]
        pipe = self.r.pipeline(transaction=True)
        # ``confirm`` too: a forgotten node's confirmation marks were otherwise kept for ever (round 4).
        kinds = ("node", "latest", "history", "state", "labels", "busy", "confirm", "kmsg", "inject")
        pipe.delete(*(f"{P}{kind}:{name}" for kind in kinds))
        if counted:
            pipe.hdel(EventStore.COUNTS, *counted)
        pipe.zrem(f"{P}nodes", name)
        pipe.execute()

    # ------------------------------------------------------------------ verdict state and labels

    def state(self, node: str) -> NodeState:
        return _node_state(self.r.hgetall(f"{P}state:{node}"))

    def states(self, nodes: Sequence[str]) -> dict[str, NodeState]:
        return {n: _node_state(raw) for n, raw in self._hashes("state", nodes).items()}

    def set_state(self, node: str, values: Mapping[str, str | None]) -> None:
        """Set the state fields of ``values`` with a value, delete those that are None (one MULTI)."""
        self.set_state_and_labels(node, values, {})

    def set_state_and_labels(
        self, node: str, values: Mapping[str, str | None], labels: Mapping[str, str | None]
    ) -> None:
        """``set_state`` and ``set_labels`` in one MULTI (a reader never sees one without the other)."""
        NodeState.check_fields(values)
        # One command is atomic on its own: a MULTI around it only cost a round of replies (in steady
        # state a task's reconcile writes one state field, ``gpus_at``, and nothing else).
        pipe = self.r.pipeline(transaction=_hash_update_commands(values) + _hash_update_commands(labels) > 1)
        _queue_hash_update(pipe, f"{P}state:{node}", values)
        _queue_hash_update(pipe, f"{P}labels:{node}", labels)
        pipe.execute()

    def labels(self, node: str) -> dict[str, str]:
        return _state(self.r.hgetall(f"{P}labels:{node}"))

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
        return (decoded(verdict) if verdict else ""), _pending(pending)

    def record_confirmations(
        self, node: str, *, runs: Iterable[str], prevented: Iterable[str], pending: Iterable[str]
    ) -> None:
        """Count confirmation runs and prevented flaps per check, and remember the pending checks (one MULTI;
        only the pending checks: one command, atomic on its own)."""
        runs, prevented = list(runs), list(prevented)
        pipe = self.r.pipeline(transaction=bool(runs or prevented))
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
        return {n: _counts(raw, skip="pending") for n, raw in self._hashes("confirm", nodes).items()}

    def set_remediation_summary(self, values: Mapping[str, float]) -> None:
        self.r.hset(f"{P}remediation", mapping={k: str(v) for k, v in values.items()})

    def remediation_summary(self) -> dict[str, float]:
        return {decoded(k): float(v) for k, v in self.r.hgetall(f"{P}remediation").items()}

    # ------------------------------------------------------------------ de-duplication

    def claim(self, name: str, ttl_s: float) -> bool:
        """True for the first caller to claim ``name`` within ``ttl_s`` (beat ticks, invasive runs)."""
        return bool(self.r.set(f"{P}tick:{name}", str(time.time()), nx=True, ex=max(1, int(ttl_s))))

    def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take, or renew, the lease ``name`` for ``owner``; False while another owner holds it.

        A lease lapses ``ttl_s`` after its last renewal, so a holder that dies (killed, restarted)
        frees it within ``ttl_s`` with nobody releasing it (the iperf ring's one-at-a-time claim).
        """
        key = f"{P}lease:{name}"
        ttl_ms = max(1, int(ttl_s * 1000))
        if self.r.set(key, owner, nx=True, px=ttl_ms):
            return True
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                # Under WATCH the pipeline runs commands at once: GET returns the value itself.
                held: bytes | None = pipe.get(key)  # type: ignore[assignment]
                if held is not None and decoded(held) != owner:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(key, owner, px=ttl_ms)
                pipe.execute()
                return True
            except redis.WatchError:  # taken or renewed by someone else meanwhile
                return False

    def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` now (None: nobody, or it lapsed)."""
        held = self.r.get(f"{P}lease:{name}")
        return decoded(held) if held is not None else None

    def release(self, name: str, owner: str) -> None:
        """Drop the lease ``name`` if ``owner`` still holds it (never another owner's)."""
        key = f"{P}lease:{name}"
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                # Under WATCH the pipeline runs commands at once: GET returns the value itself.
                held: bytes | None = pipe.get(key)  # type: ignore[assignment]
                if held is None or decoded(held) != owner:
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            except redis.WatchError:  # renewed or taken meanwhile: not ours to drop
                return

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
                    # Under WATCH the pipeline runs commands at once: HGETALL returns the hash itself.
                    held: Mapping[bytes, bytes] = pipe.hgetall(key)  # type: ignore[assignment]
                    raw = {decoded(k): decoded(v) for k, v in held.items()}
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

    # ------------------------------------------------------------------ short-lived answers (the iperf ring)

    def post_answer(self, run_id: str, field: str, payload: Mapping[str, Any], ttl_s: float = 3600) -> None:
        """Keep ``payload`` as the answer ``field`` of ``run_id`` (``ring:<id>``) for ``ttl_s`` (at least 60 s)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(f"{P}ring:{run_id}", field, json.dumps(payload))
        pipe.expire(f"{P}ring:{run_id}", max(60, int(ttl_s)))
        pipe.execute()

    def answers(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every answer posted for ``run_id``, by field."""
        return {decoded(k): json.loads(v) for k, v in self.r.hgetall(f"{P}ring:{run_id}").items()}

    def answers_of(self, run_id: str, fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The answers ``fields`` of ``run_id`` that have been posted, by field (one HMGET)."""
        if not fields:
            return {}
        got = self.r.hmget(f"{P}ring:{run_id}", list(fields))
        return {field: json.loads(v) for field, v in zip(fields, got, strict=True) if v is not None}

    def drop_answers(self, run_id: str, fields: Sequence[str]) -> None:
        """Forget the answers ``fields`` of ``run_id`` (read, and needed no more)."""
        if fields:
            self.r.hdel(f"{P}ring:{run_id}", *fields)

    # ------------------------------------------------------------------ the Redis stores beside this one

    def bound_timeouts(self, timeout_s: float) -> None:
        """Time out this store's Redis connections after ``timeout_s`` and never retry a command.

        Set through the client's public connection kwargs, so it holds for every connection the pool
        opens from now on, whatever URL scheme built it. redis-py retries a timed-out command three
        times by default, which made a frozen Redis cost an API request 20 s.
        """
        self.r.get_connection_kwargs().update(  # type: ignore[no-untyped-call]  # untyped in redis-py's stubs
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.r.set_retry(Retry(NoBackoff(), 0))  # type: ignore[attr-defined]  # public since redis-py 4.3, not stubbed

    def events(self) -> EventStore:
        """The events follower's counts, kernel-log positions and injected messages (same client)."""
        return EventStore(self.r)

    def fleet(self, settings: config.Settings) -> fleet_mod.FleetBaselines:
        """The fleet's baselines (same client); its cache lives as long as the object returned."""
        from workers import fleet as fleet_mod

        return fleet_mod.FleetBaselines(self.r, settings)

    def gpu_history(self) -> gpustore.GpuHistory:
        """Incidents and sightings per GPU UUID (same client)."""
        from workers import gpustore

        return gpustore.GpuHistory(self.r, self._server_clock)

    def flights(self) -> dispatch.Flights:
        """The claims that make equal check requests coalesce (through this store)."""
        from workers import dispatch

        return dispatch.Flights(self)

    # ------------------------------------------------------------------ single flight (``dispatch.Flights``)

    def claim_flights(self, claims: Sequence[FlightClaim]) -> list[str | None]:
        """``SET NX GET`` each claim's key (one pipeline): None where it was free and is now the claim's,
        else the holder already there (unchanged)."""
        pipe = self.r.pipeline(transaction=False)
        for claim in claims:
            pipe.set(claim.key, claim.holder, nx=True, get=True, px=claim.ttl_ms)
        return [decoded(v) if v is not None else None for v in pipe.execute()]

    def claim_successions(self, claims: Sequence[tuple[FlightClaim, str]]) -> list[str | None]:
        """``SET NX GET`` the successor key of each claim's flight after the run named beside it (one
        pipeline): None where this claim is the first to succeed that run, else the holder that was.
        The key lives as long as the claim (its ttl)."""
        pipe = self.r.pipeline(transaction=False)
        for claim, prior in claims:
            pipe.set(f"{claim.key}|after:{prior}", claim.holder, nx=True, get=True, px=claim.ttl_ms)
        return [decoded(v) if v is not None else None for v in pipe.execute()]

    def take_flights(self, claims: Sequence[FlightClaim]) -> None:
        """Set each claim's key to its holder whoever held it (one pipeline)."""
        pipe = self.r.pipeline(transaction=False)
        for claim in claims:
            pipe.set(claim.key, claim.holder, px=claim.ttl_ms)
        pipe.execute()

    def runs_answered(self, asked: Sequence[tuple[str, str, str]]) -> list[bool]:
        """For each (run id, node, check): whether that run holds a result for it.

        One ``HEXISTS`` per pair (one pipeline), except for a run asked about many pairs: a gather
        over the fleet right after another asks the last run about every (node, check), five
        thousand ``HEXISTS`` at 1,000 nodes, a quarter of the API's Redis commands in a status.
        Such a run's field names are read instead (one ``HKEYS``), when the pairs asked are at
        least a quarter of its fields (``HLEN``, one round trip before), so a small question of a
        large run never reads all of its names.
        """
        per_run = collections.Counter(run_id for run_id, _, _ in asked)
        many = [run_id for run_id, n in per_run.items() if n >= _NAMES_FROM]
        bulk: dict[str, None] = {}  # in order: their HKEYS replies come first
        if many:
            pipe = self.r.pipeline(transaction=False)
            for run_id in many:
                pipe.hlen(f"{P}run:{run_id}")
            bulk = dict.fromkeys(r for r, n in zip(many, pipe.execute(), strict=True) if per_run[r] * 4 >= int(n))
        pipe = self.r.pipeline(transaction=False)
        for run_id in bulk:
            pipe.hkeys(f"{P}run:{run_id}")
        for run_id, node, check in asked:
            if run_id not in bulk:
                pipe.hexists(f"{P}run:{run_id}", f"{node}|{check}")
        replies = pipe.execute()
        # Compared as bytes: a field name that is not UTF-8 (not ours) is no answer, as HEXISTS would say.
        fields = {run_id: {_bytes(n) for n in names} for run_id, names in zip(bulk, replies, strict=False)}
        exists = iter(replies[len(bulk) :])
        return [
            f"{node}|{check}".encode() in fields[run_id] if run_id in fields else bool(next(exists))
            for run_id, node, check in asked
        ]

    def run_writes_since(self, cursors: Mapping[str, int]) -> dict[str, list[tuple[str, str]]]:
        """Run id -> the (node, check) results its write log gained past its cursor, in order (one pipeline)."""
        runs = sorted(cursors)
        pipe = self.r.pipeline(transaction=False)
        for run_id in runs:
            pipe.lrange(f"{P}runlog:{run_id}", cursors[run_id], -1)
        out: dict[str, list[tuple[str, str]]] = {}
        for run_id, written in zip(runs, pipe.execute(), strict=True):
            pairs = []
            for raw in written:
                node, _, check = decoded(raw).partition("|")
                pairs.append((node, check))
            out[run_id] = pairs
        return out

    def run_blobs(self, wanted: Sequence[tuple[str, str, str]]) -> list[bytes | None]:
        """For each (run id, node, check): that run's result as stored (JSON bytes), None if absent (one pipeline)."""
        pipe = self.r.pipeline(transaction=False)
        for run_id, node, check in wanted:
            pipe.hget(f"{P}run:{run_id}", f"{node}|{check}")
        return list(pipe.execute())

    def copy_into_run(self, run_id: str, blobs: Mapping[tuple[str, str], bytes], ttl_s: float) -> None:
        """Write (node, check) -> result blobs into ``run_id``'s hash as they are, not into its write log;
        the run's hash then lives ``ttl_s`` more."""
        if not blobs:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(f"{P}run:{run_id}", mapping={f"{n}|{c}": blob for (n, c), blob in blobs.items()})
        pipe.expire(f"{P}run:{run_id}", int(ttl_s))
        pipe.execute()


@dataclasses.dataclass(frozen=True)
class FlightClaim:
    """One claim of ``dispatch.Flights``: a check with its parameters on a node, the holder to write
    (``run_id deadline``, Flights' words) and the claim's ttl in ms. ``key`` is its flight key,
    computed once (a claim, a succession and a take-over of one pair all use it)."""

    node: str
    check: str
    params: Mapping[str, Any]
    holder: str
    ttl_ms: int
    key: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", flight_key(self.node, self.check, self.params))


# Pairs asked of one run from which ``runs_answered`` may read the run's field names instead.
_NAMES_FROM = 64


def flight_key(node: str, check: str, params: Mapping[str, Any]) -> str:
    """The single-flight key of one check on one node with these parameters (order-insensitive)."""
    # No parameters (every periodic check, most requests) is one constant digest: a 1,000-node gather
    # asks for five thousand keys, and hashing "{}" for each was a tenth of its CPU.
    digest = _params_digest(params) if params else _NO_PARAMS_DIGEST
    return f"{P}flight:{node}|{check}|{digest}"


def _params_digest(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


_NO_PARAMS_DIGEST = _params_digest({})


@translating
class EventStore:
    """What the events follower keeps in Redis (``events:counts``, ``events:latency``, ``kmsg:<n>``,
    ``inject:<n>``), beside the results store and on its client."""

    COUNTS = f"{P}events:counts"
    LATENCY = f"{P}events:latency"

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._r = client

    def record(self, node: str, counted: Sequence[Event], timed: Sequence[Event], now: float) -> None:
        """Count ``counted`` by node, device, source, code and action; time ``timed`` from written to ``now``."""
        pipe = self._r.pipeline(transaction=False)
        for e in counted:
            pipe.hincrby(self.COUNTS, "|".join((node, e.device, e.source, e.code, e.action.value)), e.count)
        for e in timed:
            seconds = max(0.0, now - e.written_at)
            pipe.hincrby(self.LATENCY, bucket_of(seconds), 1)
            pipe.hincrbyfloat(self.LATENCY, "sum", seconds)
        pipe.execute()

    def snapshot(self) -> EventsSnapshot:
        """What ``autopilot.events.metrics`` exports, read in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(self.COUNTS)
        pipe.hgetall(self.LATENCY)
        raw_counts, raw_latency = pipe.execute()
        counts: dict[tuple[str, str, str, str, str], float] = {}
        for field, value in raw_counts.items():
            parts = decoded(field).split("|")
            if len(parts) == 5:
                counts[(parts[0], parts[1], parts[2], parts[3], parts[4])] = float(value)
        latency = {decoded(k): float(v) for k, v in raw_latency.items()}
        total = latency.pop("sum", 0.0)
        valid = {*map(repr, BUCKETS), "+Inf"}
        return EventsSnapshot(counts, {k: v for k, v in latency.items() if k in valid}, total)

    def kmsg_position(self, node: str) -> tuple[str, int] | None:
        raw = self._r.hgetall(f"{P}kmsg:{node}")
        try:
            return raw[b"boot"].decode(), int(raw[b"seq"])
        except (KeyError, ValueError):
            return None

    def save_kmsg_position(self, node: str, boot: str, seq: int) -> None:
        self._r.hset(f"{P}kmsg:{node}", mapping={"boot": boot, "seq": str(seq)})

    def inject(self, node: str, message: str, written_at: float) -> None:
        """Queue a kernel message for a simulated node's follower."""
        self._r.rpush(f"{P}inject:{node}", json.dumps({"message": message, "written_at": written_at}))

    def next_injected(self, nodes: Sequence[str], wait_s: int) -> tuple[str, bytes] | None:
        """The oldest message queued for any of ``nodes`` (node, raw JSON), waiting up to ``wait_s``."""
        got = self._r.blpop([f"{P}inject:{n}" for n in nodes], timeout=wait_s)
        if not got:
            return None
        key, raw = got
        return decoded(key).removeprefix(f"{P}inject:"), raw


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def decoded(value: bytes | str) -> str:
    """A Redis reply as text (the stores' clients answer bytes); bytes that are not UTF-8 (another
    writer's) read as U+FFFD instead of failing every reader of that key."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _node_names(raw: Iterable[bytes | str]) -> list[str]:
    """The node names of ``raw`` that are DNS-1123 subdomains. Another name in ``nodes`` (a buggy
    worker's, or one written by hand) would reach a queue name, a key pattern or a terminal: it is
    left out and logged."""
    found = []
    for name in map(decoded, raw):
        if names.is_dns1123_subdomain(name):
            found.append(name)
        else:
            log.warning("store: node name %r in %snodes is not a DNS-1123 subdomain; left out", name[:300], P)
    return found


def _result(blob: bytes, node: str, check: str | None, decode: Callable[[bytes, str, str | None], T]) -> T | None:
    """``decode(blob, node, check)`` (``_check_result`` or ``_stored_result``) for what another writer left
    under ``node``'s ``check`` (None: any check), or None for what is not that result (not JSON, another
    shape, another node's or check's, larger than ``MAX_RESULT_BYTES``): logged and left out, so one bad
    value neither fails every answer that reads it nor lends its finding to the wrong node. A node's
    latest results then lack that check (no fresh result: ``UNKNOWN`` rather than a guess)."""
    return _read(blob, node, check, decode)[0]


def _run_result(
    blob: bytes,
    node: str,
    check: str,
    decode: Callable[[bytes, str, str | None], T],
    wrap: Callable[[CheckResult], T],
) -> T:
    """``_result`` for a run's answer: what is unreadable is ``wrap`` of an ``error`` result saying so, so
    the run shows the check could not be read instead of waiting for it or counting the node as fine."""
    found, why = _read(blob, node, check, decode)
    if found is not None:
        return found
    return wrap(CheckResult(check, Status.ERROR, f"the result stored for this check is unreadable ({why})", node=node))


def _read(
    blob: bytes, node: str, check: str | None, decode: Callable[[bytes, str, str | None], T]
) -> tuple[T | None, str]:
    """``decode(blob, node, check)`` and "", or None and why not (logged)."""
    try:
        if len(blob) > MAX_RESULT_BYTES:
            raise ValueError(f"{len(blob)} bytes, over {MAX_RESULT_BYTES}")
        return decode(blob, node, check), ""
    except ValueError as exc:
        log.warning("store: a result of node %r (check %r) is unreadable, left out: %s", node[:300], check, exc)
        return None, str(exc)[:200]


def _check_result(blob: bytes, node: str, check: str | None) -> CheckResult:
    result = CheckResult.from_json(blob)
    if result.node != node or (check is not None and result.check != check):
        raise ValueError(f"a result of {result.node[:80]!r}/{result.check[:40]!r} stored as {node!r}/{check!r}")
    return result


def _stored_result(blob: bytes, node: str, check: str | None) -> StoredResult:
    return StoredResult.of(blob, node=node, check=check)


def stored_result(blob: bytes, node: str, check: str) -> StoredResult:
    """``node``'s ``check`` result as stored in ``blob``, or an ``error`` saying it is unreadable
    (``_run_result``): for a blob read elsewhere than here (a joined run's, ``dispatch.Flights``)."""
    return _run_result(blob, node, check, _stored_result, StoredResult.from_result)


def _latest(
    node: str, raw: Mapping[Any, Any], known: Mapping[bytes, CheckResult] | None = None
) -> dict[str, CheckResult]:
    """Decode ``node``'s ``latest`` hash, leaving out what is unreadable (``_result``); a blob found in
    ``known`` (just written by this process) is not parsed again."""
    seen = known or {}
    found = {(check := decoded(k)): seen.get(v) or _result(v, node, check, _check_result) for k, v in raw.items()}
    return {check: result for check, result in found.items() if result is not None}


VIEW_REPLIES = 7


def _queue_view(pipe: Any, node: str) -> None:
    """What ``NodeView`` is made of (``VIEW_REPLIES`` commands), queued on ``pipe`` in the order ``_view`` unpacks."""
    pipe.hgetall(f"{P}latest:{node}")
    pipe.hgetall(f"{P}state:{node}")
    pipe.hgetall(f"{P}labels:{node}")
    pipe.zscore(f"{P}nodes", node)
    # The confirmation marks' pending checks: the confirmation after a task needs no read of its own
    # (``confirming.after_task``; PERFORMANCE.md, round 5).
    pipe.hget(f"{P}confirm:{node}", "pending")
    # The worker's clock offset, which the reconcile takes off its results' stamps.
    pipe.get(f"{P}node:{node}")
    # The store's clock, which the reconcile judges by: read here, the reconcile after a task needs no TIME of its
    # own (a round trip per task).
    pipe.time()


def _view(node: str, replies: Sequence[Any], known: Mapping[bytes, CheckResult] | None = None) -> NodeView:
    raw_latest, raw_state, raw_labels, seen, pending, raw_record, told = replies
    state = _node_state(raw_state)
    record = _record(raw_record, node)
    offset = record.clock_offset if record is not None else None
    latest = _latest(node, raw_latest, known)
    labels = _state(raw_labels)
    return NodeView(latest, state, labels, _score(seen), _pending(pending), offset, server_seconds(told))


def server_seconds(reply: Any) -> float:
    """Redis's ``TIME`` reply (seconds, microseconds) as epoch seconds."""
    seconds, micros = reply
    return int(seconds) + int(micros) / 1_000_000


def _counts(raw: Mapping[bytes, bytes], skip: str = "") -> dict[str, int]:
    """A hash of counters (``busy``, ``confirm``) as str -> int; a field other than ``skip`` that is not
    an integer (another writer's) is left out, not the whole scrape."""
    out: dict[str, int] = {}
    for k, v in raw.items():
        if (field := decoded(k)) != skip:
            try:
                out[field] = int(v)
            except ValueError:
                log.warning("store: counter %r is not an integer (%r), left out", field[:300], v[:40])
    return out


def _pending(raw: bytes | None) -> frozenset[str]:
    return frozenset(filter(None, decoded(raw or b"").split(",")))


def _score(raw: Any) -> float | None:
    return None if raw is None else float(raw)


def _state(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash of text fields (state, labels) as str -> str."""
    return {decoded(k): decoded(v) for k, v in raw.items()}


def _node_state(raw: Mapping[Any, Any]) -> NodeState:
    return NodeState.from_fields(_state(raw))


def _record(raw: Any, name: str) -> NodeRecord | None:
    """The ``node:<name>`` value (None: no record, or one that is unreadable or names another node,
    which is logged: a buggy worker's heartbeat must not fail every reader of the node list)."""
    if not raw:
        return None
    try:
        record = NodeRecord.from_dict(json.loads(raw))
    except ValueError as exc:
        log.warning("store: the record of node %r is unreadable, left out: %s", name[:300], exc)
        return None
    if record.name != name:
        log.warning("store: the record of node %r names %r, left out", name[:300], record.name[:300])
        return None
    return record


def _history(node: str, raws: Sequence[Any]) -> list[CheckResult]:
    """``node``'s ``history`` list, newest first, leaving out what is unreadable (``_result``)."""
    found = (_result(v, node, None, _check_result) for v in raws)
    return [r for r in found if r is not None]


def _hash_update_commands(values: Mapping[str, str | None]) -> int:
    """How many commands ``_queue_hash_update`` queues for ``values``."""
    return any(v is None for v in values.values()) + any(v is not None for v in values.values())


def _queue_hash_update(pipe: Any, key: str, values: Mapping[str, str | None]) -> None:
    """Set the fields of ``values`` with a value and delete those that are None (two commands at most)."""
    gone = [k for k, v in values.items() if v is None]
    kept = {k: v for k, v in values.items() if v is not None}
    if gone:
        pipe.hdel(key, *gone)
    if kept:
        pipe.hset(key, mapping=kept)
