"""An ensemble of trained translation runs: its BLEU, and its translations of the training set for distillation.

    python -m models.translation.ensemble runs/translation-big-ft runs/translation-big-s2-ft --bleu val
    python -m models.translation.ensemble runs/translation-big-ft runs/translation-big-s2-ft \\
        --distill runs/kd/train-ensemble.de.gz --beam-size 4 --alpha 1.0

Why: the shipped student (34.53 BLEU, beam 4, test_2016_flickr) learned from one teacher (34.79), and
the same recipe again gives the same models. Sequence-level distillation from an ensemble (Kim & Rush,
2016) gives the student a better teacher than any single model that fits the serving limits, at no
serving cost: the ensemble only decodes the training set once. The teachers must share tokenizers (runs
of one recipe on the same data do: its BPE training is deterministic); they decode with the torch models
through the shared search, each token scored by the log of the teachers' mean probability.
The distillation file has the format of ``models.translation.distill`` (gzip text, one line per training
pair in the split's order), so ``lstm-serve train translation --train-targets FILE`` reads either.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lstm_core.checksums import sha256_of

from .data import load_pairs
from .decode import bleu, translate
from .distill import write_targets
from .model import Seq2Seq
from .train import CHECKPOINT, SRC_TOKENIZER, TGT_TOKENIZER, load_checkpoint


def load_ensemble(run_dirs: Sequence[Path]) -> tuple[list[Seq2Seq], Tokenizer, Tokenizer]:
    """The runs' best models and their shared tokenizers; runs with different tokenizers are refused."""
    if not run_dirs:
        raise ValueError("an ensemble needs at least one run")
    for name in (SRC_TOKENIZER, TGT_TOKENIZER):
        digests = {str(run): sha256_of(run / name) for run in run_dirs}
        if len(set(digests.values())) > 1:
            raise ValueError(f"the runs do not share {name} (their vocabularies differ): {digests}")
    models = [load_checkpoint(run)[0] for run in run_dirs]
    first = run_dirs[0]
    return models, Tokenizer.from_file(str(first / SRC_TOKENIZER)), Tokenizer.from_file(str(first / TGT_TOKENIZER))


def ensemble_bleu(run_dirs: Sequence[Path], split: str, beam: int, alpha: float, limit: int | None = None) -> float:
    """Corpus BLEU of the ensemble's translations of ``split`` (sacrebleu, detokenised)."""
    models, source, target = load_ensemble(run_dirs)
    sources, references = load_pairs(split, limit)
    return bleu(translate(models, source, target, sources, beam, alpha=alpha), references)


def distill_ensemble(
    run_dirs: Sequence[Path], out: Path, beam: int, alpha: float, limit: int | None = None, batch_size: int = 64
) -> dict:
    """Translate the training sources with the ensemble; write ``out`` (gzip text) and ``out``.json."""
    models, source, target = load_ensemble(run_dirs)
    sources, _ = load_pairs("train", limit)
    started = time.perf_counter()
    outputs = translate(models, source, target, sources, beam, alpha=alpha, batch_size=batch_size)
    seconds = time.perf_counter() - started
    teachers = {
        "teachers": [str(run) for run in run_dirs],
        "teacher_checkpoints": {str(run): sha256_of(run / CHECKPOINT) for run in run_dirs},
    }
    return write_targets(out, outputs, teachers, beam, alpha, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.translation.ensemble", description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="training run folders (each with best.pt and tokenizers)")
    p.add_argument("--bleu", default=None, help="comma-separated splits to score (val, test_2016_flickr)")
    p.add_argument("--distill", type=Path, default=None, help="gzip text file: the ensemble's training-set targets")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--alpha", type=float, default=1.0, help="GNMT length penalty (the Makefile's teacher: 1.0)")
    p.add_argument("--limit", type=int, default=None, help="first N sentences of each split only")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (distilling 29,000 sentences)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.bleu is None and args.distill is None:
        p.error("nothing to do: give --bleu SPLITS and/or --distill FILE")
    try:
        for split in args.bleu.split(",") if args.bleu else []:
            score = ensemble_bleu(args.runs, split, args.beam_size, args.alpha, args.limit)
            print(f"{split}: BLEU {score:.2f} ({len(args.runs)} model(s), beam {args.beam_size}, alpha {args.alpha})")
        if args.distill is not None:
            record = distill_ensemble(args.runs, args.distill, args.beam_size, args.alpha, args.limit)
            print(json.dumps(record, indent=2))
    except (ValueError, FileNotFoundError) as exc:
        p.exit(2, f"ensemble: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
