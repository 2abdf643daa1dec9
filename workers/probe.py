"""``autopilot probe``: the worker's and beat's liveness probe, from the age of their heartbeat file.

Exit 0 when the file (``AUTOPILOT_LIVENESS_FILE``, written by ``workers.liveness``; a worker stops writing it
while every thread of its pool is wedged in a task) was touched within
``--max-age`` (``AUTOPILOT_LIVENESS_MAX_AGE``); 1 when it is older or missing, or cannot be read; 2 for a
usage or setting error. A stale file is excused (exit 0) while the broker does not answer either: a
consumer waits for its broker to come back, and restarting every worker of the fleet during a Redis
outage would help nothing. The broker is asked only then, so a fresh file costs one ``stat``; this
module imports neither Celery nor redis until it must (``python -m workers.probe`` in the chart).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autopilot import config, errors, parsing

BROKER_TIMEOUT_S = 3.0


def verdict(path: str, max_age_s: float, broker_away: Callable[[], bool], *, now: float) -> tuple[int, str]:
    """(exit code, one line saying why) for the heartbeat file ``path`` at ``now``."""
    try:
        age: float | None = now - os.stat(path).st_mtime
    except FileNotFoundError:
        age = None
    except OSError as exc:
        return 1, f"cannot read the heartbeat file {path}: {exc}"
    # The mark and ``now`` are wall-clock times. After the clock went back, a live process marks again within its
    # interval; a mark still more than ``max_age_s`` ahead is a stopped one's, which must not pass until the clock
    # catches up with it (a jump forward costs a live process one failed probe at most, for the same reason).
    if age is not None and -max_age_s <= age <= max_age_s:
        return 0, f"live: heartbeat {max(age, 0.0):.0f} s old"
    if age is None:
        said = f"no heartbeat file {path}"
    elif age < 0:
        said = f"heartbeat {-age:.0f} s in the future (the clock went back; more than {max_age_s:g} s)"
    else:
        said = f"heartbeat {age:.0f} s old (more than {max_age_s:g} s)"
    if broker_away():
        return 0, f"{said}, but the broker does not answer either: waiting for it, not restarting"
    return 1, (
        f"{said} while the broker answers: the process's loop stopped making progress, or a worker's every pool "
        "thread is stuck in a task (wedged: its log and its node record's wedged_since say which)"
    )


def broker_away(environ: Mapping[str, str], timeout_s: float = BROKER_TIMEOUT_S) -> bool:
    """Whether the broker of ``environ``'s settings does not answer a PING within ``timeout_s`` in all (no retries).

    Settings that name no usable broker are no outage (False): nothing excuses a stale file then. The bound is
    on the whole question, not on each socket: a Sentinel client asks each Sentinel in turn, then the master,
    and a name lookup has no timeout at all; the kubelet counts a probe past its ``timeoutSeconds`` as a
    failure, which would restart the fleet during the very outage this excuses.
    """
    import redis
    import redis.sentinel
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from workers import app as celery_app

    fields = ("redis_url", "redis_password", "redis_tls_ca", "redis_sentinel_master", "redis_sentinel_password")
    try:
        settings = config.Settings(**{field: config.Settings.one(environ, field) for field in fields})
    except errors.BadParameter:
        return False
    url = settings.redis_url
    if not url:
        return False
    once: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    client: redis.Redis[bytes]
    try:
        if url.startswith("sentinel://"):
            hosts, db = celery_app.sentinels(url)
            # Each Sentinel and the master within the one bound: a partitioned Sentinel leaves time for the next.
            share = timeout_s / (len(hosts) + 1)
            once = {**once, "socket_timeout": share, "socket_connect_timeout": share}
            watcher = redis.sentinel.Sentinel(
                hosts, sentinel_kwargs={"password": settings.redis_sentinel_password or None, **once}
            )
            client = watcher.master_for(
                settings.redis_sentinel_master, db=db, password=settings.redis_password or None, **once
            )
        else:
            extra = celery_app.tls_options(settings) if url.startswith("rediss://") else {}
            client = redis.Redis.from_url(url, password=settings.redis_password or None, **once, **extra)
    except (ValueError, errors.ConfigError):
        return False  # a URL the worker could not use either: no outage to excuse
    away: list[bool] = []

    def ask() -> None:
        try:
            away.append(not client.ping())
        except (redis.RedisError, OSError):
            away.append(True)
        finally:
            client.close()

    # A daemon thread: a question still open at the bound is left behind when the probe exits. One that
    # ended without an answer (an unexpected error, printed by the thread) excuses nothing, as before.
    asking = threading.Thread(target=ask, name="probe-ping", daemon=True)
    asking.start()
    asking.join(timeout_s)
    return asking.is_alive() or (bool(away) and away[0])


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="autopilot probe",
        description="Liveness of this container's worker or beat: the age of its heartbeat file.",
    )
    parser.add_argument("--file", default=None, help="heartbeat file (default AUTOPILOT_LIVENESS_FILE)")
    parser.add_argument(
        "--max-age", default=None, help="oldest live heartbeat, e.g. 2m (default AUTOPILOT_LIVENESS_MAX_AGE)"
    )
    args = parser.parse_args(list(argv))
    try:
        path = config.liveness_file(args.file, "--file") if args.file else config.Settings.one(env, "liveness_file")
        max_age_s = (
            parsing.parse_duration(args.max_age, field="--max-age")
            if args.max_age
            else config.Settings.one(env, "liveness_max_age_s")
        )
        if max_age_s <= 0:
            raise errors.BadParameter("--max-age", "must be more than 0")
    except errors.BadParameter as exc:
        print(f"autopilot probe: {exc}", file=sys.stderr)
        return 2
    if not path:
        print("autopilot probe: no heartbeat file: set AUTOPILOT_LIVENESS_FILE or --file", file=sys.stderr)
        return 2
    code, said = verdict(path, max_age_s, lambda: broker_away(env), now=time.time())
    print(said, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
