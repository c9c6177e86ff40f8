"""Recover a training run from an exported translation version: ``best.pt`` rebuilt from its ONNX graphs.

    python -m export.recover model_repository/translation/1 --out runs/translation-mid-kd2

Why: run folders live in ``runs/``, outside git, and go when a machine does; the shipped version is the one
durable copy of a trained model. Training it further (``lstm-serve train translation --init-from``, for
example on an ensemble's translations) needs a checkpoint. The exported graphs hold every weight: the
named initializers carry the torch parameter names (``model.init_h.weight``), each recurrent node carries
one cell's weights in ONNX's gate order, and the attention key and output layers are the transposed
constants of their MatMuls. Weights stored as fp16 come back as the fp32 values the served graph computes
with, so the recovered model is the served one, not the pre-export one (export rounds through fp16 first).
The result is checked the way export checks itself (``export.translation.check_parity``: identical greedy
and beam decodes, and the first-step log-probabilities), and refused when it differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer

from export.translation import check_parity
from lstm_core.encoding import encode_source
from lstm_core.graphs import DECODER_FILE, ENCODER_FILE
from lstm_core.translation_runtime import Seq2SeqRuntime
from models.translation.data import load_pairs
from models.translation.model import ModelConfig, Seq2Seq
from models.translation.train import CHECKPOINT, SRC_TOKENIZER, TGT_TOKENIZER, save_best

FP16_SUFFIX = "__fp16"  # export.fp16_storage's initializer names
EXPORT_PREFIX = "model."  # export wraps the Seq2Seq as ``model`` in its graph modules
ONNX_TO_TORCH_GATES = (0, 2, 3, 1)  # ONNX LSTM gates i, o, f, c; torch's order is i, f, c(g), o


class Constants:
    """A graph's constant tensors by value name, through the fp32 Casts that fp16 storage puts in front."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.values = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Cast" and node.input[0] in self.values:
                self.values[node.output[0]] = self.values[node.input[0]]

    def get(self, name: str) -> np.ndarray | None:
        return self.values.get(name)


def lstm_weights(node: onnx.NodeProto, constants: Constants, prefix: str) -> dict[str, np.ndarray]:
    """One single-direction ONNX LSTM node as torch's ``weight_ih_l0``, ``weight_hh_l0`` and two biases."""
    w, r, b = (constants.get(node.input[i]) for i in (1, 2, 3))  # input 0 is X
    if w is None or r is None or b is None or w.shape[0] != 1:
        raise ValueError(f"LSTM node {node.name}: expected constant single-direction W, R and B")
    hidden = r.shape[-1]

    def reorder(matrix: np.ndarray) -> np.ndarray:
        gates = np.split(matrix, 4, axis=0)
        return np.concatenate([gates[g] for g in ONNX_TO_TORCH_GATES], axis=0)

    return {
        f"{prefix}.weight_ih_l0": reorder(w[0]),
        f"{prefix}.weight_hh_l0": reorder(r[0]),
        f"{prefix}.bias_ih_l0": reorder(b[0, : 4 * hidden]),
        f"{prefix}.bias_hh_l0": reorder(b[0, 4 * hidden :]),
    }


def graph_weights(graph: onnx.GraphProto, lstm_prefixes: list[str], matmul_names: list[str], expected: dict) -> dict:
    """A graph's torch parameters: named initializers, recurrent nodes in order, then MatMul constants by shape.

    ``lstm_prefixes`` names the graph's LSTM nodes in execution order (the exporter traces in that order);
    ``matmul_names`` are the Linear weights the exporter turned into transposed MatMul constants, told apart
    by their shapes, which must be unique among the graph's unnamed MatMul constants.
    """
    constants = Constants(graph)
    found: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        name = init.name.removesuffix(FP16_SUFFIX)
        if name.startswith(EXPORT_PREFIX) and name[len(EXPORT_PREFIX) :] in expected:
            found[name[len(EXPORT_PREFIX) :]] = constants.get(init.name)
    lstms = [node for node in graph.node if node.op_type == "LSTM"]
    if len(lstms) != len(lstm_prefixes):
        raise ValueError(f"{len(lstms)} LSTM nodes in the graph, the config says {len(lstm_prefixes)}")
    for node, prefix in zip(lstms, lstm_prefixes, strict=True):
        found |= lstm_weights(node, constants, prefix)
    unnamed = {}
    for node in graph.node:
        if node.op_type == "MatMul":
            for value in node.input:
                array = constants.get(value)
                if array is not None and not value.removesuffix(FP16_SUFFIX).startswith(EXPORT_PREFIX):
                    unnamed.setdefault(array.T.shape, []).append(array.T)
    for name in matmul_names:
        candidates = unnamed.get(tuple(expected[name].shape), [])
        if len(candidates) != 1:
            raise ValueError(f"{name}: {len(candidates)} MatMul constants of shape {tuple(expected[name].shape)}")
        found[name] = candidates[0]
    return found


def recover_model(version_dir: Path) -> tuple[Seq2Seq, dict]:
    """The torch model of an exported version (LSTM cells only) and its model card."""
    card = json.loads((version_dir / "model.json").read_text())
    training = card["training"]
    cfg = ModelConfig(**training["config"])
    if cfg.cell != "lstm":
        raise ValueError(f"only LSTM versions can be recovered (this one is {cfg.cell})")
    model = Seq2Seq(cfg)
    expected = model.state_dict()
    encoder_lstms = [f"encoder.{side}.{layer}" for layer in range(cfg.enc_layers) for side in ("fwd", "bwd")]
    weights = graph_weights(onnx.load(str(version_dir / ENCODER_FILE)).graph, encoder_lstms, ["key.weight"], expected)
    weights |= graph_weights(
        onnx.load(str(version_dir / DECODER_FILE)).graph, ["decoder"], ["combine.weight", "to_emb.weight"], expected
    )
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"not found in the graphs: {missing}")
    for name, array in weights.items():
        if array.shape != tuple(expected[name].shape):
            raise ValueError(f"{name}: shape {array.shape} in the graph, {tuple(expected[name].shape)} in the model")
    model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(weights[name])) for name in expected})
    return model.eval(), card


def recover_run(version_dir: Path, out: Path, parity_sentences: int = 64) -> dict:
    """Write ``out``/best.pt and the tokenizers, after checking the model against the version's graphs."""
    model, card = recover_model(version_dir)
    training = card["training"]
    runtime = Seq2SeqRuntime.from_folder(version_dir)
    src_tok = Tokenizer.from_file(str(version_dir / SRC_TOKENIZER))
    sources, _ = load_pairs("test_2016_flickr", parity_sentences)
    parity = check_parity(model, runtime, encode_source(src_tok, sources, 256), 4)
    out.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(**training.get("args", {}), recovered_from=str(version_dir))
    val_bleu = float(card.get("metrics", {}).get("val_bleu_greedy_torch") or 0.0)
    save_best(out, model.cfg, model.state_dict(), training.get("best_epoch", 0), val_bleu, args)
    for name in (SRC_TOKENIZER, TGT_TOKENIZER):
        shutil.copy(version_dir / name, out / name)
    return parity


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.recover", description=__doc__.splitlines()[0])
    p.add_argument("version", type=Path, help="an exported translation version folder (model.json, encoder.onnx, ...)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write best.pt and the tokenizers into")
    p.add_argument("--parity-sentences", type=int, default=64)
    args = p.parse_args(argv)
    if (args.out / CHECKPOINT).exists():
        p.exit(2, f"recover: {args.out / CHECKPOINT} exists; choose another --out\n")
    try:
        parity = recover_run(args.version, args.out, args.parity_sentences)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        p.exit(2, f"recover: {exc}\n")
    print(json.dumps({"out": str(args.out), "parity": parity}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
