"""Node selection: which nodes a request runs on.

The selection is the union of ``host`` (node names), ``nodelabel`` (``key=value``) and ``job``
(``namespace:key=value``: the nodes running that workload's pods), as upstream documents; with
none of them (``host=all``), every node a worker ever registered. A node of that selection that
is lost (by the reconcile's rule, on the store's clock: no heartbeat within ``settings.live_after_s``,
or a heartbeat stamped ahead that has stood still) is in ``lost`` too: it is sent nothing
(nobody would answer) and the answer lists it as ``unreachable``, never leaves it out. A lost node
named explicitly is sent its work all the same (its worker may be restarting); if it does not
answer by its deadline it is ``unreachable`` with "no heartbeat since <time>".

``nodelabel`` and ``job`` resolve through the cluster seam when a cluster is configured. Without
one (``autopilot up``, a single server) there are no Node objects or pods to ask, so both match
the labels the store knows for each node: the labels its worker announced (``autopilot worker
--label k=v``) overlaid with the local label store (``autopilot.ibm.com/gpuhealth`` and friends).
For ``job`` the namespace is then ignored: label the nodes that run the workload instead.
When the Kubernetes API refuses such a lookup (403: the API's ServiceAccount lacks the grant), the request
is answered 502 ``cluster_error`` in the server's words; when it does not answer, 503 ``cluster_unavailable``
with Retry-After. Either names the field, and nothing is sent.

A named node that has no record in the store (no worker ever heartbeated it) cannot answer; it
is reported as ``unknown`` instead of being enqueued into a queue nobody consumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from api.errors import ApiError
from autopilot import errors, names
from workers import reconcile
from workers.runs import RunRequest, Selection, Services

log = logging.getLogger(__name__)

# Retry-After of a 503 when the Kubernetes API did not answer a selection's lookup: the seam has already retried
# for a few seconds, so a client waits a little more before it asks again.
CLUSTER_RETRY_AFTER_S = 5


def select(svc: Services, req: RunRequest) -> Selection:
    """Resolve ``req``'s selection; raises ``ApiError`` (404) naming the field when it is empty."""
    if not req.explicit:
        now, seen = svc.store.seen_and_now()
        if not seen:
            raise ApiError(404, "no_nodes", "no nodes: no worker has registered a node", field="host")
        everyone = tuple(sorted(seen))
        return Selection(everyone, lost=_lost(svc, everyone, seen, now))

    wanted: list[str] = list(req.hosts)
    if req.nodelabel is not None:
        found = _by_label(svc, *req.nodelabel)
        if not found:
            key, value = req.nodelabel
            raise ApiError(404, "no_nodes", f"no node is labeled with {key}={value}", field="nodelabel")
        wanted.extend(found)
    if req.job is not None:
        found = _by_job(svc, *req.job)
        if not found:
            ns, key, value = req.job
            detail = f"no workload labeled with {key}={value} in namespace {ns}"
            if svc.cluster is None:  # no pods to ask: the nodes' own labels were matched (see above)
                detail = f"no node is labeled with {key}={value} (no cluster here: job matches node labels)"
            raise ApiError(404, "no_nodes", detail, field="job")
        wanted.extend(found)
    ordered = list(dict.fromkeys(wanted))
    known = {record.name for record in svc.store.nodes(ordered)}
    selection = Selection(tuple(n for n in ordered if n in known), tuple(n for n in ordered if n not in known))
    if not selection.nodes:
        field = "host" if req.hosts else ("nodelabel" if req.nodelabel else "job")
        raise ApiError(
            404,
            "no_nodes",
            f"no worker has registered node(s): {', '.join(selection.unknown[:20])}",
            field=field,
            unknown=list(selection.unknown),
        )
    return selection


def _lost(svc: Services, nodes: tuple[str, ...], seen: dict[str, float], now: float) -> tuple[str, ...]:
    """The nodes lost at ``now`` (the store's clock, on which the heartbeats are scored) by the reconcile's rule
    (``reconcile.lost_at``): not heard from within ``settings.live_after_s``, or heard with a stamp that ran ahead
    and has stood still since (its ``heard_ahead`` mark). Only a stamp ahead by more than ``live_after_s`` can have
    a mark that matters, so only those nodes' marks are read, in one pipeline: none in a fleet whose clocks agree.
    A record without a heartbeat counts as heard."""
    live_after = svc.settings.live_after_s
    marks = svc.store.heard_ahead([n for n in nodes if n in seen and seen[n] - now > live_after])
    moment = datetime.fromtimestamp(now, UTC)
    return tuple(
        n for n in nodes if n in seen and reconcile.lost_at(seen[n], marks.get(n), moment, svc.settings) is not None
    )


def _valid(found: list[str], source: str) -> list[str]:
    # Names from the cluster are about to become queue names: hold them to the same rule as
    # names from a request, and drop (with a log line) anything that is not a node name.
    out: list[str] = []
    for name in found:
        try:
            out.append(names.node_name(name))
        except errors.BadParameter:
            log.warning("%s returned an invalid node name %r; ignored", source, name[:80])
    return out


def _store_labels(svc: Services) -> dict[str, dict[str, str]]:
    records = svc.store.nodes()
    return {r.name: {**r.labels, **svc.store.labels(r.name)} for r in records}


def _by_label(svc: Services, key: str, value: str) -> list[str]:
    if svc.cluster is not None:
        cluster = svc.cluster
        found = _asking("nodelabel", lambda: [n.name for n in cluster.list_nodes(f"{key}={value}")])
        return _valid(found, "cluster.list_nodes")
    return sorted(n for n, labels in _store_labels(svc).items() if labels.get(key) == value)


def _by_job(svc: Services, namespace: str, key: str, value: str) -> list[str]:
    if svc.cluster is not None:
        cluster = svc.cluster
        found = _asking("job", lambda: list(cluster.nodes_running(namespace, f"{key}={value}")))
        return _valid(found, "cluster.nodes_running")
    return sorted(n for n, labels in _store_labels(svc).items() if labels.get(key) == value)


def _asking(field: str, lookup: Callable[[], list[str]]) -> list[str]:
    """``lookup`` (a question to the Kubernetes API), its failure answered as one, naming ``field``: 503 with
    Retry-After while the API server does not answer (after the seam's retries), 502 with the server's own words
    when it refuses (a 403: the API's ServiceAccount may not list nodes or pods)."""
    try:
        return lookup()
    except errors.Transient as exc:
        raise ApiError(
            503, "cluster_unavailable", f"the Kubernetes API did not answer: {exc}", field=field,
            retry_after_s=CLUSTER_RETRY_AFTER_S,
        ) from exc  # fmt: skip
    except errors.ClusterError as exc:
        raise ApiError(502, "cluster_error", f"the Kubernetes API refused: {exc}", field=field) from exc
