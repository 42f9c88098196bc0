"""One JSON error shape for the whole API: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("mlpd.web")


class ApiError(Exception):
    """An error to answer with: HTTP status, a stable machine code and a message for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def user_errors(fn):
    """Run fn, turning a users/teams/quotas UserError into the API's error."""
    from mlpd.users import UserError

    try:
        return fn()
    except UserError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


def error_response(status: int, code: str, message: str):
    """The JSON body and status every error uses."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type"}


def register_error_handlers(app: Flask) -> None:
    """Turn every error, including unmatched routes and crashes, into the JSON shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 404:
            message = "no such route; see /api/v1/openapi.json for the API"
        response = error_response(status, _CODES.get(status, exc.name.lower().replace(" ", "_")), message)
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _crash(exc: Exception):
        log.exception("request %s crashed", getattr(g, "request_id", "-"))
        return error_response(500, "internal", f"internal error (request id {getattr(g, 'request_id', '-')}); the daemon log has the details")
