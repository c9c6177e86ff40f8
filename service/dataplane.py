"""The dataplane: the model registry and ``infer``, the one place with serving logic.

HTTP routers (native, V2) stay thin: they parse the wire format, call ``DataPlane.infer`` (or look up
models/readiness here) and format the answer. Loading happens in the background after start-up so
``/healthz`` answers at once and ``/readyz`` says 503 until every model is loaded and warmed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.batching import Batcher, CostModel, Job, calibrate
from service.errors import (
    ClientGone,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ShuttingDown,
)
from service.metrics import Metrics
from service.model_card import ModelCard
from service.pipelines.base import Pipeline, pipeline_class
from service.repository import scan
from service.runtime import Runtime
from service.settings import BatchingSettings, Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServedModel:
    """One loaded, warmed model version with its batcher."""

    name: str
    version: str
    card: ModelCard
    folder: Path
    pipeline: Pipeline
    batcher: Batcher
    batching: BatchingSettings
    labels: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = (self.name, self.version)

    @property
    def task(self) -> str:
        return self.card.task


@dataclass(frozen=True, slots=True)
class Inference:
    model: ServedModel
    results: list[Any]


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime: Runtime | None = None
        self.models: dict[str, ServedModel] = {}
        self.problems: dict[str, str] = {}  # model name -> why it is not served
        self.loaded = False
        self.stopping = False
        self._load_task: asyncio.Task[None] | None = None

    # ---- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background (the server accepts connections meanwhile)."""
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="load models")

    async def _load(self) -> None:
        try:
            self.runtime = await asyncio.to_thread(Runtime, self.settings.runtime_options())
            found = await asyncio.to_thread(scan, self.settings.model_repository, self.settings.model_versions)
            if not found:
                self.problems["*"] = f"no models in {self.settings.model_repository}"
                log.error("not ready: %s", self.problems["*"])
            for mv in found:
                if mv.problem or mv.card is None:
                    self.problems[mv.name] = mv.problem or "refused"
                    continue
                try:
                    self.models[mv.name] = await self._load_one(mv.name, mv.version, mv.folder, mv.card)
                except Exception as exc:  # one broken model must not take down the others
                    log.exception("refusing model %s version %s: loading failed", mv.name, mv.version)
                    self.problems[mv.name] = f"loading failed: {type(exc).__name__}: {exc}"
        except Exception as exc:  # e.g. provider=cuda without a GPU: stay up, not ready
            log.exception("model loading failed")
            self.problems["*"] = f"{type(exc).__name__}: {exc}"
        self.loaded = True
        # Everything loaded so far lives as long as the process: move it out of the collector's sight, so
        # full collections under load scan only request garbage (they otherwise add tens of ms to the p99).
        gc.collect()
        gc.freeze()
        if self.ready:
            log.info("ready: serving %s", ", ".join(f"{m.name}/{m.version}" for m in self.models.values()))

    async def _load_one(self, name: str, version: str, folder: Path, card: ModelCard) -> ServedModel:
        assert self.runtime is not None
        started = time.monotonic()
        pipeline = await asyncio.to_thread(pipeline_class(card.task), card, folder, self.runtime)
        batching = self.settings.batching_for(card.serving)
        if self.settings.warmup:
            count = await asyncio.to_thread(pipeline.warmup, batching.max_batch_size)
            log.info("model %s/%s warmed up with %d batches", name, version, count)
        cost_model = await asyncio.to_thread(self._calibrate, pipeline, batching) if self.settings.warmup else None
        batcher = Batcher(pipeline, batching, self.metrics, name, version, cost_model)
        batcher.start()
        self.metrics.model_info.labels(name, version, self.runtime.provider).set(1)
        log.info(
            "model %s/%s loaded in %.2fs (task %s, provider %s, batching %s)",
            name,
            version,
            time.monotonic() - started,
            card.task,
            self.runtime.provider,
            batching.model_dump(),
        )
        return ServedModel(name, version, card, folder, pipeline, batcher, batching)

    @staticmethod
    def _calibrate(pipeline: Pipeline, batching: BatchingSettings) -> CostModel:
        try:
            model = calibrate(pipeline, batching.max_batch_size)
        except Exception as exc:  # e.g. a pipeline whose items need a key and that has no cost_probe of its own
            log.info(
                "%s: no cost calibration (%s: %s); using the default cost model",
                pipeline.card.name,
                type(exc).__name__,
                exc,
            )
            return CostModel()
        log.info(
            "%s: batch cost = %.0f µs + tokens × (%.1f µs + %.1f µs × items)",
            pipeline.card.name,
            model.run * 1e6,
            model.step * 1e6,
            model.row * 1e6,
        )
        return model

    @property
    def ready(self) -> bool:
        return self.loaded and not self.stopping and bool(self.models) and not self.problems

    def readiness(self) -> dict[str, Any]:
        """Per-model state for ``/readyz``."""
        states: dict[str, str] = {name: "ready" for name in self.models}
        states.update({name: f"refused: {why}" for name, why in self.problems.items()})
        if not self.loaded:
            status = "loading"
        elif self.stopping:
            status = "stopping"
        else:
            status = "ready" if self.ready else "not ready"
        return {"status": status, "models": states}

    async def stop(self) -> None:
        """Stop taking work, finish every queued item, release the models."""
        self.stopping = True
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await asyncio.gather(*(m.batcher.close() for m in self.models.values()))
        for model in self.models.values():
            model.pipeline.close()

    # ---- lookups ------------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            if not self.loaded:
                raise ModelNotReady(f"model {name!r} is still loading")
            if name in self.problems:
                raise ModelNotReady(f"model {name!r} is not served: {self.problems[name]}")
            raise ModelNotFound(f"model {name!r} not found")
        if version is not None and version != model.version:
            raise ModelNotFound(f"model {name!r} version {version!r} not found (serving {model.version})")
        return model

    def for_task(self, task: str) -> ServedModel:
        """The model serving a task: the one named like the task, else the only one with that task."""
        if task in self.models and self.models[task].task == task:
            return self.models[task]
        matches = [m for m in self.models.values() if m.task == task]
        if len(matches) == 1:
            return matches[0]
        if not self.loaded:
            raise ModelNotReady(f"no {task} model loaded yet")
        if task in self.problems:
            raise ModelNotReady(f"the {task} model is not served: {self.problems[task]}")
        raise ModelNotFound(f"no {task} model in the repository" if not matches else f"several {task} models")

    def cards(self) -> list[ModelCard]:
        return [m.card for m in self.models.values()]

    # ---- inference ----------------------------------------------------------------------------------

    def validate_texts(self, texts: Sequence[str]) -> None:
        limit = self.settings.max_texts_per_request
        if not 1 <= len(texts) <= limit:
            raise InvalidInput(f"texts: expected 1 to {limit} texts, got {len(texts)}")
        max_chars = self.settings.max_text_chars
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"texts.{i}: expected a string, got {type(text).__name__}")
            if not 1 <= len(text) <= max_chars:
                raise InvalidInput(f"texts.{i}: expected 1 to {max_chars} characters, got {len(text)}")

    async def infer(
        self,
        model: ServedModel,
        texts: Sequence[str],
        params: Mapping[str, Any] | None = None,
        disconnected: Awaitable[Any] | None = None,
        started: float | None = None,
    ) -> Inference:
        """Validate, tokenise, batch, run, post-process: one request's texts → one result per text.

        ``disconnected`` resolves when the client goes away (its items are then dropped unrun);
        the deadline is ``request_timeout_s`` after ``started`` (default: now).
        """
        params = params or {}
        started = time.monotonic() if started is None else started
        deadline = started + self.settings.request_timeout_s
        self.validate_texts(texts)
        if self.stopping:
            raise ShuttingDown("the server is shutting down")
        inflight = self.metrics.inflight_requests.labels(*model.labels)
        inflight.inc()
        try:
            items = model.pipeline.preprocess(texts, params)
            try:
                job = model.batcher.submit(items, deadline)
            except QueueFull:
                self.metrics.rejected_total.labels(*model.labels, "queue_full").inc()
                raise
            outputs = await self._wait(model, job, deadline, disconnected)
            return Inference(model, [model.pipeline.postprocess(o, params) for o in outputs])
        finally:
            inflight.dec()

    async def _wait(
        self, model: ServedModel, job: Job, deadline: float, disconnected: Awaitable[Any] | None
    ) -> list[Any]:
        watcher = asyncio.ensure_future(disconnected) if disconnected is not None else None
        waiters: set[asyncio.Future[Any]] = {job.future} if watcher is None else {job.future, watcher}
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=max(deadline - time.monotonic(), 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            job.cancelled = True
            self.metrics.rejected_total.labels(*model.labels, "cancelled").inc()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if job.future in done:
            return job.future.result()
        job.cancelled = True  # queued items are dropped before compute
        if done:
            self.metrics.rejected_total.labels(*model.labels, "cancelled").inc()
            raise ClientGone("client disconnected")
        self.metrics.rejected_total.labels(*model.labels, "timeout").inc()
        raise DeadlineExceeded(f"deadline of {self.settings.request_timeout_s}s passed")
