"""The offline n-gram blocking grid: its blocking rule, and that without blocking it is the served search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.servers import REPO_ROOT
from models.translation import ngram_grid
from models.translation.ngram_grid import BlockingStep, repeated_ngram_tokens

SHIPPED = REPO_ROOT / "model_repository" / "translation" / "1"


def test_repeated_ngram_tokens_names_what_would_repeat_an_ngram() -> None:
    assert repeated_ngram_tokens([5, 6, 7, 5, 6], 3) == [7]  # "5 6" was followed by 7
    assert repeated_ngram_tokens([5, 6, 5, 6, 5], 2) == [6]
    assert repeated_ngram_tokens([1, 2, 3], 4) == []  # "1 2 3" occurs once: nothing repeats yet
    assert repeated_ngram_tokens([4, 4], 1) == [4]  # unigrams: every token seen
    assert repeated_ngram_tokens([9], 3) == []  # shorter than n - 1


def test_blocking_follows_each_rows_reordered_history() -> None:
    """Row 1 takes over row 0's history "5 6" (the search's reorder); after another 5, neither row may take 6."""
    vocab = 10

    def step(prev: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.zeros((len(prev), vocab))

    blocking = BlockingStep(step, rows=2, n=2)
    blocking(np.array([0, 0]), np.array([0, 1]))  # first step: BOS, no history
    blocking(np.array([5, 3]), np.array([0, 1]))
    blocking(np.array([6, 3]), np.array([0, 1]))
    out = blocking(np.array([5, 5]), np.array([0, 0]))  # both rows now continue row 0: "5 6 5"
    assert np.isneginf(out[:, 6]).all() and np.isfinite(np.delete(out, 6, axis=1)).all()


def test_the_grid_without_blocking_is_the_served_search_and_writes_json(tmp_path: Path) -> None:
    from lstm_core.translation_runtime import Seq2SeqRuntime

    out = tmp_path / "grid.json"
    assert (
        ngram_grid.main([str(SHIPPED), "--ngrams", "0,2", "--alphas", "2.0", "--limit", "16", "--out", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert [(r["ngram"], r["alpha"]) for r in result["val"]] == [(0, 2.0), (2, 2.0)]
    assert all(r["bleu"] > 0 for r in result["val"]) and result["test"]

    # ngram 0 decodes exactly as the runtime's own beam search does.
    runtime = Seq2SeqRuntime.from_folder(SHIPPED)
    from tokenizers import Tokenizer

    from lstm_core.encoding import decode_targets, encode_source
    from models.translation.data import load_pairs

    source = Tokenizer.from_file(str(SHIPPED / "source_tokenizer.json"))
    target = Tokenizer.from_file(str(SHIPPED / "target_tokenizer.json"))
    texts, _ = load_pairs("val", 8)
    plain = decode_targets(target, runtime.search(encode_source(source, texts, 128), 4, 128, 2.0))
    assert ngram_grid.translate(runtime, source, target, texts, 0, 2.0, batch_size=8) == plain
