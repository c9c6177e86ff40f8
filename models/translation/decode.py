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


def search_ids(
    model: Seq2Seq,
    src_ids: Sequence[list[int]],
    beam_size: int = 1,
    max_length: int = 128,
    alpha: float = 0.6,
) -> list[list[int]]:
    """Target ids for one batch of source id lists (greedy when ``beam_size`` is 1)."""
    src = pad(list(src_ids))
    lengths = torch.tensor([len(s) for s in src_ids], dtype=torch.long)
    max_length = output_limit(max_length, int(lengths.max()))
    with torch.inference_mode():
        stepper = TorchStepper(model, src, lengths, beam_size)
        if beam_size == 1:
            return greedy_search(stepper, len(src_ids), max_length, BOS_ID, EOS_ID)
        return beam_search(stepper, len(src_ids), beam_size, max_length, BOS_ID, EOS_ID, alpha)


def translate(
    model: Seq2Seq,
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
    was_training = model.training
    model.eval()
    ids = encode_source(src_tokenizer, list(texts), max_src_tokens)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        hyps = search_ids(model, [ids[i] for i in chunk], beam_size, max_length, alpha)
        for i, text in zip(chunk, decode_target(tgt_tokenizer, hyps), strict=True):
            out[i] = text
    model.train(was_training)
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU on detokenised, case-sensitive text (sacrebleu defaults: 13a tokenisation)."""
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
