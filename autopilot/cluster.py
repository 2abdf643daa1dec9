"""The cluster seam: what Autopilot reads from and writes to Kubernetes, behind a Protocol.

Only this module imports ``kubernetes``. The in-memory ``FakeCluster`` in ``autopilot.testing``
implements the same Protocol; the real client translates ``ApiException`` by status code into
``NotFound``, ``Conflict`` and ``Transient``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    allocatable_gpus: int = 0


class ClusterClient(Protocol):
    """Nodes, labels and selection. Jobs, PVCs, conditions and events join it with the Kubernetes work."""

    def list_nodes(self, label_selector: str | None = None) -> list[NodeInfo]: ...

    def get_node(self, name: str) -> NodeInfo: ...

    def patch_node_labels(
        self, name: str, labels: Mapping[str, str | None], annotations: Mapping[str, str | None] | None = None
    ) -> None:
        """Set (value) or remove (None) only the given keys; others are left alone."""
        ...

    def nodes_running(self, namespace: str, label_selector: str) -> list[str]:
        """Names of nodes with a running pod in ``namespace`` matching ``label_selector``."""
        ...
