"""Tiny real run per cell: train on a slice of Multi30k → export → onnxruntime decodes like torch.

Every cell (lstm, gru, rnn) takes the same path, because ``--cell`` promises they all train, export
and serve the same way (the decoder graph keeps one (h, c) signature for all three).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from export.fp16_storage import round_to_fp16
from export.recover import main as recover_main
from export.recover import recover_model, recover_run
from export.translation import main as export_main
from lstm_core.encoding import encode_source
from lstm_core.model_card import ModelCard
from lstm_core.padding import pad_batch
from lstm_core.tokens import BOS_ID, EOS_ID
from lstm_core.translation_runtime import Seq2SeqRuntime
from lstm_core.translation_search import beam_search, greedy_search
from models.translation.data import load_pairs
from models.translation.decode import search_ids
from models.translation.distill import distill
from models.translation.train import SRC_TOKENIZER, load_checkpoint, read_targets
from models.translation.train import main as train_main

TINY = ["--limit", "1500", "--eval-limit", "30", "--epochs", "2", "--src-vocab", "800", "--tgt-vocab", "800"]
TINY += ["--emb", "32", "--enc-hidden", "32", "--dec-hidden", "64", "--beam-size", "2", "--no-progress"]


@pytest.fixture(scope="module", params=["lstm", "gru", "rnn"])
def tiny_run(request, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp(f"translation-{request.param}")
    assert train_main([*TINY, "--cell", request.param, "--out", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    args = [str(tiny_run), "--repository", str(repository), "--version", "2", "--parity-sentences", "20"]
    assert export_main([*args, "--skip-bleu"]) == 0
    return repository / "translation" / "2"


@pytest.fixture(scope="module")
def real_rows(tiny_run: Path) -> list[list[int]]:
    sources, _ = load_pairs("val", 24)
    return encode_source(Tokenizer.from_file(str(tiny_run / SRC_TOKENIZER)), sources, 128)


def test_run_folder_has_everything(tiny_run: Path) -> None:
    names = ("best.pt", "source_tokenizer.json", "target_tokenizer.json", "curves.png", "report.json", "report.md")
    for name in names:
        assert (tiny_run / name).stat().st_size > 0, name
    assert "test_2016_flickr greedy" in (tiny_run / "report.md").read_text()


def test_export_publishes_a_checked_version(exported: Path) -> None:
    card = ModelCard.load(exported)
    assert (card.name, card.version, card.task) == ("translation", "2", "translation")
    assert card.mismatched_files(exported) == []
    expected = ["decoder.onnx", "encoder.onnx", "model.json", "rows.onnx", "source_tokenizer.json"]
    assert sorted(p.name for p in exported.iterdir()) == [*expected, "target_tokenizer.json", "topk.onnx"]
    assert card.parity["greedy_identical"] and card.parity["greedy_mismatches"] == 0
    step_level = card.parity["step_level"]  # rows.onnx + topk.onnx against numpy, and step-level decoding
    assert step_level["graph_cases"] > 0 and step_level["step_level_sentences"] == 20
    assert step_level["step_level_greedy_mismatches"] == 0
    assert card.parity["sentences"] == 20
    assert [t.name for t in card.graphs["decoder.onnx"].inputs][:2] == ["prev_token", "state_index"]
    assert card.training["special_tokens"] == {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    assert set(card.dataset.sha256) >= {"multi30k/train.en.gz", "multi30k/test_2016_flickr.de.gz"}


def test_onnxruntime_decodes_real_sentences_like_torch(tiny_run: Path, exported: Path, real_rows) -> None:
    model, _ = load_checkpoint(tiny_run)
    round_to_fp16(model)  # the exported weights are fp16-stored: compare the same weights
    runtime = Seq2SeqRuntime.from_folder(exported)
    assert runtime.search(real_rows, 1, 40) == search_ids(model, real_rows, 1, 40)
    assert runtime.search(real_rows, 3, 40) == search_ids(model, real_rows, 3, 40)


def test_beam_size_one_equals_greedy(exported: Path, real_rows) -> None:
    runtime = Seq2SeqRuntime.from_folder(exported)
    src, lengths = pad_batch([np.asarray(r) for r in real_rows])
    greedy = greedy_search(runtime.stepper(src, lengths, 1), len(real_rows), 40, BOS_ID, EOS_ID)
    beam = beam_search(runtime.stepper(src, lengths, 1), len(real_rows), 1, 40, BOS_ID, EOS_ID, alpha=0.6)
    assert beam == greedy
    assert any(len(g) > 0 for g in greedy)


def test_existing_version_needs_overwrite(tiny_run: Path, exported: Path) -> None:
    repository = exported.parents[1]
    with pytest.raises(FileExistsError):
        export_main([str(tiny_run), "--repository", str(repository), "--version", "2", "--skip-bleu"])


def test_a_student_trains_on_its_teachers_translations(tiny_run: Path, exported: Path, tmp_path: Path) -> None:
    """Sequence-level distillation: the exported model translates the training sources, a run trains on them."""
    targets = tmp_path / "kd" / "train.de.gz"
    record = distill(exported, targets, beam=2, alpha=0.6, rows=16, limit=40, progress=False)
    lines = read_targets(targets, 40)
    assert record["sentences"] == len(lines) == 40 and record["beam_size"] == 2
    sources, _ = load_pairs("train", 3)
    runtime = Seq2SeqRuntime.from_folder(exported)
    target_tok = Tokenizer.from_file(str(exported / "target_tokenizer.json"))
    ids = encode_source(Tokenizer.from_file(str(exported / "source_tokenizer.json")), sources, 128)
    alone = [target_tok.decode(runtime.search([r], 2, 128, 0.6)[0], skip_special_tokens=True) for r in ids]
    assert lines[:3] == alone  # each line is the teacher's own beam output for that training sentence
    student = tmp_path / "student"
    args = [*TINY, "--limit", "40", "--epochs", "1", "--init-from", str(tiny_run), "--out", str(student)]
    assert train_main([*args, "--train-targets", str(targets)]) == 0
    assert (student / "best.pt").is_file()
    with pytest.raises(ValueError, match="40 targets for 41 training pairs"):
        read_targets(targets, 41)


def test_a_run_is_recovered_from_its_exported_graphs(tiny_run: Path, exported: Path, tmp_path: Path) -> None:
    """``export.recover``: the exported weights, back as a run that trains further.

    LSTM runs come back as the served model: every parameter equal to the exported (fp16-rounded) one.
    GRU and RNN graphs are refused by name rather than recovered wrongly.
    """
    model, _ = load_checkpoint(tiny_run)
    if model.cfg.cell != "lstm":
        with pytest.raises(ValueError, match="only LSTM"):
            recover_model(exported)
        return
    round_to_fp16(model)
    recovered, card = recover_model(exported)
    assert card["training"]["config"] == model.cfg.to_dict()
    for name, value in model.state_dict().items():
        assert np.array_equal(recovered.state_dict()[name].numpy(), value.numpy()), name
    out = tmp_path / "recovered"
    assert recover_main([str(exported), "--out", str(out), "--parity-sentences", "8"]) == 0
    student = tmp_path / "further"
    args = [*TINY, "--limit", "40", "--epochs", "1", "--init-from", str(out), "--out", str(student)]
    assert train_main(args) == 0
    assert (student / "best.pt").is_file()
    with pytest.raises(SystemExit):  # a second recovery into the same folder is refused
        recover_main([str(exported), "--out", str(out)])


def test_the_shipped_version_is_recovered_exactly(tmp_path: Path) -> None:
    """The shipped 2-layer model's graphs give back a torch model that decodes as they do (checked by parity)."""
    shipped = Path(__file__).resolve().parents[1] / "model_repository" / "translation" / "1"
    parity = recover_run(shipped, tmp_path / "shipped", parity_sentences=6)
    assert parity["greedy_identical"] and parity["beam4_identical"]
    assert parity["max_abs_diff_log_probs_step1"] < 1e-3
    assert load_checkpoint(tmp_path / "shipped")[0].cfg.enc_layers == 2
