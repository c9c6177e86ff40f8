"""A front-end process: HTTP, validation, tokenisation and response encoding; inference in the workers.

The same FastAPI app as a single-process server (same routes, errors, middleware and metrics), built
around a ``RemoteRegistry`` instead of a ``ModelRegistry``: its dataplane hands each request's items to
an inference worker and awaits the answer. All front ends accept on one listening socket that the
supervisor bound, so the kernel spreads connections across them.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from service import early_stop
from service.app import create_app
from service.metrics import Metrics
from service.procstate import ProcessState, ProcessTable
from service.remote import RemoteRegistry
from service.server import _Server, configure_logging, uvicorn_config
from service.settings import Settings


class _FrontEndServer(_Server):
    """Ctrl-C reaches every process of the group: only the supervisor's SIGTERM stops a front end."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGINT:
            super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if early_stop.arrived():  # stopped while starting: uvicorn's handler is in place now, drain as usual
            self.handle_exit(signal.SIGTERM, None)


def run(slot: int, listener: socket.socket, socket_paths: Sequence[str], overrides: dict[str, Any]) -> None:
    """Process entry point (spawned by the supervisor)."""
    early_stop.install()  # also the handler uvicorn restores and re-raises to: a drained SIGTERM exits 0
    settings = Settings(**overrides)
    configure_logging(settings)
    table = ProcessTable.from_env()
    if table is not None:
        table.set(slot, ProcessState.STARTING, os.getpid())
    registry = RemoteRegistry([Path(p) for p in socket_paths], table, slot)
    metrics = Metrics(pids=table.pids if table is not None else None)
    app = create_app(settings, registry=registry, metrics=metrics)
    server = _FrontEndServer(uvicorn_config(app, settings), registry)
    try:
        server.run(sockets=[listener])
    finally:
        if table is not None:
            table.close()
