"""Would n-gram blocking and a longer length penalty help an exported model? A val grid, offline.

    python -m models.translation.ngram_grid model_repository/translation/1 --ngrams 0,3,4 \\
        --alphas 2.0,3.0,4.0,5.0 --out bench/results/translation_ngram_grid.json

Why: the shipped model's beam-4 outputs are short (brevity penalty 0.92 on val, 0.96 on test at the
card's α 2.0, the top of the API's range) and 23 of the 1,000 test translations repeat a 4-gram (one
reference does), some looping to the length cap. Two standard remedies are measured here before any
is built into the serving search: a larger GNMT α, and blocking any token that would repeat an n-gram
already in the hypothesis (``no_repeat_ngram_size`` in fairseq, Hugging Face and CTranslate2).

Blocking is a wrapper around the decoder step of ``translation_search.beam_search``: it follows each
row's history through the search's own reorder (``state_index``) and sets the blocked tokens' log-prob
to -inf, so every other rule of the served search is unchanged. ``--ngrams 0`` is the served search.
Choices are made on val; test is decoded only for the val-best pair and for the card's own setting.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sacrebleu
from tokenizers import Tokenizer

from lstm_core.encoding import decode_targets, encode_source
from lstm_core.model_card import ModelCard
from lstm_core.padding import pad_batch
from lstm_core.tokens import BOS_ID, EOS_ID, PAD_ID
from lstm_core.translation_runtime import Seq2SeqRuntime
from lstm_core.translation_search import StepFn, beam_search, output_limit

from .data import load_pairs


def repeated_ngram_tokens(history: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in ``history`` (none while it is shorter than n - 1)."""
    if n < 1 or len(history) < n - 1:
        return []
    tail = list(history[len(history) - (n - 1) :])
    return sorted({history[i + n - 1] for i in range(len(history) - n + 1) if list(history[i : i + n - 1]) == tail})


class BlockingStep:
    """A decoder step that forbids, row by row, every token repeating an n-gram of that row's history."""

    def __init__(self, step: StepFn, rows: int, n: int) -> None:
        self.step, self.n = step, n
        self.history = np.zeros((rows, 0), dtype=np.int64)
        self.first = True

    def __call__(self, prev_tokens: np.ndarray, state_index: np.ndarray) -> np.ndarray:
        if not self.first:  # the search's own reorder, then the token each row just took
            self.history = np.concatenate([self.history[state_index], prev_tokens[:, None]], axis=1)
        self.first = False
        log_probs = self.step(prev_tokens, state_index)
        if self.n > 0:
            log_probs = log_probs.copy()
            for row, history in enumerate(self.history.tolist()):
                blocked = repeated_ngram_tokens(history, self.n)
                if blocked:
                    log_probs[row, blocked] = -np.inf
        return log_probs


def translate(
    runtime: Seq2SeqRuntime,
    source: Tokenizer,
    target: Tokenizer,
    texts: Sequence[str],
    ngram: int,
    alpha: float,
    beam_size: int = 4,
    max_length: int = 128,
    batch_size: int = 64,
) -> list[str]:
    """Beam-search translations in input order (length-sorted batches), with ``ngram`` blocking (0: off)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        rows = encode_source(source, [texts[i] for i in index], max_length)
        src_ids, lengths = pad_batch([np.asarray(r, dtype=np.int64) for r in rows], PAD_ID)
        step = BlockingStep(runtime.stepper(src_ids, lengths, beam_size), len(rows) * beam_size, ngram)
        limit = output_limit(max_length, int(lengths.max()))
        ids = beam_search(step, len(rows), beam_size, limit, BOS_ID, EOS_ID, alpha)
        out.update(zip(index, decode_targets(target, ids), strict=True))
    return [out[i] for i in range(len(texts))]


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    result = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    return {
        "bleu": round(result.score, 2),
        "bp": round(result.bp, 3),
        "ratio": round(result.sys_len / result.ref_len, 3),
    }


def grid(folder: Path, ngrams: Sequence[int], alphas: Sequence[float], limit: int | None = None) -> dict:
    runtime = Seq2SeqRuntime.from_folder(folder)
    source, target = (Tokenizer.from_file(str(folder / f)) for f in ("source_tokenizer.json", "target_tokenizer.json"))
    source.no_padding()
    source.no_truncation()
    card_alpha = float(ModelCard.load(folder).serving.get("length_penalty_alpha", 0.6))
    splits = {name: load_pairs(name, limit) for name in ("val", "test_2016_flickr")}
    rows = []
    for ngram in ngrams:
        for alpha in alphas:
            started = time.perf_counter()
            row = {
                "ngram": ngram,
                "alpha": alpha,
                **score(translate(runtime, source, target, splits["val"][0], ngram, alpha), splits["val"][1]),
            }
            rows.append({**row, "seconds": round(time.perf_counter() - started, 1)})
            print(f"val: ngram {ngram} alpha {alpha}: {rows[-1]}", flush=True)
    best = max(rows, key=lambda r: r["bleu"])
    test = {}
    for ngram, alpha in {(0, card_alpha), (best["ngram"], best["alpha"])}:
        hyps = translate(runtime, source, target, splits["test_2016_flickr"][0], ngram, alpha)
        test[f"ngram {ngram} alpha {alpha}"] = score(hyps, splits["test_2016_flickr"][1])
        print(f"test_2016_flickr: ngram {ngram} alpha {alpha}: {test[f'ngram {ngram} alpha {alpha}']}", flush=True)
    return {
        "folder": str(folder),
        "beam_size": 4,
        "card_alpha": card_alpha,
        "val": rows,
        "val_best": best,
        "test": test,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.translation.ngram_grid", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="an exported version folder")
    p.add_argument("--ngrams", default="0,3,4", help="n of the blocked n-grams (0: no blocking)")
    p.add_argument("--alphas", default="2.0,3.0,4.0,5.0")
    p.add_argument("--limit", type=int, default=None, help="first N sentences of each split")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result = grid(
        args.folder, [int(n) for n in args.ngrams.split(",")], [float(a) for a in args.alphas.split(",")], args.limit
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
