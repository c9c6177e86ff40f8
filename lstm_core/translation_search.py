"""Batched greedy and beam search over a one-step decoder, in numpy only.

The search is written once and driven by a ``step`` function, so the same code decodes with the
torch model (evaluation during training, export parity) and with onnxruntime (the service): what is
measured at training time is what is served. ``step(prev_tokens, state_index)`` runs one decoder
step for N rows: it first reorders the decoder state by ``state_index`` (row i continues the state of
previous row ``state_index[i]``; beams fork and die this way), then feeds ``prev_tokens`` and returns
log-probabilities [N, V]. Keeping the reorder inside the step lets a backend keep its state on the
device (onnxruntime IOBinding) — only token ids and indices cross to the host and back.

Rows are sentence-major: row ``b * beam_size + k`` is beam k of sentence b.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def output_limit(max_length: int, longest_source: int) -> int:
    """Most target tokens worth decoding for a batch: ``max_length``, but at most 2 × source + 10.

    A German caption is rarely more than about 1.5× its English source in subwords; the cap stops a
    degenerate repetition from running every row of a batch to ``max_length`` steps.
    """
    return max(1, min(max_length, 2 * longest_source + 10))


def greedy_search(step: StepFn, batch: int, max_length: int, bos: int, eos: int) -> list[list[int]]:
    """Argmax decoding of ``batch`` sentences; stops as soon as every sentence has emitted EOS."""
    prev = np.full(batch, bos, dtype=np.int64)
    index = np.arange(batch, dtype=np.int64)
    finished = np.zeros(batch, dtype=bool)
    steps: list[np.ndarray] = []
    for _ in range(max_length):
        tokens = step(prev, index).argmax(axis=1).astype(np.int64)
        tokens[finished] = eos
        steps.append(tokens)
        finished |= tokens == eos
        if finished.all():
            break
        prev = tokens
    out = np.stack(steps, axis=1) if steps else np.zeros((batch, 0), dtype=np.int64)
    return [_until_eos(row, eos) for row in out]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation ((5 + L) / 6) ** alpha; alpha 0 ranks by raw log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(
    step: StepFn,
    batch: int,
    beam_size: int,
    max_length: int,
    bos: int,
    eos: int,
    alpha: float = 0.6,
) -> list[list[int]]:
    """Beam search for ``batch`` sentences with ``beam_size`` beams each (rows prepared by the caller).

    A sentence stops once it has ``beam_size`` finished hypotheses or no live beam can still beat its
    best finished one (live scores only fall; with alpha ≥ 0 the best they can be normalised to is
    by the penalty at ``max_length``); decoding stops when every sentence has stopped.
    """
    k = beam_size
    n = batch * k
    prev = np.full(n, bos, dtype=np.int64)
    index = np.arange(n, dtype=np.int64)
    scores = np.full((batch, k), -np.inf, dtype=np.float64)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step does not repeat it k times
    history = np.zeros((n, 0), dtype=np.int64)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    best_bound = length_penalty(max_length, max(alpha, 0.0))
    for t in range(max_length):
        logp = step(prev, index).astype(np.float64)
        vocab = logp.shape[1]
        cand = (scores.reshape(n, 1) + logp).reshape(batch, k * vocab)
        top = np.argpartition(-cand, 2 * k - 1, axis=1)[:, : 2 * k]
        top_scores = np.take_along_axis(cand, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        new_prev = np.full(n, eos, dtype=np.int64)
        new_index = np.arange(n, dtype=np.int64)
        new_scores = np.full((batch, k), -np.inf, dtype=np.float64)
        for b in np.flatnonzero(~done):
            alive = 0
            for rank, (flat, score) in enumerate(zip(top[b], top_scores[b], strict=True)):
                beam, token = divmod(int(flat), vocab)
                row = b * k + beam
                if token == eos:
                    if rank < k:  # an EOS outside the top k would never have been kept by a k-beam search
                        finished[b].append((score / length_penalty(t + 1, alpha), history[row].tolist()))
                    continue
                new_index[b * k + alive], new_prev[b * k + alive] = row, token
                new_scores[b, alive] = score
                alive += 1
                if alive == k:
                    break
            if finished[b] and (
                len(finished[b]) >= k or max(s for s, _ in finished[b]) >= new_scores[b, 0] / best_bound
            ):
                done[b] = True
        history = np.concatenate([history[new_index], new_prev[:, None]], axis=1)
        prev, index, scores = new_prev, new_index, new_scores
        if done.all():
            break
    length = history.shape[1]
    for b in np.flatnonzero(~done):  # ran out of steps: live beams compete as they are
        for beam in range(k):
            if np.isfinite(scores[b, beam]):
                finished[b].append((scores[b, beam] / length_penalty(length, alpha), history[b * k + beam].tolist()))
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def _until_eos(row: np.ndarray, eos: int) -> list[int]:
    hits = np.flatnonzero(row == eos)
    return row[: hits[0]].tolist() if hits.size else row.tolist()
