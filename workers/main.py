"""Entry points of the worker, beat and Flower processes (``autopilot worker|beat|flower``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from celery import concurrency
from celery import signals as celery_signals
from celery.worker import state as worker_state
from celery.worker.worker import WorkController

from autopilot import __version__, config, errors, names, nodeinfo, parsing
from autopilot import cluster as cluster_mod
from autopilot.context import CheckContext
from autopilot.registry import CheckRegistry
from workers import host as hosting
from workers import invasive_flow, liveness
from workers.app import CONTROL_QUEUE, create_celery, make_store
from workers.store import NodeRecord, ResultsStore

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 2.0


def _settings() -> config.Settings:
    settings = config.Settings.from_env(os.environ)
    if not settings.redis_url:
        raise errors.ConfigError(
            "AUTOPILOT_REDIS_URL is not set (e.g. redis://localhost:6379/0); `autopilot up` starts one"
        )
    return settings


def load_checks(environ: Mapping[str, str] | None = None) -> CheckRegistry:
    """The process's registry: the built-in checks, plus the modules named in ``AUTOPILOT_EXTRA_CHECKS``
    (``config.load_checks``; e.g. ``tests.integration.checks_for_tests``, for tests)."""
    return config.load_checks(os.environ if environ is None else environ)


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, value = names.label_selector(pair, field="--label")
        labels[key] = value
    return labels


def heartbeat_loop(
    store: ResultsStore,
    records: Callable[[], list[NodeRecord]],
    interval_s: float,
    stop: threading.Event,
) -> None:
    """Write node records every ``interval_s`` until ``stop``, each with this host's clock offset to the store's
    (``clock_offset``), measured again at every beat so a clock that steps is known by the next; a Redis outage is
    logged, not fatal."""
    while not stop.is_set():
        try:
            offset = clock_offset(store)
            store.heartbeat_many(dataclasses.replace(r, clock_offset=offset) for r in records())
        except Exception as exc:  # noqa: BLE001 - keep beating through broker restarts
            log.warning("heartbeat failed (will retry): %s", exc)
        stop.wait(interval_s)


def clock_offset(store: ResultsStore, clock: Callable[[], float] = time.time) -> float:
    """This host's clock minus the store's (Redis ``TIME``), in seconds: the store's answer is taken as of the
    middle of the round trip that asked it, so the figure is off by at most half that trip (milliseconds)."""
    before = clock()
    shared = store.server_time()
    return round((before + clock()) / 2 - shared, 3)


def node_records(
    facts: Mapping[str, nodeinfo.NodeFacts],
    labels: Mapping[str, str],
    *,
    simulated: bool,
    pool: liveness.PoolWatch | None = None,
    now: float | None = None,
) -> list[NodeRecord]:
    """The heartbeat's records of the hosted nodes, at ``now`` (default: the time).

    A wedged pool (``liveness.PoolWatch``: every thread past its task's bound) takes no work: its nodes'
    ``last_seen`` stays at the moment it wedged, so they go lost (``UNKNOWN``, listed ``unreachable``) as a
    silent worker's do, and ``wedged_since`` says why.
    """
    wedged = (pool or liveness.POOL).wedged_since()
    seen = wedged if wedged is not None else (time.time() if now is None else now)
    return [
        NodeRecord(
            name=n,
            addresses=f.addresses,
            cpu_model=f.cpu_model,
            gpu_model=f.gpu_model,
            gpu_count=f.gpu_count,
            driver_version=f.driver_version,
            labels=labels,
            version=__version__,
            last_seen=seen,
            simulated=simulated,
            wedged_since=wedged or 0.0,
        )
        for n, f in facts.items()
    ]


def _resume_invasive(host: hosting.NodeHost) -> None:
    """A node left ``TESTING`` by a previous worker gets its Job watched to the end, in the background."""
    for node, ctx in host.contexts.items():
        if ctx.cluster is None or not host.store.state(node).testing_since:
            continue
        log.warning("node %s was TESTING when the last worker stopped: watching its Job", node)
        threading.Thread(
            target=invasive_flow.resume, args=(host, node, ctx.cluster), daemon=True, name=f"resume-{node}"
        ).start()


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="autopilot worker", description="Run the Celery worker of a node.")
    parser.add_argument("--node", default=None, help="node name (default: NODE_NAME, then the hostname)")
    parser.add_argument("--label", action="append", default=[], metavar="K=V", help="label of this node (repeatable)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="worker threads (default AUTOPILOT_WORKER_CONCURRENCY)"
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="do not take beat's ticks or iperf ring coordinators from autopilot.control",
    )
    parser.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="host N simulated GPU nodes sim-0..sim-<N-1>"
    )
    parser.add_argument("--simulate-offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fault", action="append", default=[], metavar="NODE:CHECK[:KIND]", help="simulated fault")
    parser.add_argument(
        "--sim-noise", type=float, default=0.0, metavar="SCALE", help="bandwidth spread of simulated nodes (0: none)"
    )
    # Network faults of simulated nodes hosted by other processes (`autopilot up` passes them).
    parser.add_argument("--link-fault", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument(
        "--without-task-events",
        action="store_true",
        help="send no task events (Flower then shows this worker but not its tasks); `autopilot up` uses it for "
        "simulators, whose thousands of nodes would flood Flower",
    )
    parser.add_argument("--loglevel", default="INFO", help="log level (default INFO)")
    args = parser.parse_args(list(argv))
    args.loglevel = config.log_level(args.loglevel, "--loglevel")
    # The range of AUTOPILOT_WORKER_CONCURRENCY: 0 fell back to the setting unsaid, below it Celery's pool crashed.
    if args.concurrency is not None and not 1 <= args.concurrency <= 64:
        raise errors.BadParameter("--concurrency", f"must be between 1 and 64, got {args.concurrency}")

    settings = _settings()
    if settings.liveness_file:
        # A container the kubelet restarted finds its predecessor's file in the pod's volume, stale (a wedged pool's
        # is older than AUTOPILOT_LIVENESS_MAX_AGE): starting is progress, so the new process has that long to start
        # its consumer (NVML's first calls can take tens of seconds) rather than the kubelet's next few probes.
        liveness.touch(settings.liveness_file)
    checks = load_checks()
    labels = parse_labels(args.label)
    store = make_store(settings)
    contexts: dict[str, CheckContext]
    if args.simulate:
        from workers import simulate

        contexts = simulate.contexts(
            settings,
            args.simulate,
            args.fault,
            offset=args.simulate_offset,
            live_nodes=lambda: store.node_names(heard_within=settings.live_after_s),
            link_faults=args.link_fault,
            noise=args.sim_noise,
            checks=checks,
        )
    else:
        node = names.node_name(args.node or settings.node_name, field="--node")
        settings = dataclasses.replace(settings, node_name=node)
        cluster = cluster_mod.from_settings(settings)
        contexts = {node: dataclasses.replace(CheckContext.default(settings, checks), cluster=cluster)}
    host = hosting.NodeHost(settings, store, contexts)
    hosting.install(host)
    _resume_invasive(host)
    from workers import follower
    from workers import simulate as simulator

    xid_faults = simulator.xid_faults(args.fault) if args.simulate else []
    following = follower.start(
        store, settings, contexts, simulated=bool(args.simulate), xid_faults=xid_faults, checks=checks
    )

    if args.simulate:
        # Simulated nodes share one machine's CPU and the same fake GPUs: read the facts once.
        first_ctx = next(iter(contexts.values()))
        shared = nodeinfo.collect(first_ctx.commands, first_ctx.gpus)
        # ...but each has its own address on the simulated network, where ping and iperf find it.
        facts = {n: dataclasses.replace(shared, addresses=simulate.addresses(n)) for n in contexts}
    else:
        facts = {
            n: nodeinfo.collect(c.commands, c.gpus, annotations_path=settings.podinfo_annotations)
            for n, c in contexts.items()
        }

    def records() -> list[NodeRecord]:
        return node_records(facts, labels, simulated=bool(args.simulate))

    stop = threading.Event()
    threading.Thread(
        target=heartbeat_loop, args=(store, records, settings.heartbeat_interval_s, stop), daemon=True, name="heartbeat"
    ).start()
    queues = [names.node_queue(n) for n in contexts]
    if not args.no_control:
        queues.append(CONTROL_QUEUE)
    app = create_celery(settings, checks)
    threads = settings.worker_concurrency if args.concurrency is None else args.concurrency
    liveness.install_worker(app, settings, threads)
    if args.simulate:
        # Hundreds of queues in one process: the simulator's transport (simulator-only code that
        # overrides private parts of kombu, tied to the kombu release its contract test checks). It is
        # imported here only, so a real worker never loads it and keeps kombu's transport as released.
        from workers import simbroker

        transport = simbroker.transport_for(str(app.conf.broker_url or ""))
        if transport is not None:
            app.conf.broker_transport = transport
        app.conf.broker_transport_options = simbroker.transport_options(dict(app.conf.broker_transport_options or {}))
    first = next(iter(contexts))
    nodename = f"{first}@autopilot" if len(contexts) == 1 else f"sim-{args.simulate_offset}-{len(contexts)}@autopilot"

    # The worker is built directly rather than through Celery's command line, which imports
    # every installed `celery` CLI plugin (Flower with Tornado, the REPL with prompt_toolkit):
    # about 400 modules a worker never uses, and most of its idle memory beyond the 60 MiB target.
    def build() -> WorkController:
        return app.Worker(
            hostname=nodename,
            queues=queues,
            pool_cls=concurrency.get_implementation("threads"),
            concurrency=threads,
            loglevel=args.loglevel,
            without_gossip=True,
            without_mingle=True,
            task_events=False if args.without_task_events else None,
            # A simulator's banner would list every one of its (up to thousands of) queues.
            quiet=bool(args.simulate),
        )

    try:
        exitcode = run_until_shutdown(build)
    finally:
        stop.set()
        if following is not None:
            following.stop()
    return exitcode


def run_until_shutdown(build: Callable[[], WorkController], *, pause_s: float = RESTART_PAUSE_S) -> int:
    """Run Celery workers until a shutdown is asked for (a signal), starting a new one after a crash.

    A Redis outage while a task is in flight can end Celery's consumer for good: kombu restores
    the unacknowledged message over the connection that just died, and Celery logs
    "Unrecoverable error" and stops. A node must not sit there heartbeating while it takes no
    work, so a worker that stops without being asked to is built and started again.
    """
    requested = threading.Event()

    def on_shutdown(**_: object) -> None:
        requested.set()

    celery_signals.worker_shutting_down.connect(on_shutdown, weak=False)
    try:
        while True:
            worker = build()
            worker.start()
            if requested.is_set():
                return int(worker.exitcode or 0)
            log.error(
                "the Celery worker stopped without a shutdown request (exit %s): starting it again in %g s",
                worker.exitcode,
                pause_s,
            )
            # A stopped worker leaves process-wide flags that would stop the next one at once.
            worker_state.should_stop = None
            worker_state.should_terminate = None
            time.sleep(pause_s)
    finally:
        celery_signals.worker_shutting_down.disconnect(on_shutdown)


def beat_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="autopilot beat", description="Run celery beat (one replica).")
    parser.add_argument(
        "--schedule-file",
        default=os.path.join(tempfile.gettempdir(), f"autopilot-beat-{os.getuid()}"),
        help="where beat keeps when each entry last ran (default: %(default)s)",
    )
    parser.add_argument("--loglevel", default="INFO", help="log level (default INFO)")
    args = parser.parse_args(list(argv))
    args.loglevel = config.log_level(args.loglevel, "--loglevel")
    settings = _settings()
    app = create_celery(settings, load_checks())
    liveness.install_beat(app, settings)
    app.start(["beat", "--schedule", args.schedule_file, "--loglevel", args.loglevel])
    return 0


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_FLOWER_AUTH = ("--basic-auth", "--basic_auth", "--auth", "--auth_provider", "--auth-provider")


def flower_args(
    settings: config.Settings, argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Flower's arguments and extra environment: never reachable beyond loopback without a login.

    AUTOPILOT_FLOWER_BASIC_AUTH becomes Flower's own ``FLOWER_BASIC_AUTH`` (its environment, not
    its argv, so the password is not in the process list); an ``--auth``/``--auth_provider``
    argument (OAuth or an auth proxy) or FLOWER_BASIC_AUTH/FLOWER_AUTH also count. Without any,
    Flower binds 127.0.0.1 and an ``--address`` elsewhere is refused.
    """
    args = list(argv)
    extra: dict[str, str] = {}
    if settings.flower_basic_auth:
        extra["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    authenticated = bool(extra) or any(environ.get(k) for k in ("FLOWER_BASIC_AUTH", "FLOWER_AUTH"))
    authenticated = authenticated or any(a.split("=", 1)[0] in _FLOWER_AUTH for a in args)
    addresses = [config.bind_address(a.split("=", 1)[1], "--address") for a in args if a.startswith("--address=")]
    if "--address" in args or "--port" in args:
        raise errors.ConfigError("give Flower's address and port as --address=HOST and --port=PORT")
    for arg in args:
        if arg.startswith("--port="):  # Flower took -5 (a traceback) and 99999 (a port it never bound)
            parsing.parse_port(arg.split("=", 1)[1], field="--port")
    if not authenticated:
        if any(a not in _LOOPBACK for a in addresses):
            raise errors.ConfigError(
                "Flower has no login: set AUTOPILOT_FLOWER_BASIC_AUTH=user:password (or pass --auth/--auth_provider) "
                "before binding it beyond 127.0.0.1"
            )
        if not addresses:
            args.append("--address=127.0.0.1")  # Flower's own default is every interface
    return args, extra


FLOWER_HELP = """usage: autopilot flower [--port=PORT] [--address=HOST] [FLOWER OPTION=VALUE ...]

Run Flower against the broker of AUTOPILOT_REDIS_URL. Options go to Flower, each as --name=value.
Without a login (AUTOPILOT_FLOWER_BASIC_AUTH=user:password, or --auth/--auth_provider) Flower binds
127.0.0.1 and an --address beyond loopback is refused."""


def flower_main(argv: Sequence[str]) -> int:
    """Flower against the same broker; extra arguments go to Flower (e.g. ``--port=5555``)."""
    if any(a in ("-h", "--help") for a in argv):
        print(FLOWER_HELP, flush=True)
        if not config.Settings.from_env(os.environ).redis_url:
            return 0  # answered without a broker, as every other --help; with one, Flower's own options follow
    settings = _settings()
    args, extra = flower_args(settings, argv, os.environ)
    os.environ.update(extra)
    app = create_celery(settings)
    app.start(["flower", *args])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main(sys.argv[1:]))
