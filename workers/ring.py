"""The ``iperf`` ring (upstream section 5.8) as Celery work: coordinator and worker side.

Coordinator (``run_ring``): the body of the ``autopilot.iperf_ring`` task (``RING_TASK``), which
``workers.runs`` sends to the control queue for a run with ``iperf``; a worker runs it, never
the API process:

1. plan: the ring members' addresses per interface ("lane") from their node records; an
   interface holding several addresses on a node gives lanes ``<if>-0``, ``<if>-1``...;
2. servers: one ``autopilot.iperf_servers`` task per member starts ``iperf3 -s`` per lane
   address and port, and answers whether they all listen; a node that says nothing by the
   deadline cannot take part, and its pairs are bad;
3. for each lane, for each ring step: one ``autopilot.iperf_clients`` task per source node runs
   that step's pairs concurrently; a source that says nothing by the step deadline fails its pair;
4. always (even when a step failed or raised): ``autopilot.iperf_stop`` to every node that was
   asked to start servers, and a short wait for their acknowledgement;
5. grade the pairs (``checks.iperf.grade``) and write one ``iperf`` result per node into the run.

Workers answer into a Redis hash per run (``ap:ring:<run>``: ``servers|<node>``,
``clients|<phase>|<node>``, ``stopped|<node>``); the coordinator asks for the answers it still waits on
and forgets a step's once read. A worker holds its servers in ``SERVERS``; each
dies by its lifetime timer if the stop message never comes, and all die on worker shutdown. Only
one ring runs at a time: two would measure each other. The coordinator holds a store lease
(``ResultsStore.lease``) of ``CLAIM_TTL_S``, renewed while it waits, sends and writes (with its run's
record), and released when it ends, after its results are in the run; a coordinator that dies (its
worker killed or restarted) stops renewing it, so the next ring can start within ``CLAIM_TTL_S``, not
after the dead ring's whole bound, and the run that waits on it answers then too
(``runs.Gather.wait_for_check``).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from autopilot import config, errors, network, peers, results
from autopilot.checks import iperf
from autopilot.commands import Background, CommandResult, CommandRunner
from autopilot.results import CheckResult, Status
from workers import fleet
from workers.dispatch import TaskSender, clock_shifts
from workers.peers import StorePeers
from workers.store import ResultsStore

log = logging.getLogger(__name__)

SERVERS_TASK = "autopilot.iperf_servers"
CLIENTS_TASK = "autopilot.iperf_clients"
STOP_TASK = "autopilot.iperf_stop"
RING_TASK = "autopilot.iperf_ring"  # the coordinator itself, on the control queue

SERVERS_WAIT_S = 15.0  # a worker takes the task and has its servers listening within this (after its last send)
# What the ring's bound allows for sending one task message: the coordinator sends one per member per
# step, one after another (a Celery publish to a Redis over the network is about a millisecond). Each
# wait counts from the last message it waits on, so sending 6,000 of them eats no member's time.
SEND_S = 0.005
# The most iperf3 servers one node runs at once, whatever the messages: four rings at the most a servers
# message may ask (64 addresses x 16 ports). One ring runs at a time (its lease); the others are a dead
# coordinator's, whose servers live out their lifetime. Without it, a message per made-up run id each
# started another thousand processes.
MOST_SERVERS_PER_NODE = 4096
STARTUP_CHECK_S = 0.5  # a server that cannot bind exits at once: look after this long
QUEUE_SLACK_S = 10.0  # added to a step's client deadline for queueing and answering
STOP_WAIT_S = 5.0
LIFETIME_SLACK_S = 30.0
POLL_S = 0.1
CLAIM = "iperf-ring"
# The ring's lease lapses this long after its last renewal (renewed every third of it while the
# coordinator waits): the longest a dead coordinator keeps the next ring from starting.
CLAIM_TTL_S = 30.0
CLIENTS_AT_ONCE = 64  # iperf3 clients one clients phase runs at the same time (a thread each)


def post(store: ResultsStore, run_id: str, field: str, payload: Mapping[str, Any], ttl_s: float = 3600) -> None:
    """A worker's answer to one ring task."""
    store.post_answer(run_id, field, payload, ttl_s)


def replies(store: ResultsStore, run_id: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Answers whose field starts with ``prefix|``, by node."""
    return {
        name[len(prefix) + 1 :]: answer
        for name, answer in store.answers(run_id).items()
        if name.startswith(prefix + "|")
    }


# ------------------------------------------------------------------ worker side


class Servers:
    """The ``iperf3`` servers this worker process runs, by run and node (a simulator hosts many)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[tuple[str, str], list[Background]] = {}
        self._stopped: collections.deque[tuple[str, str]] = collections.deque(maxlen=1024)
        self._atexit = False

    def start(
        self,
        runner: CommandRunner,
        run_id: str,
        binds: Sequence[str],
        ports: Sequence[int],
        lifetime_s: float,
        node: str = "",
    ) -> dict[str, Any]:
        """Start a server per address and port; {"ok": bool, "started": n, "error": text}."""
        key = (run_id, node)
        spawn = getattr(runner, "spawn", None)
        if not callable(spawn):
            return {"ok": False, "started": 0, "error": "this node's command runner cannot start servers"}
        with self._lock:
            if key in self._stopped:  # the stop overtook us: starting now would leak servers
                return {"ok": False, "started": 0, "error": "run already stopped"}
            if key in self._by_run:  # a redelivered task: the servers are up
                return {"ok": True, "started": len(self._by_run[key]), "error": ""}
            # Servers that lived out their lifetime (a dead coordinator never sent the stop) run no more:
            # forgotten, so they neither count against the next ring nor stay in memory. An empty list is
            # a start in progress.
            for ended in [k for k, procs in self._by_run.items() if procs and all(p.poll() is not None for p in procs)]:
                del self._by_run[ended]
            running = sum(len(procs) for (_, n), procs in self._by_run.items() if n == node)
            if running + len(binds) * len(ports) > MOST_SERVERS_PER_NODE:
                why = f"{running} iperf3 servers already run on this node (at most {MOST_SERVERS_PER_NODE})"
                return {"ok": False, "started": 0, "error": why}
            self._by_run[key] = []
            if not self._atexit:
                atexit.register(self.stop_all)
                self._atexit = True
        started: list[tuple[str, Background]] = []
        try:
            for address in binds:
                for port in ports:
                    argv = iperf.server_argv(address, port)
                    proc = spawn(argv, lifetime_s=lifetime_s)
                    started.append((f"{address}:{port}", proc))
                    with self._lock:
                        self._by_run.setdefault(key, []).append(proc)
        except errors.AutopilotError as exc:
            self.stop(run_id, node)
            return {"ok": False, "started": 0, "error": str(exc)}
        time.sleep(STARTUP_CHECK_S)
        dead = [(where, p) for where, p in started if p.poll() is not None]
        if dead:
            where, proc = dead[0]
            said = " ".join(proc.output().split())[-300:] or f"exit {proc.poll()}"
            self.stop(run_id, node)
            return {"ok": False, "started": 0, "error": f"iperf3 server on {where} did not start: {said}"}
        return {"ok": True, "started": len(started), "error": ""}

    def stop(self, run_id: str, node: str = "") -> int:
        """Stop the servers of ``run_id`` on ``node`` (and refuse to start them later); how many there were."""
        with self._lock:
            procs = self._by_run.pop((run_id, node), [])
            self._stopped.append((run_id, node))
        for proc in procs:
            proc.terminate()
        return len(procs)

    def stop_all(self) -> int:
        with self._lock:
            keys = list(self._by_run)
        return sum(self.stop(*key) for key in keys)

    def running(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return {key: len(procs) for key, procs in self._by_run.items()}


SERVERS = Servers()


def run_clients(runner: CommandRunner, jobs: Sequence[Mapping[str, Any]], duration_s: int) -> list[dict[str, Any]]:
    """Every job's clients at once (one per server port, ``CLIENTS_AT_ONCE`` at the most); a pair per job, judged."""
    calls = [(i, port) for i, job in enumerate(jobs) for port in job["ports"]]
    if not calls:
        return []
    timeout = iperf.client_timeout_s(duration_s)

    def one(call: tuple[int, int]) -> CommandResult | errors.AutopilotError:
        job = jobs[call[0]]
        argv = iperf.client_argv(job["address"], call[1], duration_s, job.get("source_address") or None)
        try:
            return runner.run(argv, timeout=timeout)
        except errors.AutopilotError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(CLIENTS_AT_ONCE, len(calls))) as pool:
        outs = list(pool.map(one, calls))
    by_job: dict[int, list[CommandResult | errors.AutopilotError]] = {}
    for (i, _), out in zip(calls, outs, strict=True):
        by_job.setdefault(i, []).append(out)
    return [
        iperf.pair(job["source"], job["target"], job["interface"], job["address"], iperf.judge_pair(by_job.get(i, [])))
        for i, job in enumerate(jobs)
    ]


def clients_take_s(jobs: object, duration_s: object) -> float:
    """The longest ``run_clients`` runs for a clients message's ``jobs`` and ``duration_s``: each wave of
    ``CLIENTS_AT_ONCE`` clients up to its timeout. 0 for a message ``iperf_clients`` refuses at once (malformed)."""
    if isinstance(duration_s, bool) or not isinstance(duration_s, int) or not isinstance(jobs, list | tuple):
        return 0.0
    ports = [job.get("ports") for job in jobs if isinstance(job, Mapping)]
    calls = sum(len(p) for p in ports if isinstance(p, list | tuple))
    return -(-calls // CLIENTS_AT_ONCE) * iperf.client_timeout_s(duration_s)


# ------------------------------------------------------------------ plan


@dataclasses.dataclass(frozen=True)
class Lane:
    """One interface (or one address index of it) and each member's address on it."""

    label: str
    addresses: Mapping[str, str]  # node -> address, in ring order


@dataclasses.dataclass(frozen=True)
class Plan:
    members: tuple[str, ...]
    lanes: tuple[Lane, ...]
    ports: tuple[int, ...]
    duration_s: int

    def phases(self) -> Iterator[tuple[Lane, list[tuple[str, str]]]]:
        """(lane, pairs of one ring step), lanes one after another as upstream did. Each step is made
        when it is reached: all of them at once are n(n-1) pairs a lane, 36 million at 6,000 members."""
        for lane in self.lanes:
            members = list(lane.addresses)
            for t in range(1, len(members)):
                yield lane, network.ring_step(members, t)

    def step_deadline_s(self) -> float:
        """How long a step waits for its clients' answers, from its last clients message sent."""
        return iperf.client_timeout_s(self.duration_s) + QUEUE_SLACK_S

    def estimate_s(self) -> float:
        """Upper bound of the whole ring, servers to stop: each wait from its last message, each message
        ``SEND_S`` (counted, never listed: the API process and each worker's watch ask for it too)."""
        members = len({n for lane in self.lanes for n in lane.addresses})
        steps = sum(
            (len(lane.addresses) - 1) * (self.step_deadline_s() + len(lane.addresses) * SEND_S) for lane in self.lanes
        )
        return SERVERS_WAIT_S + steps + STOP_WAIT_S + 2 * members * SEND_S

    def binds(self, node: str) -> list[str]:
        return [lane.addresses[node] for lane in self.lanes if node in lane.addresses]


def lanes(found: Sequence[peers.Peer], members: Sequence[str]) -> list[Lane]:
    """Lanes over the members' peer addresses: per interface, per address index; only lanes
    that at least two members share."""
    per: dict[str, dict[str, list[str]]] = {}
    for p in found:
        if p.node in members:
            per.setdefault(p.interface, {}).setdefault(p.node, []).append(p.address)
    out: list[Lane] = []
    for interface in sorted(per):
        nodes = per[interface]
        width = max(len(a) for a in nodes.values())
        for k in range(width):
            label = interface if width == 1 else f"{interface}-{k}"
            addresses = {n: nodes[n][k] for n in members if n in nodes and len(nodes[n]) > k}
            if len(addresses) >= 2:
                out.append(Lane(label, addresses))
    return out


def members_of(nodes: Sequence[str], params: Mapping[str, Any]) -> list[str]:
    """The ring members: the run's nodes, narrowed to ``params["nodes"]`` when given."""
    wanted = [n.strip() for n in str(params.get("nodes") or "").split(",") if n.strip()]
    return [n for n in nodes if not wanted or n in wanted]


def plan(store: ResultsStore, settings: config.Settings, nodes: Sequence[str], params: Mapping[str, Any]) -> Plan:
    members = members_of(nodes, params)
    found = peers.select_interfaces(StorePeers(store, settings).peers(members), settings.network_interfaces)
    return Plan(
        tuple(members),
        tuple(lanes(found, members)),
        tuple(iperf.ports(int(params.get("startport", 5200)), int(params.get("pclients", 1)))),
        int(params.get("duration_s", 5)),
    )


def estimate_s(
    store: ResultsStore, settings: config.Settings, nodes: Sequence[str], params: Mapping[str, Any]
) -> float:
    return plan(store, settings, nodes, params).estimate_s()


# ------------------------------------------------------------------ coordinator


@dataclasses.dataclass
class RingOutcome:
    pairs: list[dict[str, Any]]
    results: dict[str, CheckResult]
    summary: dict[str, Any]
    servers: dict[str, dict[str, Any]]
    stopped: dict[str, dict[str, Any]]


class Coordinator:
    def __init__(
        self,
        store: ResultsStore,
        sender: TaskSender,
        settings: config.Settings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.sender = sender
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.fleet = store.fleet(settings)
        self._renewed = float("-inf")  # self.clock() of the last lease renewal
        self._holding = False  # this coordinator took the ring's lease and has not released it
        # Node -> its worker's clock minus this one's (``dispatch.clock_shifts``, read once a ring): a task's
        # ``expires`` is judged by Celery on the worker's clock, so each says it there. Without it a member whose
        # clock ran ahead by more than a step's wait dropped its server and client tasks unrun.
        self._shifts: dict[str, float] = {}

    def wait_for(self, run_id: str, prefix: str, nodes: Sequence[str], deadline: float) -> dict[str, dict[str, Any]]:
        """The answers of ``nodes`` under ``prefix``, polling until all are in or ``deadline``.

        Each poll asks for the answers still missing, never for the run's whole hash: a ring's steps leave
        thousands of answers each, and reading them all ten times a second grew with every step."""
        fields = {f"{prefix}|{n}": n for n in nodes}
        got: dict[str, dict[str, Any]] = {}
        while True:
            self.renew(run_id)
            missing = [f for f, n in fields.items() if n not in got]
            got.update((fields[f], v) for f, v in self.store.answers_of(run_id, missing).items())
            if len(got) >= len(fields) or self.clock() >= deadline:
                return got
            self.sleep(max(0.001, min(POLL_S, deadline - self.clock())))

    def renew(self, run_id: str) -> None:
        """Keep the ring's lease, and its run, while this coordinator makes progress (at most every third of
        the lease's TTL; called while it waits, sends and writes results, each of which takes minutes at
        6,000 members). The run's record is kept too: a ring of thousands of members outlasts
        ``AUTOPILOT_RUN_TTL`` (a day) between the run's last other write and its own results."""
        now = self.clock()
        if not self._holding or 0 <= now - self._renewed < CLAIM_TTL_S / 3:
            return
        self._renewed = now
        if not self.store.lease(CLAIM, run_id, CLAIM_TTL_S):
            log.warning("iperf ring %s: lost its lease (held up past %g s), another may start", run_id, CLAIM_TTL_S)
        self.store.keep_run(run_id)

    def send(self, run_id: str, task: str, node: str, kwargs: Mapping[str, Any], wait_s: float) -> None:
        """One task message, dropped unconsumed ``wait_s`` after it is sent; the lease kept meanwhile."""
        self.renew(run_id)
        self.sender.send_task(task, node, kwargs, expires=self.clock() + wait_s + self._shifts.get(node, 0.0))

    def run(self, run_id: str, nodes: Sequence[str], params: Mapping[str, Any]) -> RingOutcome:
        self._shifts = clock_shifts(self.store, self.clock, nodes)
        started = self.clock()
        the_plan = plan(self.store, self.settings, nodes, params)
        lifetime = the_plan.estimate_s() + LIFETIME_SLACK_S
        notes: dict[str, str] = {}
        in_ring = {n for lane in the_plan.lanes for n in lane.addresses}
        for node in nodes:
            if node not in the_plan.members:
                notes[node] = "not a ring member (iperf nodes=...)"
            elif node not in in_ring:
                notes[node] = "no address shared with another member on the network interfaces"
        if len(in_ring) < 2:
            return self._finish(run_id, nodes, params, started, [], {}, {}, notes, skip=True)
        if not self.store.lease(CLAIM, run_id, CLAIM_TTL_S):
            for node in nodes:
                notes.setdefault(node, "another iperf run is in progress")
            return self._finish(run_id, nodes, params, started, [], {}, {}, notes, busy=True)
        self._renewed, self._holding = self.clock(), True
        try:
            return self._ring(run_id, nodes, params, the_plan, started, lifetime, notes)
        finally:
            # Only once the results are in the run: a gather that sees the lease gone with results
            # missing takes the coordinator for dead (``runs.Gather.wait_for_check``).
            self._holding = False
            self.store.release(CLAIM, run_id)

    def _ring(
        self,
        run_id: str,
        nodes: Sequence[str],
        params: Mapping[str, Any],
        the_plan: Plan,
        started: float,
        lifetime: float,
        notes: dict[str, str],
    ) -> RingOutcome:
        """Servers, steps, stops and results, under the ring's lease (held by ``run``)."""
        pairs: list[dict[str, Any]] = []
        servers: dict[str, dict[str, Any]] = {}
        stopped: dict[str, dict[str, Any]] = {}
        in_ring = {n for lane in the_plan.lanes for n in lane.addresses}
        asked: list[str] = []
        try:
            # 1. servers
            for node in sorted(in_ring):
                kwargs = {
                    "run_id": run_id,
                    "node": node,
                    "binds": the_plan.binds(node),
                    "ports": list(the_plan.ports),
                    "lifetime_s": lifetime,
                }
                asked.append(node)
                self.send(run_id, SERVERS_TASK, node, kwargs, SERVERS_WAIT_S)
            servers = self.wait_for(run_id, "servers", asked, self.clock() + SERVERS_WAIT_S)
            ready = {n for n, v in servers.items() if v.get("ok")}
            for node in asked:
                if node not in servers:
                    notes[node] = "no answer from this node's worker (servers not started)"
                elif not servers[node].get("ok"):
                    notes[node] = f"servers did not start: {servers[node].get('error', '')}"
            # 2. the steps
            for index, (lane, step) in enumerate(the_plan.phases()):
                pairs.extend(self._step(run_id, the_plan, index, lane, step, servers, ready))
        finally:
            # 3. stop every server, whatever happened above
            if asked:
                for node in asked:
                    try:
                        self.renew(run_id)
                        self.sender.send_task(
                            STOP_TASK,
                            node,
                            {"run_id": run_id, "node": node},
                            expires=started + lifetime + self._shifts.get(node, 0.0),
                        )
                    except Exception:  # noqa: BLE001 - a broker error must not keep the others' stops
                        log.exception("iperf ring %s: stop for %s not sent", run_id, node)
                until = self.clock() + STOP_WAIT_S
                stopped = self.wait_for(run_id, "stopped", [n for n in asked if n in servers], until)
        return self._finish(run_id, nodes, params, started, pairs, servers, stopped, notes)

    def _step(
        self,
        run_id: str,
        the_plan: Plan,
        index: int,
        lane: Lane,
        step: Sequence[tuple[str, str]],
        servers: Mapping[str, Mapping[str, Any]],
        ready: set[str],
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        jobs: dict[str, list[dict[str, Any]]] = {}
        for source, target in step:
            address = lane.addresses[target]
            if source not in servers:
                out.append(iperf.pair(source, target, lane.label, address, _fail(f"{source} did not answer")))
            elif target not in servers:
                out.append(iperf.pair(source, target, lane.label, address, _fail(f"{target} did not answer")))
            elif target not in ready:
                why = f"servers on {target} did not start: {servers[target].get('error', '')}"
                out.append(iperf.pair(source, target, lane.label, address, iperf.Measure(Status.ERROR, None, why)))
            else:
                jobs.setdefault(source, []).append(
                    {
                        "source": source,
                        "target": target,
                        "interface": lane.label,
                        "address": address,
                        "source_address": lane.addresses[source],
                        "ports": list(the_plan.ports),
                    }
                )
        if not jobs:
            return out
        prefix = f"clients|{index}"
        for source, its_jobs in jobs.items():
            kwargs = {
                "run_id": run_id,
                "node": source,
                "phase": index,
                "jobs": its_jobs,
                "duration_s": the_plan.duration_s,
            }
            self.send(run_id, CLIENTS_TASK, source, kwargs, the_plan.step_deadline_s())
        answers = self.wait_for(run_id, prefix, list(jobs), self.clock() + the_plan.step_deadline_s())
        # Read: the ring's hash keeps no step's answers (6,000 steps of 6,000 answers each at 6,000 members).
        self.store.drop_answers(run_id, [f"{prefix}|{source}" for source in jobs])
        for source, its_jobs in jobs.items():
            if source in answers:
                out.extend(answers[source].get("pairs", []))
            else:
                for job in its_jobs:
                    silent = _fail(f"no answer from {source} within {the_plan.step_deadline_s():g} s")
                    out.append(iperf.pair(source, job["target"], lane.label, job["address"], silent))
        return out

    def _finish(
        self,
        run_id: str,
        nodes: Sequence[str],
        params: Mapping[str, Any],
        started: float,
        pairs: list[dict[str, Any]],
        servers: dict[str, dict[str, Any]],
        stopped: dict[str, dict[str, Any]],
        notes: Mapping[str, str],
        *,
        skip: bool = False,
        busy: bool = False,
    ) -> RingOutcome:
        graded = iperf.grade(
            pairs,
            threshold_gbps=float(params.get("threshold_gbps", 0.0)),
            min_fraction=float(params.get("min_fraction", 0.5)),
        )
        at = self.clock()
        duration = round(at - started, 3)
        done: dict[str, CheckResult] = {}
        records = {r.name: r for r in self.store.nodes(list(nodes))}
        # Each node's pairs, sent and received, in one pass: a scan of every pair per node was n^3.
        theirs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for p in graded:
            theirs[p["source"]].append(p)
            if p["target"] != p["source"]:
                theirs[p["target"]].append(p)
        # The ring's slow or unreachable node is its own finding: the other nodes' pairs to it are
        # not judged against them (as ping's pairs to the fleet's suspect), or one slow NIC turned
        # every node of the ring WARN. The report's matrix and suspects still show every pair.
        suspects = network.localise(iperf.pair_results(graded)).nodes
        for node in nodes:
            self.renew(run_id)
            mine = [p for p in theirs.get(node, ()) if p["source"] == node]
            note = notes.get(node, "")
            if busy:
                result = CheckResult("iperf", Status.ERROR, note)
            elif skip or (not mine and note):
                # The status says skipped: the summary says why (no "skipped: " again before it).
                why = note or "the ring needs two nodes with addresses on a shared network interface"
                result = CheckResult("iperf", Status.SKIPPED, why)
            else:
                result = iperf.evaluate(node, theirs.get(node, []), note=note)
                result = network.excuse_pairs(
                    result, suspects, by="the ring's suspect", ok_words="every pair fast", what="pair"
                )
            # Stamped on the node's clock, as its own results are: its reconciles take its offset off its stamps.
            stamp = results.utc_now_iso(datetime.fromtimestamp(at + self._shifts.get(node, 0.0), UTC))
            result = dataclasses.replace(result, node=node, params=dict(params), started_at=stamp, duration_s=duration)
            result = fleet.judge_for_record(self.fleet, result, records.get(node))
            self.store.save_result(result, run_id)
            done[node] = result
        summary = iperf.summarize(graded)
        log.info("iperf ring %s: %d pairs over %d lane(s)", run_id, len(graded), len(summary))
        return RingOutcome(graded, done, summary, servers, stopped)


def _fail(detail: str) -> iperf.Measure:
    return iperf.Measure(Status.FAIL, None, detail)


def run_ring(
    store: ResultsStore,
    sender: TaskSender,
    settings: config.Settings,
    run_id: str,
    nodes: Sequence[str],
    params: Mapping[str, Any],
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> RingOutcome:
    """Run the ring over ``nodes`` and write each node's ``iperf`` result into run ``run_id``.

    Never leaves a node without a result: an unexpected failure becomes an ``error`` result for
    every node that has none yet.
    """
    coordinator = Coordinator(store, sender, settings, clock=clock, sleep=sleep)
    try:
        return coordinator.run(run_id, nodes, params)
    except Exception as exc:
        log.exception("iperf ring %s failed", run_id)
        got = store.get_run(run_id)
        have = {n for (n, c) in (got[1] if got else {}) if c == "iperf"}
        done: dict[str, CheckResult] = {}
        for node in nodes:
            if node not in have:
                result = CheckResult("iperf", Status.ERROR, f"ring coordinator failed: {exc}", node=node)
                store.save_result(result, run_id)
                done[node] = result
        return RingOutcome([], done, {}, {}, {})
