"""The inference worker: one process per device that owns the sessions and the batchers.

Front-end processes (``service.frontend``) tokenise and send each request's items here over a Unix
socket (``service.ipc``); every front end's items join the same per-model batcher, so batches form
across all of them. The worker is the existing ``ModelRegistry`` (loading, warm-up, calibration) and
``Batcher`` behind a socket instead of behind HTTP. It tells every connected front end what it serves
(``state``) on connect and whenever that changes, and writes its readiness to the process table.

On SIGTERM (sent by the supervisor once the front ends have drained, or to the whole process group at
once) it keeps serving the front ends still connected until they hang up, then finishes what is queued
and exits 0. A front end that disconnects has its queued items dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service import early_stop
from service.batching import Job
from service.errors import QueueFull, ServiceError
from service.ipc import FramedProtocol, decode_items, encode_outputs
from service.logs import configure as configure_logging
from service.metrics import Metrics
from service.pipelines.registry import discover
from service.procstate import ProcessState, ProcessTable
from service.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger(__name__)
STATE_INTERVAL_S = 0.1


def registry_state(registry: ModelRegistry) -> dict[str, Any]:
    """What a front end needs to serve these models: cards, folders, batching knobs, readiness."""
    return {
        "pid": os.getpid(),
        "loaded": registry.loaded,
        "stopping": registry.stopping,
        "problems": dict(registry.problems),
        "notes": dict(registry.notes),
        "provider": registry.runtime.provider if registry.runtime else None,
        "models": {
            name: {
                "version": m.version,
                "folder": str(m.folder),
                "card": m.card.model_dump_json(),
                "batching": m.batching.model_dump(),
                "variant": m.pipeline.variant.model_dump_json(),
                "serving": m.serving_info(registry.runtime.provider if registry.runtime else ""),
            }
            for name, m in registry.models.items()
        },
    }


class WorkerServer:
    """Accepts front-end connections and runs their requests through the registry's batchers."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics) -> None:
        self.registry, self.metrics = registry, metrics
        self.connections: set[_Connection] = set()
        self._state: dict[str, Any] | None = None

    def connection(self) -> _Connection:
        conn = _Connection(self)
        self.connections.add(conn)
        return conn

    def state(self) -> dict[str, Any]:
        return registry_state(self.registry)

    def publish_state(self) -> bool:
        """Send the state to every front end if it changed; True when it did."""
        state = registry_state(self.registry)
        if state == self._state:
            return False
        self._state = state
        for conn in self.connections:
            conn.protocol.send(("state", state))
        return True


class _Connection:
    """One front end: its in-flight jobs by request id, so a cancel or a lost connection drops their items."""

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.jobs: dict[int, tuple[Any, Job]] = {}
        self.protocol = FramedProtocol(self.on_message, self.on_lost, on_made=self.on_made)

    def on_made(self) -> None:
        """A front end connected: tell it at once what is served (it has nothing to serve until then)."""
        self.protocol.send(("state", self.server.state()))

    def on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "submit":
            _, req_id, name, deadline, key, lengths, ids = message
            self.submit(req_id, name, deadline, decode_items(key, lengths, ids))
        elif kind == "submit_items":
            _, req_id, name, deadline, items = message
            self.submit(req_id, name, deadline, items)
        elif kind == "cancel":
            entry = self.jobs.pop(message[1], None)
            if entry is not None:
                entry[0].batcher.cancel(entry[1])

    def submit(self, req_id: int, name: str, deadline: float, items: list) -> None:
        registry = self.server.registry
        try:
            model = registry.get(name)
            try:
                job = model.batcher.submit(items, deadline)
            except QueueFull:
                self.server.metrics.rejected_total.labels(*model.labels, "queue_full").inc()
                raise
        except ServiceError as exc:
            self.protocol.send(("error", req_id, type(exc).__name__, str(exc)))
            return
        self.jobs[req_id] = (model, job)
        job.future.add_done_callback(lambda future: self.done(req_id, future))

    def done(self, req_id: int, future: asyncio.Future) -> None:
        if self.jobs.pop(req_id, None) is None or future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.protocol.send(("error", req_id, type(exc).__name__, str(exc)))
        else:
            self.protocol.send(("result", req_id, encode_outputs(future.result())))

    def on_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for model, job in self.jobs.values():
            model.batcher.cancel(job)
        self.jobs.clear()


async def serve(settings: Settings, socket_path: Path, table: ProcessTable | None, slot: int | None) -> None:
    discover(settings.task_modules)
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    server = WorkerServer(registry, metrics)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if early_stop.arrived():  # stopped while starting: nothing was accepted yet, stop at once
        stop.set()
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the whole group: the supervisor decides
    socket_path.unlink(missing_ok=True)
    listener = await loop.create_unix_server(lambda: server.connection().protocol, str(socket_path))
    registry.start()  # it settles the heap (service.heap) once the models are loaded
    log.info("inference worker %d listening on %s", os.getpid(), socket_path)
    while not stop.is_set():
        server.publish_state()
        if table is not None and slot is not None:
            table.set(slot, ProcessState.READY if registry.ready else ProcessState.STARTING)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATE_INTERVAL_S)
    # The front ends may have been signalled with us (a process-group or cgroup-wide SIGTERM): their
    # accepted requests still need this process, so serve existing connections until they hang up.
    log.info(
        "inference worker %d stopping: serving %d front end(s) until they close", os.getpid(), len(server.connections)
    )
    if table is not None and slot is not None:
        table.set(slot, ProcessState.STOPPING)
    until = loop.time() + settings.graceful_timeout_s + 5.0
    while server.connections and loop.time() < until:
        await asyncio.sleep(STATE_INTERVAL_S)
    listener.close()
    log.info("inference worker %d: finishing queued work", os.getpid())
    registry.begin_shutdown()
    server.publish_state()
    await registry.close()
    for conn in list(server.connections):
        conn.protocol.close()
    socket_path.unlink(missing_ok=True)
    log.info("inference worker %d stopped", os.getpid())


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (``uvicorn[standard]`` brings it), as the front ends' uvicorn picks it.

    Why: the worker's event loop receives every item and sends every answer; on the H200 it was the
    busiest thread of the server. None: asyncio's own loop.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(slot: int, socket_path: str, device_id: int, overrides: dict[str, Any]) -> None:
    """Process entry point (spawned by the supervisor): serve the models on one device."""
    early_stop.install()
    settings = Settings(**{**overrides, "cuda_device_ids": [device_id]})
    configure_logging(settings.log_level, settings.log_format)
    table = ProcessTable.from_env()
    if table is not None:
        table.set(slot, ProcessState.STARTING, os.getpid())
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(settings, Path(socket_path), table, slot))
    finally:
        if table is not None:
            table.close()
