"""``lstm-serve train translation``: Multi30k en→de, selected by validation BLEU.

Writes a run folder: tokenizers, the best checkpoint (by greedy val BLEU), ``curves.png`` and
``report.{json,md}`` with BLEU greedy and beam on test_2016_flickr. Defaults are sized for a
1-2 core CPU; ``--limit``/``--epochs``/size knobs make a tiny CI run take seconds.

Resumable: ``last.pt`` holds the weights, optimizer (with its learning rate), every random generator,
the epoch's batch order and position, the history and the best-so-far, saved every
``--checkpoint-every-min`` minutes and after every epoch; re-running the same command continues.
``--average-last K`` keeps the last K epochs' weights (``epoch-N.pt``) and, at the end, tries their mean.
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from lstm_core.encoding import encode_source
from lstm_core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
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

from .data import batch_indices, bucketed_batches, load_pairs, make_batch
from .decode import bleu, translate
from .model import CELLS, ModelConfig, Seq2Seq
from .subwords import train_tokenizer

CHECKPOINT = "best.pt"
SRC_TOKENIZER, TGT_TOKENIZER = "source_tokenizer.json", "target_tokenizer.json"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-serve train translation", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/translation"), help="run folder to write")
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    p.add_argument("--src-vocab", type=int, default=6000)
    p.add_argument("--tgt-vocab", type=int, default=6000)
    p.add_argument("--emb", type=int, default=256)
    p.add_argument("--enc-hidden", type=int, default=256, help="per direction")
    p.add_argument("--enc-layers", type=int, default=1)
    p.add_argument("--dec-hidden", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--time-budget-min", type=float, default=None, help="stop starting new epochs after this")
    p.add_argument("--batch-tokens", type=int, default=2500, help="padded tokens per batch (source or target)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay", type=float, default=0.5, help="lr factor when val BLEU does not improve")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without improvement")
    p.add_argument(
        "--anneal-from", type=float, default=0.6, help="with a time budget: decay lr every epoch after this fraction"
    )
    p.add_argument(
        "--anneal-from-epoch", type=int, default=None, help="decay lr after every epoch from this one on (fixed recipe)"
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--word-dropout", type=float, default=0.0, help="training: source/target input tokens -> [UNK]")
    p.add_argument("--average-last", type=int, default=1, help="at the end, try the mean of the last K epochs")
    p.add_argument("--checkpoint-every-min", type=float, default=5.0, help="save last.pt at least this often")
    p.add_argument("--stop-after-steps", type=int, default=None, help="end this sitting after N steps (resume later)")
    p.add_argument("--time-limit-min", type=float, default=None, help="end this sitting after N minutes")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--max-src-tokens", type=int, default=128)
    p.add_argument("--max-length", type=int, default=128, help="decoding limit (target tokens)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training pairs")
    p.add_argument("--eval-limit", type=int, default=None, help="use only the first N val/test pairs")
    p.add_argument("--beam-size", type=int, default=4, help="beam for the final test evaluation")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty for beam search")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (CI logs)")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="continue from this run's best checkpoint and tokenizers (its model sizes replace the size knobs)",
    )
    p.add_argument(
        "--train-targets",
        type=Path,
        default=None,
        help="German training targets to use instead of the references: gzip text, one line per training pair "
        "(a teacher's translations: python -m models.translation.distill)",
    )
    return p.parse_args(argv)


def save_best(
    run_dir: Path,
    cfg: ModelConfig,
    weights: dict,
    epoch: int,
    val_bleu: float,
    args: argparse.Namespace,
    averaged_epochs: int = 1,
) -> None:
    """``best.pt``: what export and evaluation load (weights, config, epoch, val BLEU, options)."""
    torch.save(
        {
            "config": cfg.to_dict(),
            "state_dict": weights,
            "epoch": epoch,
            "val_bleu": val_bleu,
            "averaged_epochs": averaged_epochs,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        },
        run_dir / CHECKPOINT,
    )


def load_checkpoint(run_dir: Path) -> tuple[Seq2Seq, dict]:
    """The best model of a run (eval mode) and its checkpoint metadata."""
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    model = Seq2Seq(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def read_targets(path: Path, count: int) -> list[str]:
    """The first ``count`` lines of a gzip text file of training targets (``--train-targets``)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    if len(lines) < count:
        raise ValueError(f"{path}: {len(lines)} targets for {count} training pairs")
    return lines[:count]


def word_dropout(ids: torch.Tensor, rate: float) -> torch.Tensor:
    """Replace real tokens (not PAD/BOS/EOS) by ``[UNK]`` with probability ``rate``."""
    if rate <= 0:
        return ids
    real = (ids != PAD_ID) & (ids != BOS_ID) & (ids != EOS_ID)
    return ids.masked_fill(real & (torch.rand(ids.shape) < rate), UNK_ID)


def train_step(model: Seq2Seq, batch, loss_fn: nn.Module, optimizer, args: argparse.Namespace) -> tuple[float, int]:
    """One teacher-forced update; returns (summed loss, target tokens)."""
    model.train()
    src = word_dropout(batch.src, args.word_dropout)
    tgt_in = word_dropout(batch.tgt_in, args.word_dropout)
    logits = model(src, batch.src_lengths, tgt_in)
    loss = loss_fn(logits.reshape(-1, logits.size(-1)), batch.tgt_out.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), args.clip)
    optimizer.step()
    n = int((batch.tgt_out != PAD_ID).sum())
    return loss.item() * n, n


@torch.inference_mode()
def eval_loss(model: Seq2Seq, batches: list, loss_fn: nn.Module) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        logits = model(batch.src, batch.src_lengths, batch.tgt_in)
        n = int((batch.tgt_out != PAD_ID).sum())
        total += loss_fn(logits.reshape(-1, logits.size(-1)), batch.tgt_out.reshape(-1)).item() * n
        tokens += n
    return total / max(tokens, 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except Interrupted as stop:
        print(f"{stop} (state in {args.out / STATE})", flush=True)
        return 3


def train(args: argparse.Namespace) -> int:
    """Train into ``args.out``, continuing from its ``last.pt`` if there; raises ``Interrupted`` when stopped early."""
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    rng = random.Random(args.seed)
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)

    train_src, train_tgt = load_pairs("train", args.limit)
    if args.train_targets is not None:
        train_tgt = read_targets(args.train_targets, len(train_src))
    val_src, val_tgt = load_pairs("val", args.eval_limit)
    test_src, test_tgt = load_pairs("test_2016_flickr", args.eval_limit)
    tokenizers_from = run_dir if (run_dir / STATE).is_file() else args.init_from  # a resumed run keeps its own
    if tokenizers_from:
        src_tok = Tokenizer.from_file(str(tokenizers_from / SRC_TOKENIZER))
        tgt_tok = Tokenizer.from_file(str(tokenizers_from / TGT_TOKENIZER))
    else:
        src_tok = train_tokenizer(train_src, args.src_vocab, append_eos=True)
        tgt_tok = train_tokenizer(train_tgt, args.tgt_vocab, append_eos=False)
    src_tok.save(str(run_dir / SRC_TOKENIZER))
    tgt_tok.save(str(run_dir / TGT_TOKENIZER))
    train_src_ids = encode_source(src_tok, train_src, args.max_src_tokens)
    train_tgt_ids = [e.ids[: args.max_length - 1] for e in tgt_tok.encode_batch(train_tgt)]
    val_batches = list(
        bucketed_batches(
            encode_source(src_tok, val_src, args.max_src_tokens),
            [e.ids for e in tgt_tok.encode_batch(val_tgt)],
            args.batch_tokens,
            rng,
        )
    )

    cfg = ModelConfig(
        src_vocab=src_tok.get_vocab_size(),
        tgt_vocab=tgt_tok.get_vocab_size(),
        emb=args.emb,
        enc_hidden=args.enc_hidden,
        enc_layers=args.enc_layers,
        dec_hidden=args.dec_hidden,
        cell=args.cell,
        dropout=args.dropout,
    )
    if args.init_from:
        model, init_ckpt = load_checkpoint(args.init_from)
        cfg = model.cfg
        print(f"continuing from {args.init_from} (epoch {init_ckpt['epoch']}, val BLEU {init_ckpt['val_bleu']:.2f})")
    else:
        model = Seq2Seq(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, {cfg}", flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_ID, label_smoothing=args.label_smoothing)
    plain_loss = nn.CrossEntropyLoss(ignore_index=PAD_ID)

    state: dict = {
        "recipe": recipe_of(args),
        "epoch": 0,  # epochs completed
        "batches": None,  # this epoch's batch order (index lists) while inside an epoch
        "position": 0,
        "sums": (0.0, 0),  # loss, tokens so far in this epoch
        "history": [],
        "best_bleu": -1.0,
        "best_epoch": 0,
        "stale": 0,
        "epoch_seconds": 0.0,
        "seconds": 0.0,  # training time over all sittings
        "finished": False,
    }
    saved = load_state(run_dir)
    if saved is not None:
        check_same_recipe(saved["state"]["recipe"], args, run_dir)
        state = saved["state"]
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.setstate(saved["batch_rng"])
        restore_rng_states(saved["rng"])
        print(f"resuming {run_dir}: epoch {state['epoch'] + 1}, batch {state['position']}", flush=True)
    stopper = Stopper(args.checkpoint_every_min, args.stop_after_steps, args.time_limit_min)
    sitting_started, base_seconds = time.time(), state["seconds"]

    def checkpoint() -> None:
        state["seconds"] = base_seconds + time.time() - sitting_started
        save_state(
            run_dir,
            {
                "state": state,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "batch_rng": rng.getstate(),
                "rng": rng_states(),
            },
        )
        stopper.saved()

    while not state["finished"] and state["epoch"] < args.epochs:
        epoch = state["epoch"] + 1
        if state["batches"] is None:
            state["batches"] = batch_indices(train_src_ids, train_tgt_ids, args.batch_tokens, rng)
            state["position"], state["sums"], state["epoch_seconds"] = 0, (0.0, 0), 0.0
        epoch_sitting_start, epoch_base = time.time(), state["epoch_seconds"]
        total, tokens = state["sums"]
        batches = state["batches"]
        bar = tqdm(
            range(state["position"], len(batches)),
            desc=f"epoch {epoch}/{args.epochs}",
            unit="batch",
            mininterval=10,
            dynamic_ncols=True,
            disable=args.no_progress,
        )
        for k in bar:
            idx = batches[k]
            batch = make_batch([train_src_ids[i] for i in idx], [train_tgt_ids[i] for i in idx])
            loss_sum, n = train_step(model, batch, loss_fn, optimizer, args)
            total, tokens = total + loss_sum, tokens + n
            bar.set_postfix(loss=f"{total / tokens:.3f}", refresh=False)
            state["position"], state["sums"] = k + 1, (total, tokens)
            state["epoch_seconds"] = epoch_base + time.time() - epoch_sitting_start
            stopper.step()
            if stopper.should_stop():
                checkpoint()
                raise Interrupted(f"stopped after {stopper.steps} steps in epoch {epoch}; re-run to continue")
            if stopper.checkpoint_due():
                checkpoint()
        train_loss = total / max(tokens, 1)
        val_loss = eval_loss(model, val_batches, plain_loss)
        val_bleu = bleu(translate(model, src_tok, tgt_tok, val_src, max_length=args.max_length), val_tgt)
        lr = optimizer.param_groups[0]["lr"]
        epoch_seconds = epoch_base + time.time() - epoch_sitting_start
        state["history"].append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_ppl": math.exp(val_loss),
                "val_bleu": val_bleu,
                "lr": lr,
                "epoch_seconds": epoch_seconds,
            }
        )
        print(
            f"epoch {epoch}: train_loss {train_loss:.3f} val_loss {val_loss:.3f} val_bleu {val_bleu:.2f} "
            f"lr {lr:.2e} ({epoch_seconds:.0f}s)",
            flush=True,
        )
        plot_curves(state["history"], run_dir / "curves.png", f"translation en→de ({args.cell})")
        if args.average_last > 1:
            torch.save(model.state_dict(), run_dir / f"epoch-{epoch}.pt")
            old = run_dir / f"epoch-{epoch - args.average_last}.pt"
            old.unlink(missing_ok=True)
        if val_bleu > state["best_bleu"]:
            state["best_bleu"], state["best_epoch"], state["stale"] = val_bleu, epoch, 0
            save_best(run_dir, cfg, model.state_dict(), epoch, val_bleu, args)
        else:
            state["stale"] += 1
            for group in optimizer.param_groups:
                group["lr"] *= args.lr_decay
            if state["stale"] >= args.patience:
                print(f"no improvement for {state['stale']} epochs: stopping", flush=True)
                state["finished"] = True
        elapsed_min = (base_seconds + time.time() - sitting_started) / 60
        budget_anneal = args.time_budget_min is not None and elapsed_min > args.anneal_from * args.time_budget_min
        epoch_anneal = args.anneal_from_epoch is not None and epoch >= args.anneal_from_epoch
        if state["stale"] == 0 and (budget_anneal or epoch_anneal):
            # The run ends by budget or recipe, not by plateau: anneal over its last part so the final epochs refine.
            for group in optimizer.param_groups:
                group["lr"] *= args.lr_decay
        if args.time_budget_min is not None and elapsed_min * (epoch + 1) / epoch > args.time_budget_min:
            print(f"time budget: {elapsed_min:.1f} min used, next epoch would pass {args.time_budget_min}", flush=True)
            state["finished"] = True
        state["epoch"], state["batches"], state["position"] = epoch, None, 0
        checkpoint()
    history, best_bleu, best_epoch = state["history"], state["best_bleu"], state["best_epoch"]
    averaged_bleu = None
    recent = [run_dir / f"epoch-{e}.pt" for e in range(len(history) - args.average_last + 1, len(history) + 1)]
    if args.average_last > 1 and len(history) >= args.average_last and all(f.is_file() for f in recent):
        averaged = average_states([torch.load(f, map_location="cpu", weights_only=True) for f in recent])
        model.load_state_dict(averaged)
        averaged_bleu = bleu(translate(model, src_tok, tgt_tok, val_src, max_length=args.max_length), val_tgt)
        print(f"mean of the last {args.average_last} epochs: val_bleu {averaged_bleu:.2f}", flush=True)
        if averaged_bleu > best_bleu:
            best_bleu, best_epoch = averaged_bleu, len(history)
            save_best(run_dir, cfg, averaged, len(history), averaged_bleu, args, averaged_epochs=args.average_last)
    train_seconds = state["seconds"]

    model, _ = load_checkpoint(run_dir)
    test_greedy = bleu(translate(model, src_tok, tgt_tok, test_src, max_length=args.max_length), test_tgt)
    test_beam = bleu(
        translate(model, src_tok, tgt_tok, test_src, args.beam_size, args.max_length, args.alpha), test_tgt
    )
    report = {
        "task": "translation",
        "data": {"train": len(train_src), "val": len(val_src), "test_2016_flickr": len(test_src)},
        "config": cfg.to_dict(),
        "parameters": n_params,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": train_seconds,
        "threads": args.threads,
        "metrics": {
            "val_bleu_greedy": best_bleu,
            "test_2016_flickr_bleu_greedy": test_greedy,
            f"test_2016_flickr_bleu_beam{args.beam_size}": test_beam,
            "val_bleu_greedy_averaged": averaged_bleu,
            "beam_size": args.beam_size,
            "length_penalty_alpha": args.alpha,
        },
        "history": history,
        "git_commit": git_commit(),
    }
    rows = "\n".join(
        f"| {h['epoch']} | {h['train_loss']:.3f} | {h['val_loss']:.3f} | {h['val_bleu']:.2f} | {h['lr']:.1e} "
        f"| {h['epoch_seconds']:.0f} |"
        for h in history
    )
    markdown = f"""# Translation run (Multi30k en→de, {args.cell})

- model: {n_params / 1e6:.2f}M parameters; {cfg}
- data: train {len(train_src)}, val {len(val_src)}, test_2016_flickr {len(test_src)}
- training: {train_seconds / 60:.1f} min on {args.threads} thread(s); best epoch {best_epoch} of {len(history)}
- BLEU (sacrebleu, detokenised, case-sensitive): val greedy {best_bleu:.2f};
  test_2016_flickr greedy {test_greedy:.2f}, beam {args.beam_size} (alpha {args.alpha}) {test_beam:.2f}

| epoch | train loss (smoothed) | val loss | val BLEU | lr | seconds |
|---|---|---|---|---|---|
{rows}

![curves](curves.png)
"""
    write_report(run_dir, report, markdown)
    print(markdown, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
