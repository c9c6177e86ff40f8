"""Distillation: the soft targets, the loss, and a tiny student trained from real teachers on real SST-2.

The teachers are tiny runs trained here (seconds); one has another vocabulary, so the path that
re-encodes texts with a teacher's own tokenizer runs too. The student's run must resume to the same
weights as an unbroken one, like every other training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from lstm_core.encoding import encode_words
from models.common.resume import recipe_of
from models.sentiment.distill import Teacher, distillation_loss, ensemble_probabilities, soften
from models.sentiment.train import CHECKPOINT, build_parser, command_line
from models.sentiment.train import main as train_main
from tests.test_resume import interrupted_run, same_weights

TINY = ["--limit-train", "400", "--limit-val", "100", "--epochs", "2", "--patience", "5", "--emb-dim", "16"]
TINY += ["--hidden", "12", "--batch-size", "32", "--no-progress", "--average-last", "1"]


def test_soften_keeps_the_argmax_and_flattens_with_temperature() -> None:
    p = np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32)
    np.testing.assert_allclose(soften(p, 1.0), p, rtol=1e-5)
    warm = soften(p, 3.0)
    np.testing.assert_allclose(warm.sum(axis=1), 1.0, rtol=1e-6)
    assert (warm.argmax(axis=1) == p.argmax(axis=1)).all()
    assert (warm.max(axis=1) < p.max(axis=1)).all()


def test_ensemble_is_the_mean_of_the_softened_teachers() -> None:
    a = np.array([[0.8, 0.2]], dtype=np.float32)
    b = np.array([[0.4, 0.6]], dtype=np.float32)
    np.testing.assert_allclose(ensemble_probabilities([a, b]), [[0.6, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(ensemble_probabilities([a, b], 2.0), (soften(a, 2.0) + soften(b, 2.0)) / 2, rtol=1e-6)


def test_loss_is_cross_entropy_without_weight_and_adds_only_the_disagreement() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 2)
    target = torch.randint(0, 2, (8,))
    hard = torch.nn.functional.cross_entropy(logits, target)
    anything = torch.full((8, 2), 0.5)
    assert torch.allclose(distillation_loss(logits, target, anything, 0.0, 2.0), hard)
    # a soft target equal to the student's own softened answer adds nothing: KL is zero
    own = torch.softmax(logits / 2.0, dim=-1)
    assert torch.allclose(distillation_loss(logits, target, own, 0.25, 2.0), 0.75 * hard, atol=1e-6)
    disagreeing = torch.softmax(-logits / 2.0, dim=-1)
    assert distillation_loss(logits, target, disagreeing, 0.25, 2.0) > 0.75 * hard + 0.01


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[Path]:
    """Two tiny teachers: one with the student's vocabulary (1,500 words), one with 1,000."""
    runs = []
    for vocab, seed in ((1500, 1), (1000, 2)):
        run = tmp_path_factory.mktemp(f"teacher-{vocab}")
        assert train_main([*TINY, "--vocab-size", str(vocab), "--seed", str(seed), "--out", str(run)]) == 0
        runs.append(run)
    return runs


def test_a_teacher_gives_the_same_answers_through_either_tokenizer_path(teachers: list[Path]) -> None:
    teacher = Teacher.load(teachers[0])
    texts = ["a gripping , funny film", "dull and far too long", "!!!"]
    ids = encode_words(Tokenizer.from_str(teacher.tokenizer_json), texts, teacher.max_length)
    shared = teacher.probabilities(texts, ids, teacher.tokenizer_json)
    own = teacher.probabilities(texts, [[0]] * len(texts), "another vocabulary")
    np.testing.assert_allclose(shared, own, atol=1e-6)


def test_student_learns_from_teachers_and_reports_them(teachers: list[Path], tmp_path: Path) -> None:
    student = tmp_path / "student"
    argv = [*TINY, "--vocab-size", "1500", "--teachers", *map(str, teachers), "--distill-weight", "0.7"]
    assert train_main([*argv, "--out", str(student)]) == 0
    report = json.loads((student / "report.json").read_text())
    summary = report["distillation"]
    assert [t["run"] for t in summary["teachers"]] == [str(t) for t in teachers]
    for teacher, entry in zip(teachers, summary["teachers"], strict=True):
        assert entry["val_accuracy"] == json.loads((teacher / "report.json").read_text())["validation"]["accuracy"]
    assert 0.0 <= summary["ensemble_val_accuracy"] <= 1.0
    assert summary["weight"] == 0.7 and summary["temperature"] == 2.0
    assert report["recipe"]["teachers"] == [str(t) for t in teachers]

    # the soft term changes what is learned: the same recipe without teachers ends elsewhere
    plain = tmp_path / "plain"
    assert train_main([*TINY, "--vocab-size", "1500", "--out", str(plain)]) == 0
    assert not same_weights(student / CHECKPOINT, plain / CHECKPOINT)


def test_distilled_run_resumes_to_the_same_weights(teachers: list[Path], tmp_path: Path) -> None:
    argv = [*TINY, "--vocab-size", "1500", "--teachers", *map(str, teachers)]
    assert train_main([*argv, "--out", str(tmp_path / "whole")]) == 0
    interrupted_run(train_main, argv, tmp_path / "parts", [7, 9])  # 13 batches an epoch
    assert same_weights(tmp_path / "whole" / CHECKPOINT, tmp_path / "parts" / CHECKPOINT)


def test_the_card_command_reproduces_the_recipe() -> None:
    argv = ["--emb-dim", "64", "--unidirectional", "--teachers", "runs/a", "runs/b", "--distill-weight", "0.8"]
    recipe = recipe_of(build_parser().parse_args(argv))
    command = command_line(recipe)
    assert (
        command
        == "lstm-serve train sentiment --emb-dim 64 --unidirectional --teachers runs/a runs/b --distill-weight 0.8"
    )
    assert recipe_of(build_parser().parse_args(command.split()[3:])) == recipe
    assert command_line(recipe_of(build_parser().parse_args([]))) == "lstm-serve train sentiment"


def test_missing_teacher_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"has no checkpoint\.pt"):
        train_main([*TINY, "--teachers", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")])
