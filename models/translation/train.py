"""``lstm-serve train translation``: Multi30k en→de, selected by validation BLEU.

Writes a run folder: tokenizers, the best checkpoint (by greedy val BLEU), ``curves.png`` and
``report.{json,md}`` with BLEU greedy and beam on test_2016_flickr. Defaults are sized for a
1-2 core CPU; ``--limit``/``--epochs``/size knobs make a tiny CI run take seconds.
"""

from __future__ import annotations

import argparse
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
from lstm_core.tokens import PAD_ID
from models.common.runs import git_commit, plot_curves, set_seed, write_report

from .data import bucketed_batches, load_pairs
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
    return p.parse_args(argv)


def load_checkpoint(run_dir: Path) -> tuple[Seq2Seq, dict]:
    """The best model of a run (eval mode) and its checkpoint metadata."""
    ckpt = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    model = Seq2Seq(ModelConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def run_epoch(
    model: Seq2Seq, batches: list, loss_fn: nn.Module, optimizer, clip: float, desc: str, progress: bool = True
) -> float:
    """One pass of teacher-forced training; returns the mean per-token loss."""
    model.train()
    total, tokens = 0.0, 0
    bar = tqdm(batches, desc=desc, unit="batch", mininterval=10, dynamic_ncols=True, disable=not progress)
    for batch in bar:
        logits = model(batch.src, batch.src_lengths, batch.tgt_in)
        loss = loss_fn(logits.reshape(-1, logits.size(-1)), batch.tgt_out.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        n = int((batch.tgt_out != PAD_ID).sum())
        total, tokens = total + loss.item() * n, tokens + n
        bar.set_postfix(loss=f"{total / tokens:.3f}", refresh=False)
    return total / max(tokens, 1)


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
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    rng = random.Random(args.seed)
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    train_src, train_tgt = load_pairs("train", args.limit)
    val_src, val_tgt = load_pairs("val", args.eval_limit)
    test_src, test_tgt = load_pairs("test_2016_flickr", args.eval_limit)
    if args.init_from:
        src_tok = Tokenizer.from_file(str(args.init_from / SRC_TOKENIZER))
        tgt_tok = Tokenizer.from_file(str(args.init_from / TGT_TOKENIZER))
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

    history: list[dict[str, float]] = []
    best_bleu, best_epoch, stale = -1.0, 0, 0
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.time()
        batches = list(bucketed_batches(train_src_ids, train_tgt_ids, args.batch_tokens, rng))
        train_loss = run_epoch(
            model, batches, loss_fn, optimizer, args.clip, f"epoch {epoch}/{args.epochs}", not args.no_progress
        )
        val_loss = eval_loss(model, val_batches, plain_loss)
        val_bleu = bleu(translate(model, src_tok, tgt_tok, val_src, max_length=args.max_length), val_tgt)
        lr = optimizer.param_groups[0]["lr"]
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_ppl": math.exp(val_loss),
                "val_bleu": val_bleu,
                "lr": lr,
                "epoch_seconds": time.time() - epoch_start,
            }
        )
        print(
            f"epoch {epoch}: train_loss {train_loss:.3f} val_loss {val_loss:.3f} val_bleu {val_bleu:.2f} "
            f"lr {lr:.2e} ({time.time() - epoch_start:.0f}s)",
            flush=True,
        )
        plot_curves(history, run_dir / "curves.png", f"translation en→de ({args.cell})")
        if val_bleu > best_bleu:
            best_bleu, best_epoch, stale = val_bleu, epoch, 0
            torch.save(
                {
                    "config": cfg.to_dict(),
                    "state_dict": model.state_dict(),
                    "epoch": epoch,
                    "val_bleu": val_bleu,
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                },
                run_dir / CHECKPOINT,
            )
        else:
            stale += 1
            for group in optimizer.param_groups:
                group["lr"] *= args.lr_decay
            if stale >= args.patience:
                print(f"no improvement for {stale} epochs: stopping", flush=True)
                break
        elapsed_min = (time.time() - started) / 60
        budget_anneal = args.time_budget_min is not None and elapsed_min > args.anneal_from * args.time_budget_min
        epoch_anneal = args.anneal_from_epoch is not None and epoch >= args.anneal_from_epoch
        if stale == 0 and (budget_anneal or epoch_anneal):
            # The run ends by budget or recipe, not by plateau: anneal over its last part so the final epochs refine.
            for group in optimizer.param_groups:
                group["lr"] *= args.lr_decay
        if args.time_budget_min is not None and elapsed_min * (epoch + 1) / epoch > args.time_budget_min:
            print(f"time budget: {elapsed_min:.1f} min used, next epoch would pass {args.time_budget_min}", flush=True)
            break
    train_seconds = time.time() - started

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
