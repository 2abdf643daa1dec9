"""``create_celery(settings)``: the Celery app, its routing, limits and beat schedule.

Every node's tasks go to its own queue ``autopilot.node.<node>``; beat's ticks go to
``autopilot.control``, which every worker also consumes (the first to take a tick does it, the
store's claim makes a second copy a no-op). Acks are late and a task whose worker dies is
rejected back to the queue, so a killed worker's task is redelivered, and a run that waits on it
reports the node unreachable at its deadline meanwhile.

Time limits come from the check timeouts: workers use Celery's thread pool, which cannot enforce
Celery's own ``time_limit``, so every check runs under the engine's watchdog
(``autopilot.execution``) for its registered timeout (or ``AUTOPILOT_CHECK_TIMEOUTS``), which
kills the tool's process group; and a message still queued at its run's deadline expires unrun.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import kombu.exceptions
import redis
import redis.sentinel
from celery import Celery, Task, signals
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from autopilot import cluster as cluster_mod
from autopilot import config, errors, registry
from autopilot.cluster import ClusterClient
from autopilot.errors import StoreUnavailable
from autopilot.results import CheckResult
from workers import broker, confirming, invasive_flow, liveness, ring, runs, tasks
from workers import host as hosting
from workers.dispatch import CONTROL_QUEUE, RUN_TASK, CeleryDispatcher
from workers.store import ResultsStore

__all__ = ["CONTROL_QUEUE", "create_celery", "make_store"]
log = logging.getLogger(__name__)

FANOUT_TASK = "autopilot.fanout"
RECONCILE_TASK = "autopilot.reconcile"


def _stop_iperf_servers(**_: Any) -> None:
    """On worker shutdown no iperf3 server of an unfinished ring stays behind."""
    stopped = ring.SERVERS.stop_all()
    if stopped:
        log.info("stopped %d iperf3 server(s) at shutdown", stopped)


signals.worker_shutdown.connect(_stop_iperf_servers)


def task_may_take_s(host: hosting.NodeHost, task: str, message: Mapping[str, Any]) -> float:
    """How long ``task`` with ``message``'s keyword arguments may hold a pool thread: a run's checks their
    timeouts one after another (a level-3 Job the longest its watch waits, ``invasive_flow.longest_wait_s``), a
    clients phase of the iperf ring its waves of clients (``ring.clients_take_s``), the ring's coordinator the
    ring's estimate, every task ``wedge_margin_s`` more for its store writes and cluster calls."""
    settings = host.settings
    if task == ring.CLIENTS_TASK:
        return ring.clients_take_s(message.get("jobs"), message.get("duration_s")) + settings.wedge_margin_s
    if task == ring.RING_TASK:
        return _ring_takes_s(host, message) + settings.wedge_margin_s
    node, checks, params = message.get("node"), message.get("checks"), message.get("params")
    ctx = host.context(node) if isinstance(node, str) else None
    if task != RUN_TASK or ctx is None or not isinstance(checks, (list, tuple)):
        return settings.wedge_margin_s  # a tick, a server start or stop, or a message answered at once
    total = 0.0
    for check in {c for c in checks if isinstance(c, str) and c in ctx.checks}:
        spec = ctx.checks.get(check)
        raw = params.get(check) if isinstance(params, Mapping) else None
        given: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        as_job = ctx.cluster is not None and spec.runs_as_job(given, settings)
        total += invasive_flow.longest_wait_s(settings) if as_job else ctx.timeout_for(check, spec.timeout_s)
    return total + settings.wedge_margin_s


def _ring_takes_s(host: hosting.NodeHost, message: Mapping[str, Any]) -> float:
    """The longest the ring's coordinator runs (``ring.estimate_s``: its plan over the members' addresses in the
    store, one read, as the coordinator makes it again); 0 for a message it refuses at once, or when the store
    cannot be read (the coordinator's own plan fails as fast)."""
    nodes, params = message.get("nodes"), message.get("params")
    if not isinstance(nodes, list | tuple) or not all(isinstance(n, str) for n in nodes):
        return 0.0
    if not isinstance(params, Mapping):
        return 0.0
    try:
        return ring.estimate_s(host.store, host.settings, list(nodes), params)
    except (errors.AutopilotError, redis.RedisError, TypeError, ValueError, ArithmeticError) as exc:
        log.warning("iperf ring %.40s: its bound is not known (%s): the margin alone", message.get("run_id"), exc)
        return 0.0


def _task_started(task: Task | None = None, kwargs: Mapping[str, Any] | None = None, **_: Any) -> None:
    """Celery's ``task_prerun``, in the thread that runs the task: the pool watch learns what it holds."""
    try:
        host = hosting.current()
    except RuntimeError:
        return  # not a worker started by ``autopilot worker`` (a test applying a task): nothing is watched
    name = str(getattr(task, "name", "") or "?")
    liveness.POOL.started(name, task_may_take_s(host, name, kwargs or {}))


def _task_finished(**_: Any) -> None:
    """Celery's ``task_postrun`` (also after a retry or an exception): the thread is free again."""
    liveness.POOL.finished()


signals.task_prerun.connect(_task_started, weak=False, dispatch_uid="autopilot-pool-watch-prerun")
signals.task_postrun.connect(_task_finished, weak=False, dispatch_uid="autopilot-pool-watch-postrun")


_CLIENT_OPTIONS: dict[str, Any] = {
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    "health_check_interval": 30,
    "retry_on_timeout": True,
}


def sentinels(url: str) -> tuple[list[tuple[str, int]], int]:
    """``sentinel://h1:26379;sentinel://h2:26379/0`` -> ([(h1, 26379), (h2, 26379)], db 0), as kombu reads it."""
    hosts: list[tuple[str, int]] = []
    db = 0
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise errors.ConfigError(f"AUTOPILOT_REDIS_URL: not a sentinel://host:port address: {parts.netloc}")
        hosts.append((parts.hostname, parts.port or 26379))
        if parts.path.strip("/"):
            if not parts.path.strip("/").isdigit():
                raise errors.ConfigError("AUTOPILOT_REDIS_URL: the database must be a number")
            db = int(parts.path.strip("/"))
    return hosts, db


def tls_options(settings: config.Settings) -> dict[str, Any]:
    """rediss://: the server's certificate is always verified, against AUTOPILOT_REDIS_TLS_CA if set."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_tls_ca:
        options["ssl_ca_certs"] = settings.redis_tls_ca
    return options


def redis_client(settings: config.Settings) -> redis.Redis[bytes]:
    """The results store's client: a plain or TLS URL, or the master that Sentinel names (followed
    across a failover: the Sentinel pool asks again on a connection error)."""
    url = settings.redis_url
    password = settings.redis_password or None
    if url.startswith("sentinel://"):
        hosts, db = sentinels(url)
        watcher = redis.sentinel.Sentinel(
            hosts,
            sentinel_kwargs={"password": settings.redis_sentinel_password or None, "socket_timeout": 5},
            socket_timeout=_CLIENT_OPTIONS["socket_timeout"],
        )
        options = {k: v for k, v in _CLIENT_OPTIONS.items() if k != "socket_timeout"}
        # Retries that outlast a failover (Sentinel needs its down-after time plus an election,
        # a few seconds): each retry asks the Sentinels for the master again, so a result saved
        # while the old master is gone lands on the new one instead of being dropped.
        failover = Retry(ExponentialBackoff(cap=2.0, base=0.25), 10)
        return watcher.master_for(settings.redis_sentinel_master, db=db, password=password, retry=failover, **options)
    extra = tls_options(settings) if url.startswith("rediss://") else {}
    # A password in the URL wins over AUTOPILOT_REDIS_PASSWORD (redis-py lets the URL override).
    return redis.Redis.from_url(url, password=password, **_CLIENT_OPTIONS, **extra)


def make_store(settings: config.Settings) -> ResultsStore:
    return ResultsStore(
        redis_client(settings),
        history_len=settings.history_len,
        run_ttl_s=settings.run_ttl_s,
        run_keep=settings.run_keep,
    )


def broker_settings(settings: config.Settings) -> dict[str, Any]:
    """Celery's broker options for the URL's scheme: password, TLS, Sentinel master."""
    url = settings.redis_url
    out: dict[str, Any] = {"broker_password": settings.redis_password or None}
    if url.startswith("rediss://"):
        out["broker_use_ssl"] = tls_options(settings)
    transport: dict[str, Any] = {}
    if url.startswith("sentinel://"):
        sentinels(url)  # refuse a malformed list at start, not at the first publish
        transport["master_name"] = settings.redis_sentinel_master
        transport["sentinel_kwargs"] = {"password": settings.redis_sentinel_password or None, "socket_timeout": 5}
    return {**out, "transport": transport}


def beat_schedule(settings: config.Settings) -> dict[str, dict[str, Any]]:
    """Beat entries; an interval of 0 leaves its entry out (disabled, not a crash)."""
    entries = {
        "periodic-checks": (FANOUT_TASK, settings.periodic_interval_s, {"kind": "periodic"}),
        "invasive-checks": (FANOUT_TASK, settings.invasive_interval_s, {"kind": "invasive"}),
        "reconcile": (RECONCILE_TASK, settings.reconcile_interval_s, None),
    }
    schedule: dict[str, dict[str, Any]] = {}
    for name, (task, interval, kwargs) in entries.items():
        if interval > 0:
            # A tick not consumed within its interval is dropped: the next one does the same work.
            entry: dict[str, Any] = {
                "task": task,
                "schedule": interval,
                "options": {"queue": CONTROL_QUEUE, "expires": interval},
            }
            if kwargs is not None:
                entry["kwargs"] = kwargs
            schedule[name] = entry
    return schedule


def create_celery(settings: config.Settings, checks: registry.CheckRegistry | None = None) -> Celery:
    """The Celery app; ``checks`` defaults to the shipped checks plus ``settings.extra_checks`` (the app
    factory assembles the process, so it is one of the places that may name them)."""
    if not settings.redis_url:
        raise errors.ConfigError("AUTOPILOT_REDIS_URL is not set")
    if checks is None:
        checks = registry.shipped(settings.extra_checks)
    app = Celery("autopilot", broker=settings.redis_url, set_as_current=False)
    longest = max((spec.timeout_s for spec in checks), default=3600.0)
    broker_conf = broker_settings(settings)
    transport = broker_conf.pop("transport")
    app.conf.update(broker_conf)
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CONTROL_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        # Unacked messages return to their queue after this long; it must outlast the longest
        # check, or a slow DCGM run would be handed to a second worker while the first runs it.
        # One priority level: every task is sent at priority 0, so each broker fetch (a BRPOP over
        # every queue a worker consumes) names each queue once instead of four times. A simulator
        # consumes hundreds of queues, and building that command was a third of its CPU.
        broker_transport_options={"visibility_timeout": int(longest + 600), "priority_steps": [0], **transport},
        worker_hijack_root_logger=False,
        # Celery's consumer on kombu as released, skipping messages it cannot read (workers.broker).
        worker_consumer=broker.CONSUMER,
        worker_send_task_events=True,
        # Workers still send task-received/started/succeeded events, which is what Flower shows;
        # a task-sent event per publish doubled the API's Redis writes during a fan-out.
        task_send_sent_event=False,
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
    )
    store = make_store(settings)
    dispatcher = CeleryDispatcher(app)
    registered = checks
    clusters: list[ClusterClient | None] = []

    def _cluster() -> ClusterClient | None:
        # Built on first use, in the process that runs beat's ticks, not at import or in the API.
        if not clusters:
            clusters.append(cluster_mod.from_settings(settings))
        return clusters[0]

    def _confirm(
        node: str, done: list[CheckResult] | tuple[CheckResult, ...], marks: tuple[str, frozenset[str]] | None = None
    ) -> None:
        try:
            confirming.after_task(store, dispatcher, settings, node, done, checks=registered, marks=marks)
        except (StoreUnavailable, redis.RedisError, kombu.exceptions.KombuError) as exc:
            # The results and the verdict are saved; only an early re-run (or a counter) is lost.
            log.warning("confirmation after the task on %s failed: %s", node, exc)

    # Each task takes its message's keyword arguments as one mapping (``tasks.message_kwargs``): a message
    # from a release ahead or behind (a key more, a key fewer) reaches the body instead of raising
    # TypeError in Celery, and is answered or refused there.
    @app.task(name=RUN_TASK, bind=True, max_retries=None, acks_late=True)
    def run_checks_task(self: Task, **message: Any) -> dict[str, str]:
        given, missing = tasks.message_kwargs(RUN_TASK, message, tasks.RUN_CHECKS_KWARGS)
        if missing:
            return {r.check: r.status.value for r in tasks.run_checks_incomplete(hosting.current(), given, missing)}
        run_id, node, checks, params, deadline = (given[k] for k in tasks.RUN_CHECKS_KWARGS)
        try:
            done = tasks.run_checks(
                hosting.current(), run_id=run_id, node=node, checks=checks, params=params, deadline=deadline
            )
        except tasks.GpusBusy as busy:
            _confirm(node, busy.done)
            # Only the GPU checks go back to the node's queue (same expiry: the run's deadline);
            # the light checks are answered and saved already.
            again = {
                "run_id": run_id,
                "node": node,
                "checks": list(busy.checks),
                "params": {c: params[c] for c in busy.checks if c in params},
                "deadline": deadline,
            }
            raise self.retry(kwargs=again, countdown=2) from None
        _confirm(node, done, done.marks)  # the marks the task read in its last MULTI: no read of their own
        # The results are in the store; the return value is only logged and shown by Flower, and
        # Celery formats it after every task, so it is the summary, not every result's data.
        return {r.check: r.status.value for r in done}

    @app.task(name=FANOUT_TASK)
    def fanout_task(*args: Any, **message: Any) -> str | None:
        # Its kind by position too, as fanout_task(kind) took it (celery call --args, Flower's apply).
        given, missing = tasks.message_kwargs(
            FANOUT_TASK, {**dict(zip(tasks.FANOUT_KWARGS, args, strict=False)), **message}, tasks.FANOUT_KWARGS
        )
        if missing:
            # Beat's own tick, without its kind: nothing to fan out; the next tick comes within its interval.
            log.warning("fanout tick refused: %s", tasks.other_version(missing))
            return None
        kind = given["kind"]
        if not isinstance(kind, str) or kind not in runs.TICK_KINDS:
            # A newer beat's tick kind, or a sender's mistake: one line, not a traceback at every tick.
            log.warning("fanout tick refused: kind %.40r is unknown to this worker (another release?)", kind)
            return None
        run = tasks.fanout(store, dispatcher, settings, registered, kind=kind)
        return run.id if run else None

    @app.task(name=RECONCILE_TASK)
    def reconcile_task(**message: Any) -> dict[str, str]:
        tasks.message_kwargs(RECONCILE_TASK, message, tasks.RECONCILE_KWARGS)  # names a newer beat's extra keys
        return tasks.reconcile_and_remediate(store, settings, _cluster(), checks=registered)

    # The iperf ring's parts on one node (workers.ring). Not retried: the coordinator has a
    # deadline per phase and reports a node that did not answer; acked early so a worker that
    # dies mid-run does not get the same servers started again by a redelivery.
    @app.task(name=ring.SERVERS_TASK, acks_late=False)
    def iperf_servers_task(**message: Any) -> dict[str, Any]:
        given, missing = tasks.message_kwargs(ring.SERVERS_TASK, message, tasks.SERVERS_KWARGS)
        if missing:
            return tasks.iperf_servers_incomplete(hosting.current(), given, missing)
        return tasks.iperf_servers(hosting.current(), **given)

    @app.task(name=ring.CLIENTS_TASK, acks_late=False)
    def iperf_clients_task(**message: Any) -> list[dict[str, Any]]:
        given, missing = tasks.message_kwargs(ring.CLIENTS_TASK, message, tasks.CLIENTS_KWARGS)
        if missing:
            return tasks.iperf_clients_incomplete(hosting.current(), given, missing)
        return tasks.iperf_clients(hosting.current(), **given)

    @app.task(name=ring.STOP_TASK, acks_late=False)
    def iperf_stop_task(**message: Any) -> int:
        given, missing = tasks.message_kwargs(ring.STOP_TASK, message, tasks.STOP_KWARGS)
        if missing:
            # Without a run id or node there is nothing to stop; the servers end at their own lifetime.
            log.warning("iperf_stop message refused: %s", tasks.other_version(missing))
            return 0
        return tasks.iperf_stop(hosting.current(), **given)

    # The ring's coordinator (sent to the control queue by workers.runs). Acked early: a worker
    # that dies mid-ring stops renewing the ring's lease, and its run reports the missing iperf
    # results at the run's deadline, rather than a redelivery starting a second ring later.
    @app.task(name=ring.RING_TASK, acks_late=False)
    def iperf_ring_task(**message: Any) -> dict[str, str]:
        given, missing = tasks.message_kwargs(ring.RING_TASK, message, tasks.RING_KWARGS)
        if missing:
            return tasks.iperf_ring_incomplete(store, given, missing)
        return tasks.iperf_ring(store, dispatcher, settings, **given)

    app.conf.autopilot_store = store
    return app
