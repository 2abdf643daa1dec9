"""The peers seam: which other nodes exist and on which interface addresses they answer.

Network checks ask it for their targets. Workers implement it over the node records in the
results store (each worker reports its interfaces in its heartbeat); tests use ``StaticPeers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Peer:
    node: str
    interface: str
    address: str


class PeerDirectory(Protocol):
    def peers(self, nodes: Sequence[str] | None = None) -> list[Peer]:
        """Addresses of ``nodes`` (every live node when None), own node included."""
        ...


class StaticPeers:
    """A fixed list of peers (tests and simulations)."""

    def __init__(self, peers: Iterable[Peer]) -> None:
        self._peers = list(peers)

    def peers(self, nodes: Sequence[str] | None = None) -> list[Peer]:
        return [p for p in self._peers if nodes is None or p.node in nodes]


def select_interfaces(peers: Iterable[Peer], wanted: Sequence[str]) -> list[Peer]:
    """Only the peers on interfaces named in ``wanted`` (all when it is empty)."""
    return [p for p in peers if not wanted or p.interface in wanted]
