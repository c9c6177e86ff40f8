"""Translation: English texts → source ids → encoder → step-by-step decoder (greedy or beam) → German texts.

Each text is one batcher item keyed by ``(beam_size, max_length, length_penalty)`` — items decoded
together must share the search settings — with its source length as its cost, so the batcher groups
similar lengths. A batch is decoded by ``Seq2SeqRuntime`` (encoder once, then one decoder step per
output token, stopping as soon as every sentence in the batch is finished); on CUDA the decoder state
stays on the device between steps (IOBinding). Detokenisation is the target tokenizer's own decoder,
run in the worker thread so the event loop only returns strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.model_card import ModelCard
from service.pipelines.base import Item, Pipeline, register_pipeline
from service.pipelines.translation_runtime import DECODER_FILE, ENCODER_FILE, EOS_ID, UNK_ID, Seq2SeqRuntime
from service.runtime import Runtime

SOURCE_TOKENIZER, TARGET_TOKENIZER = "source_tokenizer.json", "target_tokenizer.json"
DEFAULT_BEAM, DEFAULT_ALPHA = 4, 0.6
WARMUP_STEPS = 4  # warm-up decodes only a few steps: enough to allocate every shape class once


@register_pipeline("translation")
class TranslationPipeline(Pipeline):
    warmup_lengths = (1, 8, 16, 32, 64)

    def __init__(self, card: ModelCard, folder: Path, runtime: Runtime) -> None:
        super().__init__(card, folder, runtime)
        self.source = Tokenizer.from_file(str(folder / SOURCE_TOKENIZER))
        self.target = Tokenizer.from_file(str(folder / TARGET_TOKENIZER))
        self.source.no_padding()
        self.source.no_truncation()
        self.model = Seq2SeqRuntime(
            runtime.session(folder / ENCODER_FILE),
            runtime.session(folder / DECODER_FILE),
            runtime.options.cuda_device_id,
        )
        self.default_beam = int(card.serving.get("default_beam_size", DEFAULT_BEAM))
        self.default_alpha = float(card.serving.get("length_penalty_alpha", DEFAULT_ALPHA))

    def _key(self, params: Mapping[str, Any]) -> tuple[int, int, float]:
        beam = int(params.get("beam_size", self.default_beam))
        if not 1 <= beam <= 8:
            raise ValueError(f"beam_size must be 1..8, got {beam}")
        max_length = int(params.get("max_length", self.card.max_length))
        alpha = float(params.get("length_penalty", self.default_alpha))
        return beam, max(1, max_length), alpha

    def preprocess(self, texts: Sequence[str], params: Mapping[str, Any]) -> list[Item]:
        key = self._key(params)
        limit = self.card.max_length
        items = []
        for encoding in self.source.encode_batch(list(texts)):
            ids = encoding.ids  # the tokenizer appends [EOS]
            if len(ids) > limit:
                ids = [*ids[: limit - 1], EOS_ID]
            if len(ids) == 1:  # nothing but EOS (e.g. only unknown characters stripped): one unknown word
                ids = [UNK_ID, EOS_ID]
            items.append(Item(np.asarray(ids, dtype=np.int64), len(ids), key))
        return items

    def run_batch(self, items: Sequence[Item]) -> list[str]:
        beam, max_length, alpha = items[0].key
        hyps = self.model.search([item.data for item in items], beam, max_length, alpha)
        return self.target.decode_batch(hyps, skip_special_tokens=True)

    def warmup_batches(self, max_batch_size: int) -> list[list[Item]]:
        """Greedy and beam batches of each warm-up length, alone and full, decoding a few steps only."""
        batches = []
        for n in self.warmup_lengths:
            ids = np.asarray([UNK_ID] * (n - 1) + [EOS_ID], dtype=np.int64) if n > 1 else np.asarray([EOS_ID])
            for beam in sorted({1, self.default_beam}):
                for size in sorted({1, max_batch_size}):
                    batches.append([Item(ids, n, (beam, WARMUP_STEPS, self.default_alpha)) for _ in range(size)])
        return batches
