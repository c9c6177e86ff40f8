"""The pipeline interface: what a task (sentiment, translation, ...) must provide to be served.

The dataplane and the batcher know nothing about tasks. A pipeline turns the texts of one request into
``Item``s (one per text, each with a length in tokens and a batching key), runs one batch of items
through onnxruntime in a worker thread, and turns each item's output into its wire result. Tasks are
found through a registry keyed by ``model.json`` ``task``: a new task is a new module
``service/pipelines/<task>.py`` that decorates its class with ``@register_pipeline("<task>")``; the core
imports that module by name, so adding a task never edits the core.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.model_card import ModelCard
from service.runtime import Runtime


@dataclass(slots=True)
class Item:
    """One unit of work for the batcher: one text of one request, already tokenised.

    ``length`` is the item's cost in tokens (the batcher bounds items × longest length by
    ``max_batch_tokens`` and groups similar lengths to cut padding). Items whose ``key`` differ never
    share a batch (translation uses ``(beam_size, max_length)``; sentiment has a single key).
    """

    data: Any
    length: int
    key: Hashable = None
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline(ABC):
    """One served model version of one task.

    Life cycle: constructed by the dataplane with the version folder, its model card and the shared
    ``Runtime`` (which creates onnxruntime sessions on the chosen provider); ``warmup()`` runs before
    the model reports ready; then ``preprocess`` (event loop, must be cheap), ``run_batch`` (worker
    thread, never on the event loop) and ``postprocess`` (event loop) serve requests.
    """

    task: ClassVar[str]
    #: Lengths (tokens) the warm-up runs, so the first real requests do not pay for ORT's allocations.
    warmup_lengths: ClassVar[tuple[int, ...]] = (1, 8, 16, 32, 64, 128)

    def __init__(self, card: ModelCard, folder: Path, runtime: Runtime) -> None:
        self.card = card
        self.folder = folder
        self.runtime = runtime

    @abstractmethod
    def preprocess(self, texts: Sequence[str], params: Mapping[str, Any]) -> list[Item]:
        """Tokenise the texts of one request into one item per text (runs on the event loop)."""

    @abstractmethod
    def run_batch(self, items: Sequence[Item]) -> list[Any]:
        """Run one batch (all items share one key) through onnxruntime; one output per item, in order.

        Called in the batcher's worker thread; raising fails only the requests of this batch.
        """

    def postprocess(self, output: Any, params: Mapping[str, Any]) -> Any:
        """Turn one item's output into its wire result (runs on the event loop). Default: as is."""
        return output

    def warmup_batches(self, max_batch_size: int) -> list[list[Item]]:
        """Batches the warm-up runs: each warm-up length, alone and as a full batch.

        The default builds items of token id 1 ([UNK]) so it works for any tokenizer; a pipeline whose
        ``Item.data`` is not a token id array overrides this.
        """
        lengths = [n for n in self.warmup_lengths if n <= self.card.max_length] or [self.card.max_length]
        batches: list[list[Item]] = []
        for n in lengths:
            for size in sorted({1, max_batch_size}):
                batches.append([Item(data=np.ones(n, dtype=np.int64), length=n) for _ in range(size)])
        return batches

    def cost_probe(self, size: int, length: int) -> list[Item]:
        """A batch of ``size`` items of ``length`` tokens, timed at start-up to fit the batcher's cost model.

        The default (token id 1, no key) suits token-id pipelines; a pipeline that needs a key (e.g.
        translation's beam settings) overrides this with its default key.
        """
        return [Item(data=np.ones(length, dtype=np.int64), length=length) for _ in range(size)]

    def warmup(self, max_batch_size: int) -> int:
        """Run the warm-up batches (blocking; the dataplane calls it in a thread). Returns how many ran."""
        batches = self.warmup_batches(max_batch_size)
        for batch in batches:
            self.run_batch(batch)
        return len(batches)

    def close(self) -> None:  # noqa: B027 - optional hook, most pipelines hold nothing to release
        """Release what the pipeline holds (sessions are dropped with it)."""


_REGISTRY: dict[str, type[Pipeline]] = {}


def register_pipeline(task: str) -> Callable[[type[Pipeline]], type[Pipeline]]:
    """Class decorator: serve models whose ``model.json`` ``task`` is ``task`` with this class."""

    def decorate(cls: type[Pipeline]) -> type[Pipeline]:
        cls.task = task
        _REGISTRY[task] = cls
        return cls

    return decorate


def pipeline_class(task: str) -> type[Pipeline]:
    """The pipeline class for a task, importing ``service.pipelines.<task>`` on first use."""
    if task not in _REGISTRY:
        try:
            importlib.import_module(f"service.pipelines.{task}")
        except ModuleNotFoundError as exc:
            raise LookupError(f"no pipeline for task {task!r} (no module service.pipelines.{task})") from exc
    if task not in _REGISTRY:
        raise LookupError(f"service.pipelines.{task} does not register a pipeline for task {task!r}")
    return _REGISTRY[task]


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int64 token id arrays into ``(input_ids [B, T], lengths [B])`` for the ONNX graphs."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    ids = np.full((len(sequences), int(lengths.max(initial=1))), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths
