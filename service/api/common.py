"""What every router needs from a request: the dataplane, the registry, a "client gone" signal, and the
route class of the hot path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.dataplane import DataPlane
from service.middleware import BODY_KEY
from service.protocol import DISCONNECT_KEY
from service.registry import ServedModels


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def registry(request: Request) -> ServedModels:
    return request.app.state.registry


async def request_body(request: Request) -> bytes:
    """The whole body: as the request edge read it (``BODY_KEY``), else through Starlette (another stack in front)."""
    body = request.scope.get(BODY_KEY)
    return body if body is not None else await request.body()


class disconnected:  # lower case: used like the function it replaced
    """A request's "client gone" signal for ``DataPlane.infer`` (``service.dataplane.ClientWatch``).

    Served by this service's protocol, the request's scope holds a ``DisconnectHook`` that the
    connection fires when it is lost: subscribing costs a list append. Under another server (a test
    client, another ASGI server) a task waits for the ``http.disconnect`` message instead (the body is
    already read, so the next message is the disconnect), as every request did before.
    """

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        hook = self.request.scope.get(DISCONNECT_KEY)
        if hook is not None:
            return hook.subscribe(callback)
        task = asyncio.get_running_loop().create_task(self._wait())
        task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is not None else callback())
        return task.cancel

    async def _wait(self) -> None:
        while (await self.request.receive())["type"] != "http.disconnect":
            pass


class DirectRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns the ``Response`` itself, called as it is.

    FastAPI's request handler solves the endpoint's dependencies on every request (it parses the query
    string, headers and cookies for parameters such an endpoint does not have) and wraps the call for
    its telemetry: a sizeable share of a small model's request CPU. The OpenAPI description is built
    from the route as declared (``response_model``, ``responses``, ``openapi_extra``), as for any route;
    exceptions take the app's handlers as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.dependant
        declared = (d.path_params, d.query_params, d.header_params, d.cookie_params, d.body_params, d.dependencies)
        if any(declared) or d.request_param_name is None:
            raise TypeError(f"{self.path}: a DirectRoute endpoint takes only the Request")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint  # type: ignore[return-value]
