"""The classic long-range tasks of the LSTM literature, generated in code: rnn vs gru vs lstm by length.

Sentiment rarely needs long memory, so SST-2 says little about vanishing gradients. These two tasks
need exactly that, at a length we choose:

- **adding** (Hochreiter & Schmidhuber 1997; Le et al. 2015): a sequence of ``length`` pairs (a random
  value in [0, 1], a marker); exactly two markers are 1, one in the first half and one in the second.
  Predict the sum of the two marked values (MSE). Always answering 1 scores MSE about 0.167; a run
  *succeeds* when its test MSE is below 0.01.
- **recall** (delayed copy, after Arjovsky et al. 2016): ``symbols`` random symbols (of ``alphabet``)
  at the start, blanks, a delimiter ``symbols + 1`` steps before the end; the model must output the
  symbols, in order, at the last ``symbols`` steps. Chance is 1/alphabet per symbol; a run *succeeds*
  when it recalls at least 99 % of the test symbols.

Every cell is one unidirectional layer with the same hidden size, trained with Adam for a fixed
number of steps; the gradient of the loss with respect to the input at the first time step is
recorded during training (the vanishing gradient, measured where it matters).

    python -m models.longrange --out runs/longrange --docs docs            # the full grid
    python -m models.longrange --out runs/longrange --docs docs --render-only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
TASKS = ("adding", "recall")
LENGTHS = (10, 50, 100, 200, 500)
SEEDS = (1, 2, 3)
ADDING_SUCCESS_MSE = 0.01
RECALL_SUCCESS_ACCURACY = 0.99


# -- data ----------------------------------------------------------------------------------------
def adding_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[batch, length, 2]`` (value, marker) and targets ``[batch]`` (sum of the marked values)."""
    values = torch.rand(batch, length, generator=generator)
    half = max(length // 2, 1)
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator) if length > 1 else first
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), target


def recall_batch(
    batch: int, length: int, generator: torch.Generator, symbols: int = 4, alphabet: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot inputs ``[batch, length, alphabet + 2]`` and the symbols to recall ``[batch, symbols]``.

    Channel ``alphabet`` is the blank, ``alphabet + 1`` the delimiter; needs ``length >= 2 * symbols + 1``.
    """
    if length < 2 * symbols + 1:
        raise ValueError(f"recall needs length >= {2 * symbols + 1} for {symbols} symbols")
    blank, delimiter = alphabet, alphabet + 1
    target = torch.randint(0, alphabet, (batch, symbols), generator=generator)
    tokens = torch.full((batch, length), blank, dtype=torch.long)
    tokens[:, :symbols] = target
    tokens[:, length - symbols - 1] = delimiter
    return nn.functional.one_hot(tokens, alphabet + 2).float(), target


# -- model ---------------------------------------------------------------------------------------
class SequenceModel(nn.Module):
    """One unidirectional recurrent layer and a linear read-out (of the last state or the last steps)."""

    def __init__(self, cell: str, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.rnn = CELLS[cell](inputs, hidden, batch_first=True)
        if cell == "lstm":
            with torch.no_grad():  # forget gates open at the start, the usual LSTM recipe (as in sentiment)
                self.rnn.bias_hh_l0[hidden : 2 * hidden] = 1.0
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor, last: int) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -last:])


@dataclass
class RunConfig:
    task: str
    cell: str
    length: int
    seed: int
    hidden: int = 128
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3
    clip: float = 1.0
    log_every: int = 25
    test_size: int = 1000
    symbols: int = 4
    alphabet: int = 8


def make_batch(cfg: RunConfig, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.task == "adding":
        return adding_batch(batch, cfg.length, generator)
    return recall_batch(batch, cfg.length, generator, cfg.symbols, cfg.alphabet)


def loss_and_score(
    cfg: RunConfig, model: SequenceModel, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Training loss and the task's score: MSE (adding) or symbol accuracy (recall)."""
    if cfg.task == "adding":
        prediction = model(x, 1)[:, 0, 0]
        loss = nn.functional.mse_loss(prediction, y)
        return loss, float(loss.detach())
    logits = model(x, cfg.symbols)
    loss = nn.functional.cross_entropy(logits.reshape(-1, cfg.alphabet), y.reshape(-1))
    return loss, float((logits.argmax(-1) == y).float().mean())


def train_run(cfg: RunConfig, device: str = "cpu") -> dict:
    """Train one cell on one task at one length; returns the curve, the first-step gradient and the test score."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    test_generator = torch.Generator().manual_seed(10_000 + cfg.seed)
    inputs = 2 if cfg.task == "adding" else cfg.alphabet + 2
    outputs = 1 if cfg.task == "adding" else cfg.alphabet
    model = SequenceModel(cfg.cell, inputs, cfg.hidden, outputs).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve = []
    for step in range(1, cfg.steps + 1):
        x, y = (t.to(device) for t in make_batch(cfg, cfg.batch, generator))
        logged = step == 1 or step % cfg.log_every == 0
        if logged:
            x.requires_grad_(True)
        model.train()
        loss, score = loss_and_score(cfg, model, x, y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        if logged:
            # |dL/dx_0|: how much of the loss's gradient reaches the first input (per sequence, averaged)
            first = float(x.grad[:, 0].norm(dim=-1).mean())
            last = float(x.grad[:, -1].norm(dim=-1).mean())
            curve.append(
                {"step": step, "loss": float(loss.detach()), "score": score, "grad_first": first, "grad_last": last}
            )
    model.eval()
    with torch.no_grad():
        x, y = (t.to(device) for t in make_batch(cfg, cfg.test_size, test_generator))
        test_loss, test_score = loss_and_score(cfg, model, x, y)
    success = test_score < ADDING_SUCCESS_MSE if cfg.task == "adding" else test_score >= RECALL_SUCCESS_ACCURACY
    return {
        "config": asdict(cfg),
        "test_loss": float(test_loss),
        "test_score": test_score,
        "score_name": "mse" if cfg.task == "adding" else "accuracy",
        "success": bool(success),
        "curve": curve,
        "seconds": time.perf_counter() - started,
        "device": device,
    }


def run_name(cfg: RunConfig) -> str:
    return f"{cfg.task}-{cfg.cell}-L{cfg.length}-s{cfg.seed}"


def grid(
    tasks: Sequence[str] = TASKS,
    cells: Sequence[str] = tuple(CELLS),
    lengths: Sequence[int] = LENGTHS,
    seeds: Sequence[int] = SEEDS,
    **overrides,
) -> list[RunConfig]:
    return [
        RunConfig(task=t, cell=c, length=n, seed=s, **overrides)
        for t in tasks
        for n in lengths
        for c in cells
        for s in seeds
    ]


def run_grid(configs: Sequence[RunConfig], out: Path, device: str = "cpu") -> None:
    """One JSON per run in ``out``; runs already there are skipped, so an interrupted grid resumes."""
    out.mkdir(parents=True, exist_ok=True)
    for cfg in configs:
        path = out / f"{run_name(cfg)}.json"
        if path.exists():
            continue
        result = train_run(cfg, device)
        path.write_text(json.dumps(result) + "\n")
        print(
            f"{run_name(cfg)}: {result['score_name']} {result['test_score']:.4f} "
            f"{'ok' if result['success'] else 'FAIL'} ({result['seconds']:.0f}s)",
            flush=True,
        )


# -- report --------------------------------------------------------------------------------------
def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def summarise(results: list[dict]) -> dict:
    """task -> cell -> length -> {runs, successes, scores}."""
    table: dict = {}
    for r in results:
        c = r["config"]
        cell = (
            table.setdefault(c["task"], {})
            .setdefault(c["cell"], {})
            .setdefault(c["length"], {"runs": 0, "successes": 0, "scores": []})
        )
        cell["runs"] += 1
        cell["successes"] += int(r["success"])
        cell["scores"].append(r["test_score"])
    return table


def plot(results: list[dict], path: Path) -> Path:
    """Top: success rate against length per task; bottom: |dL/dx_0| over training steps at one long length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(results)
    colors = {"lstm": "C0", "gru": "C1", "rnn": "C2"}
    fig, axes = plt.subplots(2, len(table), figsize=(6 * len(table), 8), squeeze=False)
    for column, (task, by_cell) in enumerate(sorted(table.items())):
        top, bottom = axes[0][column], axes[1][column]
        for cell, by_length in sorted(by_cell.items()):
            lengths = sorted(by_length)
            rates = [by_length[n]["successes"] / by_length[n]["runs"] for n in lengths]
            top.plot(lengths, rates, marker="o", color=colors.get(cell), label=cell)
        top.set(
            title=f"{task}: success rate (3 seeds)", xlabel="sequence length", ylabel="runs that succeed", xscale="log"
        )
        top.set_ylim(-0.05, 1.05)
        longest = max(r["config"]["length"] for r in results if r["config"]["task"] == task)
        probe = 100 if any(r["config"]["length"] == 100 for r in results) else longest
        for r in results:
            c = r["config"]
            if c["task"] != task or c["length"] not in (probe, longest):
                continue
            steps = [p["step"] for p in r["curve"]]
            grads = [max(p["grad_first"], 1e-30) for p in r["curve"]]
            style = "-" if c["length"] == longest else ":"
            label = f"{c['cell']} L={c['length']}" if c["seed"] == 1 else None
            bottom.semilogy(steps, grads, style, color=colors.get(c["cell"]), alpha=0.7, label=label)
        bottom.set(
            title=f"{task}: |dLoss/dx_1| (gradient reaching the first step)",
            xlabel="training step",
            ylabel="mean norm (log)",
        )
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_table(results: list[dict]) -> str:
    table = summarise(results)
    lines = []
    for task, by_cell in sorted(table.items()):
        lengths = sorted({n for by_length in by_cell.values() for n in by_length})
        score = "test MSE" if task == "adding" else "test symbol accuracy"
        lines += [
            f"### {task}: successes / runs (median {score})",
            "",
            "| cell | " + " | ".join(f"L={n}" for n in lengths) + " |",
        ]
        lines.append("|---" * (len(lengths) + 1) + "|")
        for cell, by_length in sorted(by_cell.items()):
            cells = []
            for n in lengths:
                b = by_length.get(n)
                if b is None:
                    cells.append("-")
                    continue
                median = sorted(b["scores"])[len(b["scores"]) // 2]
                cells.append(f"{b['successes']}/{b['runs']} ({median:.3g})")
            lines.append(f"| {cell} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.longrange", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/longrange"), help="one JSON per run")
    p.add_argument("--plot", type=Path, default=Path("docs/longrange.png"))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--steps", type=int, default=RunConfig.steps)
    p.add_argument("--hidden", type=int, default=RunConfig.hidden)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.render_only:
        configs = grid(
            args.tasks.split(","),
            args.cells.split(","),
            [int(n) for n in args.lengths.split(",")],
            [int(s) for s in args.seeds.split(",")],
            steps=args.steps,
            hidden=args.hidden,
        )
        run_grid(configs, args.out, args.device)
    results = load_results(args.out)
    plot(results, args.plot)
    print(render_table(results))
    return 0 if results and not math.isnan(results[0]["test_score"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
