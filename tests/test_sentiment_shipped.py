"""The shipped ``model_repository/sentiment/1``: its card matches its files, its numbers, and padding.

These run the real ONNX graph with onnxruntime and the real ``tokenizer.json``, the way the service does
(encode_batch -> truncate to max_length -> pad with 0 -> real lengths), with no torch involved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from lstm_core.encoding import encode_words
from lstm_core.model_card import ModelCard
from lstm_core.padding import pad_batch
from lstm_core.tokens import UNK_ID
from models.datasets import CHECKSUMS
from models.sentiment.data import sentence_split

FOLDER = Path(__file__).resolve().parents[1] / "model_repository" / "sentiment" / "1"


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(FOLDER)


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(FOLDER / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(FOLDER / "tokenizer.json"))


def probabilities(session: ort.InferenceSession, sequences: list[list[int]]) -> np.ndarray:
    ids, lengths = pad_batch(sequences)
    return session.run(["probabilities"], {"input_ids": ids, "lengths": lengths})[0]


def test_card_matches_files_and_contract(card: ModelCard) -> None:
    assert card.mismatched_files(FOLDER) == []
    assert set(card.files) == {"model.onnx", "tokenizer.json", "model.int8.onnx", "model.fp16.onnx"}
    assert (card.name, card.version, card.task) == ("sentiment", "1", "sentiment")
    assert card.labels == ["negative", "positive"]
    assert [(t.name, t.dtype, t.shape) for t in card.inputs] == [("text", "BYTES", [-1, 1])]
    assert [(t.name, t.dtype, t.shape) for t in card.outputs] == [
        ("label", "BYTES", [-1, 1]),
        ("probabilities", "FP32", [-1, 2]),
    ]
    assert card.dataset.sha256 == {k: v for k, v in CHECKSUMS.items() if k.startswith("sst2/")}
    assert card.dataset.splits == {"train": 56_300, "val": 1_000}
    assert "1000 whole sentences" in card.dataset.version and "seed 2024" in card.dataset.version
    assert card.parity["max_abs_diff"] <= 1e-4 and card.parity["padding_max_abs_diff"] <= 1e-5
    folder_bytes = sum(p.stat().st_size for p in FOLDER.iterdir())
    # the limit: fp32 (weights stored as fp16) 3.2 MB + int8 1.6 MB + fp16 3.2 MB + tokenizer 0.3 MB
    assert folder_bytes <= 10 * 1000 * 1000


def test_graph_matches_card(card: ModelCard, session: ort.InferenceSession) -> None:
    spec = card.graphs["model.onnx"]
    onnx_types = {"INT64": "tensor(int64)", "FP32": "tensor(float)"}
    for declared, actual in zip(spec.inputs + spec.outputs, session.get_inputs() + session.get_outputs(), strict=True):
        assert actual.name == declared.name
        assert actual.type == onnx_types[declared.dtype]
        assert len(actual.shape) == len(declared.shape)
        for dim, want in zip(actual.shape, declared.shape, strict=True):
            assert isinstance(dim, str) if want == -1 else dim == want  # -1: a named dynamic axis
    assert onnx.load(str(FOLDER / "model.onnx")).opset_import[0].version >= 17


def test_card_accuracy_is_what_the_files_give(card: ModelCard, session, tokenizer) -> None:
    """Recompute the stated validation accuracy (and its length buckets) from the shipped files alone.

    Validation is the 1,000 held-out whole sentences of ``sentence_split``, none of whose pieces the
    model was trained on.
    """
    val = sentence_split()[1]
    ids = encode_words(tokenizer, val.texts, card.max_length)
    order = np.argsort([len(s) for s in ids])
    predicted = np.empty(len(ids), dtype=np.int64)
    for start in range(0, len(order), 512):
        batch = order[start : start + 512]
        predicted[batch] = probabilities(session, [ids[i] for i in batch]).argmax(axis=1)
    correct = predicted == np.asarray(val.labels)
    assert float(correct.mean()) == pytest.approx(card.metrics["validation_accuracy"], abs=2 / len(ids))
    assert card.metrics["validation_n"] == len(ids) == 1_000
    assert "held out with all their phrases" in card.metrics["validation_split"]
    lengths = np.asarray([len(s) for s in ids])
    for name, bucket in card.metrics["validation_by_length"].items():
        low, _, high = name.rstrip("+").partition("-")
        inside = (lengths >= int(low)) & (lengths <= (int(high) if high else 10_000))
        assert bucket["n"] == int(inside.sum()), name
        if bucket["n"]:
            assert bucket["accuracy"] == pytest.approx(float(correct[inside].mean()), abs=2 / bucket["n"]), name


def test_padding_does_not_change_answers(session, tokenizer, card: ModelCard) -> None:
    """A sentence alone and batched with longer ones gets the same probabilities (to 1e-5)."""
    texts = [
        "Great!",
        "It's a charming, often affecting journey.",
        "The plot is thin, but the actors don't seem to care and neither did I.",
        "the movie is a mess " * 20,
    ]
    sequences = encode_words(tokenizer, texts, card.max_length)
    batched = probabilities(session, sequences)
    alone = np.concatenate([probabilities(session, [s]) for s in sequences])
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    reversed_batch = probabilities(session, sequences[::-1])[::-1]
    np.testing.assert_allclose(reversed_batch, alone, atol=1e-5, rtol=0)


def test_single_unknown_token_is_served(session) -> None:
    """What the service feeds for text with no tokens: one [UNK], length 1."""
    result = probabilities(session, [[UNK_ID]])
    assert result.shape == (1, 2)
    assert abs(float(result.sum()) - 1.0) < 1e-6


def test_raw_reviews_get_the_obvious_label(session, tokenizer, card: ModelCard) -> None:
    texts = [
        "A wonderful, moving film. I loved every minute of it!",
        "It's a charming, often affecting journey.",
        "Boring, predictable and far too long. What a waste of time.",
        "The worst movie I've seen this year; the script is awful.",
    ]
    labels = probabilities(session, encode_words(tokenizer, texts, card.max_length)).argmax(axis=1)
    assert [card.labels[i] for i in labels] == ["positive", "positive", "negative", "negative"]


def test_card_is_plain_json_with_the_documented_sections() -> None:
    raw = json.loads((FOLDER / "model.json").read_text())
    for key in ("dataset", "training", "metrics", "parity", "created", "git_commit", "max_length"):
        assert raw[key], key
    assert raw["training"]["seed"] == raw["training"]["recipe"]["seed"]
