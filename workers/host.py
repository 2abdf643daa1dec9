"""The nodes a worker process hosts: one for a real worker, many for the simulator.

A ``NodeHost`` maps node names to their ``CheckContext`` and keeps one GPU lock per node, so
checks that use the GPUs never overlap on a node while light checks run beside them. The worker
entry point builds it once and installs it with ``install()`` before the Celery worker starts.
Every hosted context without a peer directory gets one over the store's records of real nodes,
so the network checks (``ping``) find the other nodes (simulated nodes bring their own).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

from autopilot import config
from autopilot.context import CheckContext
from workers.peers import StorePeers
from workers.store import ResultsStore


class NodeHost:
    def __init__(self, settings: config.Settings, store: ResultsStore, contexts: Mapping[str, CheckContext]) -> None:
        self.settings = settings
        self.store = store
        directory = StorePeers(store, settings, simulated=False)
        self.contexts = {
            name: ctx if ctx.peers is not None else dataclasses.replace(ctx, peers=directory)
            for name, ctx in contexts.items()
        }
        self._gpu_locks = {name: threading.Lock() for name in self.contexts}
        self.fleet = store.fleet(settings)

    def context(self, node: str) -> CheckContext | None:
        return self.contexts.get(node)

    def gpu_lock(self, node: str) -> threading.Lock:
        return self._gpu_locks[node]


_current: NodeHost | None = None


def install(host: NodeHost | None) -> None:
    global _current
    _current = host


def current() -> NodeHost:
    if _current is None:
        raise RuntimeError("no NodeHost installed: start workers through `autopilot worker`")
    return _current
