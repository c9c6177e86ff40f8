"""The committed translation model: a complete, checked version folder that decodes real sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from lstm_core.model_card import ModelCard
from lstm_core.padding import pad_batch
from lstm_core.tokens import BOS_ID, EOS_ID
from lstm_core.translation_runtime import Seq2SeqRuntime
from lstm_core.translation_search import beam_search, greedy_search
from models.translation.data import load_pairs
from models.translation.decode import bleu

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDER = max((REPO_ROOT / "model_repository" / "translation").iterdir(), key=lambda p: int(p.name))


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(FOLDER)


@pytest.fixture(scope="module")
def runtime() -> Seq2SeqRuntime:
    return Seq2SeqRuntime.from_folder(FOLDER)


@pytest.fixture(scope="module")
def val_rows() -> tuple[list[list[int]], list[str]]:
    sources, targets = load_pairs("val", 64)
    tokenizer = Tokenizer.from_file(str(FOLDER / "source_tokenizer.json"))
    return [e.ids for e in tokenizer.encode_batch(sources)], targets


def test_folder_matches_its_card_and_stays_small(card: ModelCard) -> None:
    assert card.task == "translation" and card.mismatched_files(FOLDER) == []
    # the 30 MB: fp32 17.5 MB + int8 10.3 MB + tokenizers 0.8 MB = 28.7 MB
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) <= 30_000_000
    assert card.parity["greedy_identical"] and card.parity["beam4_identical"]
    assert card.metrics["test_2016_flickr_bleu_beam4"] >= card.metrics["test_2016_flickr_bleu_greedy"]


def test_beam_size_one_equals_greedy_on_real_sentences(runtime: Seq2SeqRuntime, val_rows) -> None:
    rows, _ = val_rows
    src, lengths = pad_batch([np.asarray(r) for r in rows])
    greedy = greedy_search(runtime.stepper(src, lengths, 1), len(rows), 60, BOS_ID, EOS_ID)
    beam = beam_search(runtime.stepper(src, lengths, 1), len(rows), 1, 60, BOS_ID, EOS_ID, alpha=0.6)
    assert beam == greedy


def test_a_sentence_decodes_the_same_alone_and_in_a_padded_batch(runtime: Seq2SeqRuntime, val_rows) -> None:
    rows, _ = val_rows
    batched = runtime.search(rows[:16], 4, 60)
    assert [runtime.search([r], 4, 60)[0] for r in rows[:16]] == batched


def test_quality_on_held_out_sentences(runtime: Seq2SeqRuntime, val_rows) -> None:
    """The shipped model is a trained one: validation BLEU far above what an untrained decoder gets (~0)."""
    rows, references = val_rows
    target = Tokenizer.from_file(str(FOLDER / "target_tokenizer.json"))
    hypotheses = target.decode_batch(runtime.search(rows, 4, 80), skip_special_tokens=True)
    assert bleu(hypotheses, references) > 20
