"""The results store's behaviour, the same for every ``autopilot.store.Store``: Redis (over fakeredis)
and in memory; and the Redis store's boundary, where its client's errors become ``StoreUnavailable``."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from autopilot import errors
from autopilot.store import NodeState
from workers.store import ResultsStore


def _dead_client() -> redis.Redis:
    # Port 1 on loopback: refused at once, no retry (nothing listens there).
    return redis.Redis(port=1, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.state("n1"),
        lambda s: s.set_state("n1", {"verdict": "PASS"}),
        lambda s: s.node_names(),
        lambda s: s.claim_tick("reconcile", 100.0, 60.0),
        lambda s: s.run_news("r1", 0),
    ],
)
def test_an_unreachable_redis_is_store_unavailable_never_a_redis_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.StoreUnavailable) as caught:
        call(ResultsStore(_dead_client()))
    assert isinstance(caught.value, errors.AutopilotError)
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


def test_a_state_field_that_does_not_exist_is_refused_before_any_write() -> None:
    import fakeredis

    store = ResultsStore(fakeredis.FakeRedis())
    with pytest.raises(ValueError, match="verdikt"):
        store.set_state("n1", {"verdikt": "PASS"})
    assert store.state("n1") == NodeState()
