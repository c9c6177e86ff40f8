"""uvicorn's HTTP/1.1 protocol with a header timeout and a connection limit that answers like the service.

Header timeout: a connection must send complete request headers within ``header_timeout_s`` of
opening, or of its previous response, else it is closed.

uvicorn has no such timeout: its keep-alive timer is stopped by the first byte of a new request, so a
client sending headers one byte at a time (slowloris) holds its connection, and a slot of
``limit_concurrency``, for ever. The app never sees such a connection (it is called once the headers
are complete), so this lives in the protocol. Both uvicorn implementations assign ``self.cycle`` when
a request's headers are complete; that assignment is what stops the timer.

Disconnect hook: uvicorn tells an app that its client left only through the next ``receive()``, so
noticing it meant one waiting task per request (a quarter of the event loop's ``getpid`` calls in a
profile at c=64). The protocol instead puts a ``DisconnectHook`` in each request's scope
(``DISCONNECT_KEY``) and fires it from ``connection_lost``: whoever waits on the request registers a
callback and pays nothing unless the client goes.

One write per response: uvicorn writes a response's head and its body with one ``transport.write``
each, and uvloop sends each at once: two ``send`` system calls and two TCP segments for every small
JSON answer, with a wake-up of the client for each. ``CoalescingWrites`` holds the head until the
body's first write and sends both in one ``writelines`` (one ``writev``).

Connection limit (``max_connections``, uvicorn's ``limit_concurrency``): uvicorn answers a request
past it with a plain-text 503 and no ``Retry-After``, unlike every other overload answer here. The same
count, made at the same moment (when a request's headers are complete and uvicorn picks the app to
run), now answers a JSON 503 with ``Retry-After: 1`` and closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DISCONNECT_KEY = "lstm_serve.disconnect"


class DisconnectHook:
    """Callbacks to run when a request's connection is lost (once; at once if it already was)."""

    __slots__ = ("callbacks", "lost")

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.lost = False

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the client goes; returns the function that unsubscribes it."""
        if self.lost:
            callback()
            return _nothing
        self.callbacks.append(callback)
        return lambda: self._remove(callback)

    def _remove(self, callback: Callable[[], None]) -> None:
        if callback in self.callbacks:
            self.callbacks.remove(callback)

    def fire(self) -> None:
        self.lost = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one subscriber's failure must not keep the others from hearing
                log.exception("disconnect callback failed")


def _nothing() -> None:
    pass


class CoalescingWrites:
    """A request cycle's transport, holding its response head until the first body write goes out with it.

    The head is the first write after the cycle's ``response_started`` is set (an interim ``100 Continue``
    is written before that, and goes out at once). Whatever ends a response without a body write (a
    HEAD request, a response completed with no body bytes) is followed by the protocol's
    ``on_response_complete``, which calls ``release``; ``close`` flushes first too. Everything else is
    the connection's transport as it is.

    ``release`` also drops the reference to the cycle: cycle → transport → cycle is a reference cycle,
    and left in place it made every request garbage that only the collector frees (12 objects a
    request: the cycle, its scope, its disconnect hook...).
    """

    __slots__ = ("_cycle", "_head", "_held", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._held = False  # this response's head was seen (held, and maybe sent already)

    def write(self, data: bytes) -> None:
        cycle = self._cycle
        if not self._held and cycle is not None and cycle.response_started:
            self._held = True
            self._head = data
            return
        head = self._head
        if head is None:
            self.transport.write(data)
        else:
            self._head = None
            self.transport.writelines((head, data))

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self.transport.write(head)

    def release(self) -> None:
        """The response is complete (or the connection lost): send what is held, forget the cycle."""
        self.flush()
        self._cycle = None

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class HeaderTimeoutMixin:
    """The header deadline of a connection, kept without a timer per request.

    Each request would otherwise start a timer (after the previous response) and cancel it (headers
    complete): two event-loop timer operations per request, as dear as a middleware layer. Instead a
    request only writes its deadline (``None`` once its headers are complete); the one timer of the
    connection looks at it when it fires and re-arms itself for a deadline that moved, or lapses while a
    request is being served (the next response arms it again).
    """

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _header_deadline: float | None = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    @property
    def cycle(self) -> Any:
        return self.__dict__.get("_cycle")

    @cycle.setter
    def cycle(self, value: Any) -> None:
        self.__dict__["_cycle"] = value
        if value is not None:  # a request's headers are complete
            self._header_deadline = None
            value.scope[DISCONNECT_KEY] = DisconnectHook()
            value.transport = CoalescingWrites(self.transport, value)

    def _start_header_timer(self) -> None:
        self._header_deadline = deadline = self.loop.time() + self.header_timeout_s
        if self._header_timer is None:
            self._header_timer = self.loop.call_at(deadline, self._header_timeout)

    def _stop_header_timer(self) -> None:
        self._header_deadline = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        deadline = self._header_deadline
        if deadline is None:
            return  # headers complete: a request is being served; its response arms the timer again
        if deadline > self.loop.time():  # a later request's deadline: wait for that one
            self._header_timer = self.loop.call_at(deadline, self._header_timeout)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # a request is being served (pipelined): its headers arrived
        if not self.transport.is_closing():
            log.debug("closing a connection: no complete request headers within %ss", self.header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._start_header_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, CoalescingWrites):
            cycle.transport.release()  # sends a head still held (a response without a body write: HEAD)
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._start_header_timer()  # the next request's headers get the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, CoalescingWrites):
            cycle.transport.release()
        if cycle is not None and not cycle.response_complete:
            hook = cycle.scope.get(DISCONNECT_KEY)
            if hook is not None:
                hook.fire()


OVER_LIMIT_BODY = json.dumps({"error": "too many connections to this server process; retry"}).encode()


async def over_connection_limit(scope: Any, receive: Any, send: Any) -> None:
    """The answer past the connection limit: 503, JSON, Retry-After, and the connection closed."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(OVER_LIMIT_BODY)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": OVER_LIMIT_BODY})


class ConnectionLimitMixin:
    """uvicorn's connection limit, answered by ``over_connection_limit`` instead of its plain-text 503.

    uvicorn checks ``limit_concurrency`` and then reads ``self.app`` when a request's headers are
    complete (both its HTTP/1.1 implementations). Here its own check always sees no limit, and reading
    ``app`` makes the same count: past the limit, the request runs ``over_connection_limit``.
    """

    connections: set[Any]
    tasks: set[Any]
    _limit: int | None = None

    @property
    def limit_concurrency(self) -> None:
        return None  # uvicorn's own check: off (the limit is applied in ``app``)

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:
        self._limit = value

    @property
    def app(self) -> Any:
        limit = self._limit
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            log.warning("over the connection limit (%d per process): 503", limit)
            return over_connection_limit
        return self.__dict__["_app"]

    @app.setter
    def app(self, value: Any) -> None:
        self.__dict__["_app"] = value


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's default HTTP/1.1 protocol (httptools if installed, else h11) with the header timeout and
    the JSON connection limit."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    mixins = (HeaderTimeoutMixin, ConnectionLimitMixin, base)
    return type(f"Edge{base.__name__}", mixins, {"header_timeout_s": header_timeout_s})
