"""Error mapping: every failure becomes a JSON body, never an HTML page or a traceback.

``BadParameter`` (raised by validation anywhere) -> 400 ``{"error": "bad_request", "field", "detail"}``;
``ApiError`` -> its own status; HTTP errors (404, 405, ...) -> JSON with the same code; Redis or
broker unreachable (``StoreUnavailable``, or the broker's own errors from a send) -> 503; anything else -> 500
with the traceback in the log only.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from autopilot import errors as core_errors

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request that cannot be served; ``field`` names the parameter at fault when there is one."""

    def __init__(self, status: int, error: str, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            out["field"] = self.field
        out["detail"] = self.detail
        out.update(self.extra)
        return out


def json_error(status: int, error: str, detail: str, *, field: str | None = None, **extra: Any) -> Response:
    response = jsonify(ApiError(status, error, detail, field=field, **extra).body())
    response.status_code = status
    return response


def register(app: Flask) -> None:
    @app.errorhandler(core_errors.BadParameter)
    def bad_parameter(exc: core_errors.BadParameter) -> Response:
        return json_error(400, "bad_request", exc.reason, field=exc.field)

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        response = jsonify(exc.body())
        response.status_code = exc.status
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="autopilot"'
        if "retry_after_s" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after_s"])
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        response = json_error(code, name, exc.description or name)
        if code == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(core_errors.StoreUnavailable)
    @app.errorhandler(kombu.exceptions.OperationalError)
    def unavailable(exc: Exception) -> Response:
        # Redis is both the results store and the broker: without it nothing can be answered,
        # and a 503 tells a load balancer or client to retry rather than to give up.
        log.warning("store or broker unavailable: %s", exc)
        return json_error(503, "unavailable", f"results store or broker unreachable: {type(exc).__name__}")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return json_error(500, "internal_error", f"internal error ({type(exc).__name__}); see the API log")
