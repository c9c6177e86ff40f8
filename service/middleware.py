"""Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): request ids and the one 500
handler, request bodies (size limit, timeout, clients leaving mid-upload), request metrics.

Metrics are taken here rather than in handlers so that requests FastAPI rejects before a handler runs
(malformed JSON, wrong types) are counted too. The ``endpoint`` label is the route template FastAPI
matched (never the raw path), ``model``/``version`` come from the route: a path parameter, or the task
a native route serves (``route_tasks``, built from the task registry: no task is named here).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.logs import REQUEST_ID
from service.metrics import Metrics
from service.registry import ServedModels

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"
REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_KEY = "lstm_serve.request_id"
CLIENT_GONE_KEY = "lstm_serve.client_gone"  # set when the client left before its body was read
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# 4xx answers that are not invalid input, each counted under its own rejected_total reason.
REJECTED_REASONS = {401: "unauthorized", 408: "slow_client", 429: "rate_limited"}


class RequestContextMiddleware:
    """Outermost: the request id (``X-Request-ID`` in, or made up; echoed; in every log line of the
    request), and the one place a bug becomes a 500: logged once with its traceback, answered with
    ``{"error": "internal error (request id ...)"}`` and never the exception's name or text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), b"")
        request_id = given.decode("latin-1") if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id
        token = REQUEST_ID.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("internal error in %s %s", scope["method"], scope["path"])
            if not started:
                response = error_response(500, f"internal error (request id {request_id})")
                await response(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class RequestBodyMiddleware:
    """Reads every request body before the app runs, within the body limit and the body timeout.

    - over ``max_bytes``: 413, at once from Content-Length, else as soon as the limit is passed;
    - not complete ``timeout_s`` after the headers (a stalled or trickling client): 408 with
      ``Connection: close``; what was buffered is dropped with the request;
    - the client disconnects mid-upload: nothing is answered (nobody would read it); the request is
      counted as 499 (not a server error) and one INFO line is logged.

    The app then gets the whole body in one message. ``lstm_serve_request_body_bytes`` shows what
    bodies being received hold right now.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.buffered = metrics.request_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    log.info("request body not complete after %.0fs (%d bytes): 408, closing", self.timeout_s, size)
                    chunks.clear()
                    response = error_response(
                        408, f"request body not received within {self.timeout_s:g}s", {"Connection": "close"}
                    )
                    return await response(scope, receive, send)
                if message["type"] != "http.request":  # http.disconnect: the client left mid-upload
                    log.info("client disconnected during the request body (%d bytes received)", size)
                    scope[CLIENT_GONE_KEY] = True
                    return
                chunk = message.get("body", b"")
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                    self.buffered.inc(len(chunk))
                if size > self.max_bytes:
                    chunks.clear()
                    return await self._too_large(scope, receive, send)
                if not message.get("more_body", False):
                    break
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
        finally:
            self.buffered.dec(size)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, f"request body over {self.max_bytes} bytes")(scope, receive, send)


class MetricsMiddleware:
    """``requests_total``/``request_duration_seconds`` per endpoint and status; ``rejected_total{invalid}``."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        registry: ServedModels,
        route_tasks: Mapping[str, str],
        skip: tuple[str, ...] = ("/metrics",),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.registry = registry
        self.route_tasks = dict(route_tasks)  # native route -> the task it serves (they name no model in the path)
        self.skip = set(skip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if scope.get(CLIENT_GONE_KEY) and status == 500:  # nothing was answered: the client left
                status = 499
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None)
        if endpoint is None:  # answered before routing (e.g. the body limit): name only known routes
            endpoint = scope["path"] if scope["path"] in self.route_tasks else UNMATCHED
        model, version = self._model_of(scope, endpoint)
        labels = (model, version, endpoint, str(status))
        self.metrics.requests_total.labels(*labels).inc()
        self.metrics.request_duration.labels(*labels).observe(seconds)
        if model and 400 <= status < 500:
            if status == 499:  # the dataplane counts a client that left while queued; here: during its upload
                if scope.get(CLIENT_GONE_KEY):
                    self.metrics.rejected_total.labels(model, version, "cancelled").inc()
            else:
                self.metrics.rejected_total.labels(model, version, REJECTED_REASONS.get(status, "invalid")).inc()

    def _model_of(self, scope: Scope, endpoint: str) -> tuple[str, str]:
        params = scope.get("path_params") or {}
        name = params.get("model_name") or params.get("model")
        if name is None:
            task = self.route_tasks.get(endpoint)
            if task is None:
                return "", ""
            served = next((m for m in self.registry.models.values() if m.task == task), None)
            return (served.name, served.version) if served else (task, "")
        # Names and versions in the path are whatever clients send: label only what is served, so a
        # scan of /v2/models/<random> cannot create a time series per guess.
        served = self.registry.models.get(name)
        if served is None:
            return "", ""
        version = params.get("model_version") or params.get("version")
        return served.name, served.version if version in (None, served.version) else ""
