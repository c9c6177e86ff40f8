"""Sentiment: texts → word ids (the model's own ``tokenizer.json``) → biLSTM → label probabilities.

The tokenizer saved with the model normalises raw user text the way training did; encoding and
truncation are ``lstm_core.encoding.encode_words``, the function training used, and batches are padded
by ``lstm_core.padding.pad_batch`` (``lengths`` tells the graph where each row ends, so padding does
not change a text's answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from tokenizers import Tokenizer

from lstm_core.encoding import encode_words
from lstm_core.graphs import SENTIMENT_FILE, SENTIMENT_INPUTS
from lstm_core.model_card import ModelCard
from lstm_core.padding import pad_batch
from lstm_core.tokens import PAD_ID
from service.pipelines.base import CostProbe, Item, NoParams, Pipeline, Wire, bytes_column, unk_items
from service.pipelines.registry import register_pipeline
from service.runtime import Runtime

TOKENIZER_FILE = "tokenizer.json"


class SentimentResult(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


@register_pipeline("sentiment")
class SentimentPipeline(Pipeline[NoParams]):
    wire = Wire(
        native_path="/v1/sentiment",
        results_field="results",
        result_type=SentimentResult,
        schema_name="Sentiment",
        outputs=("label", "probabilities"),
        example=("It's a charming, often affecting journey!",),
    )

    def __init__(self, card: ModelCard, folder: Path, runtime: Runtime | None) -> None:
        super().__init__(card, folder, runtime)
        if not card.labels:
            raise ValueError("sentiment model card has no labels")
        self.labels = list(card.labels)
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        if runtime is not None:  # None in a front-end process: tokenise and format only
            self.session = runtime.session(self.graph_path(SENTIMENT_FILE))
            self.output_name = self.session.get_outputs()[0].name

    defers_tokenization = True

    def preprocess(self, texts: Sequence[str], params: NoParams) -> list[Item]:
        ids = encode_words(self.tokenizer, texts, self.card.max_length)
        return [Item(np.asarray(row, dtype=np.int64), len(row)) for row in ids]

    def preprocess_deferred(self, texts: Sequence[str], params: NoParams) -> list[Item]:
        """A single text is left to the batcher's thread; several are tokenised here, as ``preprocess`` does.

        Why the split: ``encode`` of one text holds the GIL on the event loop, while ``encode_batch`` of
        several releases it and spreads over the cores beside the running batch. Deferring 32-text requests
        too put their tokenising in series with the model in the one batch thread: 0.80× the texts/s
        (``bench.ab``, 8 pairs), where single texts gained 1.20×.
        """
        if len(texts) != 1:
            return self.preprocess(texts, params)
        return [Item(None, 0, None, texts[0])]

    def tokenize(self, items: Sequence[Item]) -> None:
        texts = [item.text for item in items]
        rows = encode_words(self.tokenizer, texts, self.card.max_length, release_gil=True)  # type: ignore[arg-type]
        for item, row in zip(items, rows, strict=True):
            item.data, item.length, item.text = np.asarray(row, dtype=np.int64), len(row), None

    def run_batch(self, items: Sequence[Item]) -> list[Any]:
        input_ids, lengths = pad_batch([item.data for item in items], PAD_ID)
        feeds = dict(zip(SENTIMENT_INPUTS, (input_ids, lengths), strict=True))
        (probabilities,) = self.runtime.run(self.session, [self.output_name], feeds)
        return list(probabilities)

    def postprocess(self, output: np.ndarray, params: NoParams) -> dict[str, Any]:
        probabilities = output.tolist()  # Python floats in one call: a fifth of a float() per element
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return {
            "label": self.labels[best],
            "score": probabilities[best],
            "probabilities": dict(zip(self.labels, probabilities, strict=True)),
        }

    def v2_columns(self, results: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {
            "label": bytes_column([r["label"] for r in results]),
            "probabilities": np.array([[r["probabilities"][x] for x in self.labels] for r in results], np.float32),
        }

    def cost_probe(self) -> CostProbe:
        """Rows of ``[UNK]``: one pass of the graph costs the same whatever ids it reads."""
        return CostProbe(unk_items)
