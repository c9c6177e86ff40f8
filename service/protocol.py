"""uvicorn's HTTP/1.1 protocol with a header timeout: a connection must send complete request headers
within ``header_timeout_s`` of opening, or of its previous response, else it is closed.

uvicorn has no such timeout: its keep-alive timer is stopped by the first byte of a new request, so a
client sending headers one byte at a time (slowloris) holds its connection, and a slot of
``limit_concurrency``, for ever. The app never sees such a connection (it is called once the headers
are complete), so this lives in the protocol. Both uvicorn implementations assign ``self.cycle`` when
a request's headers are complete; that assignment is what stops the timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


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
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._start_header_timer()  # the next request's headers get the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's default HTTP/1.1 protocol (httptools if installed, else h11) with the header timeout."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    return type(f"HeaderTimeout{base.__name__}", (HeaderTimeoutMixin, base), {"header_timeout_s": header_timeout_s})
