"""Translation: English texts → source ids → encoder → step-by-step decoder (greedy or beam) → German texts.

Each text is one batcher item keyed by ``(beam_size, max_length, length_penalty)`` — items decoded
together must share the search settings — with its source length as its cost, so the batcher groups
similar lengths. Source encoding is ``lstm_core.encoding.encode_source``, the function training and
export use. A batch is decoded by ``lstm_core.translation_runtime.Seq2SeqRuntime`` (encoder once, then
one decoder step per output token, stopping as soon as every sentence in the batch is finished); on
CUDA the decoder state stays on the device between steps (IOBinding). Detokenisation is the target
tokenizer's own decoder, run in the worker thread so the event loop only returns strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from lstm_core.decode_scheduler import DecodeScheduler, Sentence
from lstm_core.encoding import decode_targets, encode_source, probe_source
from lstm_core.graphs import DECODER_FILE, ENCODER_FILE, ROWS_FILE, TOPK_FILE
from lstm_core.model_card import ModelCard
from lstm_core.tokens import BOS_ID, EOS_ID, UNK_ID
from lstm_core.translation_runtime import COST_PROBE, Device, DeviceRows, Seq2SeqRuntime
from lstm_core.translation_search import output_limit
from service.pipelines.base import CostProbe, DecodePolicy, Item, Pipeline, Wire, bytes_column
from service.pipelines.registry import register_pipeline
from service.runtime import Runtime

SOURCE_TOKENIZER, TARGET_TOKENIZER = "source_tokenizer.json", "target_tokenizer.json"
DEFAULT_BEAM, DEFAULT_ALPHA = 4, 0.6
WARMUP_STEPS = 4  # warm-up decodes only a few steps: enough to allocate every shape class once


class TranslateParams(BaseModel):
    """The search settings a request may choose (native body fields, V2 request parameters)."""

    model_config = ConfigDict(extra="forbid")
    beam_size: int = Field(4, ge=1, le=8, description="beam width (1 = greedy)")
    max_length: int = Field(128, ge=1, le=256, description="most output tokens per translation")
    length_penalty: float | None = Field(
        None, ge=0.0, le=2.0, description="GNMT length penalty alpha for beam search (default: the model card's)"
    )


@register_pipeline("translation")
class TranslationPipeline(Pipeline[TranslateParams]):
    wire = Wire(
        native_path="/v1/translate",
        results_field="translations",
        result_type=str,
        schema_name="Translate",
        outputs=("translation",),
        params=TranslateParams,
        example=("A man is riding a bicycle.",),
    )
    warmup_lengths = (1, 8, 16, 32, 64)

    def __init__(self, card: ModelCard, folder: Path, runtime: Runtime | None) -> None:
        super().__init__(card, folder, runtime)
        self.source = Tokenizer.from_file(str(folder / SOURCE_TOKENIZER))
        self.target = Tokenizer.from_file(str(folder / TARGET_TOKENIZER))
        self.source.no_padding()
        self.source.no_truncation()
        if runtime is not None:  # None in a front-end process: tokenise and format only
            self.model = Seq2SeqRuntime(
                runtime.session(self.graph_path(ENCODER_FILE)),
                runtime.session(self.graph_path(DECODER_FILE)),
                runtime.binding_device,
            )
        self.default_beam = int(card.serving.get("default_beam_size", DEFAULT_BEAM))
        self.alpha = float(card.serving.get("length_penalty_alpha", DEFAULT_ALPHA))

    def preprocess(self, texts: Sequence[str], params: TranslateParams) -> list[Item]:
        alpha = self.alpha if params.length_penalty is None else params.length_penalty
        key = (params.beam_size, params.max_length, alpha)
        rows = encode_source(self.source, texts, self.card.max_length)
        return [Item(np.asarray(ids, dtype=np.int64), len(ids), key) for ids in rows]

    def request_cost(self, n_texts: int, params: TranslateParams) -> int:
        """Decoder rows × steps at most: texts × beam_size × max_length (not the source length: the search's)."""
        return n_texts * params.beam_size * params.max_length

    def run_batch(self, items: Sequence[Item]) -> list[str]:
        beam, max_length, alpha = items[0].key
        hyps = self.model.search([item.data for item in items], beam, max_length, alpha)
        return decode_targets(self.target, hyps)

    def step_decoding(self, policy: DecodePolicy) -> TranslationSteps | None:
        """Step-level decoding through ``rows.onnx`` and ``topk.onnx``; None for a folder without them."""
        if not all((self.folder / f).is_file() and f in self.card.files for f in (ROWS_FILE, TOPK_FILE)):
            return None
        return TranslationSteps(self, policy)

    def v2_columns(self, results: Sequence[str]) -> dict[str, np.ndarray]:
        return {"translation": bytes_column(results)}

    def warmup_batches(self, max_batch_size: int) -> list[list[Item]]:
        """Greedy and beam batches of each warm-up length, alone and full, decoding a few steps only."""
        batches = []
        for n in self.warmup_lengths:
            ids = np.asarray([UNK_ID] * (n - 1) + [EOS_ID], dtype=np.int64) if n > 1 else np.asarray([EOS_ID])
            for beam in sorted({1, self.default_beam}):
                for size in sorted({1, max_batch_size}):
                    batches.append([Item(ids, n, (beam, WARMUP_STEPS, self.alpha)) for _ in range(size)])
        return batches

    def cost_probe(self) -> CostProbe:
        """Full searches at the default beam over a typical caption cut to ``length`` source tokens.

        The batcher's length is the source length and decoding runs about as many steps as the source
        has tokens, so ``max_length`` is the source length: cost then grows with length as in service.
        """

        def batch(size: int, length: int) -> list[Item]:
            ids = np.asarray(probe_source(self.source, length), dtype=np.int64)
            return [Item(ids, length, (self.default_beam, length, self.alpha)) for _ in range(size)]

        return CostProbe(batch, COST_PROBE)


class TranslationSteps:
    """Step-level decoding of the translation pipeline: its sessions, on the runtime's device."""

    def __init__(self, pipeline: TranslationPipeline, policy: DecodePolicy) -> None:
        """``policy.threads``: the decode thread's own sessions get this many intra-op threads. One decoder step
        over a full running set is one large matrix product, which a second core speeds up (measured
        1.34× at beam 4, c=32 on 2 cores), while sentiment's many small batches lose by it (0.81× with
        32-text requests): so the threads are the decoder's, not the runtime's."""
        runtime = pipeline.runtime
        self.pipeline = pipeline
        self.policy = policy
        threads = policy.threads
        self.device = Device(runtime.device, runtime.options.cuda_device_id if runtime.device == "cuda" else 0)
        own = threads is not None and threads != runtime.options.intra_op_threads
        encoder, decoder = (
            (runtime.session(pipeline.graph_path(f), threads) for f in (ENCODER_FILE, DECODER_FILE))
            if own
            else (pipeline.model.encoder, pipeline.model.decoder)
        )
        self.rows = DeviceRows(
            encoder,
            decoder,
            runtime.session(pipeline.folder / ROWS_FILE, threads),
            runtime.session(pipeline.folder / TOPK_FILE, threads),
            self.device,
        )

    def scheduler(self) -> DecodeScheduler:
        return DecodeScheduler(
            self.rows,
            max_rows=self.policy.max_rows,
            max_positions=self.policy.max_positions,
            bos=BOS_ID,
            eos=EOS_ID,
            lazy_retire=self.policy.lazy_retire,
            admit_wait_steps=self.policy.admit_wait_steps,
        )

    def sentence(self, item: Item, tag: object = None) -> Sentence:
        beam, max_length, alpha = item.key
        return Sentence(item.data, beam, output_limit(max_length, item.length), alpha, tag)

    def outputs(self, sentences: Sequence[Sentence]) -> list[str]:
        return decode_targets(self.pipeline.target, [s.result or [] for s in sentences])

    def warmup(self) -> int:
        """Greedy and default-beam sentences of each warm-up length, joining a running set at different steps."""
        scheduler = self.scheduler()
        default_beam = self.pipeline.default_beam
        count = 0
        for beam in sorted({1, default_beam}):
            for n in self.pipeline.warmup_lengths:
                ids = np.asarray([UNK_ID] * (n - 1) + [EOS_ID], dtype=np.int64)
                for copies in (1, 4):
                    for _ in range(copies):
                        scheduler.add(Sentence(ids, beam, WARMUP_STEPS, self.pipeline.alpha))
                        count += 1
                    scheduler.step()
        while not scheduler.idle:
            scheduler.step()
        return count
