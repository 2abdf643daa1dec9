"""Flower against the same broker shows each node's worker (issue 3, item 5)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.integration.conftest import Procs, free_port, runtime_env, wait_until

pytestmark = pytest.mark.integration


def test_flower_lists_the_per_node_workers(redis_url: str, procs: Procs) -> None:
    for node in ("node-a", "node-b"):
        procs.worker(node, redis_url)
    port = free_port()
    env = runtime_env(redis_url, {"FLOWER_UNAUTHENTICATED_API": "true"})
    procs.start("flower", ["flower", f"--port={port}", "--address=127.0.0.1"], env)

    def workers() -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers?refresh=1", timeout=5) as resp:
                found: dict[str, object] = json.load(resp)
        except OSError:
            return None
        return found if {"node-a@autopilot", "node-b@autopilot"} <= set(found) else None

    found = wait_until(workers, 60, "Flower to list node-a and node-b")
    info = found["node-a@autopilot"]
    assert isinstance(info, dict) and "autopilot.run_checks" in info["registered"]
