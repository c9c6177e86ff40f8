"""What every router needs from a request: the dataplane, the registry, and a "client gone" signal."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fastapi import Request

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
