"""The pipeline interface: everything a task (sentiment, translation, ...) provides to be served.

The core (registry, dataplane, batcher, routers, middleware) never names a task. A task is one module
that registers a ``Pipeline`` subclass for a ``model.json`` ``task`` (``service.pipelines.registry``)
and declares on it:

- ``wire``: its request parameters (a pydantic model, validated once, at the edge), its native route
  and answer field, and its V2 input and output columns; the routers, the V2 metadata checks and the
  metric labels are derived from it;
- ``preprocess`` / ``run_batch`` / ``postprocess``: text → ``Item``s → one batch through onnxruntime
  → one wire result per text, and ``v2_columns``: results → named V2 output tensors;
- ``cost_probe``: how the batcher's cost model is measured for it, or ``NotCalibrated`` saying why not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from lstm_core.cost import ProbeShape
from lstm_core.decode_scheduler import DecodeScheduler, Sentence
from lstm_core.model_card import ModelCard, Variant
from lstm_core.tokens import UNK_ID
from service.runtime import Runtime


@dataclass(frozen=True)
class DecodePolicy:
    """How step-level decoding runs (the ``decode_*`` settings).

    ``max_rows`` and ``max_positions`` bound the running set; ``lazy_retire`` and ``admit_wait_steps`` are
    ``lstm_core.decode_scheduler.DecodeScheduler``'s; ``threads``: intra-op threads of the decoding
    sessions (None: the runtime's)."""

    max_rows: int = 256
    max_positions: int = 8192
    lazy_retire: bool = False
    admit_wait_steps: int = 0
    threads: int | None = None


@dataclass(slots=True)
class Item:
    """One unit of work for the batcher: one text of one request, tokenised, or still to be (``text``).

    ``length`` is the item's cost in tokens (the batcher bounds items × longest length by
    ``max_batch_tokens`` and groups similar lengths to cut padding). Items whose ``key`` differ never
    share a batch (translation uses its search settings; sentiment has a single key). ``text`` is set
    only while the item waits for ``Pipeline.tokenize`` in the batcher's thread (``data`` is None and
    ``length`` 0 until then).
    """

    data: Any
    length: int
    key: Hashable = None
    text: str | None = None


class NoParams(BaseModel):
    """A task without request parameters: any extra field in a native request is refused (422)."""

    model_config = ConfigDict(extra="forbid")


ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Wire:
    """How one task looks on the wire, native JSON and V2 alike; the core builds its routes from this.

    ``params`` is validated once, where the request arrives: the native body's fields beside ``texts``
    and the V2 request's ``parameters`` of the same names (other V2 parameters are the protocol's and
    are ignored). Its model should forbid extra fields, so a misspelt native field is a 422.
    """

    native_path: str  # the native POST route, e.g. "/v1/translate"
    results_field: str  # the native answer's list of results, e.g. "translations"
    result_type: Any  # the type of one native result, for the OpenAPI schema
    schema_name: str  # OpenAPI schema names: "Translate" -> TranslateRequest, TranslateResponse
    outputs: tuple[str, ...]  # V2 output columns, as ``Pipeline.v2_columns`` returns them
    params: type[BaseModel] = NoParams
    text_input: str = "text"  # the V2 input column: BYTES, shape [N, 1] or [N]
    example: tuple[str, ...] = ()  # example texts for the OpenAPI page


class NotCalibrated(Exception):
    """Raised by ``Pipeline.cost_probe`` to say why this pipeline cannot be timed at warm-up."""


@dataclass(frozen=True, slots=True)
class CostProbe:
    """How to time a pipeline for the batcher's cost model: ``batch(size, length)`` builds the items to run."""

    batch: Callable[[int, int], list[Item]]
    shape: ProbeShape = field(default_factory=ProbeShape)


class StepDecoding(Protocol):
    """What a pipeline that decodes step by step offers for step-level batching (``service.continuous``)."""

    def scheduler(self) -> DecodeScheduler:
        """A scheduler over the pipeline's sessions (one per decode thread)."""

    def sentence(self, item: Item, tag: Any) -> Sentence:
        """The scheduler's sentence for one item (its search settings come from the item's key)."""

    def outputs(self, sentences: Sequence[Sentence]) -> list[Any]:
        """One output per finished sentence, as ``run_batch`` would give it (runs in the decode thread)."""

    def warmup(self) -> int:
        """Run the step-level graphs over the shapes they will meet (blocking); returns sentences decoded."""


class Pipeline(ABC, Generic[ParamsT]):
    """One served model version of one task.

    Life cycle: constructed by the model registry with the version folder, its model card and the
    shared ``Runtime`` (which creates onnxruntime sessions on the chosen provider); ``warmup()`` and the
    cost probe run before the model reports ready; then ``preprocess`` (event loop, must be cheap),
    ``run_batch`` (worker thread, never on the event loop) and ``postprocess`` (event loop) serve requests.

    With several processes (``workers`` > 1) a pipeline is built twice: in the inference worker with
    the ``Runtime`` (it runs ``run_batch``), and in every front-end process with ``runtime=None`` (it
    runs ``preprocess``, ``postprocess`` and ``v2_columns``): a constructor must then load only what
    those need (tokenizers, labels), no session.
    """

    task: ClassVar[str]
    wire: ClassVar[Wire]
    #: Lengths (tokens) the warm-up runs, so the first real requests do not pay for ORT's allocations.
    warmup_lengths: ClassVar[tuple[int, ...]] = (1, 8, 16, 32, 64, 128)

    def __init__(self, card: ModelCard, folder: Path, runtime: Runtime | None) -> None:
        self.card = card
        self.folder = folder
        self.runtime = runtime
        # The precision served: open graphs with graph_path(). A front end (no runtime) is told it by the
        # inference worker (``service.remote``), which chose it.
        self.variant = runtime.choose_variant(card) if runtime is not None else _fp32(card)

    def graph_path(self, graph_file: str) -> Path:
        """The served variant's file for one of the card's graphs (``model.onnx`` -> ``model.int8.onnx``)."""
        return self.folder / self.variant.files.get(graph_file, graph_file)

    @abstractmethod
    def preprocess(self, texts: Sequence[str], params: ParamsT) -> list[Item]:
        """Tokenise the texts of one request into one item per text (runs on the event loop)."""

    #: Whether ``preprocess_deferred`` and ``tokenize`` are implemented: a single-process server then
    #: tokenises in the batcher's thread, off the event loop (``ServedModel.tokenize_in_batcher``).
    defers_tokenization: ClassVar[bool] = False

    def preprocess_deferred(self, texts: Sequence[str], params: ParamsT) -> list[Item]:
        """One item per text that carries the text itself (``Item.text``), for ``tokenize`` to finish.

        Why: in one process the event loop is the server's limit, and a tokenizer call on it holds the
        GIL (``tokenizers``' single ``encode`` does). The batcher's thread tokenises a whole round in
        one ``encode_batch``, which releases it, so the loop parses other requests meanwhile. Front ends
        of a multi-process server still tokenise in ``preprocess``: their items cross to the inference
        process as token ids, and that process is kept for the device.
        """
        raise NotImplementedError(f"{type(self).__name__} tokenises in preprocess only")

    def tokenize(self, items: Sequence[Item]) -> None:
        """Fill in ``data`` and ``length`` of items made by ``preprocess_deferred`` (the batcher's thread).

        Must give each item exactly what ``preprocess`` would have, and clear its ``text``.
        """
        raise NotImplementedError(f"{type(self).__name__} tokenises in preprocess only")

    @abstractmethod
    def run_batch(self, items: Sequence[Item]) -> list[Any]:
        """Run one batch (all items share one key) through onnxruntime; one output per item, in order.

        Called in the batcher's worker thread; raising fails only the requests of this batch.
        """

    def request_cost(self, n_texts: int, params: ParamsT) -> int:
        """The most work a request may cause, in units the operator budgets (``max_request_cost``).

        Default: texts × the card's ``max_length`` (tokens at most). A task whose work grows with its
        parameters says so (translation: × beam_size × max_length steps).
        """
        return n_texts * self.card.max_length

    def postprocess(self, output: Any, params: ParamsT) -> Any:
        """Turn one item's output into its native wire result (runs on the event loop). Default: as is."""
        return output

    @abstractmethod
    def v2_columns(self, results: Sequence[Any]) -> dict[str, np.ndarray]:
        """The V2 output tensors (one row per result, batch first) named as ``wire.outputs``."""

    @abstractmethod
    def cost_probe(self) -> CostProbe:
        """How to time this pipeline at warm-up, or raise ``NotCalibrated`` saying why it cannot be."""

    def warmup_batches(self, max_batch_size: int) -> list[list[Item]]:
        """Batches the warm-up runs: each warm-up length, alone and as a full batch.

        The default builds items of ``[UNK]`` ids so it works for any token-id pipeline; a pipeline
        whose ``Item.data`` is not a token id array overrides this.
        """
        lengths = [n for n in self.warmup_lengths if n <= self.card.max_length] or [self.card.max_length]
        return [unk_items(size, n) for n in lengths for size in sorted({1, max_batch_size})]

    def warmup(self, max_batch_size: int) -> int:
        """Run the warm-up batches (blocking; the registry calls it in a thread). Returns how many ran."""
        batches = self.warmup_batches(max_batch_size)
        for batch in batches:
            self.run_batch(batch)
        return len(batches)

    def release_memory(self) -> None:
        """After warm-up and calibration: one small batch that lets onnxruntime give back arena memory.

        Pipelines that run their sessions through ``Runtime.run`` release what their full-size warm-up
        left; for the others (translation's own runtime) the batch just runs.
        """
        if self.runtime is None:
            return
        with self.runtime.releasing_memory():
            self.run_batch(self.warmup_batches(1)[0])

    def step_decoding(self, policy: DecodePolicy) -> StepDecoding | None:
        """Step-level batching for this pipeline, run as ``policy`` says, or None (the default): batcher rounds."""
        return None

    def close(self) -> None:
        """Release what the pipeline holds (sessions are dropped with it)."""


def _fp32(card: ModelCard) -> Variant:
    """A placeholder until a front end hears from its worker which variant runs."""
    variants = card.precision_variants()
    return variants.get("fp32") or next(iter(variants.values()))


def unk_items(size: int, length: int, key: Hashable = None) -> list[Item]:
    """``size`` items of ``length`` ``[UNK]`` ids: warm-up and cost probes of token-id pipelines."""
    return [Item(np.full(length, UNK_ID, dtype=np.int64), length, key) for _ in range(size)]


def bytes_column(texts: Sequence[str]) -> np.ndarray:
    """A V2 BYTES column (object array of UTF-8 bytes) from strings."""
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode("utf-8") for text in texts]
    return array
