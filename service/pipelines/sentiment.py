"""Sentiment: texts → token ids (the model's own ``tokenizer.json``) → biLSTM → label probabilities.

The tokenizer saved with the model normalises raw user text the way training did; here it is only
encoded, truncated to the card's ``max_length`` and padded per batch (``lengths`` tells the graph
where each row ends, so padding does not change a text's answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.model_card import ModelCard
from service.pipelines.base import Item, Pipeline, pad_batch, register_pipeline
from service.runtime import Runtime

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


@register_pipeline("sentiment")
class SentimentPipeline(Pipeline):
    def __init__(self, card: ModelCard, folder: Path, runtime: Runtime) -> None:
        super().__init__(card, folder, runtime)
        if not card.labels:
            raise ValueError("sentiment model card has no labels")
        self.labels = list(card.labels)
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pad_id = _token_id(self.tokenizer, "[PAD]", 0)
        self.unk_id = _token_id(self.tokenizer, "[UNK]", 1)
        self.session = runtime.session(folder / MODEL_FILE)
        self.output_name = self.session.get_outputs()[0].name

    def preprocess(self, texts: Sequence[str], params: Mapping[str, Any]) -> list[Item]:
        encodings = self.tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [self.tokenizer.encode(texts[0])]
        limit = self.card.max_length
        items = []
        for encoding in encodings:
            ids = encoding.ids[:limit] or [self.unk_id]  # a text with no tokens is one unknown word
            items.append(Item(np.asarray(ids, dtype=np.int64), len(ids)))
        return items

    def run_batch(self, items: Sequence[Item]) -> list[Any]:
        input_ids, lengths = pad_batch([item.data for item in items], self.pad_id)
        (probabilities,) = self.runtime.run(
            self.session, [self.output_name], {"input_ids": input_ids, "lengths": lengths}
        )
        return list(probabilities)

    def postprocess(self, output: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        probabilities = [float(p) for p in output]
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return {
            "label": self.labels[best],
            "score": probabilities[best],
            "probabilities": dict(zip(self.labels, probabilities, strict=True)),
        }


def _token_id(tokenizer: Tokenizer, token: str, default: int) -> int:
    found = tokenizer.token_to_id(token)
    return default if found is None else found
