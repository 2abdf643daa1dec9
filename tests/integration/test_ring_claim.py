"""The iperf ring's one-at-a-time claim outlives no coordinator: a real process, a real redis-server.

A coordinator process takes the ring's lease and waits on workers that never answer (renewing
the lease while it lives); it is killed with SIGKILL mid-ring, so nothing of its own releases
the lease. The next ring is refused while the lease lasts and can start within the lease's
expiry, not after the dead ring's whole bound (minutes for a large ring).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from autopilot.testing import wait_until
from tests.conftest import ROOT
from tests.integration.conftest import kill_group, stop_process
from workers import ring
from workers.store import P, ResultsStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TTL_S = 2.0
LEASE = f"{P}lease:{ring.CLAIM}"

# The coordinator, as a worker runs it for the control queue's autopilot.iperf_ring task, over
# two nodes whose workers never answer: it waits for their servers (15 s), renewing its lease.
COORDINATOR = """
import sys, time
import redis
from autopilot import config
from workers import ring
from workers.store import NodeRecord, ResultsStore

ring.CLAIM_TTL_S = float(sys.argv[2])
store = ResultsStore(redis.Redis.from_url(sys.argv[1]))
now = time.time()
store.heartbeat_many(
    NodeRecord(n, {"data0": [a]}, last_seen=now) for n, a in (("node-a", "192.0.2.1"), ("node-b", "192.0.2.2"))
)


class NobodyAnswers:
    def send_task(self, *args, **kwargs):
        pass

    def send_control(self, *args, **kwargs):
        pass


ring.run_ring(store, NobodyAnswers(), config.Settings(node_name="coordinator"), "dying-run", ["node-a", "node-b"], {})
"""


def test_a_killed_coordinator_frees_the_ring_within_the_leases_expiry(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = ResultsStore(client)
    proc = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, redis_url, str(TTL_S)], cwd=ROOT, start_new_session=True
    )
    try:
        wait_until(lambda: client.get(LEASE) == b"dying-run", 30, "the coordinator to take the ring's lease")
        # Alive, it renews its lease: held past twice the lease's own expiry, never lapsing. (Not a
        # comparison of PTTL readings: a renewal resets it to the TTL, and a poll would have to land
        # within the milliseconds after one to see it above the first reading.)
        held_until = time.monotonic() + 2 * TTL_S
        while time.monotonic() < held_until:
            assert client.get(LEASE) == b"dying-run", "the coordinator's lease lapsed while it lived"
            time.sleep(0.05)
        assert not store.lease(ring.CLAIM, "next-run", TTL_S)  # one ring at a time
        kill_group(proc)  # SIGKILL mid-ring: no finally of the coordinator runs
        proc.wait(10)
        assert client.get(LEASE) == b"dying-run"  # nothing released it
        wait_until(lambda: store.lease(ring.CLAIM, "next-run", TTL_S), TTL_S + 1, "the next ring to get the lease")
    finally:
        stop_process(proc)
