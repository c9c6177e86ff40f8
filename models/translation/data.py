"""Multi30k (task 1) English→German pairs and length-bucketed training batches."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lstm_core.padding import pad_batch
from lstm_core.tokens import BOS_ID, EOS_ID
from models.datasets import read_lines

SPLITS = ("train", "val", "test_2016_flickr")


def data_files(split: str, src: str = "en", tgt: str = "de") -> tuple[str, str]:
    return f"multi30k/{split}.{src}.gz", f"multi30k/{split}.{tgt}.gz"


def load_pairs(split: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Aligned (English, German) sentences of one split, checked against the published sha256."""
    src_file, tgt_file = data_files(split)
    sources, targets = list(read_lines(src_file)), list(read_lines(tgt_file))
    if len(sources) != len(targets):
        raise ValueError(f"{split}: {len(sources)} source lines but {len(targets)} target lines")
    if limit is not None:
        sources, targets = sources[:limit], targets[:limit]
    return sources, targets


@dataclass
class Batch:
    src: torch.Tensor  # [B, S] int64, PAD-padded, each row ends in EOS
    src_lengths: torch.Tensor  # [B] int64
    tgt_in: torch.Tensor  # [B, T] BOS + target (teacher forcing input)
    tgt_out: torch.Tensor  # [B, T] target + EOS (what the decoder must predict)


def pad(rows: list[list[int]]) -> torch.Tensor:
    """``[PAD]``-padded int64 ``[B, longest]`` tensor (``lstm_core.padding.pad_batch``, as torch)."""
    return torch.from_numpy(pad_batch(rows)[0])


def make_batch(src_ids: list[list[int]], tgt_ids: list[list[int]]) -> Batch:
    return Batch(
        src=pad(src_ids),
        src_lengths=torch.tensor([len(s) for s in src_ids], dtype=torch.long),
        tgt_in=pad([[BOS_ID, *t] for t in tgt_ids]),
        tgt_out=pad([[*t, EOS_ID] for t in tgt_ids]),
    )


def batch_indices(
    src_ids: list[list[int]], tgt_ids: list[list[int]], batch_tokens: int, rng: random.Random
) -> list[list[int]]:
    """Index lists of similar-length pairs, shuffled as whole batches.

    Sorting by length (with random tie-breaking) cuts padding, which on a CPU is wasted compute; a
    token budget rather than a fixed count keeps every batch's cost about equal. Plain lists, so a
    resumable run can store an epoch's order in its checkpoint.
    """
    order = sorted(range(len(src_ids)), key=lambda i: (len(src_ids[i]), len(tgt_ids[i]), rng.random()))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, len(src_ids[i]), len(tgt_ids[i]) + 1)
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_if_added = [], max(len(src_ids[i]), len(tgt_ids[i]) + 1)
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def bucketed_batches(
    src_ids: list[list[int]], tgt_ids: list[list[int]], batch_tokens: int, rng: random.Random
) -> Iterator[Batch]:
    """The batches of ``batch_indices``, built."""
    for idx in batch_indices(src_ids, tgt_ids, batch_tokens, rng):
        yield make_batch([src_ids[i] for i in idx], [tgt_ids[i] for i in idx])
