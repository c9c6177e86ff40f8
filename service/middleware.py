"""Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): body size limit, request metrics.

Metrics are taken here rather than in handlers so that requests FastAPI rejects before a handler runs
(malformed JSON, wrong types) are counted too. The ``endpoint`` label is the route template FastAPI
matched (never the raw path), ``model``/``version`` come from the route: a path parameter, or the task
a native route serves (``route_tasks``, built from the task registry: no task is named here).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.metrics import Metrics
from service.registry import ServedModels

UNMATCHED = "unmatched"


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from Content-Length, else after reading at most the limit.

    A body without Content-Length (chunked) is read here, up to the limit, and replayed to the app;
    raising from inside FastAPI's body parsing would turn into a 400, not a 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send)
            return await self.app(scope, receive, send)  # the server enforces the declared length
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
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
        if model and 400 <= status < 500 and status not in (429, 499):
            self.metrics.rejected_total.labels(model, version, "invalid").inc()

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
