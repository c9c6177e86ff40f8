"""The lean request edge, in-process: bodies read without a timer when complete, the body timeout when not,
the header deadline without a timer per request, and the direct route of the hot path."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import Any

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.common import DirectRoute, disconnected
from service.metrics import Metrics
from service.middleware import CLIENT_GONE_KEY, BodyReader, receive_now
from service.protocol import DISCONNECT_KEY, CoalescingWrites, DisconnectHook, HeaderTimeoutMixin


def _scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/sentiment", "headers": headers or []}


class _Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.messages if m["type"] == "http.response.start"), None)

    def error(self) -> str:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))["error"]


def _held(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("lstm_serve_request_body_bytes") or 0.0


async def test_receive_now_returns_a_ready_message_and_resumes_a_waiting_one() -> None:
    async def ready() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x"}

    assert receive_now(ready) == ({"type": "http.request", "body": b"x"}, None)

    arrived = asyncio.get_running_loop().create_future()

    async def waiting() -> dict[str, Any]:
        return await arrived

    message, pending = receive_now(waiting)
    assert message is None and pending is not None
    asyncio.get_running_loop().call_later(0.01, arrived.set_result, {"type": "http.request", "body": b"late"})
    assert await pending == {"type": "http.request", "body": b"late"}


async def test_a_waiting_receive_is_cancelled_into_the_coroutine_by_the_timeout() -> None:
    cancelled = []

    async def never() -> dict[str, Any]:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        raise AssertionError("unreachable")

    _, pending = receive_now(never)
    assert pending is not None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await pending
    assert cancelled == [True]


async def test_a_body_complete_on_arrival_is_read_without_touching_the_gauge() -> None:
    metrics = Metrics()
    reader = BodyReader(max_bytes=100, timeout_s=5, metrics=metrics)
    seen = []
    metrics.request_body_bytes.inc = lambda amount=1: seen.append(amount)  # type: ignore[method-assign]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"texts": ["a"]}', "more_body": False}

    send = _Sent()
    assert await reader.read(_scope(), receive, send) == b'{"texts": ["a"]}'
    assert send.messages == [] and seen == []


async def test_an_over_long_body_without_a_length_gets_413() -> None:
    reader = BodyReader(max_bytes=4, timeout_s=5, metrics=Metrics())

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"12345", "more_body": False}

    send = _Sent()
    assert await reader.read(_scope(), receive, send) is None
    assert send.status == 413 and "over 4 bytes" in send.error()


async def test_a_body_in_late_chunks_is_joined_and_the_gauge_falls_back() -> None:
    metrics = Metrics()
    reader = BodyReader(max_bytes=100, timeout_s=5, metrics=metrics)
    chunks = [b"ab", b"cd", b"ef"]

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.005)
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    assert await reader.read(_scope(), receive, _Sent()) == b"abcdef"
    assert _held(metrics) == 0


async def test_a_stalled_body_gets_408_whether_the_first_or_a_later_message_stalls() -> None:
    for first in (None, {"type": "http.request", "body": b"ab", "more_body": True}):
        metrics = Metrics()
        reader = BodyReader(max_bytes=100, timeout_s=0.05, metrics=metrics)
        given = [first] if first else []

        async def receive(given: list[dict[str, Any]] = given) -> dict[str, Any]:
            if given:
                return given.pop()
            await asyncio.get_running_loop().create_future()  # never completes
            raise AssertionError("unreachable")

        send = _Sent()
        assert await reader.read(_scope(), receive, send) is None
        assert send.status == 408 and "within 0.05s" in send.error()
        assert (b"connection", b"close") in send.messages[0]["headers"]
        assert _held(metrics) == 0


async def test_a_client_leaving_mid_upload_is_marked_gone() -> None:
    reader = BodyReader(max_bytes=100, timeout_s=5, metrics=Metrics())
    messages = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope, send = _scope(), _Sent()
    assert await reader.read(scope, receive, send) is None
    assert scope[CLIENT_GONE_KEY] is True and send.messages == []


class _FakeLoop:
    """Just enough of an event loop for the header deadline: a clock and counted timers."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any]] = []
        self.armed = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        self.armed += 1
        loop = self

        class Handle:
            def cancel(self) -> None:
                loop.timers = [t for t in loop.timers if t[1] is not self]

        handle = Handle()
        self.timers.append((when, handle, callback))  # type: ignore[arg-type]
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, _, callback in due:  # type: ignore[misc]
            callback()


class _Base:
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def on_response_complete(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _Protocol(HeaderTimeoutMixin, _Base):
    header_timeout_s = 10.0


class _Transport:
    closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class _Cycle:
    response_complete = False

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}  # uvicorn's cycle holds the request's scope


def _connected() -> tuple[_FakeLoop, _Protocol, _Transport]:
    loop = _FakeLoop()
    protocol = _Protocol()
    protocol.loop = loop  # type: ignore[assignment]
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return loop, protocol, transport


def test_keep_alive_requests_arm_no_timer_each_and_the_header_deadline_still_holds() -> None:
    loop, protocol, transport = _connected()
    for _ in range(1000):  # 1000 quick requests on one connection, 1 ms each
        loop.advance(0.0005)
        cycle = _Cycle()
        protocol.cycle = cycle  # headers complete
        loop.advance(0.0005)
        cycle.response_complete = True
        protocol.on_response_complete()
    assert loop.armed == 1 and not transport.closed
    loop.advance(9.9)  # the first timer fires at 10 s: the deadline moved, so it waits for the new one
    assert loop.armed == 2 and not transport.closed
    loop.advance(0.2)  # 10 s after the last response, no headers: closed
    assert transport.closed


def test_a_request_in_progress_is_not_closed_and_its_response_arms_the_deadline_again() -> None:
    loop, protocol, transport = _connected()
    cycle = _Cycle()
    protocol.cycle = cycle
    loop.advance(30)  # a slow request: the timer lapses, the connection stays
    assert not transport.closed and not loop.timers
    cycle.response_complete = True
    protocol.on_response_complete()
    loop.advance(9.9)
    assert not transport.closed
    loop.advance(0.2)
    assert transport.closed


def test_a_lost_connection_tells_the_request_being_served_and_no_finished_one() -> None:
    _, protocol, _ = _connected()
    finished = _Cycle()
    protocol.cycle = finished
    heard: list[str] = []
    finished.scope[DISCONNECT_KEY].subscribe(lambda: heard.append("finished"))
    finished.response_complete = True
    protocol.on_response_complete()
    served = _Cycle()
    protocol.cycle = served
    hook = served.scope[DISCONNECT_KEY]
    unsubscribe = hook.subscribe(lambda: heard.append("gone"))
    hook.subscribe(lambda: heard.append("also gone"))
    unsubscribe()  # a request that stopped waiting hears nothing
    hook.subscribe(lambda: heard.append("served"))
    protocol.connection_lost(None)
    assert heard == ["also gone", "served"]
    hook.subscribe(lambda: heard.append("late"))  # already lost: told at once
    assert heard[-1] == "late"


class _RecordingTransport(_Transport):
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[bytes, ...]]] = []

    def write(self, data: bytes) -> None:
        self.sent.append(("write", (data,)))

    def writelines(self, chunks: Any) -> None:
        self.sent.append(("writelines", tuple(chunks)))

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


def test_a_response_head_goes_out_with_its_body_in_one_write() -> None:
    """uvicorn writes a response's head and body separately (two sends); the cycle's transport joins them."""
    _, protocol, _ = _connected()
    transport = _RecordingTransport()
    protocol.transport = transport  # type: ignore[assignment]
    cycle = _Cycle()
    cycle.response_started = False  # type: ignore[attr-defined]
    protocol.cycle = cycle
    assert isinstance(cycle.transport, CoalescingWrites)  # type: ignore[attr-defined]
    writes = cycle.transport  # type: ignore[attr-defined]
    writes.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts: sent at once
    cycle.response_started = True  # type: ignore[attr-defined]
    writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.sent == [("write", (b"HTTP/1.1 100 Continue\r\n\r\n",))]
    writes.write(b"{}")
    writes.write(b"more")  # a later chunk of a streamed body: as it comes
    cycle.response_complete = True
    protocol.on_response_complete()
    assert transport.sent[1:] == [("writelines", (b"HTTP/1.1 200 OK\r\n\r\n", b"{}")), ("write", (b"more",))]
    assert writes.get_extra_info("peername") == "info peername"  # the rest is the transport's
    # Complete, the cycle is freed by reference counting alone: no cycle → transport → cycle garbage per request.
    finished = weakref.ref(cycle)
    gc.disable()
    try:
        del cycle, writes
        protocol.cycle = _Cycle()  # the next request's headers
        assert finished() is None
    finally:
        gc.enable()

    for ending in ("complete", "close"):  # a response without a body write (HEAD): its head is not lost
        transport.sent.clear()
        head = _Cycle()
        head.response_started = False  # type: ignore[attr-defined]
        protocol.cycle = head
        head.response_started = True  # type: ignore[attr-defined]
        head.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")  # type: ignore[attr-defined]
        assert transport.sent == []
        if ending == "complete":
            head.response_complete = True
            protocol.on_response_complete()
        else:
            head.transport.close()  # type: ignore[attr-defined]
            assert transport.closed
        assert transport.sent == [("write", (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",))]


def test_one_failing_disconnect_callback_does_not_silence_the_others(caplog) -> None:
    hook = DisconnectHook()
    heard: list[int] = []
    hook.subscribe(lambda: 1 / 0)
    hook.subscribe(lambda: heard.append(1))
    hook.fire()
    assert heard == [1] and "disconnect callback failed" in caplog.text
    hook.fire()  # once only
    assert heard == [1]


def test_without_the_protocols_hook_a_task_listens_for_the_disconnect() -> None:
    """Another ASGI server (or a test client) puts no hook in the scope: receive() tells instead."""

    async def scenario() -> tuple[list[str], list[str]]:
        messages = asyncio.Queue()

        async def receive() -> dict[str, Any]:
            return await messages.get()

        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        heard: list[str] = []
        disconnected(Request(scope, receive)).subscribe(lambda: heard.append("gone"))
        await messages.put({"type": "http.request", "body": b"", "more_body": False})
        await asyncio.sleep(0)
        before = list(heard)
        await messages.put({"type": "http.disconnect"})
        for _ in range(5):
            await asyncio.sleep(0)
        quiet: list[str] = []
        unsubscribe = disconnected(Request(scope, receive)).subscribe(lambda: quiet.append("gone"))
        unsubscribe()  # the request was answered: its listener is cancelled, and tells nobody
        await messages.put({"type": "http.disconnect"})
        for _ in range(5):
            await asyncio.sleep(0)
        return before + heard, quiet

    heard, quiet = asyncio.run(scenario())
    assert heard == ["gone"] and quiet == []


def test_the_served_app_calls_every_native_task_route_directly() -> None:
    """The app as the server builds it: its edge has each task's POST route, found through the routers.

    (``app.routes`` holds an included router as one entry in FastAPI 0.165: scanning it found none, and
    every request went through the router stack unnoticed, since the answers are the same.)
    """
    from service.app import create_app
    from service.pipelines.registry import discover
    from service.settings import Settings

    app = create_app(Settings(warmup=False))
    assert app.edge is not None
    native_paths = {pipeline.wire.native_path for pipeline in discover([]).values()}
    assert native_paths and set(app.edge.direct) == native_paths
    assert all(isinstance(route, DirectRoute) for route in app.edge.direct.values())
    # The same edge instance is the outermost user middleware for every other request.
    assert [m.cls for m in app.user_middleware] == [app.edge.around]


async def test_the_served_app_hands_native_posts_to_the_edge_and_the_rest_to_the_stack() -> None:
    """A POST to a native task route goes from the app straight to the edge (FastAPI's own layers are not
    built for it); any other request, and a native POST when CORS, keys, a rate limit or OpenTelemetry are
    on, takes the full stack with the edge inside it."""
    import httpx

    from service.app import create_app
    from service.settings import Settings

    def stack_calls(app: Any) -> list[str]:
        calls: list[str] = []
        inner = app.build_middleware_stack

        def counting_stack() -> Any:
            stack = inner()

            async def through(scope: Any, receive: Any, send: Any) -> None:
                calls.append(scope["path"])
                await stack(scope, receive, send)

            return through

        app.build_middleware_stack = counting_stack
        return calls

    cases = (
        (Settings(warmup=False), False),
        (Settings(warmup=False, api_keys="k"), True),
        (Settings(warmup=False, opentelemetry=True), True),  # FastAPI's own layer makes the spans
    )
    for settings, native_through_stack in cases:
        app = create_app(settings)
        calls = stack_calls(app)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"authorization": "Bearer k"}
        async with httpx.AsyncClient(transport=transport, base_url="http://edge", headers=headers) as client:
            native = await client.post("/v1/sentiment", json={"texts": []})
            health = await client.get("/healthz")
        # No model loads here (no lifespan): the native POST is validated and refused, with the edge's request id.
        assert native.status_code == 422 and native.headers["x-request-id"]
        assert health.status_code == 200 and health.headers["x-request-id"]
        assert calls == (["/v1/sentiment", "/healthz"] if native_through_stack else ["/healthz"])


def test_a_direct_route_takes_only_the_request() -> None:
    async def direct(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def with_query(request: Request, q: int = 0) -> JSONResponse:
        return JSONResponse({})

    router = APIRouter()
    router.add_api_route("/direct", direct, methods=["POST"], route_class_override=DirectRoute)
    assert router.routes[-1].get_route_handler() is direct  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="takes only the Request"):
        router.add_api_route("/query", with_query, methods=["POST"], route_class_override=DirectRoute)


async def test_a_post_to_a_direct_route_skips_the_router_and_keeps_the_app_handlers() -> None:
    """The edge calls the native endpoints itself; answers, errors and metrics are what the full stack gives."""
    import httpx
    from fastapi import FastAPI, HTTPException

    from service.errors import QueueFull, install_error_handlers
    from service.middleware import RequestEdgeMiddleware

    async def answer(request: Request) -> JSONResponse:
        kind = (await request.json())["kind"]
        if kind == "full":
            raise QueueFull("queue of m/1 is full")
        if kind == "http":
            raise HTTPException(409, "taken")
        if kind == "bug":
            raise RuntimeError("a bug's text")
        return JSONResponse({"ok": True, "route": request.scope["route"].path})

    app = FastAPI()
    app.router.add_api_route("/v1/answer", answer, methods=["POST"], route_class_override=DirectRoute)
    app.router.add_api_route("/v1/other", answer, methods=["POST"])
    install_error_handlers(app)
    metrics = Metrics()
    direct = {r.path: r for r in app.routes if isinstance(r, DirectRoute)}
    registry: Any = type("NoModels", (), {"models": {}})()
    app.add_middleware(
        RequestEdgeMiddleware, metrics=metrics, registry=registry, route_tasks={},
        body=BodyReader(1 << 20, 5.0, metrics), direct=direct,
    )  # fmt: skip
    routed: list[str] = []  # requests the router handed to a route
    for route in app.routes:
        handle = getattr(route, "handle", None)
        if route.path.startswith("/v1/") and handle is not None:

            async def counting(scope: Any, receive: Any, send: Any, handle: Any = handle) -> None:
                routed.append(scope["path"])
                await handle(scope, receive, send)

            route.handle = counting  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        ok = await client.post("/v1/answer", json={"kind": "ok"})
        assert ok.status_code == 200 and ok.json() == {"ok": True, "route": "/v1/answer"}
        full = await client.post("/v1/answer", json={"kind": "full"})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json() == {"error": "queue of m/1 is full"}
        http = await client.post("/v1/answer", json={"kind": "http"})
        assert http.status_code == 409 and http.json() == {"error": "taken"}
        bug = await client.post("/v1/answer", json={"kind": "bug"})
        assert bug.status_code == 500 and "a bug" not in bug.text and "request id" in bug.json()["error"]
        assert ok.headers["x-request-id"] and full.headers["x-request-id"]
        other = await client.post("/v1/other", json={"kind": "ok"})
        assert other.status_code == 200
        wrong_method = await client.get("/v1/answer")
        assert wrong_method.status_code == 405
    answered = {
        status: metrics.registry.get_sample_value(
            "lstm_serve_requests_total", {"model": "", "version": "", "endpoint": "/v1/answer", "status": status}
        )
        for status in ("200", "503", "409", "500")
    }
    assert answered == {"200": 1.0, "503": 1.0, "409": 1.0, "500": 1.0}
    # The router handed on only the plain route's POST and the GET (its 405): no POST to the direct route.
    assert routed == ["/v1/other", "/v1/answer"]
