"""Pick the beam size and length penalty on **val** (never on test) for a trained run.

    python -m models.translation.tune runs/translation-big --beams 2,4,6 --alphas 0.4,0.6,0.8,1.0

Decodes the val split with the run's selected weights (``best.pt``) for every (beam, alpha) pair,
prints a BLEU table and writes ``tune.json`` into the run folder with the best pair. Export then takes
``--beam-size`` and ``--alpha`` from it by hand, so the choice is visible in the command and the card.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .data import load_pairs
from .decode import bleu, translate
from .train import SRC_TOKENIZER, TGT_TOKENIZER, load_checkpoint


def tune(
    run_dir: Path, beams: Sequence[int], alphas: Sequence[float], limit: int | None = None, max_length: int = 128
) -> dict:
    model, ckpt = load_checkpoint(run_dir)
    src_tok = Tokenizer.from_file(str(run_dir / SRC_TOKENIZER))
    tgt_tok = Tokenizer.from_file(str(run_dir / TGT_TOKENIZER))
    sources, references = load_pairs("val", limit)
    rows = []
    for beam in beams:
        # alpha only matters when there is a beam to rank
        for alpha in alphas if beam > 1 else alphas[:1]:
            started = time.perf_counter()
            score = bleu(translate(model, src_tok, tgt_tok, sources, beam, max_length, alpha), references)
            rows.append(
                {"beam_size": beam, "alpha": alpha, "val_bleu": score, "seconds": time.perf_counter() - started}
            )
            print(f"beam {beam} alpha {alpha}: val BLEU {score:.2f} ({rows[-1]['seconds']:.0f}s)", flush=True)
    best = max(rows, key=lambda r: r["val_bleu"])
    result = {"checkpoint_epoch": ckpt.get("epoch"), "val_sentences": len(sources), "rows": rows, "best": best}
    (run_dir / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.translation.tune", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--beams", default="1,2,4,6")
    p.add_argument("--alphas", default="0.4,0.6,0.8,1.0")
    p.add_argument("--limit", type=int, default=None, help="first N val sentences")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = tune(
        args.run_dir,
        [int(b) for b in args.beams.split(",")],
        [float(a) for a in args.alphas.split(",")],
        args.limit,
    )
    best = result["best"]
    print(f"best on val: beam {best['beam_size']} alpha {best['alpha']} (BLEU {best['val_bleu']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
