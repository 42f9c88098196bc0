"""One JSON error shape for the whole API: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

from mlpd.errors import MlpdError

log = logging.getLogger("mlpd.web")


# The API raises mlpd's one error type; the name says where it is raised from.
ApiError = MlpdError


def error_response(status: int, code: str, message: str):
    """The JSON body and status every error uses."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type"}


def register_error_handlers(app: Flask) -> None:
    """Turn every error, including unmatched routes and crashes, into the JSON shape."""

    @app.errorhandler(MlpdError)
    def _mlpd_error(exc: MlpdError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 404:
            message = "no such route; see /api/v1/openapi.json for the API"
        response = error_response(status, _CODES.get(status, exc.name.lower().replace(" ", "_")), message)
        if status == 405 and (methods := getattr(exc, "valid_methods", None)):
            response.headers["Allow"] = ", ".join(methods)
        return response

    @app.errorhandler(Exception)
    def _crash(exc: Exception):
        log.exception("request %s crashed", getattr(g, "request_id", "-"))
        return error_response(500, "internal", f"internal error (request id {getattr(g, 'request_id', '-')}); the daemon log has the details")
