"""What every router needs from a request: the dataplane, the registry, and a "client gone" signal."""

from __future__ import annotations

from fastapi import Request

from service.dataplane import DataPlane
from service.registry import ServedModels


def dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def registry(request: Request) -> ServedModels:
    return request.app.state.registry


async def disconnected(request: Request) -> None:
    """Resolves when the client goes away (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
