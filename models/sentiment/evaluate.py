"""Evaluation: accuracy, accuracy by sentence length, and how much gradient reaches early time steps.

The last two are what the cell comparison (``compare.py``) rests on: if plain RNNs lose long-range
information to vanishing gradients, it shows up as lower accuracy on long sentences and as a gradient
from the final state that shrinks fast with distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lstm_core.padding import pad_batch
from models.sentiment.model import SentimentClassifier

# (low, high) inclusive token-count buckets; SST-2 holds many short phrases and few long sentences
LENGTH_BUCKETS: tuple[tuple[int, int], ...] = ((1, 5), (6, 10), (11, 20), (21, 30), (31, 10_000))


def bucket_name(low: int, high: int) -> str:
    return f"{low}+" if high >= 10_000 else f"{low}-{high}"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length, so padding (wasted CPU) stays small during evaluation."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def predict_probabilities(
    model: SentimentClassifier, ids: Sequence[Sequence[int]], batch_size: int = 256
) -> np.ndarray:
    """Softmax probabilities ``[n, labels]`` in input order."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    for batch in length_sorted_batches([len(s) for s in ids], batch_size):
        input_ids, lengths = (torch.from_numpy(a).to(device) for a in pad_batch([ids[i] for i in batch]))
        logits = model(input_ids, lengths)
        out[batch] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out


def accuracy_report(probabilities: np.ndarray, labels: Sequence[int], lengths: Sequence[int]) -> dict:
    """Overall accuracy plus accuracy and count per length bucket (token counts after tokenization)."""
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    lengths_arr = np.asarray(lengths)
    buckets = {}
    for low, high in LENGTH_BUCKETS:
        in_bucket = (lengths_arr >= low) & (lengths_arr <= high)
        count = int(in_bucket.sum())
        buckets[bucket_name(low, high)] = {
            "n": count,
            "accuracy": float(correct[in_bucket].mean()) if count else None,
        }
    return {"accuracy": float(correct.mean()), "n": len(correct), "by_length": buckets}


def gradient_reach(
    model: SentimentClassifier, ids: Sequence[Sequence[int]], max_distance: int = 30, seed: int = 0
) -> dict:
    """Mean norm of d(final forward state . u)/d(input at distance d from the end), d = 0..max_distance.

    Only sentences with more than ``max_distance`` tokens are used, so every distance averages over the
    same sentences. ``u`` is a fixed random unit vector (one backward pass gives every position's
    gradient). The forward direction is the one that must carry the first words to the end; a ratio
    far below 1 between the earliest and the last position is the vanishing gradient, measured.
    """
    long_ids = [s for s in ids if len(s) > max_distance]
    if not long_ids:
        return {"n_sentences": 0, "max_distance": max_distance, "norm_by_distance": [], "ratio_first_to_last": None}
    model.eval()
    hidden = model.config.hidden
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(hidden, generator=generator)
    direction /= direction.norm()
    input_ids, lengths = (torch.from_numpy(a) for a in pad_batch(long_ids))
    embedded = model.embedding(input_ids).detach().requires_grad_(True)
    outputs = model.encode(embedded, lengths)
    rows = torch.arange(len(long_ids))
    final_forward = outputs[rows, lengths - 1, :hidden]
    (final_forward @ direction).sum().backward()
    norms = embedded.grad.norm(dim=-1)  # [batch, time]
    by_distance = []
    for distance in range(max_distance + 1):
        by_distance.append(float(norms[rows, lengths - 1 - distance].mean()))
    return {
        "n_sentences": len(long_ids),
        "max_distance": max_distance,
        "norm_by_distance": by_distance,
        "ratio_first_to_last": by_distance[-1] / by_distance[0] if by_distance[0] else None,
    }
