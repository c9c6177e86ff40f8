"""``lstm-serve train sentiment``: SST-2 -> tokenizer + classifier, early-stopped on the dev split.

A run folder gets everything export and people need: ``checkpoint.pt`` (best-on-dev weights and the
model config), ``tokenizer.json`` (the one tokenization definition the service also loads),
``curves.png``, ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lstm_core.encoding import encode_words
from lstm_core.padding import pad_batch
from models.common.runs import git_commit, plot_curves, set_seed, write_report
from models.sentiment import LABELS
from models.sentiment.data import Split, dataset_info, load_split, occurs_in
from models.sentiment.evaluate import accuracy_report, gradient_reach, predict_probabilities
from models.sentiment.model import CELLS, ModelConfig, SentimentClassifier
from models.text import train_word_tokenizer

CHECKPOINT = "checkpoint.pt"
TOKENIZER = "tokenizer.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-serve train sentiment", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/sentiment"), help="run folder (created)")
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    p.add_argument("--emb-dim", type=int, default=100)
    p.add_argument("--hidden", type=int, default=160)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--unidirectional", action="store_true", help="one direction instead of a biLSTM")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--vocab-size", type=int, default=12_000, help="most frequent words kept, specials included")
    p.add_argument("--min-frequency", type=int, default=2, help="rarer training words become [UNK]")
    p.add_argument("--max-length", type=int, default=128, help="tokens kept per text (also the served limit)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0, help="gradient norm clip")
    p.add_argument("--epochs", type=int, default=15, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=2, help="stop after this many epochs without a better dev score")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--limit-train", type=int, default=None, help="first N training examples (smoke runs)")
    p.add_argument("--limit-dev", type=int, default=None, help="first N dev examples (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def training_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples: random pools of 50 batches, sorted inside each pool.

    Keeps epochs random while cutting the padding a CPU would otherwise spend time on.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(np.asarray(lengths)[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def run_epoch(
    model: SentimentClassifier,
    ids: list[list[int]],
    labels: np.ndarray,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    rng: np.random.Generator,
    epoch: int,
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, accuracy) as seen during training."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    batches = training_batches([len(s) for s in ids], args.batch_size, rng)
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", disable=args.no_progress or None, leave=False)
    for batch in bar:
        input_ids, lengths = pad_batch([ids[i] for i in batch])
        target = torch.from_numpy(labels[batch])
        logits = model(torch.from_numpy(input_ids), torch.from_numpy(lengths))
        loss = loss_fn(logits, target)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        total_loss += float(loss.detach()) * len(batch)
        correct += int((logits.argmax(dim=1) == target).sum())
        seen += len(batch)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def dev_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def train(args: argparse.Namespace) -> dict:
    """Train one model into ``args.out``; returns the report (also written there)."""
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    train_split: Split = load_split("train").head(args.limit_train)
    dev_split: Split = load_split("dev").head(args.limit_dev)
    tokenizer = train_word_tokenizer(train_split.texts, args.vocab_size, args.min_frequency)
    tokenizer.save(str(out / TOKENIZER))
    train_ids = encode_words(tokenizer, train_split.texts, args.max_length)
    dev_ids = encode_words(tokenizer, dev_split.texts, args.max_length)
    train_labels = np.asarray(train_split.labels, dtype=np.int64)
    dev_labels = np.asarray(dev_split.labels, dtype=np.int64)

    config = ModelConfig(
        vocab_size=tokenizer.get_vocab_size(),
        emb_dim=args.emb_dim,
        hidden=args.hidden,
        layers=args.layers,
        bidirectional=not args.unidirectional,
        cell=args.cell,
        dropout=args.dropout,
        num_labels=len(LABELS),
    )
    model = SentimentClassifier(config)
    initial_state = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)

    history: list[dict[str, float]] = []
    best_accuracy, best_epoch, best_state = -math.inf, 0, initial_state
    train_started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train_loss, train_accuracy = run_epoch(model, train_ids, train_labels, optimizer, args, rng, epoch)
        probabilities = predict_probabilities(model, dev_ids)
        dev_accuracy = float((probabilities.argmax(axis=1) == dev_labels).mean())
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "dev_loss": dev_loss(probabilities, dev_labels),
                "train_accuracy": train_accuracy,
                "dev_accuracy": dev_accuracy,
            }
        )
        improved = dev_accuracy > best_accuracy
        if improved:
            best_accuracy, best_epoch, best_state = dev_accuracy, epoch, copy.deepcopy(model.state_dict())
        print(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | dev acc {dev_accuracy:.4f}"
            f"{' (best)' if improved else ''} | {time.perf_counter() - train_started:.0f}s",
            flush=True,
        )
        if epoch - best_epoch >= args.patience:
            print(f"early stop: no better dev accuracy for {args.patience} epochs", flush=True)
            break
    train_seconds = time.perf_counter() - train_started

    model.load_state_dict(best_state)
    dev_lengths = [len(s) for s in dev_ids]
    dev_probabilities = predict_probabilities(model, dev_ids)
    metrics = accuracy_report(dev_probabilities, dev_labels, dev_lengths)
    unseen = ~np.asarray(occurs_in(dev_split.texts, train_split.texts), dtype=bool)
    unseen_metrics = accuracy_report(dev_probabilities[unseen], dev_labels[unseen], np.asarray(dev_lengths)[unseen])
    initial = SentimentClassifier(config)
    initial.load_state_dict(initial_state)
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in {"no_progress"}}
    report = {
        "task": "sentiment",
        "labels": LABELS,
        "model": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": recipe,
        "dataset": dataset_info({"train": len(train_split), "dev": len(dev_split)}),
        "tokenizer": {"vocab_size": tokenizer.get_vocab_size(), "file": TOKENIZER},
        "history": history,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "validation": {"split": "dev (sst2/dev.tsv.gz, held out from GLUE SST-2 train)", **metrics},
        "validation_unseen": {
            "split": "dev items that do not occur inside any training text (as whole words)",
            **unseen_metrics,
        },
        "gradient_reach": {"trained": gradient_reach(model, dev_ids), "initial": gradient_reach(initial, dev_ids)},
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
        "threads": args.threads,
        "git_commit": git_commit(),
    }
    torch.save(
        {"config": config.to_dict(), "state_dict": best_state, "max_length": args.max_length, "report": report},
        out / CHECKPOINT,
    )
    plot_curves(history, out / "curves.png", f"SST-2 {args.cell} ({'bi' if config.bidirectional else 'uni'})")
    write_report(out, report, render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    """The people-facing summary of a run."""
    v = report["validation"]
    lines = [
        f"# SST-2 sentiment run: {report['model']['cell']}",
        "",
        f"- validation accuracy ({v['split']}): **{v['accuracy']:.4f}** on {v['n']} examples",
        f"- of which {report['validation_unseen']['n']} do not occur inside any training text: accuracy "
        f"**{report['validation_unseen']['accuracy']:.4f}** on those (the rest are sub-phrases of training text)",
        f"- best epoch {report['best_epoch']} of {report['epochs_run']} run; training {report['train_seconds']:.0f} s "
        f"on {report['threads']} CPU thread(s), {report['total_seconds']:.0f} s in all",
        f"- model: {report['model']}, {report['parameters']:,} parameters",
        f"- vocabulary: {report['tokenizer']['vocab_size']} word types",
        "",
        "| tokens | n | accuracy |",
        "|---|---|---|",
    ]
    for name, bucket in v["by_length"].items():
        acc = "-" if bucket["accuracy"] is None else f"{bucket['accuracy']:.4f}"
        lines.append(f"| {name} | {bucket['n']} | {acc} |")
    reach = report["gradient_reach"]["trained"]
    if reach["ratio_first_to_last"] is not None:
        lines += [
            "",
            f"Gradient reaching early steps (forward direction, {reach['n_sentences']} dev sentences longer than "
            f"{reach['max_distance']} tokens): |grad| at distance {reach['max_distance']} / at distance 0 = "
            f"{reach['ratio_first_to_last']:.3g}",
        ]
    lines += ["", "| epoch | train loss | dev loss | train acc | dev acc |", "|---|---|---|---|---|"]
    for row in report["history"]:
        lines.append(
            f"| {row['epoch']} | {row['train_loss']:.4f} | {row['dev_loss']:.4f} | "
            f"{row['train_accuracy']:.4f} | {row['dev_accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = train(args)
    print(f"validation accuracy {report['validation']['accuracy']:.4f}; run folder {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
