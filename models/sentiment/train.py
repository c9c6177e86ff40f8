"""``lstm-serve train sentiment``: SST-2 -> tokenizer + classifier, early-stopped on held-out sentences.

Validation is ``sentence_split``: 1,000 whole SST-2 sentences that training never sees in any form (no
phrase of them is trained on); training is every other item, phrases included. A run folder gets what
export and people need: ``checkpoint.pt`` (the selected weights and the model config),
``tokenizer.json`` (the one tokenization definition the service also loads), ``curves.png``,
``report.json`` and ``report.md``, and ``last.pt``, the training state: re-running the same command
continues an interrupted run (see ``models/common/resume.py``).
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
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from lstm_core.encoding import encode_words
from lstm_core.padding import pad_batch
from lstm_core.tokens import PAD_ID, UNK_ID
from models.common.resume import (
    STATE,
    Interrupted,
    Stopper,
    average_states,
    check_same_recipe,
    load_state,
    recipe_of,
    restore_rng_states,
    rng_states,
    save_state,
)
from models.common.runs import git_commit, plot_curves, set_seed, write_report
from models.sentiment import LABELS
from models.sentiment.data import (
    HELDOUT_SENTENCES,
    SENTENCE_SPLIT_VERSION,
    SPLIT_SEED,
    Split,
    dataset_info,
    sentence_split,
)
from models.sentiment.distill import Teacher, distillation_loss, ensemble_probabilities
from models.sentiment.evaluate import accuracy_report, gradient_reach, predict_probabilities
from models.sentiment.model import CELLS, CHECKPOINT, TOKENIZER, ModelConfig, SentimentClassifier
from models.text import train_word_tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-serve train sentiment", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, default=Path("runs/sentiment"), help="run folder (created; resumed if it has last.pt)"
    )
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    p.add_argument("--emb-dim", type=int, default=100)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--unidirectional", action="store_true", help="one direction instead of a biLSTM")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument(
        "--word-dropout", type=float, default=0.1, help="training only: replace a token by [UNK] with this probability"
    )
    p.add_argument(
        "--average-last", type=int, default=3, help="also try the mean of the last K epochs' weights (1 = off)"
    )
    p.add_argument("--vocab-size", type=int, default=12_000, help="most frequent words kept, specials included")
    p.add_argument("--min-frequency", type=int, default=2, help="rarer training words become [UNK]")
    p.add_argument("--max-length", type=int, default=128, help="tokens kept per text (also the served limit)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0, help="gradient norm clip")
    p.add_argument("--epochs", type=int, default=20, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better val score")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--heldout", type=int, default=HELDOUT_SENTENCES, help="validation sentences held out")
    p.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="seed of the validation draw")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--limit-train", type=int, default=None, help="first N training examples (smoke runs)")
    p.add_argument(
        "--limit-val",
        "--limit-dev",
        dest="limit_val",
        type=int,
        default=None,
        help="first N validation sentences (smoke runs)",
    )
    p.add_argument("--checkpoint-every-min", type=float, default=5.0, help="save last.pt at least this often")
    p.add_argument("--stop-after-steps", type=int, default=None, help="end this sitting after N steps (resume later)")
    p.add_argument("--time-limit-min", type=float, default=None, help="end this sitting after N minutes (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument(
        "--teachers",
        type=Path,
        nargs="*",
        default=[],
        help="finished run folders whose mean soft answers the model also learns (distillation)",
    )
    p.add_argument(
        "--distill-weight", type=float, default=0.5, help="with --teachers: share of the soft-target loss (0..1)"
    )
    p.add_argument(
        "--distill-temperature", type=float, default=2.0, help="with --teachers: softening of the teachers' answers"
    )
    return p


def command_line(recipe: dict) -> str:
    """The ``lstm-serve train sentiment`` command that reproduces ``recipe``: the options off their defaults."""
    defaults = recipe_of(build_parser().parse_args([]))
    parts = ["lstm-serve train sentiment"]
    for action in build_parser()._actions:
        key = action.dest
        if key not in defaults or recipe.get(key, defaults[key]) == defaults[key]:
            continue
        flag = action.option_strings[0]
        value = recipe[key]
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


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


def word_dropout(input_ids: torch.Tensor, rate: float) -> torch.Tensor:
    """Replace real tokens by ``[UNK]`` with probability ``rate`` (padding stays padding)."""
    if rate <= 0:
        return input_ids
    drop = (torch.rand(input_ids.shape) < rate) & (input_ids != PAD_ID)
    return input_ids.masked_fill(drop, UNK_ID)


def dev_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def load_data(args: argparse.Namespace) -> tuple[Split, Split]:
    train_split, val_split = sentence_split(args.heldout, args.split_seed)
    return train_split.head(args.limit_train), val_split.head(args.limit_val)


def teacher_targets(
    teachers: Sequence[Path], temperature: float, tokenizer: Tokenizer, train: tuple[list, list], val: tuple[list, list]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The teachers' mean softened answers on the training items, and each teacher's answers on validation.

    ``train`` and ``val`` are (texts, ids); the validation answers go into the report, so a student's
    score can be read against what it learned from.
    """
    loaded = [Teacher.load(run) for run in teachers]
    student_json = tokenizer.to_str()
    on_train = [t.probabilities(*train, student_json) for t in loaded]
    return ensemble_probabilities(on_train, temperature), [t.probabilities(*val, student_json) for t in loaded]


def distillation_summary(teachers: Sequence[Path], val_probabilities: list, val_labels: np.ndarray) -> dict:
    def accuracy(p: np.ndarray) -> float:
        return float((p.argmax(axis=1) == val_labels).mean())

    return {
        "teachers": [
            {"run": str(run), "val_accuracy": accuracy(p)} for run, p in zip(teachers, val_probabilities, strict=True)
        ],
        "ensemble_val_accuracy": accuracy(np.mean(val_probabilities, axis=0)),
    }


def train(args: argparse.Namespace) -> dict:
    """Train one model into ``args.out`` (continuing from ``last.pt`` if there); returns the report.

    Raises ``Interrupted`` when ``--stop-after-steps`` / ``--time-limit-min`` end this sitting early.
    """
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    train_split, val_split = load_data(args)
    if (out / STATE).is_file():  # a resumed run keeps the vocabulary it started with
        tokenizer = Tokenizer.from_file(str(out / TOKENIZER))
    else:
        tokenizer = train_word_tokenizer(train_split.texts, args.vocab_size, args.min_frequency)
        tokenizer.save(str(out / TOKENIZER))
    train_ids = encode_words(tokenizer, train_split.texts, args.max_length)
    val_ids = encode_words(tokenizer, val_split.texts, args.max_length)
    train_labels = np.asarray(train_split.labels, dtype=np.int64)
    val_labels = np.asarray(val_split.labels, dtype=np.int64)
    soft_targets, distillation = None, None
    if args.teachers:
        soft_targets, teachers_on_val = teacher_targets(
            args.teachers,
            args.distill_temperature,
            tokenizer,
            (train_split.texts, train_ids),
            (val_split.texts, val_ids),
        )
        distillation = distillation_summary(args.teachers, teachers_on_val, val_labels) | {
            "weight": args.distill_weight,
            "temperature": args.distill_temperature,
        }
        print(f"teachers: ensemble val accuracy {distillation['ensemble_val_accuracy']:.4f}", flush=True)

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
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)

    # everything that decides what happens next; saved to last.pt, restored on a re-run
    state: dict = {
        "recipe": recipe_of(args),
        "epoch": 0,  # epochs completed
        "batches": None,  # the current epoch's batch order, while inside an epoch
        "position": 0,  # next batch of the current epoch
        "sums": (0.0, 0, 0),  # loss, correct, seen so far in the current epoch
        "history": [],
        "best": {"accuracy": -math.inf, "epoch": 0, "state": initial_state, "averaged": False},
        "recent": [],  # last --average-last epoch-end weights (CPU)
        "train_seconds": 0.0,
        "finished": False,
    }
    saved = load_state(out)
    if saved is not None:
        check_same_recipe(saved["state"]["recipe"], args, out)
        state = saved["state"]
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["numpy_generator"]
        restore_rng_states(saved["rng"])
        print(f"resuming {out}: epoch {state['epoch'] + 1}, batch {state['position']}", flush=True)

    def checkpoint() -> None:
        save_state(
            out,
            {
                "state": state,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "numpy_generator": rng.bit_generator.state,
                "rng": rng_states(),
            },
        )
        stopper.saved()

    stopper = Stopper(args.checkpoint_every_min, args.stop_after_steps, args.time_limit_min)
    sitting_started = time.perf_counter()
    base_seconds = state["train_seconds"]
    while not state["finished"] and state["epoch"] < args.epochs:
        epoch = state["epoch"] + 1
        if state["batches"] is None:
            state["batches"] = training_batches([len(s) for s in train_ids], args.batch_size, rng)
            state["position"], state["sums"] = 0, (0.0, 0, 0)
        model.train()
        total_loss, correct, seen = state["sums"]
        batches = state["batches"]
        bar = tqdm(
            range(state["position"], len(batches)),
            desc=f"epoch {epoch}",
            unit="batch",
            disable=args.no_progress or None,
            leave=False,
        )
        for k in bar:
            batch = batches[k]
            input_ids, lengths = (torch.from_numpy(a) for a in pad_batch([train_ids[i] for i in batch]))
            input_ids = word_dropout(input_ids, args.word_dropout)
            target = torch.from_numpy(train_labels[batch]).to(device)
            logits = model(input_ids.to(device), lengths.to(device))
            if soft_targets is None:
                loss = nn.functional.cross_entropy(logits, target)
            else:
                soft = torch.from_numpy(soft_targets[batch]).to(device)
                loss = distillation_loss(logits, target, soft, args.distill_weight, args.distill_temperature)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(dim=1) == target).sum())
            seen += len(batch)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
            stopper.step()
            state["position"], state["sums"] = k + 1, (total_loss, correct, seen)
            state["train_seconds"] = base_seconds + time.perf_counter() - sitting_started
            if stopper.should_stop():
                checkpoint()
                raise Interrupted(f"stopped after {stopper.steps} steps in epoch {epoch}; re-run to continue")
            if stopper.checkpoint_due():
                checkpoint()
        train_loss, train_accuracy = total_loss / seen, correct / seen

        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state["recent"] = ([*state["recent"], weights])[-args.average_last :]
        candidates = [("epoch", weights)]
        if args.average_last > 1 and len(state["recent"]) == args.average_last:
            candidates.append(("average", average_states(state["recent"])))
        row: dict[str, float] = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy}
        improved = False
        for kind, candidate in candidates:
            model.load_state_dict(candidate)
            probabilities = predict_probabilities(model, val_ids)
            accuracy = float((probabilities.argmax(axis=1) == val_labels).mean())
            if kind == "epoch":
                row.update(val_loss=dev_loss(probabilities, val_labels), val_accuracy=accuracy)
            else:
                row["val_accuracy_averaged"] = accuracy
            if accuracy > state["best"]["accuracy"]:
                improved = True
                state["best"] = {
                    "accuracy": accuracy,
                    "epoch": epoch,
                    "state": candidate,
                    "averaged": kind == "average",
                }
        model.load_state_dict(weights)
        state["history"].append(row)
        state["epoch"], state["batches"], state["position"] = epoch, None, 0
        state["train_seconds"] = base_seconds + time.perf_counter() - sitting_started
        averaged = f" | averaged {row['val_accuracy_averaged']:.4f}" if "val_accuracy_averaged" in row else ""
        print(
            f"epoch {epoch}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | val acc {row['val_accuracy']:.4f}"
            f"{averaged}{' (best)' if improved else ''} | {state['train_seconds']:.0f}s",
            flush=True,
        )
        if epoch - state["best"]["epoch"] >= args.patience:
            print(f"early stop: no better val accuracy for {args.patience} epochs", flush=True)
            state["finished"] = True
        checkpoint()

    history, best = state["history"], state["best"]
    model.load_state_dict(best["state"])
    model.to("cpu")
    val_lengths = [len(s) for s in val_ids]
    metrics = accuracy_report(predict_probabilities(model, val_ids), val_labels, val_lengths)
    initial = SentimentClassifier(config)
    initial.load_state_dict(initial_state)
    split_name = SENTENCE_SPLIT_VERSION.format(heldout=args.heldout, seed=args.split_seed)
    report = {
        "task": "sentiment",
        "labels": LABELS,
        "model": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "recipe": recipe_of(args) | {"threads": args.threads},
        "dataset": dataset_info({"train": len(train_split), "val": len(val_split)}, split_name),
        "tokenizer": {"vocab_size": tokenizer.get_vocab_size(), "file": TOKENIZER},
        "history": history,
        "best_epoch": best["epoch"],
        "best_is_average": best["averaged"],
        "epochs_run": len(history),
        "validation": {
            "split": f"val: {len(val_split)} whole SST-2 sentences held out with all their phrases "
            f"(seed {args.split_seed})",
            **metrics,
        },
        **({"distillation": distillation} if distillation else {}),
        "gradient_reach": {"trained": gradient_reach(model, val_ids), "initial": gradient_reach(initial, val_ids)},
        "train_seconds": state["train_seconds"],
        "total_seconds": time.perf_counter() - started,
        "threads": args.threads,
        "git_commit": git_commit(),
    }
    torch.save(
        {"config": config.to_dict(), "state_dict": best["state"], "max_length": args.max_length, "report": report},
        out / CHECKPOINT,
    )
    plot_curves(
        [{k: v for k, v in row.items() if k != "val_accuracy_averaged"} for row in history],
        out / "curves.png",
        f"SST-2 {args.cell} ({'bi' if config.bidirectional else 'uni'})",
    )
    write_report(out, report, render_markdown(report))
    return report


AVERAGED = " (the mean of the last epochs' weights)"


def render_markdown(report: dict) -> str:
    """The people-facing summary of a run."""
    v = report["validation"]
    lines = [
        f"# SST-2 sentiment run: {report['model']['cell']}",
        "",
        f"- validation accuracy ({v['split']}): **{v['accuracy']:.4f}** on {v['n']} examples",
        f"- training: {report['dataset']['splits']['train']:,} items (sentences and phrases, none inside a "
        "validation sentence)",
        f"- best epoch {report['best_epoch']}{AVERAGED if report['best_is_average'] else ''}"
        f" of {report['epochs_run']} run; training {report['train_seconds']:.0f} s "
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
            f"Gradient reaching early steps (forward direction, {reach['n_sentences']} val sentences longer than "
            f"{reach['max_distance']} tokens): |grad| at distance {reach['max_distance']} / at distance 0 = "
            f"{reach['ratio_first_to_last']:.3g}",
        ]
    lines += [
        "",
        "| epoch | train loss | val loss | train acc | val acc | val acc, mean of last epochs |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["history"]:
        averaged = f"{row['val_accuracy_averaged']:.4f}" if "val_accuracy_averaged" in row else "-"
        lines.append(
            f"| {row['epoch']} | {row['train_loss']:.4f} | {row['val_loss']:.4f} | "
            f"{row['train_accuracy']:.4f} | {row['val_accuracy']:.4f} | {averaged} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = train(args)
    except Interrupted as stop:
        print(f"{stop} (state in {args.out / 'last.pt'})", flush=True)
        return 3
    print(f"validation accuracy {report['validation']['accuracy']:.4f}; run folder {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
