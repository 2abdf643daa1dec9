"""The HTTP routes: thin handlers that validate, select, call ``workers.runs`` and render.

Upstream-compatible: ``/status`` and the per-check paths (``/pciebw``, ``/remapped``, ``/gpumem``,
``/dcgm``, ``/gpupower``, ``/ping``, ``/iperf``, ``/pvc``; each is ``/status?check=<it>``; unlike
upstream, ``/gpumem`` runs gpumem). Structured: ``/api/v1/runs``, ``/api/v1/nodes``,
``/api/v1/checks``, ``/api/v1/gpus/<uuid>``, ``/api/v1/baselines``. Operations: ``/openapi.json``, ``/healthz``,
``/readyz``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.exceptions import ClientDisconnected

from api import inputs, limits, openapi, selection, text
from api.errors import ApiError, json_error
from api.services import services
from autopilot import baseline, config, errors, gpuverdict, names
from autopilot.store import NodeState
from workers import reconcile, runs

log = logging.getLogger(__name__)

bp = Blueprint("autopilot", __name__)

CHECK_PATHS = ("pciebw", "remapped", "gpumem", "dcgm", "gpupower", "ping", "iperf", "pvc")
HISTORY_LIMIT = (1, 1000)
HISTORY_DEFAULT = 20
MAX_WAIT_S = 300.0


def _only(*allowed: str) -> None:
    """Reject query parameters a path does not take: a typo should not be silently ignored."""
    for name in request.args:
        if name not in allowed:
            raise errors.BadParameter(name[:64], f"unknown query parameter (allowed: {', '.join(allowed) or 'none'})")


# ------------------------------------------------------------------ upstream-compatible


def _status(fixed_check: str | None) -> Response:
    svc = services()
    if fixed_check is not None and fixed_check not in svc.checks:
        return json_error(404, "not_found", f"check {fixed_check!r} is not available in this build")
    req, fmt = inputs.from_query(request.args, svc.checks, svc.settings, fixed_check=fixed_check)
    with limits.waits().slot():
        chosen = selection.select(svc, req)
        report = runs.gather(svc, req, chosen)
    if fmt == "json":
        return jsonify(report)
    return Response(text.render(report, svc.checks), mimetype="text/plain")


@bp.get("/status")
def status() -> Response:
    return _status(None)


def _check_view(name: str) -> Callable[[], Response]:
    def view() -> Response:
        return _status(name)

    view.__name__ = f"status_{name}"
    return view


for _name in CHECK_PATHS:
    bp.add_url_rule(f"/{_name}", endpoint=f"status_{_name}", view_func=_check_view(_name), methods=["GET"])


# ------------------------------------------------------------------ runs


@bp.post("/api/v1/runs")
def create_run() -> tuple[Response, int, dict[str, str]]:
    _only()
    svc = services()
    req = inputs.from_json(_json_body(), svc.checks, svc.settings)
    chosen = selection.select(svc, req)
    run = runs.start(svc, req, chosen)
    location = url_for("autopilot.get_run", run_id=run.id)
    answer = {
        "id": run.id,
        "status_url": location,
        "checks": list(run.checks),
        "nodes": list(run.nodes),
        "unknown": list(chosen.unknown),
        "deadline": runs.iso_time(run.deadline),
        "deadline_s": round(run.deadline - run.created_at, 3),
    }
    return jsonify(answer), 202, {"Location": location}


def _json_body() -> Any:
    """The request's JSON body (``{}`` when empty). Parsed by orjson, which stops at 1,024 levels
    without recursing in Python (the standard library's parser raised RecursionError, a 500, on a
    body nested 100,000 deep); then held to ``limits.MAX_JSON_DEPTH``."""
    try:
        raw = request.get_data(cache=True)
    except (OSError, ClientDisconnected):  # the client stopped sending: api.main's client timeout, or a reset
        raise ApiError(408, "timeout", "the request body did not arrive in time", field="body") from None
    limits.body_limit(services().settings.api_max_body, len(raw))
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.BadParameter("body", "not valid JSON") from None
    if limits.json_depth(body) > limits.MAX_JSON_DEPTH:
        raise errors.BadParameter("body", f"JSON nested deeper than {limits.MAX_JSON_DEPTH} levels")
    return body


@bp.get("/api/v1/runs/<run_id>")
def get_run(run_id: str) -> Response:
    _only("wait")
    svc = services()
    inputs.run_id(run_id)
    wait = request.args.get("wait", "")  # not stripped: " 1" is not a canonical duration
    wait_s = inputs.parse_seconds(wait, field="wait", lo=0, hi=MAX_WAIT_S) if wait.strip() else 0.0
    if wait_s > 0:
        with limits.waits().slot():
            report = runs.read(svc, run_id, wait_s=wait_s)
    else:
        report = runs.read(svc, run_id)
    if report is None:
        raise ApiError(404, "not_found", f"no run {run_id} (unknown or expired)", field="id")
    return jsonify(report)


# ------------------------------------------------------------------ nodes


def _verdict(state: NodeState, record: Any, now: float, settings: config.Settings) -> dict[str, Any]:
    """``verdict`` and ``reasons`` as ``reconcile.shown`` says (a lost node is UNKNOWN, "no heartbeat since")."""
    shown, reasons = reconcile.shown(state.verdict, state.reason_list, _seen(record), now, settings, state.heard_ahead)
    return {"verdict": shown or "UNKNOWN", "reasons": reasons}


def _gpus(state: NodeState, record: Any, now: float, settings: config.Settings) -> list[dict[str, Any]]:
    """``gpus`` of a node view, as ``reconcile.shown_gpus`` says (a lost node's GPUs are UNKNOWN)."""
    shown = reconcile.shown_gpus(state.gpus, _seen(record), now, settings, state.heard_ahead)
    return [g.to_dict() for g in shown]


def _seen(record: Any) -> float | None:
    """The node's last heartbeat on the store's clock (None: no record, or one that never said)."""
    return (record.shared_seen if record.last_seen else None) if record is not None else None


def _live(record: Any, state: NodeState, now: float, settings: config.Settings) -> bool:
    """``live``: not lost by the reconcile's rule (``reconcile.is_live``), at ``now`` on the store's clock."""
    return reconcile.is_live(_seen(record), state.heard_ahead, now, settings)


def _node_entry(record: Any, state: NodeState, now: float, settings: config.Settings) -> dict[str, Any]:
    return {
        **record.to_dict(),
        **_verdict(state, record, now, settings),
        "live": _live(record, state, now, settings),
        # On the store's clock, as "no heartbeat since" and live are: the record keeps the worker's own stamp.
        "last_seen_at": runs.iso_time(record.shared_seen) if record.last_seen else None,
    }


def _eviction(state: NodeState) -> dict[str, Any]:
    """The node view's ``eviction`` (while one holds: since when, and its causes) and ``cleared`` (the last clear:
    by whom, when, and what it cleared)."""
    evicted = None
    if state.evicted_at:
        causes = [c.to_dict() for c in state.causes]
        evicted = {"since": state.evicted_at, "causes": causes}
    cleared = None
    if state.cleared_by:
        cleared = {"by": state.cleared_by, "at": state.cleared_at, "cause": state.cleared_cause}
    return {"eviction": evicted, "cleared": cleared}


@bp.get("/api/v1/nodes")
def list_nodes() -> Response:
    _only("gpus")
    svc = services()
    with_gpus = inputs.gpus_flag(request.args.get("gpus", ""))
    now = svc.store.server_time()  # the reconciles' clock: what they call lost, this calls not live
    records = svc.store.nodes()
    states = svc.store.states([r.name for r in records]) if records else {}
    items = [_node_entry(r, states.get(r.name, NodeState()), now, svc.settings) for r in records]
    if with_gpus:
        for record, item in zip(records, items, strict=True):
            item["gpus"] = _gpus(states.get(record.name, NodeState()), record, now, svc.settings)
    live = sum(1 for i in items if i["live"])
    # The clock the answer was judged on, so a reader's ages (``autopilot nodes``) are not its own host's.
    return jsonify({"nodes": items, "total": len(items), "live": live, "now": now})


@bp.get("/api/v1/nodes/<name>")
def get_node(name: str) -> Response:
    _only("limit")
    svc = services()
    names.node_name(name, field="name")
    limit_raw = request.args.get("limit", "")  # not stripped: " 5" is not a canonical integer
    limit = (
        inputs.parse_int(limit_raw, field="limit", lo=HISTORY_LIMIT[0], hi=HISTORY_LIMIT[1])
        if limit_raw.strip()
        else HISTORY_DEFAULT
    )
    detail = svc.store.node_detail(name, limit)  # one round trip for everything below
    if not detail.known:
        raise ApiError(404, "not_found", f"no node {name}", field="name")
    record, state, labels = detail.record, detail.state, detail.labels
    if svc.cluster is not None:
        try:
            labels = dict(svc.cluster.get_node(name).labels)
        except errors.ClusterError as exc:
            log.info("labels of %s from the local store: cluster said %s", name, exc)
    now = detail.now if detail.now is not None else svc.store.server_time()
    return jsonify(
        {
            "name": name,
            "record": record.to_dict() if record else None,
            "live": _live(record, state, now, svc.settings),
            "last_seen_at": runs.iso_time(record.shared_seen) if record and record.last_seen else None,
            **_verdict(state, record, now, svc.settings),
            **_eviction(state),
            "state": {k: v for k, v in state.to_fields().items() if k not in ("reasons", "gpus")},
            "gpus": _gpus(state, record, now, svc.settings),
            "labels": labels,
            "latest": {check: r.to_dict() for check, r in sorted(detail.latest.items())},
            "history": [r.to_dict() for r in detail.history],
        }
    )


@bp.post("/api/v1/nodes/<name>/clear")
def clear_node(name: str) -> Response:
    _only()
    svc = services()
    names.node_name(name, field="name")
    if svc.store.node(name) is None and not svc.store.latest(name) and svc.store.state(name).empty:
        raise ApiError(404, "not_found", f"no node {name}", field="name")
    decision = reconcile.clear_evict(
        svc.store, name, svc.settings, by=f"api:{request.remote_addr or '?'}", cluster=svc.cluster, checks=svc.checks
    )
    # WARNING, the processes' default level: an operator lifting a safety verdict is the audit line
    # docs/OPERATIONS.md promises, and at INFO no default setting ever printed it.
    log.warning("eviction of %s cleared by %s: now %s", name, request.remote_addr, decision.verdict.value)
    return jsonify({"name": name, "verdict": decision.verdict.value, "reasons": list(decision.reasons)})


@bp.get("/api/v1/gpus/<uuid>")
def get_gpu(uuid: str) -> Response:
    """One GPU's history, wherever it ran: incidents under its UUID (and its board serial's)."""
    _only()
    svc = services()
    # Retention judged on the store's clock (read with the GPU's history), each incident on the clock of the node that
    # stamped it, as its reconcile judges it: not on this host's clock, which may be minutes off the workers'.
    found = svc.store.gpu_history().gpu(inputs.gpu_uuid(uuid), retention_s=svc.settings.gpu_history_retention_s)
    if found is None:
        raise ApiError(404, "not_found", f"no history for GPU {uuid}", field="uuid")
    current = gpuverdict.loads(svc.store.state(found["node"]).gpus).get(uuid) if found["node"] else None
    found["verdict"] = current.to_dict() if current is not None else None
    return jsonify(found)


@bp.get("/api/v1/baselines")
def list_baselines() -> Response:
    _only()
    svc = services()
    found = svc.store.fleet(svc.settings).all()
    policy = dataclasses.asdict(baseline.policy_of(svc.settings))
    return jsonify({"baselines": found, "settings": policy})


# ------------------------------------------------------------------ catalogue and operations


@bp.get("/api/v1/checks")
def list_checks() -> Response:
    _only()
    svc = services()
    return jsonify(
        {
            "checks": [spec.describe() for spec in svc.checks],
            "default": [c for c in svc.settings.periodic_checks if c in svc.checks],
        }
    )


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return jsonify(openapi.document(services().checks))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    started = time.monotonic()
    try:
        ok = services().store.ping()
    except Exception as exc:  # any failure to reach Redis means "not ready", never a 500
        return json_error(503, "unavailable", f"results store unreachable: {type(exc).__name__}")
    if not ok:
        return json_error(503, "unavailable", "results store did not answer PING")
    return jsonify({"status": "ready", "store_ms": round((time.monotonic() - started) * 1000, 1)})
