"""Ensembles of translation runs (issue 12's next lever): the ensemble's scores, its search, its CLI.

Two tiny real runs of one recipe with different seeds, as the ensemble of two teachers would be.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from lstm_core.encoding import encode_source
from models.translation.data import load_pairs
from models.translation.decode import EnsembleStepper, search_ids
from models.translation.ensemble import load_ensemble
from models.translation.ensemble import main as ensemble_main
from models.translation.train import CHECKPOINT, SRC_TOKENIZER, TGT_TOKENIZER, load_checkpoint
from models.translation.train import main as train_main

TINY = ["--limit", "1500", "--eval-limit", "30", "--epochs", "2", "--src-vocab", "800", "--tgt-vocab", "800"]
TINY += ["--emb", "32", "--enc-hidden", "32", "--dec-hidden", "64", "--beam-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    folders = []
    for seed in (13, 14):
        run_dir = tmp_path_factory.mktemp(f"teacher-{seed}")
        assert train_main([*TINY, "--seed", str(seed), "--out", str(run_dir)]) == 0
        folders.append(run_dir)
    return folders


@pytest.fixture(scope="module")
def rows(runs: list[Path]) -> list[list[int]]:
    sources, _ = load_pairs("val", 16)
    return encode_source(Tokenizer.from_file(str(runs[0] / SRC_TOKENIZER)), sources, 128)


class FixedStepper:
    def __init__(self, log_probs: np.ndarray) -> None:
        self.log_probs = log_probs

    def __call__(self, prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        return self.log_probs


def test_ensemble_scores_a_token_by_the_log_of_the_mean_probability() -> None:
    a = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
    b = np.log(np.array([[0.1, 0.1, 0.8]], dtype=np.float32))
    scores = EnsembleStepper([FixedStepper(a), FixedStepper(b)])(np.zeros(1, np.int64), np.zeros(1, np.int64))
    assert np.allclose(np.exp(scores), [[0.4, 0.15, 0.45]], atol=1e-6)


def test_runs_of_one_recipe_share_tokenizers_so_they_can_ensemble(runs: list[Path]) -> None:
    for name in (SRC_TOKENIZER, TGT_TOKENIZER):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes()
    assert (runs[0] / CHECKPOINT).read_bytes() != (runs[1] / CHECKPOINT).read_bytes()  # the seeds differ


@pytest.mark.parametrize("beam", [1, 2])
def test_a_model_ensembled_with_itself_decodes_as_it_does_alone(runs: list[Path], rows, beam: int) -> None:
    model, _ = load_checkpoint(runs[0])
    alone = search_ids(model, rows, beam)
    assert search_ids([model], rows, beam) == alone
    assert search_ids([model, model], rows, beam) == alone


def test_two_teachers_decode_as_their_mean_distribution(runs: list[Path], rows) -> None:
    models, _, _ = load_ensemble(runs)
    ensemble = search_ids(models, rows, 1)
    singles = [search_ids(m, rows, 1) for m in models]
    assert len(ensemble) == len(rows) and all(ensemble)
    # where both teachers agree on a whole greedy answer, so does their ensemble (the mean keeps the argmax)
    agreed = [i for i in range(len(rows)) if singles[0][i] == singles[1][i]]
    assert all(ensemble[i] == singles[0][i] for i in agreed)


def test_runs_with_other_tokenizers_are_refused_by_name(runs: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    shutil.copy(runs[1] / TGT_TOKENIZER, other / SRC_TOKENIZER)  # another vocabulary
    with pytest.raises(ValueError, match=SRC_TOKENIZER):
        load_ensemble([runs[0], other])


def test_cli_scores_and_distils(runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "kd" / "train-ensemble.de.gz"
    argv = [*map(str, runs), "--bleu", "val", "--distill", str(out), "--beam-size", "2", "--limit", "24"]
    assert ensemble_main(argv) == 0
    printed = capsys.readouterr().out
    assert "val: BLEU" in printed and "2 model(s), beam 2" in printed
    with gzip.open(out, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(lines) == record["sentences"] == 24
    assert record["teachers"] == [str(r) for r in runs] and len(record["teacher_checkpoints"]) == 2
    assert record["beam_size"] == 2 and record["empty"] == sum(1 for line in lines if not line.strip())


def test_cli_without_work_or_with_a_missing_run_says_so(runs: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as nothing:
        ensemble_main([str(runs[0])])
    assert nothing.value.code == 2
    with pytest.raises(SystemExit) as missing:
        ensemble_main([str(runs[0]), str(tmp_path / "absent"), "--bleu", "val", "--limit", "4"])
    assert missing.value.code == 2
