"""Tiny real run: train on a few hundred SST-2 sentences -> export -> onnxruntime, in seconds.

Every cell (lstm, gru, rnn) goes through the same path, because the cell comparison and ``--cell``
promise they all train, export and serve the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from export.sentiment import ExportCheckError, export_run
from export.sentiment import main as export_main
from lstm_core.encoding import encode_words
from lstm_core.model_card import ModelCard
from lstm_core.padding import pad_batch
from models.sentiment.data import sentence_split
from models.sentiment.train import main as train_main

TINY = ["--limit-train", "300", "--limit-dev", "100", "--epochs", "1", "--emb-dim", "16", "--hidden", "12"]
TINY += ["--vocab-size", "1500", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def tiny_run(request, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp(f"run-{request.param}")
    assert train_main([*TINY, "--cell", request.param, "--out", str(run_dir)]) == 0
    return run_dir


def test_run_folder_has_everything(tiny_run: Path) -> None:
    for name in ("checkpoint.pt", "tokenizer.json", "curves.png", "report.json", "report.md"):
        assert (tiny_run / name).stat().st_size > 0, name
    assert "validation accuracy" in (tiny_run / "report.md").read_text()


def test_export_publishes_a_checked_version(tiny_run: Path, tmp_path: Path) -> None:
    assert export_main([str(tiny_run), "--repository", str(tmp_path), "--version", "3"]) == 0
    folder = tmp_path / "sentiment" / "3"
    card = ModelCard.load(folder)
    assert card.version == "3" and card.name == "sentiment" and card.labels == ["negative", "positive"]
    assert card.mismatched_files(folder) == []
    variants = sorted(f"model.{p}.onnx" for p in card.variants if p != "fp32")  # those that passed their gate
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", "model.onnx", "tokenizer.json", *variants])
    assert "fp32" in card.variants
    assert all(v.gate["passed"] for v in card.variants.values() if v.precision != "fp32")
    assert card.parity["max_abs_diff"] <= 1e-4 and card.parity["padding_max_abs_diff"] <= 1e-5
    assert card.parity["lengths"]["min"] == 1 < card.parity["lengths"]["max"]

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = ["It's a charming, often affecting journey!", "", "Dull.", "a b c " * 60]
    ids, lengths = pad_batch(encode_words(tokenizer, texts, card.max_length))
    probabilities = session.run(["probabilities"], {"input_ids": ids, "lengths": lengths})[0]
    assert probabilities.shape == (4, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert lengths.tolist()[1] == 1 and lengths.tolist()[3] == card.max_length


def test_export_stores_rounded_weights_and_states_the_graphs_accuracy(tiny_run: Path, tmp_path: Path) -> None:
    """Large weights travel as fp16 (half the folder) and the card's accuracy is what the graph scores."""
    assert export_main([str(tiny_run), "--repository", str(tmp_path), "--version", "1", "--precisions", ""]) == 0
    folder = tmp_path / "sentiment" / "1"
    graph = onnx.load(str(folder / "model.onnx")).graph
    stored = {i.name: i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert "model.embedding.weight__fp16" in stored  # 1,500 × 16: the largest tensor
    casts = {n.input[0] for n in graph.node if n.op_type == "Cast"}
    assert set(stored) <= casts  # each is cast back to fp32 before use

    card = ModelCard.load(folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    val = sentence_split()[1].head(100)  # the tiny run's --limit-dev
    ids, lengths = pad_batch(encode_words(tokenizer, val.texts, card.max_length))
    probabilities = session.run(["probabilities"], {"input_ids": ids, "lengths": lengths})[0]
    accuracy = float((probabilities.argmax(axis=1) == np.asarray(val.labels)).mean())
    assert card.metrics["validation_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert card.metrics["validation_n"] == 100


def test_existing_version_needs_overwrite(tiny_run: Path, tmp_path: Path) -> None:
    base = [str(tiny_run), "--repository", str(tmp_path), "--precisions", ""]  # fp32 only: variants tested above
    assert export_main([*base, "--version", "1"]) == 0
    assert export_main([*base, "--version", "1"]) == 1
    assert export_main([*base, "--version", "1", "--overwrite"]) == 0
    assert export_main(base) == 0  # next version
    assert sorted(p.name for p in (tmp_path / "sentiment").iterdir()) == ["1", "2"]


def test_failed_parity_publishes_nothing(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportCheckError, match="differs from torch"):
        export_run(tiny_run, tmp_path, version="1", tolerance=-1.0)  # no difference can pass a negative bound
    assert list((tmp_path / "sentiment").iterdir()) == []
