"""Knowledge distillation: a small student learns from the averaged, softened answers of trained runs.

Why: the mean of several full-size runs scores higher on the held-out sentences than any one of them
(the ensemble effect), but serving five models costs five times the CPU and folder size. Training one
smaller model on the ensemble's soft probabilities keeps part of that gain at the size of one model
(Hinton et al., 2015). The teachers are finished run folders of ``lstm-serve train sentiment``.

Teachers are read through their own ``tokenizer.json`` so a teacher with another vocabulary still
teaches correctly; teachers that share the student's tokenizer (the usual case: the vocabulary is a
pure function of the training split) are encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from lstm_core.encoding import encode_words
from models.sentiment.evaluate import predict_probabilities
from models.sentiment.model import CHECKPOINT, TOKENIZER, SentimentClassifier, load_classifier


@dataclass
class Teacher:
    """One finished run: its classifier, its tokenizer and the length limit it was trained with."""

    run: Path
    model: SentimentClassifier
    tokenizer_json: str
    max_length: int

    @classmethod
    def load(cls, run: Path) -> Teacher:
        if not (run / CHECKPOINT).is_file():
            raise SystemExit(f"teacher {run} has no {CHECKPOINT}: train it first (lstm-serve train sentiment)")
        model, saved = load_classifier(run)
        return cls(run, model, (run / TOKENIZER).read_text(), int(saved["max_length"]))

    def probabilities(self, texts: Sequence[str], student_ids: list, student_tokenizer_json: str) -> np.ndarray:
        """Softmax probabilities ``[n, labels]``; reuses the student's ids when the vocabularies match."""
        if self.tokenizer_json == student_tokenizer_json:
            ids = [s[: self.max_length] for s in student_ids]
        else:
            ids = encode_words(Tokenizer.from_str(self.tokenizer_json), list(texts), self.max_length)
        return predict_probabilities(self.model, ids)


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` from ``softmax(logits)``: log p differs from the logits by a constant per row."""
    logits = np.log(np.clip(probabilities, 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def ensemble_probabilities(per_teacher: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """The teachers' mean softened distribution: the student's soft target."""
    return np.mean([soften(p, temperature) for p in per_teacher], axis=0).astype(np.float32)


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    soft_target: torch.Tensor,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """``(1 - w) * CE(hard labels) + w * T^2 * KL(soft target || student at T)``.

    The ``T^2`` keeps the soft term's gradients on the scale of the hard term's whatever T is.
    """
    hard = nn.functional.cross_entropy(logits, target)
    if weight <= 0:
        return hard
    log_student = nn.functional.log_softmax(logits / temperature, dim=-1)
    soft = nn.functional.kl_div(log_student, soft_target, reduction="batchmean") * temperature**2
    return (1.0 - weight) * hard + weight * soft
