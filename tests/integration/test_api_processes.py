"""The API under gunicorn with several worker processes: request metrics summed across them.

``autopilot api --workers 3``: requests and scrapes go over fresh connections, so gunicorn hands
them to whichever process accepts first. Every scrape must show every request answered so far,
whichever process serves it: the counter never goes backwards between scrapes.
"""

from __future__ import annotations

import concurrent.futures
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Procs, runtime_env, wait_until
from workers import up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKERS = 3
ENDPOINT = "/api/v1/checks"
CLIENTS = 12


@pytest.fixture
def api(redis_url: str, procs: Procs) -> Iterator[str]:
    port = up.free_port()
    procs.start("api", ["api", "--port", str(port), "--workers", str(WORKERS)], runtime_env(redis_url))
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: up.api_ready(base), 60, "the API")
    yield base


def get(url: str) -> tuple[int, str]:
    """(status, body) over a connection of its own."""
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our own loopback API
        return resp.status, resp.read().decode()


def requests_counted(base: str) -> float:
    _, text = get(f"{base}/metrics")
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "autopilot_api_requests_total" and s.labels["endpoint"] == ENDPOINT:
                if s.labels["code"] == "200":
                    return s.value
    return 0.0


def test_request_counters_are_summed_over_every_api_process(api: str) -> None:
    sent = 0
    seen: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(5):
            # Many at once, so that every process accepts some (an idle process wins the accept).
            codes = list(pool.map(lambda _: get(f"{api}{ENDPOINT}")[0], range(4 * CLIENTS)))
            assert codes == [200] * len(codes)
            sent += len(codes)
            # Scrapes at once too, through whichever processes take them.
            seen_now = list(pool.map(lambda _: requests_counted(api), range(CLIENTS)))
            assert seen_now == [sent] * CLIENTS, seen_now
            seen += seen_now
    assert seen == sorted(seen)
