"""A front-end process's view of the inference workers: the registry and batchers the dataplane talks to.

``RemoteRegistry`` answers the same questions as ``ModelRegistry`` (``ServedModels``) from what the
workers report, and builds each model's pipeline *without* a runtime (tokenise and format only).
``RemoteBatcher.submit`` has the local batcher's contract — it returns a ``Job`` whose future resolves
to one output per item — but sends the items to a worker: the least loaded one that serves the model.

When a worker's connection breaks (the process died), every request waiting on it fails at once with
503 + Retry-After, readiness turns false, and the link reconnects until the restarted worker answers;
nothing waits for a deadline to find out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstm_core.model_card import ModelCard, Variant
from service.batching import Job
from service.errors import BatchFailed, DeadlineExceeded, ModelNotFound, QueueFull, ServiceError, ShuttingDown
from service.ipc import FramedProtocol, decode_outputs, encode_items
from service.pipelines.base import Item, Pipeline
from service.pipelines.registry import pipeline_class
from service.procstate import ProcessState, ProcessTable
from service.registry import ServedModel, ServedModels
from service.settings import BatchingSettings

log = logging.getLogger(__name__)
RECONNECT_S = 0.1


class WorkerUnavailable(ServiceError):
    """The inference worker holding this request went away (it is being restarted)."""

    status_code = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012 - the ClassVar of ServiceError


_ERRORS: dict[str, type[ServiceError]] = {
    cls.__name__: cls for cls in (QueueFull, ShuttingDown, BatchFailed, DeadlineExceeded, ModelNotFound)
}


class WorkerLink:
    """One connection to one inference worker, reconnecting for as long as the front end runs."""

    def __init__(self, index: int, socket_path: Path, registry: RemoteRegistry) -> None:
        self.index, self.socket_path, self.registry = index, socket_path, registry
        self.protocol: FramedProtocol | None = None
        self.state: dict[str, Any] | None = None
        self.pending: dict[int, tuple[Job, int]] = {}  # request id -> (job, items)
        self.outstanding_items = 0
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()

    @property
    def up(self) -> bool:
        return self.protocol is not None and not self.protocol.closed and self.state is not None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.registry.closing:
            self._lost.clear()
            try:  # the protocol is ours before its first message: the worker's state may come at once
                await loop.create_unix_connection(self._new_protocol, str(self.socket_path))
            except OSError:
                self.protocol = None
                await asyncio.sleep(RECONNECT_S)
                continue
            log.info("connected to inference worker %d (%s)", self.index, self.socket_path)
            await self._lost.wait()
            if not self.registry.closing:
                log.warning("inference worker %d went away; reconnecting", self.index)
                await asyncio.sleep(RECONNECT_S)

    def _new_protocol(self) -> FramedProtocol:
        self.protocol = FramedProtocol(self.on_message, self.on_lost)
        return self.protocol

    def on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "result":
            entry = self.pending.pop(message[1], None)
            if entry is not None:
                self._finish(entry, result=decode_outputs(message[2]))
        elif kind == "error":
            entry = self.pending.pop(message[1], None)
            if entry is not None:
                error = _ERRORS.get(message[2], BatchFailed)
                self._finish(entry, error=error(message[3]))
        elif kind == "state":
            self.state = message[1]
            self.registry.on_state(self)

    def _finish(self, entry: tuple[Job, int], result: list[Any] | None = None, error: Exception | None = None) -> None:
        job, items = entry
        self.outstanding_items -= items
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    def on_lost(self, exc: Exception | None) -> None:
        pending, self.pending = self.pending, {}
        self.state = None
        for entry in pending.values():
            self._finish(entry, error=WorkerUnavailable("the inference worker went away; retry"))
        self._lost.set()
        self.registry.on_state(self)

    def submit(self, req_id: int, model: str, items: Sequence[Item], deadline: float) -> Job:
        assert self.protocol is not None
        job = Job(asyncio.get_running_loop().create_future(), [], len(items), deadline)
        compact = encode_items(items)
        if compact is not None:
            self.protocol.send(("submit", req_id, model, deadline, *compact))
        else:
            self.protocol.send(("submit_items", req_id, model, deadline, list(items)))
        self.pending[req_id] = (job, len(items))
        self.outstanding_items += len(items)
        return job

    def cancel(self, req_id: int) -> None:
        entry = self.pending.get(req_id)
        if entry is not None and self.protocol is not None:
            self.protocol.send(("cancel", req_id))


class RemoteBatcher:
    """The batcher interface of one model, backed by the workers that serve it."""

    _ids = itertools.count(1)

    def __init__(self, registry: RemoteRegistry, model: str) -> None:
        self.registry, self.model = registry, model
        self._links_of_job: dict[int, tuple[WorkerLink, int]] = {}

    def submit(self, items: Sequence[Item], deadline: float) -> Job:
        # No stopping check here: the data plane refuses new requests once stopping, and a request it
        # accepted (counted in flight, then tokenised) must still reach a worker if SIGTERM came meanwhile.
        links = [link for link in self.registry.links if link.up and self.model in link.state["models"]]
        if not links:
            raise WorkerUnavailable(f"no inference worker is serving {self.model!r} right now; retry")
        link = min(links, key=lambda x: x.outstanding_items)
        req_id = next(self._ids)
        job = link.submit(req_id, self.model, items, deadline)
        self._links_of_job[id(job)] = (link, req_id)
        # Forget the job once its worker has answered (or is lost). A future failed here while the worker
        # still holds the request (the deadline, the client gone) keeps its entry: cancel() sends the
        # worker a cancel for it, so its queued items are dropped there too.
        job.future.add_done_callback(
            lambda _: None if req_id in link.pending else self._links_of_job.pop(id(job), None)
        )
        return job

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        found = self._links_of_job.pop(id(job), None)
        if found is not None:
            link, req_id = found
            link.cancel(req_id)


class RemoteRegistry(ServedModels):
    """Models served by inference workers, as seen from one front-end process."""

    def __init__(
        self, socket_paths: Sequence[Path], table: ProcessTable | None = None, slot: int | None = None
    ) -> None:
        super().__init__()
        self.links = [WorkerLink(i, Path(p), self) for i, p in enumerate(socket_paths)]
        self.table, self.slot = table, slot
        self.closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._front_problems: dict[str, str] = {}  # models this front end could not build

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(link.run(), name=f"worker link {link.index}") for link in self.links]

    def begin_shutdown(self) -> None:
        super().begin_shutdown()
        self._publish()

    async def close(self) -> None:
        self.begin_shutdown()
        self.closing = True
        for link in self.links:
            if link.protocol is not None:
                link.protocol.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def on_state(self, link: WorkerLink) -> None:
        """A worker connected, changed, or went away: rebuild what this front end serves."""
        states = [x.state for x in self.links]
        problems: dict[str, str] = {}
        notes: dict[str, str] = {}
        for x, state in zip(self.links, states, strict=True):
            if state is None:
                problems[f"inference-{x.index}"] = "inference worker not connected (starting or restarting)"
            else:
                problems.update(state["problems"])
                notes.update(state.get("notes", {}))
                if state["stopping"]:
                    problems[f"inference-{x.index}"] = "inference worker stopping"
        self.loaded = all(s is not None and s["loaded"] for s in states)
        if link.state is not None:
            for name, info in link.state["models"].items():
                served = self.models.get(name)
                if served is None or served.version != info["version"]:
                    self._build(name, info)
        self.problems = {**problems, **self._front_problems}
        self.notes = notes
        self._publish()

    def _build(self, name: str, info: dict[str, Any]) -> None:
        """The front-end half of a model's pipeline (tokenizers, labels; no session)."""
        card = ModelCard.model_validate_json(info["card"])
        folder = Path(info["folder"])
        try:
            pipeline: Pipeline = pipeline_class(card.task)(card, folder, None)
        except Exception as exc:  # a front end that cannot tokenise for a model refuses it, loudly
            log.exception("front end cannot serve %s/%s", name, info["version"])
            self._front_problems[name] = f"front end cannot load it: {type(exc).__name__}: {exc}"
            return
        pipeline.variant = Variant.model_validate_json(info["variant"])  # what the worker runs
        batching = BatchingSettings(**info["batching"])
        batcher = RemoteBatcher(self, name)
        self.models[name] = ServedModel(name, info["version"], card, folder, pipeline, batcher, batching)  # type: ignore[arg-type]
        self._front_problems.pop(name, None)

    def serving(self) -> dict[str, dict[str, Any]]:
        """What each worker runs for each model (provider, precision, files), as it reported."""
        out: dict[str, dict[str, Any]] = {}
        for link in self.links:
            for name, info in (link.state or {}).get("models", {}).items():
                out.setdefault(name, info["serving"])
        return out

    @property
    def ready(self) -> bool:
        own = super().ready and all(link.up for link in self.links)
        return own and (self.table is None or self.table.all_ready())

    def readiness(self) -> dict[str, Any]:
        state = super().readiness()
        if self.table is not None:
            state["processes"] = self.table.summary()
            if state["status"] == "ready" and not self.table.all_ready():
                state["status"] = "not ready"
        return state

    def _publish(self) -> None:
        """This front end's own readiness in the process table (others' ``/readyz`` read it)."""
        if self.table is None or self.slot is None:
            return
        own = super().ready and all(link.up for link in self.links)
        if self.stopping:
            self.table.set(self.slot, ProcessState.STOPPING)
        else:
            self.table.set(self.slot, ProcessState.READY if own else ProcessState.STARTING)
