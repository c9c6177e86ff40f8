"""What every router needs from a request: the dataplane, the registry, a "client gone" signal, and the
route class of the hot path."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.dataplane import DataPlane
from service.registry import ServedModels


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def registry(request: Request) -> ServedModels:
    return request.app.state.registry


class disconnected:  # lower case: used like the coroutine function it replaced
    """Resolves when the client goes away (the body is already read, so the next message is the disconnect).

    An awaitable that starts nothing until awaited: a request refused before it is queued never awaits
    it, and a coroutine made for it would be reported as "never awaited" in the log, once per request.
    """

    def __init__(self, request: Request) -> None:
        self.request = request

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

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
