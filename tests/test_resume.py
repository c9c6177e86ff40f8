"""Resumable training: a run stopped mid-epoch (twice) and re-run ends exactly where an unbroken run does.

Both trainers, tiny configs on real data: the selected weights, the per-epoch history and the reported
metrics must be identical, which needs every generator, the optimizer, the epoch's batch order and the
position inside it to be restored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.common.resume import STATE
from models.sentiment.train import CHECKPOINT as SENTIMENT_CHECKPOINT
from models.sentiment.train import main as sentiment_main
from models.translation.train import CHECKPOINT as TRANSLATION_CHECKPOINT
from models.translation.train import main as translation_main

SENTIMENT = ["--limit-train", "800", "--limit-val", "100", "--epochs", "3", "--patience", "5", "--emb-dim", "16"]
SENTIMENT += ["--hidden", "12", "--vocab-size", "1500", "--batch-size", "32", "--no-progress"]
SENTIMENT += ["--word-dropout", "0.1", "--average-last", "2"]
TRANSLATION = ["--limit", "600", "--eval-limit", "20", "--epochs", "2", "--src-vocab", "500", "--tgt-vocab", "500"]
TRANSLATION += ["--emb", "16", "--enc-hidden", "16", "--enc-layers", "2", "--dec-hidden", "32", "--beam-size", "2"]
TRANSLATION += ["--no-progress", "--word-dropout", "0.1", "--average-last", "2"]


def same_weights(a: Path, b: Path) -> bool:
    first = torch.load(a, map_location="cpu", weights_only=False)["state_dict"]
    second = torch.load(b, map_location="cpu", weights_only=False)["state_dict"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def interrupted_run(main, argv: list[str], out: Path, stops: list[int]) -> None:
    for steps in stops:
        assert main([*argv, "--out", str(out), "--stop-after-steps", str(steps)]) == 3
        assert (out / STATE).is_file()
    assert main([*argv, "--out", str(out)]) == 0


@pytest.mark.parametrize(
    ("main", "argv", "checkpoint", "stops"),
    [
        (sentiment_main, SENTIMENT, SENTIMENT_CHECKPOINT, [30, 20]),  # 25 batches an epoch: stops inside epochs 2, 3
        (translation_main, TRANSLATION, TRANSLATION_CHECKPOINT, [5, 4]),
    ],
    ids=["sentiment", "translation"],
)
def test_resume_reaches_the_same_result(main, argv, checkpoint, stops, tmp_path: Path) -> None:
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    interrupted_run(main, argv, tmp_path / "resumed", stops)
    assert same_weights(tmp_path / "straight" / checkpoint, tmp_path / "resumed" / checkpoint)
    straight = json.loads((tmp_path / "straight" / "report.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "report.json").read_text())
    drop = {"train_seconds", "total_seconds", "epoch_seconds", "gradient_reach"}

    def stable(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in drop} for row in history]

    assert stable(straight["history"]) == stable(resumed["history"])
    assert straight.get("metrics", straight.get("validation")) == resumed.get("metrics", resumed.get("validation"))


def test_resume_refuses_another_recipe(tmp_path: Path) -> None:
    assert sentiment_main([*SENTIMENT, "--out", str(tmp_path), "--stop-after-steps", "3"]) == 3
    with pytest.raises(SystemExit, match=r"another recipe.*lr"):
        sentiment_main([*SENTIMENT, "--out", str(tmp_path), "--lr", "0.01"])
