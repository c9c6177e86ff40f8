"""The long-range task generators (adding, delayed recall) and a tiny training run of each cell."""

from __future__ import annotations

import torch

from models.longrange import RunConfig, adding_batch, main, recall_batch, train_run


def test_adding_batch_marks_two_values_one_in_each_half() -> None:
    x, y = adding_batch(256, 40, torch.Generator().manual_seed(0))
    assert x.shape == (256, 40, 2) and y.shape == (256,)
    markers = x[..., 1]
    assert torch.all(markers.sum(dim=1) == 2)
    assert torch.all(markers[:, :20].sum(dim=1) == 1) and torch.all(markers[:, 20:].sum(dim=1) == 1)
    torch.testing.assert_close((x[..., 0] * markers).sum(dim=1), y)
    assert float(x[..., 0].min()) >= 0.0 and float(x[..., 0].max()) <= 1.0


def test_recall_batch_puts_symbols_first_and_delimiter_before_the_answer() -> None:
    x, y = recall_batch(64, 30, torch.Generator().manual_seed(0), symbols=4, alphabet=8)
    assert x.shape == (64, 30, 10) and y.shape == (64, 4)
    tokens = x.argmax(dim=-1)
    assert torch.equal(tokens[:, :4], y)
    assert torch.all(tokens[:, 30 - 5] == 9)  # delimiter, then the 4 answer steps
    blanks = torch.cat([tokens[:, 4:25], tokens[:, 26:]], dim=1)
    assert torch.all(blanks == 8)
    assert torch.all(x.sum(dim=-1) == 1)


def test_generators_are_deterministic() -> None:
    a = recall_batch(8, 20, torch.Generator().manual_seed(3))
    b = recall_batch(8, 20, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_tiny_training_runs_and_learns_the_short_adding_task() -> None:
    result = train_run(
        RunConfig(task="adding", cell="gru", length=10, seed=1, hidden=32, steps=300, log_every=100, lr=1e-2)
    )
    assert result["score_name"] == "mse" and result["test_score"] < 0.05  # always guessing 1 gives ~0.167
    assert [p["step"] for p in result["curve"]] == [1, 100, 200, 300]
    assert all(p["grad_first"] >= 0 for p in result["curve"])


def test_grid_command_writes_runs_and_a_plot(tmp_path) -> None:
    argv = ["--out", str(tmp_path / "runs"), "--plot", str(tmp_path / "lr.png"), "--lengths", "10"]
    assert main([*argv, "--seeds", "1", "--steps", "20", "--hidden", "8"]) == 0
    assert len(list((tmp_path / "runs").glob("*.json"))) == 6  # 2 tasks x 3 cells
    assert (tmp_path / "lr.png").stat().st_size > 0
