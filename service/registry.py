"""The model registry: loading, warm-up, cost calibration and readiness of every served model version.

Apart from the request path (``service.dataplane``) so that each has one job: this object decides what
is served and when it is ready; the dataplane only serves what this object holds. Loading runs in the
background after start-up, so ``/healthz`` answers at once and ``/readyz`` says 503 until every model
is loaded, warmed and calibrated. ``begin_shutdown`` (a stop signal arrived) makes readiness false at
once; ``close`` drains every batcher and releases the models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lstm_core.cost import UNMEASURED, CostModel, ProbeShape, fit_cost_model
from lstm_core.model_card import ModelCard
from service import heap
from service.batching import Batcher
from service.continuous import ContinuousBatcher
from service.errors import ModelNotFound, ModelNotReady
from service.metrics import Metrics
from service.pipelines.base import DecodePolicy, NotCalibrated, Pipeline, StepDecoding
from service.pipelines.registry import pipeline_class
from service.repository import scan
from service.runtime import CUDA, ProviderUnavailable, Runtime, VariantUnavailable
from service.settings import BatchingSettings, Settings

log = logging.getLogger(__name__)


class WireMismatch(ValueError):
    """The card's tensors are not what its task's pipeline reads and writes (a short, path-free reason)."""


@dataclass(eq=False)
class ServedModel:
    """One loaded, warmed model version with its batcher."""

    name: str
    version: str
    card: ModelCard
    folder: Path
    pipeline: Pipeline
    batcher: Batcher | ContinuousBatcher
    batching: BatchingSettings
    #: The dataplane leaves tokenisation to the batcher's thread (``Pipeline.preprocess_deferred``): a
    #: round batcher in this process, of a pipeline that can. Front ends and step-level decoding: False.
    tokenize_in_batcher: bool = False
    labels: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = (self.name, self.version)

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def precision(self) -> str:
        """The precision variant being served (``fp32``, ``int8``, ``fp16``)."""
        return self.pipeline.variant.precision

    def serving_info(self, provider: str) -> dict[str, Any]:
        """What runs for this model: version, provider, precision variant and its files (``/v1/models``)."""
        variant = self.pipeline.variant
        return {
            "version": self.version,
            "provider": provider,
            "precision": variant.precision,
            "files": sorted(set(variant.files.values())),
            "available_precisions": sorted(self.card.precision_variants()),
        }


def wire_problem(card: ModelCard, pipeline: type[Pipeline]) -> str | None:
    """Why the card's served tensors do not match what the task's pipeline reads and writes (None: they do)."""
    wire = pipeline.wire
    inputs = [(t.name, t.dtype) for t in card.inputs]
    if inputs != [(wire.text_input, "BYTES")]:
        return f"card inputs {inputs}, but task {card.task} reads one BYTES input {wire.text_input!r}"
    outputs = sorted(t.name for t in card.outputs)
    if outputs != sorted(wire.outputs):
        return f"card outputs {outputs}, but task {card.task} writes {sorted(wire.outputs)}"
    return None


class ServedModels:
    """What the request path asks of a registry: the served models, their problems, readiness, lookups.

    Two registries answer it: ``ModelRegistry`` (this process loads and runs the models) and
    ``service.remote.RemoteRegistry`` (a front-end process whose models run in inference workers).
    """

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.problems: dict[str, str] = {}  # model name -> why it is not served (short: clients see it)
        self.notes: dict[str, str] = {}  # "<model>/<folder>" -> what is wrong beside a served version
        self.loaded = False
        self._stopping = False

    def start(self) -> None:
        """Begin loading (or connecting) in the background; called from the app's lifespan."""
        raise NotImplementedError

    async def close(self) -> None:
        """Finish or hand back everything accepted, then release what is held."""
        raise NotImplementedError

    def begin_shutdown(self) -> None:
        """A stop signal arrived: readiness goes false at once, new inference is refused; queued work goes on."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    def serving(self) -> dict[str, dict[str, Any]]:
        """Per served model: provider, precision variant and files actually running (``/v1/models``)."""
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        return self.loaded and not self._stopping and bool(self.models) and not self.problems

    def readiness(self) -> dict[str, Any]:
        """Per-model state for ``/readyz`` and ``/v1/models``, plus ``problems`` beside served versions."""
        states: dict[str, str] = {name: "ready" for name in self.models}
        states.update({name: f"refused: {why}" for name, why in self.problems.items()})
        if not self.loaded:
            status = "loading"
        elif self._stopping:
            status = "stopping"
        else:
            status = "ready" if self.ready else "not ready"
        return {"status": status, "models": states, "problems": dict(self.notes)}

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

    def find_for_task(self, task: str) -> ServedModel | None:
        """The model serving a task, if exactly one does (the one named like the task wins)."""
        named = self.models.get(task)
        if named is not None and named.task == task:
            return named
        matches = [m for m in self.models.values() if m.task == task]
        return matches[0] if len(matches) == 1 else None

    def for_task(self, task: str) -> ServedModel:
        """The model serving a task: the one named like the task, else the only one with that task."""
        found = self.find_for_task(task)
        if found is not None:
            return found
        if not self.loaded:
            raise ModelNotReady(f"no {task} model loaded yet")
        if task in self.problems:
            raise ModelNotReady(f"the {task} model is not served: {self.problems[task]}")
        several = any(m.task == task for m in self.models.values())
        raise ModelNotFound(f"several {task} models" if several else f"no {task} model in the repository")

    def cards(self) -> list[ModelCard]:
        return [m.card for m in self.models.values()]


class ModelRegistry(ServedModels):
    """The served models, their problems, and whether the server is ready, loading or stopping."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = metrics
        self.runtime: Runtime | None = None
        self._load_task: asyncio.Task[None] | None = None

    # ---- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading in the background (the server accepts connections meanwhile)."""
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="load models")

    async def close(self) -> None:
        """Stop taking work, finish every queued item, release the models."""
        self.begin_shutdown()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await asyncio.gather(*(m.batcher.close() for m in self.models.values()))
        for model in self.models.values():
            for pipeline in model.batcher.runners if isinstance(model.batcher, Batcher) else [model.pipeline]:
                pipeline.close()  # type: ignore[attr-defined]

    async def _load(self) -> None:
        try:
            self.runtime = await asyncio.to_thread(Runtime, self.settings.runtime_options())
            found = await asyncio.to_thread(scan, self.settings.model_repository, self.settings.model_versions)
            if not found:
                self.problems["*"] = "no models in the model repository"
                log.error("not ready: no models in %s", self.settings.model_repository)
            for mv in found:
                self.notes.update(mv.notes)
                if mv.problem or mv.card is None:
                    self.problems[mv.name] = mv.problem or "refused"
                    continue
                try:
                    self.models[mv.name] = await self._load_one(mv.name, mv.version, mv.folder, mv.card)
                except Exception as exc:  # one broken model must not take down the others
                    log.exception("refusing model %s version %s: loading failed", mv.name, mv.version)
                    # The exception's text (onnxruntime's, with absolute paths) is for the log only.
                    ours = isinstance(exc, WireMismatch | ProviderUnavailable | VariantUnavailable)
                    detail = str(exc) if ours else "see the server log"
                    self.problems[mv.name] = f"version {mv.version} failed to load ({detail})"
        except ProviderUnavailable as exc:  # provider=cuda without a GPU: stay up, not ready, and say why
            log.exception("model loading failed")
            self.problems["*"] = str(exc)  # our own words, no paths
        except Exception:
            log.exception("model loading failed")
            self.problems["*"] = "the runtime failed to start (see the server log)"
        self.loaded = True
        # Everything loaded so far lives as long as the process: move it out of the collector's sight, so
        # full collections under load scan only request garbage (they otherwise add tens of ms to the p99).
        heap.settle()
        if self.ready:
            log.info("ready: serving %s", ", ".join(f"{m.name}/{m.version}" for m in self.models.values()))

    async def _load_one(self, name: str, version: str, folder: Path, card: ModelCard) -> ServedModel:
        assert self.runtime is not None
        started = time.monotonic()
        cls = pipeline_class(card.task)
        problem = wire_problem(card, cls)
        if problem:
            raise WireMismatch(problem)
        pipeline = await asyncio.to_thread(cls, card, folder, self.runtime)
        cuda = self.runtime is not None and self.runtime.provider == CUDA
        batching = self.settings.batching_for(card.serving, cuda=cuda)
        variant = pipeline.variant
        engine = self._step_engine(pipeline)
        if engine is not None:
            batcher: Batcher | ContinuousBatcher = await self._continuous(engine, batching, name, version)
        else:
            batcher = await self._rounds(pipeline, batching, name, version, cuda)
        batcher.start()
        self.metrics.model_info.labels(name, version, self.runtime.provider, variant.precision).set(1)
        log.info(
            "model %s/%s loaded in %.2fs (task %s, provider %s, precision %s: %s, batching %s)",
            name,
            version,
            time.monotonic() - started,
            card.task,
            self.runtime.provider,
            variant.precision,
            ", ".join(sorted(set(variant.files.values()))),
            batching.model_dump(),
        )
        defer = isinstance(batcher, Batcher) and pipeline.defers_tokenization
        return ServedModel(name, version, card, folder, pipeline, batcher, batching, tokenize_in_batcher=defer)

    def _step_engine(self, pipeline: Pipeline) -> StepDecoding | None:
        """Step-level decoding where the pipeline offers it and ``decode_mode`` is continuous, else None (rounds)."""
        s = self.settings
        if s.decode_mode != "continuous":
            return None
        policy = DecodePolicy(
            max_rows=s.decode_max_rows,
            max_positions=s.decode_max_positions,
            lazy_retire=s.decode_lazy_retire,
            admit_wait_steps=s.decode_admit_wait_steps,
            threads=s.decode_threads(),
        )
        return pipeline.step_decoding(policy)

    async def _rounds(
        self, pipeline: Pipeline, batching: BatchingSettings, name: str, version: str, cuda: bool
    ) -> Batcher:
        """A round batcher, its pipeline warmed up at the full batch size and its cost model calibrated.

        With ``model_instances`` > 1 the batcher gets that many copies of the pipeline, each with its own
        sessions, each warmed up (on CUDA a session's first runs at a shape are slow); the cost model is
        calibrated on the first, alone, since rounds are cut per instance.
        """
        variant = pipeline.variant
        instances = [pipeline]
        for _ in range(self.settings.instances_for(cuda) - 1):
            instances.append(await asyncio.to_thread(type(pipeline), pipeline.card, pipeline.folder, self.runtime))
        # The cost model export measured on the served variant (fp32: the card's), until warm-up measures it here.
        card_cost = CostModel.from_card(variant.serving if variant.precision != "fp32" else pipeline.card.serving)
        cost_model = card_cost or UNMEASURED
        if self.settings.warmup:
            for instance in instances:
                count = await asyncio.to_thread(instance.warmup, batching.max_batch_size)
            log.info("model %s/%s warmed up with %d batches, %d instance(s)", name, version, count, len(instances))
            cost_model = await asyncio.to_thread(calibrate, pipeline, batching, cost_model, cuda)
            await asyncio.to_thread(release_memory, instances, name)
        return Batcher(instances, batching, self.metrics, name, version, cost_model)

    async def _continuous(
        self, engine: StepDecoding, batching: BatchingSettings, name: str, version: str
    ) -> ContinuousBatcher:
        """A step-level batcher, warmed up through its own scheduler only.

        The round path's warm-up and calibration are skipped: nothing runs that path. On CUDA its full-size
        warm-up (1,024 sentences at beam 4) grew each server's onnxruntime arena by gigabytes it never used
        again; on the H100 that ran the suite, servers sharing the GPU then failed to load (out of memory).
        """
        s = self.settings
        if s.warmup:
            count = await asyncio.to_thread(engine.warmup)
            log.info("model %s/%s: step-level decoding warmed up with %d sentences", name, version, count)
        log.info(
            "model %s/%s: step-level decoding (at most %d rows, %d padded source positions)",
            name,
            version,
            s.decode_max_rows,
            s.decode_max_positions,
        )
        return ContinuousBatcher(engine, batching, self.metrics, name, version)

    def serving(self) -> dict[str, dict[str, Any]]:
        """Per served model: provider, precision variant and files actually running."""
        provider = self.runtime.provider if self.runtime is not None else None
        return {m.name: m.serving_info(provider or "") for m in self.models.values()}


def release_memory(instances: Sequence[Pipeline], name: str) -> None:
    """Give back the arena memory warm-up and calibration left (blocking); a failure only costs memory."""
    for instance in instances:
        try:
            instance.release_memory()
        except Exception as exc:
            log.warning("%s: arena memory not released after warm-up (%s: %s)", name, type(exc).__name__, exc)


def calibrate(pipeline: Pipeline, batching: BatchingSettings, default: CostModel, cuda: bool = False) -> CostModel:
    """Measure the batcher's cost model on the pipeline (blocking: run it in a thread after warm-up).

    On CUDA the wide probe has ``max_batch_size`` rows, not the pipeline's (32): a GPU's cost per row
    falls with the batch, and the batches it should run are the large ones. On the H200 a 32-row probe
    gave 0.7 µs per row and token where batches of 1,024 cost 0.04 µs, so the batcher cut rounds of
    real sentences into 4-5 runs of about 2.5 ms each where one would do (docs/benchmarks.md).

    A pipeline that cannot be timed says why (``NotCalibrated``, logged at INFO) and keeps ``default``
    (the card's ``serving.cost_model`` measured at export, else ``UNMEASURED``); a probe that fails or
    gives timings that do not fit is a problem worth seeing, logged at WARNING, and keeps ``default`` too.
    """
    name = pipeline.card.name
    source = "the model card's" if default is not UNMEASURED else "an unmeasured"
    try:
        probe = pipeline.cost_probe()
    except NotCalibrated as why:
        log.info("%s: no cost calibration (%s); using %s cost model", name, why, source)
        return default
    shape = ProbeShape(
        length=max(2, min(probe.shape.length, pipeline.card.max_length)),
        size=max(2, batching.max_batch_size if cuda else min(probe.shape.size, batching.max_batch_size)),
        repeats=probe.shape.repeats,
    )
    try:
        model = fit_cost_model(lambda size, length: partial(pipeline.run_batch, probe.batch(size, length)), shape)
    except Exception as exc:
        log.warning("%s: cost calibration failed (%s: %s); using %s cost model", name, type(exc).__name__, exc, source)
        return default
    log.info(
        "%s: batch cost = %.0f µs + tokens × (%.1f µs + %.1f µs × items)",
        name,
        model.run * 1e6,
        model.step * 1e6,
        model.row * 1e6,
    )
    return model
