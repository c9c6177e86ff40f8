"""What the OpenAPI document says about errors and hand-parsed bodies, so it describes what the server does.

Every error body is ``{"error": "<message>"}`` (``ERROR_SCHEMA``). ``edge_errors`` are the answers any
operation may get from the request edge (body limit and timeout; API keys and rate limits when the
settings turn them on); each router adds its own (``errors(...)``). Routes that parse their own body
(the native routes and V2 ``/infer``, for speed) state it with ``json_body``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.security import METRICS, PROBES
from service.settings import Settings

DESCRIPTIONS = {
    400: "malformed request (JSON syntax; for V2, anything the protocol refuses)",
    401: "missing or invalid API key (Authorization: Bearer <key>)",
    404: "no such model or version",
    408: "the request body did not arrive within body_timeout_s",
    413: "request body too large",
    415: "Content-Type is not application/json",
    422: "invalid texts or parameters",
    429: "over the rate limit (see Retry-After)",
    503: "not ready, queue full, shutting down or past the connection limit (see Retry-After)",
    504: "request deadline passed",
}


ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
    "title": "ErrorBody",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error answers: always JSON, whatever the route's own media type (``/metrics`` is text)."""
    content = {"application/json": {"schema": ERROR_SCHEMA}}
    return {code: {"description": DESCRIPTIONS[code], "content": content} for code in codes}


def edge_errors(settings: Settings) -> dict[int | str, dict[str, Any]]:
    codes = [408, 413, 503]  # 503: past max_connections, on any route (service/protocol.py)
    if settings.api_keys or settings.api_keys_file:
        codes.append(401)
    if settings.rate_limit_per_s > 0:
        codes.append(429)
    return errors(*codes)


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined (no recursive models here), for ``openapi_extra``."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


def json_body(model: type[BaseModel], **more_content: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its own body: required, JSON of ``model`` (or ``more_content``)."""
    content = {"application/json": {"schema": inline_refs(model.model_json_schema())}, **more_content}
    return {"requestBody": {"required": True, "content": content}}


def install(app: FastAPI, settings: Settings) -> None:
    """The app's OpenAPI document, finished: probes (and ``/metrics`` unless ``metrics_auth``) never answer
    401 or 429; with API keys on, the other operations say they need a bearer token."""
    keys_on = bool(settings.api_keys or settings.api_keys_file)
    open_paths = PROBES if settings.metrics_auth else PROBES | {METRICS}
    limit_free = PROBES | {METRICS}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes, servers=app.servers
            )
            for path, operations in spec["paths"].items():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if path in open_paths:
                        responses.pop("401", None)
                    elif keys_on:
                        operation["security"] = [{"bearer": []}]
                    if path in limit_free:
                        responses.pop("429", None)
            if keys_on:
                spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
