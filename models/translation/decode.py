"""Translating with the torch model through the shared numpy search (greedy or beam) and scoring with sacrebleu."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sacrebleu
import torch
from tokenizers import Tokenizer

from lstm_core.encoding import encode_source
from lstm_core.tokens import BOS_ID, EOS_ID, PAD_ID
from lstm_core.translation_search import beam_search, greedy_search, output_limit

from .data import pad
from .model import Seq2Seq
from .subwords import decode_target


class TorchStepper:
    """The ``step`` function of the search, backed by the torch model (state kept as torch tensors)."""

    def __init__(self, model: Seq2Seq, src: torch.Tensor, lengths: torch.Tensor, copies: int) -> None:
        self.model = model
        enc_out, enc_keys, h, c = model.encode(src, lengths)
        self.enc_out = enc_out.repeat_interleave(copies, dim=0)
        self.enc_keys = enc_keys.repeat_interleave(copies, dim=0)
        self.mask = (src != PAD_ID).repeat_interleave(copies, dim=0)
        self.h = h.repeat_interleave(copies, dim=0)
        self.c = c.repeat_interleave(copies, dim=0)

    def __call__(self, prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        index = torch.from_numpy(state_index)
        log_probs, self.h, self.c = self.model.decode_step(
            torch.from_numpy(prev_tokens), self.h[index], self.c[index], self.enc_out, self.enc_keys, self.mask
        )
        return log_probs.numpy()


class EnsembleStepper:
    """Several models' steppers as one: each token scored by the log of the models' mean probability.

    Averaging probabilities (not log-probabilities) is the usual ensemble of NMT systems: a token one
    model rules out keeps the others' mass. The models must share vocabularies (the same tokenizers).
    """

    def __init__(self, steppers: Sequence[TorchStepper]) -> None:
        self.steppers = list(steppers)
        self.log_count = float(np.log(len(self.steppers)))

    def __call__(self, prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        each = np.stack([stepper(prev_tokens, state_index) for stepper in self.steppers])
        return np.logaddexp.reduce(each, axis=0) - np.float32(self.log_count)


def as_models(model: Seq2Seq | Sequence[Seq2Seq]) -> list[Seq2Seq]:
    """One model or an ensemble, as a list."""
    return [model] if isinstance(model, Seq2Seq) else list(model)


def search_ids(
    model: Seq2Seq | Sequence[Seq2Seq],
    src_ids: Sequence[list[int]],
    beam_size: int = 1,
    max_length: int = 128,
    alpha: float = 0.6,
) -> list[list[int]]:
    """Target ids for one batch of source id lists (greedy when ``beam_size`` is 1); a list of models
    decodes as their ensemble (``EnsembleStepper``)."""
    src = pad(list(src_ids))
    lengths = torch.tensor([len(s) for s in src_ids], dtype=torch.long)
    max_length = output_limit(max_length, int(lengths.max()))
    with torch.inference_mode():
        steppers = [TorchStepper(m, src, lengths, beam_size) for m in as_models(model)]
        stepper = steppers[0] if len(steppers) == 1 else EnsembleStepper(steppers)
        if beam_size == 1:
            return greedy_search(stepper, len(src_ids), max_length, BOS_ID, EOS_ID)
        return beam_search(stepper, len(src_ids), beam_size, max_length, BOS_ID, EOS_ID, alpha)


def translate(
    model: Seq2Seq | Sequence[Seq2Seq],
    src_tokenizer: Tokenizer,
    tgt_tokenizer: Tokenizer,
    texts: Sequence[str],
    beam_size: int = 1,
    max_length: int = 128,
    alpha: float = 0.6,
    batch_size: int = 64,
    max_src_tokens: int = 256,
) -> list[str]:
    """Detokenised translations in input order; sentences are decoded in length-sorted batches."""
    models = as_models(model)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    ids = encode_source(src_tokenizer, list(texts), max_src_tokens)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        hyps = search_ids(model, [ids[i] for i in chunk], beam_size, max_length, alpha)
        for i, text in zip(chunk, decode_target(tgt_tokenizer, hyps), strict=True):
            out[i] = text
    for m, mode in zip(models, was_training, strict=True):
        m.train(mode)
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU on detokenised, case-sensitive text (sacrebleu defaults: 13a tokenisation)."""
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
