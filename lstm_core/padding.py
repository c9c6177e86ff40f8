"""Right-padding token id sequences into the ``(ids, lengths)`` pair every exported graph takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lstm_core.tokens import PAD_ID


def pad_batch(sequences: Sequence[Sequence[int] | np.ndarray], pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad into an int64 ``[batch, longest]`` array plus the int64 real lengths ``[batch]``.

    The graphs are told each row's length, so padding never changes a row's answer (export checks it).
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    ids = np.full((len(sequences), int(lengths.max(initial=1))), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths
