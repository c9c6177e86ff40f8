"""Beam size and length penalty are chosen on val: every pair is scored, the best is recorded."""

from __future__ import annotations

import json
from pathlib import Path

from models.translation.train import main as train_main
from models.translation.tune import main as tune_main

TINY = ["--limit", "600", "--eval-limit", "10", "--epochs", "1", "--src-vocab", "400", "--tgt-vocab", "400"]
TINY += ["--emb", "16", "--enc-hidden", "16", "--dec-hidden", "32", "--beam-size", "2", "--no-progress"]


def test_tune_scores_every_pair_on_val(tmp_path: Path) -> None:
    assert train_main([*TINY, "--out", str(tmp_path)]) == 0
    assert tune_main([str(tmp_path), "--beams", "1,2", "--alphas", "0.6,1.0", "--limit", "12"]) == 0
    result = json.loads((tmp_path / "tune.json").read_text())
    pairs = [(r["beam_size"], r["alpha"]) for r in result["rows"]]
    assert pairs == [(1, 0.6), (2, 0.6), (2, 1.0)]  # greedy once: alpha does not change it
    assert result["val_sentences"] == 12
    assert result["best"]["val_bleu"] == max(r["val_bleu"] for r in result["rows"])
