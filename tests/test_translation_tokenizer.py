"""Subword tokenizers: special ids, EOS on the source side, and detokenisation that gives text back."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from lstm_core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from models.translation.data import load_pairs
from models.translation.subwords import decode_target, train_tokenizer


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    return load_pairs("train", 5000)


@pytest.fixture(scope="module")
def tokenizers(pairs) -> tuple[Tokenizer, Tokenizer]:
    sources, targets = pairs
    return train_tokenizer(sources, 2000, append_eos=True), train_tokenizer(targets, 2000, append_eos=False)


def test_special_tokens_have_fixed_ids(tokenizers) -> None:
    for tokenizer in tokenizers:
        ids = [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]")]
        assert ids == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]


def test_source_ends_in_eos_target_does_not(tokenizers) -> None:
    source, target = tokenizers
    assert source.encode("A dog runs.").ids[-1] == EOS_ID
    assert EOS_ID not in target.encode("Ein Hund rennt.").ids


def test_round_trip_on_real_held_out_sentences(tokenizers) -> None:
    """decode(encode(text)) is the (NFKC-normalised) text itself: what sacrebleu scores is real output text."""
    source, target = tokenizers
    val_en, val_de = load_pairs("val", 300)
    for tokenizer, texts in ((target, val_de), (source, val_en)):
        ids = [e.ids for e in tokenizer.encode_batch(texts)]
        known = [(t, i) for t, i in zip(texts, ids, strict=True) if UNK_ID not in i]
        assert len(known) > 0.9 * len(texts)  # held-out text: a few unseen characters are allowed
        decoded = decode_target(tokenizer, [i for _, i in known])
        assert decoded == [tokenizer.normalizer.normalize_str(t) for t, _ in known]
        assert sum(d == t for d, (t, _) in zip(decoded, known, strict=True)) > 0.95 * len(known)


def test_umlauts_and_case_survive(tokenizers) -> None:
    _, target = tokenizers
    text = "Zwei Männer überqueren die Straße."
    assert target.decode(target.encode(text).ids) == text
