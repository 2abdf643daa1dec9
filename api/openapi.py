"""The OpenAPI 3.1 description of the API, written by hand.

Check parameters (``r``, iperf's ``workload``...) come from the registry, so the document always
matches the checks this build has; everything else is spelled out here. A test holds every Flask
route to an entry in ``paths``.
"""

from __future__ import annotations

from typing import Any

from autopilot import __version__
from autopilot.registry import CheckRegistry, Param

CHECK_PATHS = ("pciebw", "remapped", "gpumem", "dcgm", "gpupower", "ping", "iperf", "pvc")

_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}


def _q(name: str, description: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _path_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


SELECTION_PARAMS = [
    _q(
        "host",
        "comma-separated node names (DNS-1123; an empty entry is a 400); `all`, blank or absent: every "
        "registered node (a lost one is `unreachable`)",
        {"type": "string"},
    ),
    _q("nodelabel", "node label selector `key=value`", {"type": "string"}),
    _q("job", "workload selector `namespace:key=value`: the nodes running its pods", {"type": "string"}),
    _q("batch", "nodes in flight at once (0: all)", {"type": "integer", "minimum": 0, "maximum": 10000}),
    _q(
        "deadline",
        "per-node deadline in seconds (or 30s, 2m); default AUTOPILOT_NODE_DEADLINE",
        {"type": "string", "examples": ["60", "2m"]},
    ),
    _q("r", "DCGM diagnostic level, passed to dcgm as its `r`", {"type": "integer", "minimum": 1, "maximum": 4}),
    _q(
        "format",
        "`text` (upstream-like, default) or `json` (the run report)",
        {"type": "string", "enum": ["text", "json"]},
    ),
]

STATUS_RESPONSES = {
    "200": {
        "description": "the answer of every selected node (also when checks fail)",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/RunReport"}},
        },
    },
    "400": _error("a bad parameter; `field` names it; nothing was enqueued"),
    "401": _error("missing or wrong bearer token"),
    "404": _error("no node matched the selection, or the check is not in this build"),
    "502": _error("the Kubernetes API refused the `nodelabel` or `job` lookup (e.g. 403: RBAC); `field` names it"),
    "503": _error("Redis (store and broker) unreachable, or the Kubernetes API did not answer a lookup (Retry-After)"),
}


def _param_schema(p: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _TYPES.get(p.kind, "string")}
    if p.minimum is not None:
        schema["minimum"] = p.minimum
    if p.maximum is not None:
        schema["maximum"] = p.maximum
    if p.choices:
        schema["enum"] = list(p.choices)
    if p.default is not None:
        schema["default"] = p.default
    return schema


def _check_params(checks: CheckRegistry, only: str | None = None) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in checks:
        if only is not None and spec.name != only:
            continue
        for p in spec.params:
            if p.name not in out and p.name != "r":
                out[p.name] = _q(p.name, f"{spec.name}: {p.help}", _param_schema(p))
    return list(out.values())


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "examples": ["bad_request", "unauthorized", "not_found", "no_nodes"]},
            "field": {"type": "string", "description": "the parameter at fault"},
            "detail": {"type": "string"},
        },
    },
    "CheckResult": {
        "type": "object",
        "description": "ARCHITECTURE.md 4.1",
        "properties": {
            "check": {"type": "string"},
            "node": {"type": "string"},
            "status": {"type": "string", "enum": ["ok", "warn", "fail", "error", "skipped", "busy"]},
            "fatal": {"type": "boolean"},
            "summary": {"type": "string"},
            "devices": {"type": "array", "items": {"type": "object"}},
            "data": {"type": "object"},
            "params": {"type": "object"},
            "started_at": {
                "type": "string",
                "format": "date-time",
                "description": "as the node's worker stamped it, on its own clock (the node's clock_offset in "
                "/api/v1/nodes puts it on the store's: less the offset); its age is judged that way",
            },
            "duration_s": {"type": "number"},
        },
    },
    "NodeAnswer": {
        "type": "object",
        "properties": {
            "status": {
                "type": "string",
                "enum": ["ok", "skipped", "warn", "fail", "error", "busy", "pending", "unreachable", "unknown"],
                "description": "the worst of its results; skipped: every check was skipped (not ok: nothing looked)",
            },
            "detail": {"type": "string"},
            "verdict": {"type": ["string", "null"], "enum": ["PASS", "WARN", "EVICT", "TESTING", "UNKNOWN", None]},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/CheckResult"}},
        },
    },
    "RunReport": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "checks": {"type": "array", "items": {"type": "string"}},
            "params": {"type": "object"},
            "source": {"type": "string"},
            "created_at": {
                "type": "string",
                "format": "date-time",
                "description": "when the run was made, on the results store's clock (Redis TIME), as beat's and "
                "every API replica's runs are",
            },
            "deadline": {
                "type": "string",
                "format": "date-time",
                "description": "the run's deadline on the store's clock; each node's message says it on that "
                "node's worker's clock (its clock_offset added)",
            },
            "runtime_s": {"type": "number"},
            "complete": {"type": "boolean"},
            "status": {"type": "string", "enum": ["ok", "skipped", "warn", "fail", "error", "busy", "pending"]},
            "totals": {"type": "object", "additionalProperties": {"type": "integer"}},
            "nodes": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/NodeAnswer"}},
            "network": {
                "type": "object",
                "description": "runs with ping or iperf: per check, the pairs counted and the suspects "
                "(a node whose every pair is bad while the others are fine, else the bad pairs); "
                "iperf adds per interface the pair matrix, per-node means and the mean in Gb/s",
                "additionalProperties": {"$ref": "#/components/schemas/NetworkFindings"},
            },
        },
    },
    "NetworkFindings": {
        "type": "object",
        "properties": {
            "pairs": {"type": "integer"},
            "bad_pairs": {"type": "integer"},
            "suspects": {
                "type": "object",
                "properties": {
                    "nodes": {"type": "array", "items": {"type": "string"}},
                    "pairs": {"type": "array", "items": {"type": "object"}},
                    "summary": {"type": "string"},
                },
            },
            "interfaces": {
                "type": "object",
                "description": "iperf only: interface -> {pairs, bad_pairs, mean_gbps, median_gbps, matrix, nodes}",
            },
        },
    },
    "RunRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "checks": {"type": "array", "items": {"type": "string"}, "description": "default: the periodic checks"},
            "hosts": {"type": "array", "items": {"type": "string"}},
            "nodelabel": {"type": "string", "description": "key=value"},
            "job": {"type": "string", "description": "namespace:key=value"},
            "params": {
                "type": "object",
                "additionalProperties": {"type": "object"},
                "description": "{check: {param: value}}",
            },
            "deadline": {"type": "number", "minimum": 1, "maximum": 7200},
            "batch": {"type": "integer", "minimum": 0, "maximum": 10000},
        },
    },
    "RunCreated": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status_url": {"type": "string"},
            "checks": {"type": "array", "items": {"type": "string"}},
            "nodes": {"type": "array", "items": {"type": "string"}},
            "unknown": {"type": "array", "items": {"type": "string"}},
            "deadline": {"type": "string", "format": "date-time", "description": "on the store's clock (Redis TIME)"},
            "deadline_s": {"type": "number", "description": "seconds from creation to the run's deadline"},
        },
    },
    "Baseline": {
        "type": "object",
        "description": "a cohort's robust baseline; median and mad are null below the minimum sample size",
        "properties": {
            "model": {"type": "string"},
            "driver": {"type": "string", "description": "driver major version, e.g. 535"},
            "check": {"type": "string"},
            "metric": {"type": "string", "description": "h2d_gbps, daxpy_gbps, dgemm_tflops, pair_gbps, ..."},
            "count": {"type": "integer", "description": "figures in the window"},
            "median": {"type": ["number", "null"]},
            "mad": {"type": ["number", "null"], "description": "median absolute deviation x 1.4826"},
            "judging": {"type": "boolean", "description": "count reached the minimum: devices are judged"},
        },
    },
    "Node": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "addresses": {"type": "object"},
            "cpu_model": {"type": "string"},
            "gpu_model": {"type": "string"},
            "gpu_count": {"type": "integer"},
            "labels": {"type": "object"},
            "version": {"type": "string"},
            "last_seen": {
                "type": "number",
                "description": "epoch s of the last heartbeat as the worker stamped it, on its own clock",
            },
            "last_seen_at": {
                "type": ["string", "null"],
                "description": "that heartbeat on the results store's clock (clock_offset taken off), UTC: what "
                "live and 'no heartbeat since' judge",
            },
            "simulated": {"type": "boolean"},
            "wedged_since": {
                "type": "number",
                "description": "epoch s since when every thread of the node's worker has held its task past what "
                "that task may take (0: not wedged); last_seen stays there meanwhile. As the worker stamped it, on "
                "its own clock, like last_seen: clock_offset less puts it on the store's",
            },
            "clock_offset": {
                "type": ["number", "null"],
                "description": "the worker's clock minus the results store's (Redis TIME) at its last heartbeat, in "
                "seconds (null: not measured); taken off its stamps when its heartbeat and results are judged",
            },
            "live": {
                "type": "boolean",
                "description": "not lost by the reconcile's rule, on the store's clock: heard within "
                "AUTOPILOT_NODE_LOST_AFTER, and no heartbeat stamped ahead that has stood still",
            },
            "verdict": {"type": "string"},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
    },
}


def document(checks: CheckRegistry) -> dict[str, Any]:
    """The whole document for a build whose checks are ``checks``."""
    name_param = _path_param("name", "node name (DNS-1123 subdomain)", {"type": "string"})
    paths: dict[str, Any] = {
        "/status": {
            "get": {
                "summary": "run checks on the selected nodes and wait for their answers",
                "parameters": [
                    _q(
                        "check",
                        "comma-separated check names (no empty entry); `all`, blank or absent: the periodic checks",
                        {"type": "string"},
                    ),
                    *SELECTION_PARAMS,
                    *_check_params(checks),
                ],
                "responses": STATUS_RESPONSES,
            }
        },
        "/api/v1/runs": {
            "post": {
                "summary": "start a run; answers at once with its id",
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunRequest"}}}
                },
                "responses": {
                    "202": _json("run created and sent", "RunCreated"),
                    "400": _error("a bad field; nothing was enqueued"),
                    "401": _error("missing or wrong bearer token"),
                    "404": _error("no node matched the selection"),
                    "408": _error("the body stopped arriving (`autopilot api --client-timeout`)"),
                    "413": _error("a body over AUTOPILOT_API_MAX_BODY"),
                    "502": _error("the Kubernetes API refused the `nodelabel` or `job` lookup (e.g. 403: RBAC)"),
                    "503": _error(
                        "Redis (store and broker) unreachable, or the Kubernetes API did not answer a lookup "
                        "(Retry-After)"
                    ),
                },
            }
        },
        "/api/v1/runs/{run_id}": {
            "get": {
                "summary": "a run's report",
                "parameters": [
                    _path_param("run_id", "run id: 32 hex digits", {"type": "string", "pattern": "^[0-9a-f]{32}$"}),
                    _q(
                        "wait",
                        "wait up to this many seconds for the run to complete",
                        {"type": "number", "minimum": 0, "maximum": 300},
                    ),
                ],
                "responses": {
                    "200": _json("the report (complete or not)", "RunReport"),
                    "400": _error("malformed id or wait, or an unknown query parameter"),
                    "404": _error("unknown or expired run"),
                    "503": _error("Redis unreachable"),
                },
            }
        },
        "/api/v1/nodes": {
            "get": {
                "summary": "every node that ever heartbeated, with verdict, last seen and liveness "
                "(a lost node is UNKNOWN: no heartbeat since <time>)",
                "parameters": [
                    _q("gpus", "true: add each node's per-GPU verdicts (`gpus`)", {"type": "boolean", "default": False})
                ],
                "responses": {
                    "200": {
                        "description": "nodes",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                                        "total": {"type": "integer"},
                                        "live": {"type": "integer"},
                                        "now": {
                                            "type": "number",
                                            "description": "epoch s on the results store's clock (Redis TIME) "
                                            "when the answer was judged: ages of last_seen_at and wedged_since "
                                            "(less clock_offset) count from it, not from the reader's clock",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "400": _error("gpus not true or false, or an unknown query parameter"),
                    "503": _error("Redis unreachable"),
                },
            }
        },
        "/api/v1/nodes/{name}": {
            "get": {
                "summary": "one node: verdict, reasons, eviction (since, causes) and last clear (by, at, cause), "
                "labels, per-GPU verdicts, latest results, history",
                "parameters": [
                    name_param,
                    _q(
                        "limit",
                        "history entries, newest first",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
                    ),
                ],
                "responses": {
                    "200": {"description": "the node"},
                    "400": _error("bad name or limit, or an unknown query parameter"),
                    "404": _error("unknown node"),
                    "503": _error("Redis unreachable"),
                },
            }
        },
        "/api/v1/gpus/{uuid}": {
            "get": {
                "summary": "one GPU's history: identity, last node, incidents (also under its board serial), verdict",
                "description": "Incidents older than AUTOPILOT_GPU_HISTORY_RETENTION are left out, their age judged "
                "on the store's clock (Redis TIME) on the clock of the node that stamped them (its clock_offset "
                "added), as that node's reconcile judges them; not on the API host's clock. Their 'at' and "
                "'last_seen' are as that node's reconcile stamped them, on its worker's clock.",
                "parameters": [
                    _path_param(
                        "uuid",
                        "the GPU's UUID as NVML writes it",
                        {"type": "string", "pattern": "^GPU-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$"},
                    )
                ],
                "responses": {
                    "200": {"description": "the GPU"},
                    "400": _error("not a GPU UUID, or an unknown query parameter"),
                    "404": _error("no history for that GPU"),
                    "503": _error("Redis unreachable"),
                },
            }
        },
        "/api/v1/nodes/{name}/clear": {
            "post": {
                "summary": "clear a sticky EVICT; the verdict is recomputed from fresh results",
                "parameters": [name_param],
                "responses": {
                    "200": {"description": "the new verdict"},
                    "400": _error("bad name, or an unknown query parameter"),
                    "404": _error("unknown node"),
                    "503": _error("Redis unreachable"),
                },
            }
        },
        "/api/v1/baselines": {
            "get": {
                "summary": "the fleet's baselines: median and MAD of each cohort's recent figures",
                "responses": {
                    "200": {
                        "description": "cohorts (GPU model, driver major, check, metric), most judged first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "baselines": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Baseline"},
                                        },
                                        "settings": {"type": "object"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _error("an unknown query parameter"),
                    "503": _error("Redis unreachable"),
                },
            }
        },
        "/api/v1/checks": {
            "get": {
                "summary": "the checks of this build, their parameters, and the default set",
                "responses": {"200": {"description": "checks"}, "400": _error("an unknown query parameter")},
            }
        },
        "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/healthz": {
            "get": {
                "summary": "liveness (no token needed)",
                "security": [],
                "responses": {"200": {"description": "alive"}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "readiness: Redis answers (no token needed)",
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": _error("Redis unreachable")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no token needed)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    for check in CHECK_PATHS:
        paths[f"/{check}"] = {
            "get": {
                "summary": f"/status?check={check}" + ("" if check in checks else " (not in this build: 404)"),
                "parameters": [*SELECTION_PARAMS, *_check_params(checks, only=check)],
                "responses": STATUS_RESPONSES,
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Autopilot API",
            "version": __version__,
            "description": "GPU cluster health checks: run checks on nodes, read verdicts and results.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required when AUTOPILOT_API_TOKEN is set",
                }
            },
        },
        "security": [{"bearer": []}],
    }
