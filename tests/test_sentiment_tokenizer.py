"""The PTB normalisation inside tokenizer.json: raw user text and treebank text give the same tokens."""

from __future__ import annotations

import pytest

from lstm_core.encoding import encode_words
from lstm_core.padding import pad_batch
from lstm_core.tokens import PAD_ID, UNK_ID
from models.sentiment.data import load_split
from models.text import train_word_tokenizer

RAW_VS_PTB = [
    ("It's a charming, often affecting journey!", "it 's a charming , often affecting journey !"),
    ("I don't think it CAN'T work...", "i do n't think it ca n't work ..."),
    ('"Wow" (really).', "`` wow '' ( really ) ."),
    ("Mr. Smith's critics' U.S. debut cost $5,000.", "mr. smith 's critics ' u.s. debut cost $ 5,000 ."),
    ("They're here; we'll see -- isn't it?", "they 're here ; we 'll see -- is n't it ?"),
    ("I’m sure you’ve seen it", "i 'm sure you 've seen it"),
    ("Rock and/or R&B: a gross-out", "rock and/or r&b : a gross-out"),
]


@pytest.fixture(scope="module")
def full_vocab_tokenizer():
    """Every training word in the vocabulary, so tokens are compared, not [UNK]s."""
    return train_word_tokenizer(load_split("train").texts, vocab_size=100_000, min_frequency=1)


@pytest.mark.parametrize(("raw", "ptb"), RAW_VS_PTB)
def test_raw_text_tokenizes_like_treebank_text(full_vocab_tokenizer, raw: str, ptb: str) -> None:
    raw_tokens = full_vocab_tokenizer.encode(raw).tokens
    assert raw_tokens == full_vocab_tokenizer.encode(ptb).tokens
    assert len(raw_tokens) == len(ptb.split())


def test_treebank_text_keeps_its_tokens(full_vocab_tokenizer) -> None:
    """The normaliser is (almost) the identity on PTB text: training sees the treebank's own tokens."""
    canonical = {"``": '"', "''": '"', "`": "'"}
    texts = load_split("train").texts
    encodings = full_vocab_tokenizer.encode_batch(texts)
    same = sum(
        enc.tokens == [canonical.get(w, w) for w in text.split()] for enc, text in zip(encodings, texts, strict=True)
    )
    assert same / len(texts) > 0.999


def test_special_ids_and_no_padding_inside(full_vocab_tokenizer) -> None:
    assert full_vocab_tokenizer.token_to_id("[PAD]") == PAD_ID == 0
    assert full_vocab_tokenizer.token_to_id("[UNK]") == UNK_ID == 1
    assert full_vocab_tokenizer.padding is None and full_vocab_tokenizer.truncation is None
    assert full_vocab_tokenizer.encode("zzzqqq").ids == [UNK_ID]


def test_encode_words_truncates_and_never_returns_empty(full_vocab_tokenizer) -> None:
    ids = encode_words(full_vocab_tokenizer, ["", "   ", "a b c d e f"], max_length=4)
    assert ids[0] == ids[1] == [UNK_ID]
    assert len(ids[2]) == 4
    padded, lengths = pad_batch(ids)
    assert padded.shape == (3, 4) and lengths.tolist() == [1, 1, 4]
    assert padded[0, 1:].tolist() == [PAD_ID] * 3
