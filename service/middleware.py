"""Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): request ids and the one 500
handler, request metrics, request bodies (size limit, timeout, clients leaving mid-upload).

One layer, ``RequestEdgeMiddleware``, does all three when nothing has to run between them (no CORS,
API keys or rate limit): every ASGI layer costs a coroutine and a ``send`` wrapper per request, and at
thousands of small requests a second that adds up. With those features on, the body is read by
``RequestBodyMiddleware`` behind them, so nobody unauthorised or over their rate makes the server
buffer a body.

Metrics are taken here rather than in handlers so that requests FastAPI rejects before a handler runs
(malformed JSON, wrong types) are counted too. The ``endpoint`` label is the route template FastAPI
matched (never the raw path), ``model``/``version`` come from the route: a path parameter, or the task
a native route serves (``route_tasks``, built from the task registry: no task is named here).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import re
import time
import types
from collections.abc import Awaitable, Generator, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
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
# The whole body, once read here: endpoints take it from the scope instead of replaying it through
# ``receive`` and Starlette's stream (``service.api.native.parse_body``).
BODY_KEY = "lstm_serve.body"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# 4xx answers that are not invalid input, each counted under its own rejected_total reason.
REJECTED_REASONS = {401: "unauthorized", 408: "slow_client", 429: "rate_limited"}


class _RequestIds:
    """32 hex digits: 16 random per process, then a counter. Unique, like ``uuid4().hex``, without a syscall.

    Why: ``os.urandom`` per request was 2.6% of a one-process server's event loop at c=64 (a ``getrandom``
    system call each time). IDs correlate logs; they are not secrets. The random half is drawn again in
    a forked child (``os.register_at_fork``), so processes never share a sequence.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


new_request_id = _RequestIds()


@types.coroutine
def _resume(coro: Any, waiting_on: Any) -> Generator[Any, Any, Any]:
    """Await the rest of a coroutine that was run by hand up to its first wait (``waiting_on``: what it yielded)."""
    try:
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation (the body timeout) goes on into the coroutine
                waiting_on = coro.throw(exc)
            else:
                waiting_on = coro.send(sent)
    except StopIteration as done:
        return done.value


def receive_now(receive: Receive) -> tuple[Message | None, Awaitable[Message] | None]:
    """Call ``receive()`` and run it up to its first wait: ``(message, None)`` when it needed none (the
    usual case: uvicorn has the whole body when the app starts), else ``(None, the rest to await)``."""
    awaitable = receive()
    step = getattr(awaitable, "send", None)
    if step is None:  # not a coroutine: it is awaited the ordinary way
        return None, awaitable
    try:
        waiting_on = step(None)
    except StopIteration as done:
        return done.value, None
    return None, _resume(awaitable, waiting_on)


class BodyReader:
    """Reads a whole request body within the body limit and the body timeout.

    - over ``max_bytes``: 413, at once from Content-Length, else as soon as the limit is passed;
    - not complete ``timeout_s`` after the headers (a stalled or trickling client): 408 with
      ``Connection: close``; what was buffered is dropped with the request;
    - the client disconnects mid-upload: nothing is answered (nobody would read it); the request is
      counted as 499 (not a server error) and one INFO line is logged.

    ``lstm_serve_request_body_bytes`` shows what bodies being received hold right now. A body that is
    complete when the app starts (one message, no wait) is never "being received": it costs no timer
    and no gauge update.
    """

    def __init__(self, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.buffered = metrics.request_body_bytes

    async def read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The body; None when it was answered here (413, 408) or the client left (``CLIENT_GONE_KEY``)."""
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return None
        message, pending = receive_now(receive)
        if message is not None and message["type"] == "http.request" and not message.get("more_body", False):
            body = message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return None
            return body
        return await self._read_slowly(scope, receive, send, message, pending)

    async def _read_slowly(
        self, scope: Scope, receive: Receive, send: Send, message: Message | None, pending: Awaitable[Message] | None
    ) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            while True:
                if message is None:
                    try:
                        async with asyncio.timeout_at(deadline):
                            message = await (pending if pending is not None else receive())
                    except TimeoutError:
                        log.info("request body not complete after %.0fs (%d bytes): 408, closing", self.timeout_s, size)
                        chunks.clear()
                        response = error_response(
                            408, f"request body not received within {self.timeout_s:g}s", {"Connection": "close"}
                        )
                        await response(scope, receive, send)
                        return None
                    pending = None
                if message["type"] != "http.request":  # http.disconnect: the client left mid-upload
                    log.info("client disconnected during the request body (%d bytes received)", size)
                    scope[CLIENT_GONE_KEY] = True
                    return None
                chunk = message.get("body", b"")
                if chunk:
                    chunks.append(chunk)
                    size += len(chunk)
                    self.buffered.inc(len(chunk))
                if size > self.max_bytes:
                    chunks.clear()
                    await self._too_large(scope, receive, send)
                    return None
                if not message.get("more_body", False):
                    break
                message = None
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            return body
        finally:
            self.buffered.dec(size)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, f"request body over {self.max_bytes} bytes")(scope, receive, send)


def replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the whole body in one message, then the server's own messages."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestBodyMiddleware:
    """Reads every request body (``BodyReader``) before the app runs; the app gets it in one message.

    Its own layer only where CORS, API keys or a rate limit must run before a body is read; otherwise
    ``RequestEdgeMiddleware`` reads the body itself."""

    def __init__(self, app: ASGIApp, reader: BodyReader) -> None:
        self.app = app
        self.reader = reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = await self.reader.read(scope, receive, send)
        if body is not None:
            scope[BODY_KEY] = body
            await self.app(scope, replaying(body, receive), send)


async def call_direct(route: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with ``route``'s endpoint as the router would: the route in the scope, the app's handler for
    an exception (by status for an ``HTTPException``, then by class along the MRO), else re-raise."""
    scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
    request = Request(scope, receive, send)
    try:
        response = await route.endpoint(request)
    except Exception as exc:
        handler = exception_handler(scope["app"].exception_handlers, exc)
        if handler is None:
            raise
        response = handler(request, exc)
        if inspect.isawaitable(response):  # the app's handlers are coroutine functions; a plain one may be there
            response = await response
    await response(scope, receive, send)


def exception_handler(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The app's handler for ``exc``, found as Starlette's exception layer finds it (None: a bug, the 500)."""
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class RequestEdgeMiddleware:
    """Outermost: the request id, request metrics, and (given a ``body`` reader) the request body.

    - Request id: ``X-Request-ID`` in (when it is a sane token), or made up; echoed; in every log line
      of the request.
    - The one place a bug becomes a 500: logged once with its traceback, answered with
      ``{"error": "internal error (request id ...)"}`` and never the exception's name or text.
    - ``requests_total``/``request_duration_seconds`` per endpoint and status (not for ``skip``);
      ``rejected_total`` for 4xx answers (``invalid``, or the reason of ``REJECTED_REASONS``).
    - ``direct`` routes (the native task routes, ``DirectRoute``s taking only the ``Request``): when this
      layer reads the body, a POST to one of them calls its endpoint here, with the app's exception
      handlers, instead of passing through Starlette's exception layer, FastAPI's exit-stack, body-limit
      and telemetry layers and the routers (about ten more calls a request, each matching or wrapping
      what is already known). Any other request, and every request when CORS, API keys or a rate limit
      add their layers, takes the full stack. The routes stay FastAPI's: declared, documented and
      matched there for everything else.
    """

    def __init__(
        self,
        app: ASGIApp | None,
        metrics: Metrics,
        registry: ServedModels,
        route_tasks: Mapping[str, str],
        body: BodyReader | None = None,
        skip: tuple[str, ...] = ("/metrics",),
        direct: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.direct = dict(direct or {})  # POST path -> route whose endpoint takes the Request alone
        self.metrics = metrics
        self.registry = registry
        self.route_tasks = dict(route_tasks)  # native route -> the task it serves (they name no model in the path)
        self.body = body
        self.skip = set(skip)
        # (model, version, endpoint, status) -> the counter and histogram children: prometheus-client's
        # ``labels()`` costs more than the update itself. As bounded as the labels are.
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def around(self, app: ASGIApp) -> RequestEdgeMiddleware:
        """This instance around ``app``: the middleware factory Starlette calls when it builds its stack, so the
        app can also call this same instance directly (``service.app.ServiceApp``)."""
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                given = value
                break
        request_id = given.decode("latin-1") if given and _REQUEST_ID.fullmatch(given) else new_request_id()
        scope[REQUEST_ID_KEY] = request_id
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 0  # nothing answered yet

        async def send_edge(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            if self.body is None:
                await self.app(scope, receive, send_edge)
            else:
                body = await self.body.read(scope, receive, send_edge)
                if body is not None:
                    scope[BODY_KEY] = body
                    route = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
                    if route is None:
                        await self.app(scope, replaying(body, receive), send_edge)
                    else:
                        await call_direct(route, scope, replaying(body, receive), send_edge)
        except Exception:
            log.exception("internal error in %s %s", scope["method"], scope["path"])
            if not status:
                response = error_response(500, f"internal error (request id {request_id})")
                await response(scope, receive, send_edge)
        finally:
            try:
                if scope["path"] not in self.skip:
                    if not status:  # nothing was answered: the client left (499), or a bug the 500 could not reach
                        status = 499 if scope.get(CLIENT_GONE_KEY) else 500
                    self._record(scope, status, time.perf_counter() - started)
            finally:
                REQUEST_ID.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None)
        if endpoint is None:  # answered before routing (e.g. the body limit): name only known routes
            endpoint = scope["path"] if scope["path"] in self.route_tasks else UNMATCHED
        model, version = self._model_of(scope, endpoint)
        key = (model, version, endpoint, status)
        children = self._children.get(key)
        if children is None:
            labels = (model, version, endpoint, str(status))
            metrics = self.metrics
            children = self._children[key] = (
                metrics.requests_total.labels(*labels),
                metrics.request_duration.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)
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
