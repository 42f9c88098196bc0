"""The OpenAPI document, built from the route declarations."""

from __future__ import annotations

import re
from typing import Any

from flask import jsonify

import mlpd
from mlpd.web.routes import Area, ROUTES

area = Area("openapi")  # registered by the app factory (mlpd.web.create_app)
route = area.route

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _schema(t) -> dict:
    if isinstance(t, tuple):
        types = {_JSON_TYPES[x] for x in t}
        return {"type": "number"} if types == {"integer", "number"} else {"oneOf": [{"type": x} for x in sorted(types)]}
    return {"type": _JSON_TYPES[t]}


def build_document() -> dict:
    """OpenAPI 3.1 for every declared route."""
    error = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict = {}
    for doc in ROUTES:
        path = "/api/v1" + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", doc.rule)
        for method in doc.methods:
            op: dict[str, Any] = {
                "summary": doc.summary,
                "operationId": f"{doc.endpoint}_{method.lower()}" if len(doc.methods) > 1 else doc.endpoint,
                "security": [{"token": []}],
                "responses": {"200": {"description": "success"}, "401": error, "403": error, "404": error},
            }
            if doc.admin:
                op["x-mlpd-admin"] = True
            if doc.job_token:
                op["x-mlpd-job-token"] = True
            if doc.credentials:
                op["x-mlpd-credentials"] = True  # a workspace session's token is refused here
            params = re.findall(r"<(?:[^:>]+:)?([^>]+)>", doc.rule)
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
            if doc.body:
                op["requestBody"] = {"content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "required": [n for n, f in doc.body.items() if f.required],
                    "properties": {n: {**_schema(f.type), "description": f.doc} for n, f in doc.body.items()},
                }}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlpd API", "version": mlpd.__version__},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}},
        },
        "paths": paths,
    }


@route("/openapi.json", summary="This document")
def openapi_json():
    return jsonify(build_document())
