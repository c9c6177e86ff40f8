"""``lstm-serve export translation RUN_DIR``: encoder.onnx + one-step decoder.onnx, checked and published.

Weights are stored as fp16 (with a Cast to fp32 in front of each), which halves the folder so the
shipped model stays small, while onnxruntime folds the casts at load and computes in fp32. The torch
model is rounded through fp16 the same way before the parity check, so parity compares the same
weights: a full greedy decode of real test sentences must give identical token sequences with torch
and with onnxruntime, or the export fails. BLEU is then measured on the exported graphs themselves,
and the precision variants (``--precisions``) are built and gated by ``export.precision``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from tokenizers import Tokenizer
from torch import nn

from export.decode_graphs import check_graphs, check_search, write_graphs
from export.fp16_storage import round_to_fp16, store_fp16
from export.precision import DEFAULT_VARIANTS, add_variants, parse_precisions
from export.repository import DEFAULT_REPOSITORY, next_version, publish_version, utc_now
from lstm_core.cost import CARD_KEY, CostModel, InconsistentTimings, fit_cost_model
from lstm_core.encoding import encode_source, probe_source
from lstm_core.graphs import (
    DECODER_FILE,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_FILE,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
)
from lstm_core.model_card import DatasetInfo, GraphSpec, ModelCard, TensorSpec
from lstm_core.tokens import SPECIAL_TOKENS
from lstm_core.translation_runtime import COST_PROBE, Seq2SeqRuntime
from models.common.runs import git_commit
from models.datasets import CHECKSUMS
from models.translation.data import data_files, load_pairs
from models.translation.decode import bleu, search_ids
from models.translation.model import Seq2Seq
from models.translation.subwords import decode_target
from models.translation.train import CHECKPOINT, SRC_TOKENIZER, TGT_TOKENIZER, load_checkpoint

OPSET = 17


class EncoderGraph(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, src_ids: torch.Tensor, src_lengths: torch.Tensor):
        return self.model.encode(src_ids, src_lengths)


class DecoderStepGraph(nn.Module):
    """One decoding step; reorders the state by ``state_index`` first (beams fork inside the graph)."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, prev_token, state_index, h, c, enc_out, enc_keys, src_mask):
        h, c = h.index_select(0, state_index), c.index_select(0, state_index)
        return self.model.decode_step(prev_token, h, c, enc_out, enc_keys, src_mask)


def export_graphs(model: Seq2Seq, folder: Path) -> None:
    """Export with dynamic batch and length axes, from example inputs of real shapes."""
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]], dtype=torch.long)
    lengths = torch.tensor([4, 3], dtype=torch.long)
    with torch.no_grad():
        enc_out, enc_keys, h, c = model.encode(src, lengths)
    torch.onnx.export(
        EncoderGraph(model),
        (src, lengths),
        str(folder / ENCODER_FILE),
        input_names=list(ENCODER_INPUTS),
        output_names=list(ENCODER_OUTPUTS),
        dynamic_axes={
            "src_ids": {0: "batch", 1: "src_len"},
            "src_lengths": {0: "batch"},
            "enc_out": {0: "batch", 1: "src_len"},
            "enc_keys": {0: "batch", 1: "src_len"},
            "h": {0: "batch"},
            "c": {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    step_args = (
        torch.tensor([2, 2], dtype=torch.long),
        torch.tensor([1, 0], dtype=torch.long),
        h,
        c,
        enc_out,
        enc_keys,
        src != 0,
    )
    torch.onnx.export(
        DecoderStepGraph(model),
        step_args,
        str(folder / DECODER_FILE),
        input_names=list(DECODER_INPUTS),
        output_names=list(DECODER_OUTPUTS),
        dynamic_axes={
            "prev_token": {0: "rows"},
            "state_index": {0: "rows"},
            "h": {0: "prev_rows"},
            "c": {0: "prev_rows"},
            "enc_out": {0: "rows", 1: "src_len"},
            "enc_keys": {0: "rows", 1: "src_len"},
            "src_mask": {0: "rows", 1: "src_len"},
            "log_probs": {0: "rows"},
            "h_out": {0: "rows"},
            "c_out": {0: "rows"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    model.eval()  # the exporter restores each wrapper's own (training) mode onto the model: undo that
    for name in (ENCODER_FILE, DECODER_FILE):
        store_fp16(folder / name)


def graph_spec(path: Path) -> GraphSpec:
    """Inputs/outputs of an ONNX file as the model card records them (-1 for dynamic axes)."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dtype = TensorProto.DataType.Name(t.elem_type).replace("FLOAT16", "FP16").replace("FLOAT", "FP32")
        return TensorSpec(name=value.name, dtype=dtype, shape=[d.dim_value or -1 for d in t.shape.dim])

    return GraphSpec(inputs=[spec(v) for v in graph.input], outputs=[spec(v) for v in graph.output])


def check_parity(model: Seq2Seq, runtime: Seq2SeqRuntime, rows: list[list[int]], beam_size: int) -> dict:
    """Torch vs onnxruntime: identical full decodes (greedy and beam), and the largest first-step difference."""
    torch_greedy = search_ids(model, rows, 1)
    ort_greedy = runtime.search(rows, 1)
    torch_beam = search_ids(model, rows, beam_size)
    ort_beam = runtime.search(rows, beam_size)
    greedy_mismatch = [i for i, (a, b) in enumerate(zip(torch_greedy, ort_greedy, strict=True)) if a != b]
    beam_mismatch = [i for i, (a, b) in enumerate(zip(torch_beam, ort_beam, strict=True)) if a != b]
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True)
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        t_enc = model.encode(src, lengths)
        t_logp = model.decode_step(torch.full((len(rows),), 2), t_enc[2], t_enc[3], t_enc[0], t_enc[1], src != 0)[0]
    enc = runtime.encode(src.numpy(), lengths.numpy(), 1)
    step = runtime.stepper(src.numpy(), lengths.numpy(), 1)
    o_logp = step(np.full(len(rows), 2, dtype=np.int64), np.arange(len(rows), dtype=np.int64))
    valid = (src != 0).numpy()[..., None]
    result = {
        "sentences": len(rows),
        "greedy_identical": not greedy_mismatch,
        f"beam{beam_size}_identical": not beam_mismatch,
        "greedy_mismatches": len(greedy_mismatch),
        f"beam{beam_size}_mismatches": len(beam_mismatch),
        "max_abs_diff_enc_out": float(np.abs((t_enc[0].numpy() - enc["enc_out"]) * valid).max()),
        "max_abs_diff_log_probs_step1": float(np.abs(t_logp.numpy() - o_logp).max()),
        "weights": "fp16 storage, fp32 compute (torch weights rounded the same way)",
    }
    if greedy_mismatch:
        raise RuntimeError(f"parity failed: greedy decodes differ for sentences {greedy_mismatch[:10]}: {result}")
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-serve export translation", description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--version", default=None, help="default: one above the highest existing version")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--parity-sentences", type=int, default=100, help="real test sentences decoded for parity")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.6)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-limit", type=int, default=None, help="BLEU on the first N test/val sentences only")
    p.add_argument("--skip-bleu", action="store_true", help="do not re-measure BLEU (nor build variants: no gate)")
    p.add_argument("--precisions", default=",".join(DEFAULT_VARIANTS), help="variants besides fp32 ('' = none)")
    return p.parse_args(argv)


def exported_bleu(runtime: Seq2SeqRuntime, src_tok: Tokenizer, tgt_tok: Tokenizer, split: str, args) -> dict:
    """BLEU of the exported graphs (what is served), greedy and beam, batches of 64 sorted by length."""
    sources, references = load_pairs(split, args.eval_limit)
    ids = encode_source(src_tok, sources, 256)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = {}
    for beam in (1, args.beam_size):
        out = [""] * len(ids)
        started = time.perf_counter()
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            hyps = runtime.search([ids[i] for i in chunk], beam, args.max_length, args.alpha)
            for i, text in zip(chunk, decode_target(tgt_tok, hyps), strict=True):
                out[i] = text
        name = "greedy" if beam == 1 else f"beam{beam}"
        scores[f"{split}_bleu_{name}"] = round(bleu(out, references), 2)
        scores[f"{split}_{name}_seconds"] = round(time.perf_counter() - started, 1)
    return scores


def measure_cost(runtime: Seq2SeqRuntime, src_tok: Tokenizer, beam_size: int, alpha: float) -> CostModel | None:
    """The batcher's cost constants (``serving.cost_model``): full searches over a typical caption cut to length.

    The batcher's length is the source length; decoding runs about as many steps as the source has
    tokens, at the default beam. None (and a warning) when the timings do not fit.
    """

    def prepare(size: int, length: int):
        rows = [probe_source(src_tok, length)] * size
        return lambda: runtime.search(rows, beam_size, length, alpha)

    try:
        return fit_cost_model(prepare, COST_PROBE)
    except InconsistentTimings as exc:
        print(f"warning: no cost model in the card, timings inconsistent: {exc}", flush=True)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir: Path = args.run_dir
    version = args.version or next_version(args.repository, "translation")
    if (args.repository / "translation" / version).exists() and not args.overwrite:
        raise FileExistsError(
            f"{args.repository / 'translation' / version} exists; pass a new --version or --overwrite"
        )
    model, ckpt = load_checkpoint(run_dir)
    round_to_fp16(model)
    src_tok = Tokenizer.from_file(str(run_dir / SRC_TOKENIZER))
    tgt_tok = Tokenizer.from_file(str(run_dir / TGT_TOKENIZER))
    staging = Path(tempfile.mkdtemp(prefix="translation-export-", dir=args.repository.parent))
    try:
        export_graphs(model, staging)
        step_graphs = write_graphs(staging)  # rows.onnx, topk.onnx: step-level decoding (export/decode_graphs.py)
        shutil.copy(run_dir / SRC_TOKENIZER, staging / SRC_TOKENIZER)
        shutil.copy(run_dir / TGT_TOKENIZER, staging / TGT_TOKENIZER)
        runtime = Seq2SeqRuntime.from_folder(staging)
        test_src, _ = load_pairs("test_2016_flickr", args.parity_sentences)
        parity = check_parity(model, runtime, encode_source(src_tok, test_src, 256), args.beam_size)
        parity["step_level"] = check_graphs(staging) | check_search(staging, args.parity_sentences, (1, args.beam_size))
        print(f"parity: {parity}", flush=True)
        metrics = {"val_bleu_greedy_torch": ckpt.get("val_bleu"), "epoch": ckpt.get("epoch")}
        if not args.skip_bleu:
            metrics |= exported_bleu(runtime, src_tok, tgt_tok, "test_2016_flickr", args)
        cost = measure_cost(runtime, src_tok, args.beam_size, args.alpha)
        metrics |= {"beam_size": args.beam_size, "length_penalty_alpha": args.alpha, "bleu": "sacrebleu 13a, cased"}
        print(f"metrics: {metrics}", flush=True)
        report = _read_report(run_dir)
        splits = {"train": 29000, "val": 1014, "test_2016_flickr": 1000} | report.get("data", {})
        files = [f for split in ("train", "val", "test_2016_flickr") for f in data_files(split)]
        card = ModelCard(
            name="translation",
            version=version,
            task="translation",
            inputs=[TensorSpec(name="text", dtype="BYTES", shape=[-1, 1])],
            outputs=[TensorSpec(name="translation", dtype="BYTES", shape=[-1, 1])],
            graphs={name: graph_spec(staging / name) for name in (ENCODER_FILE, DECODER_FILE, *step_graphs)},
            files={},
            max_length=args.max_length,
            dataset=DatasetInfo(
                name="multi30k-task1-en-de",
                version="2016 (test_2016_flickr)",
                splits=splits,
                sha256={f: CHECKSUMS[f] for f in files},
            ),
            training={
                "config": ckpt["config"],
                "args": ckpt.get("args", {}),
                "best_epoch": ckpt.get("epoch"),
                "train_seconds": report.get("train_seconds"),
                "parameters": sum(p.numel() for p in model.parameters()),
                "checkpoint": CHECKPOINT,
                "special_tokens": {token: i for i, token in enumerate(SPECIAL_TOKENS)},
                "source_tokenizer": SRC_TOKENIZER,
                "target_tokenizer": TGT_TOKENIZER,
                "max_source_tokens": int(ckpt.get("args", {}).get("max_src_tokens", 128)),
            },
            metrics=metrics,
            parity=parity,
            created=utc_now(),
            git_commit=git_commit(),
            serving={"default_beam_size": args.beam_size, "length_penalty_alpha": args.alpha}
            | ({CARD_KEY: cost.to_card()} if cost else {}),
        )
        precisions = [] if args.skip_bleu else parse_precisions(args.precisions)
        if precisions:  # gated on val BLEU: skipped with --skip-bleu
            add_variants(staging, card, precisions, limit=args.eval_limit)
        staging.chmod(0o755)  # mkdtemp makes it private; the served folder must be readable like any other
        target = publish_version(staging, card, args.repository, overwrite=args.overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"published {target} ({size / 1e6:.1f} MB)", flush=True)
    return 0


def _read_report(run_dir: Path) -> dict:
    import json

    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    raise SystemExit(main())
