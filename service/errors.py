"""One mapping from failures to HTTP answers, all of the form ``{"error": "<message>"}`` (V2 style).

Service code raises a ``ServiceError`` subclass (its HTTP status and headers are part of the class);
FastAPI's own validation and routing errors are rewritten into the same shape here, so no client ever
sees two error formats. 400/404/413/415/422 for bad input, 401 without a valid API key, 408 for a body
that does not arrive in time, 429 + Retry-After over the rate limit, 503 + Retry-After when overloaded
or not ready, 504 when a deadline passed, 500 only for real bugs.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.logs import REQUEST_ID

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code: ClassVar[int] = 500
    headers: ClassVar[dict[str, str] | None] = None


class InvalidInput(ServiceError):
    status_code = 422


class UnsupportedMediaType(ServiceError):
    status_code = 415


class ModelNotFound(ServiceError):
    status_code = 404


class ModelNotReady(ServiceError):
    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class QueueFull(ServiceError):
    """The batch queue is full: tell the client at once when to come back, never make it wait."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class ShuttingDown(ServiceError):
    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1", "Connection": "close"}


class CostTooHigh(ServiceError):
    """One request asks for more work than ``max_request_cost`` allows (say why, and what the unit is)."""

    status_code = 413


class OverBudget(ServiceError):
    """A client spent its cost budget (``cost_per_s_per_client``): come back when it has refilled."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}  # type: ignore[misc]


class DeadlineExceeded(ServiceError):
    status_code = 504


class ClientGone(ServiceError):
    """The client disconnected; nobody reads this answer (499 in nginx's convention)."""

    status_code = 499


class BatchFailed(ServiceError):
    status_code = 500


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # A message may quote what the client sent; a lone surrogate in it cannot be encoded as UTF-8.
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": safe}, status_code=status_code, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, BatchFailed):  # its text is onnxruntime's: for the log, not for clients
            log.error("%s", exc)
            return error_response(exc.status_code, f"inference failed (request id {REQUEST_ID.get()})", exc.headers)
        if exc.status_code >= 500 and not isinstance(exc, ModelNotReady | QueueFull | ShuttingDown):
            log.warning("%s: %s", type(exc).__name__, exc)
        return error_response(exc.status_code, str(exc), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # Malformed JSON is a syntax problem (400); well-formed JSON of the wrong shape is 422.
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return error_response(status, _describe_validation(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    # Anything else is a bug: service.middleware.RequestEdgeMiddleware logs it once with its request id
    # and answers 500 with that id (never the exception's name or text).
