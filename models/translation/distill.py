"""Sequence-level knowledge distillation (Kim & Rush, 2016): a teacher's translations of the training set.

    python -m models.translation.distill /tmp/exp-ft/translation/1 --out runs/kd/train.de.gz --alpha 1.0

A larger model that does not fit the serving limits (``runs/translation-big-ft``, 34.79 BLEU, 45 MB with
its int8 variant) translates every English training sentence with beam search on its exported graphs
(onnxruntime, the code the service runs). A smaller student then trains on those outputs instead of the
references (``lstm-serve train translation --train-targets FILE``): the teacher's translations are more
consistent than five human translators', so a small model fits them more easily, and it learns what the
teacher's beam would say rather than what one reference said. The file is gzip text, one line per
training pair in the split's order; a ``.json`` beside it records the teacher and the search.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from lstm_core.checksums import sha256_of
from lstm_core.decode_scheduler import DecodeScheduler, Sentence
from lstm_core.encoding import decode_targets, encode_source
from lstm_core.tokens import BOS_ID, EOS_ID
from lstm_core.translation_runtime import DeviceRows
from lstm_core.translation_search import output_limit

from .data import load_pairs


def distill(
    folder: Path, out: Path, beam: int, alpha: float, rows: int = 256, limit: int | None = None, progress: bool = True
) -> dict:
    """Translate the training sources with the exported model in ``folder``; write ``out`` and ``out``.json.

    Decoded by the service's step-level scheduler (``rows`` decoder rows at a time), so each sentence
    gets the answer it gets alone: its own output limit, whatever it shares a step with.
    """
    sources, _ = load_pairs("train", limit)
    source_tok = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    target_tok = Tokenizer.from_file(str(folder / "target_tokenizer.json"))
    ids = encode_source(source_tok, sources, 128)
    scheduler = DecodeScheduler(
        DeviceRows.from_folder(folder), max_rows=rows, max_positions=64 * rows, bos=BOS_ID, eos=EOS_ID, lazy_retire=True
    )
    sentences = [Sentence(np.asarray(r, dtype=np.int64), beam, output_limit(128, len(r)), alpha) for r in ids]
    for i in np.argsort([len(r) for r in ids], kind="stable").tolist():  # similar lengths share steps
        scheduler.add(sentences[i])
    started = time.perf_counter()
    with tqdm(total=len(sentences), disable=not progress, desc="distill", unit="sentence") as bar:
        while not scheduler.idle:
            bar.update(len(scheduler.step().finished))
    seconds = time.perf_counter() - started
    outputs = decode_targets(target_tok, [s.result or [] for s in sentences])
    teacher = {
        "teacher": str(folder),
        "teacher_files": {name: sha256_of(folder / name) for name in ("encoder.onnx", "decoder.onnx")},
    }
    return write_targets(out, outputs, teacher, beam, alpha, seconds)


def write_targets(out: Path, outputs: Sequence[str], teacher: dict, beam: int, alpha: float, seconds: float) -> dict:
    """Write the training targets (gzip text, one line per pair in the split's order) and their record."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as handle:
        handle.writelines(text.replace("\n", " ") + "\n" for text in outputs)
    record = {
        **teacher,
        "split": "train",
        "sentences": len(outputs),
        "beam_size": beam,
        "alpha": alpha,
        "seconds": round(seconds, 1),
        "empty": sum(1 for text in outputs if not text.strip()),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.translation.distill", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="an exported translation version folder (the teacher)")
    p.add_argument("--out", type=Path, required=True, help="gzip text file to write, one line per training pair")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.6, help="the teacher's length penalty (chosen on val)")
    p.add_argument("--rows", type=int, default=256, help="decoder rows (sentences × beam) decoded at once")
    p.add_argument("--limit", type=int, default=None, help="first N training pairs only")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    record = distill(
        args.folder, args.out, args.beam_size, args.alpha, args.rows, args.limit, progress=not args.no_progress
    )
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
