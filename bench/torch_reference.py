"""A plain PyTorch greedy loop over the shipped translation model: the reference of issue 11 on a GPU.

Why rebuild a torch module: the shipped version folder holds ONNX graphs only (the training checkpoint
stays outside git), and a fair reference must decode with the *same* weights, so that it stops at the
same tokens. The ONNX initializers map back onto ``models.translation.model.Seq2Seq`` one to one:
embeddings and biases by name, ``MatMul`` weights transposed, and each ``LSTM`` node's W/R/B with
ONNX's gate order (i, o, f, c) put back into torch's (i, f, g, o).

The loop is what a PyTorch user would write: encode the batch once, then one ``decode_step`` per
token with ``argmax`` on the device, until every row has emitted EOS (one host sync per step to
check that). No beam, no batching across requests, no CUDA graphs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer

from lstm_core.encoding import encode_source
from lstm_core.model_card import ModelCard
from lstm_core.tokens import BOS_ID, EOS_ID, PAD_ID
from lstm_core.translation_search import output_limit
from models.translation.model import ModelConfig, Seq2Seq


def _weights(path: Path) -> tuple[onnx.GraphProto, dict[str, np.ndarray]]:
    """The graph and its initializers as fp32 arrays, under the names the nodes read (after any fp16 Cast)."""
    graph = onnx.load(str(path)).graph
    values = {init.name: numpy_helper.to_array(init).astype(np.float32) for init in graph.initializer}
    for node in graph.node:  # weights stored as fp16 are cast back to fp32 by a Cast node at load
        if node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return graph, values


def _torch_gates(onnx_gates: np.ndarray) -> torch.Tensor:
    """ONNX LSTM gate blocks (i, o, f, c) along the first axis, reordered to torch's (i, f, g, o)."""
    i, o, f, c = np.split(onnx_gates, 4, axis=0)
    return torch.from_numpy(np.concatenate([i, f, c, o], axis=0).copy())


def _load_lstm(module: torch.nn.LSTM, node: onnx.NodeProto, values: dict[str, np.ndarray]) -> None:
    w, r, b = (values[name][0] for name in node.input[1:4])  # [1, 4H, I], [1, 4H, H], [1, 8H]
    hidden = module.hidden_size
    with torch.no_grad():
        module.weight_ih_l0.copy_(_torch_gates(w))
        module.weight_hh_l0.copy_(_torch_gates(r))
        module.bias_ih_l0.copy_(_torch_gates(b[: 4 * hidden]))
        module.bias_hh_l0.copy_(_torch_gates(b[4 * hidden :]))


def _matmul_weight(graph: onnx.GraphProto, values: dict[str, np.ndarray], output_prefix: str) -> torch.Tensor:
    """The (transposed back) weight of the ``MatMul`` whose output name starts with ``output_prefix``."""
    node = next(n for n in graph.node if n.op_type == "MatMul" and n.output[0].startswith(output_prefix))
    return torch.from_numpy(values[node.input[1]].T.copy())


def load_torch_model(folder: Path) -> Seq2Seq:
    """The shipped translation model as a torch ``Seq2Seq`` (eval mode, CPU), rebuilt from its ONNX graphs."""
    card = ModelCard.load(folder)
    cfg = ModelConfig(**card.training["config"])
    if cfg.cell != "lstm":
        raise ValueError(f"the reference loop rebuilds LSTM models only, not {cfg}")
    model = Seq2Seq(cfg).eval()
    enc_graph, enc = _weights(folder / "encoder.onnx")
    dec_graph, dec = _weights(folder / "decoder.onnx")
    lstm_nodes = {n.output[0].split("/")[-2]: n for n in enc_graph.node if n.op_type == "LSTM"}
    for layer in range(cfg.enc_layers):  # ``fwd.0``, ``bwd.0``, ``fwd.1``, ... as the exporter names them
        _load_lstm(model.encoder.fwd[layer], lstm_nodes[f"fwd.{layer}"], enc)
        _load_lstm(model.encoder.bwd[layer], lstm_nodes[f"bwd.{layer}"], enc)
    _load_lstm(model.decoder, next(n for n in dec_graph.node if n.op_type == "LSTM"), dec)
    with torch.no_grad():
        model.encoder.embed.weight.copy_(torch.from_numpy(enc["model.encoder.embed.weight"]))
        for name in ("init_h", "init_c"):
            getattr(model, name).weight.copy_(torch.from_numpy(enc[f"model.{name}.weight"]))
            getattr(model, name).bias.copy_(torch.from_numpy(enc[f"model.{name}.bias"]))
        model.key.weight.copy_(_matmul_weight(enc_graph, enc, "enc_keys"))
        model.tgt_embed.weight.copy_(torch.from_numpy(dec["model.tgt_embed.weight"]))
        model.out_bias.copy_(torch.from_numpy(dec["model.out_bias"]))
        model.combine.weight.copy_(_matmul_weight(dec_graph, dec, "/combine/"))
        model.combine.bias.copy_(torch.from_numpy(dec["model.combine.bias"]))
        model.to_emb.weight.copy_(_matmul_weight(dec_graph, dec, "/to_emb/"))
    return model


@torch.inference_mode()
def greedy_loop(model: Seq2Seq, src_ids: Sequence[list[int]], device: str, max_length: int = 128) -> list[list[int]]:
    """Greedy target ids (EOS excluded) for one batch, decoded by a plain per-token PyTorch loop."""
    lengths = torch.tensor([len(s) for s in src_ids], device=device)
    src = torch.full((len(src_ids), int(lengths.max())), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(src_ids):
        src[row, : len(ids)] = torch.tensor(ids)
    src = src.to(device)
    enc_out, enc_keys, h, c = model.encode(src, lengths)
    mask = src != PAD_ID
    tokens = torch.full((len(src_ids),), BOS_ID, dtype=torch.long, device=device)
    finished = torch.zeros(len(src_ids), dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for _ in range(output_limit(max_length, int(lengths.max()))):
        log_probs, h, c = model.decode_step(tokens, h, c, enc_out, enc_keys, mask)
        tokens = torch.where(finished, EOS_ID, log_probs.argmax(-1))
        steps.append(tokens)
        finished |= tokens == EOS_ID
        if bool(finished.all()):  # the loop's one host sync per step
            break
    out = torch.stack(steps, dim=1).cpu().tolist()
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in out]


def throughput(
    model: Seq2Seq, tokenizer: Tokenizer, texts: Sequence[str], batch_sizes: Sequence[int], device: str
) -> list[dict[str, Any]]:
    """Sentences/s of the greedy loop by batch size: ``texts`` in arrival order, chunked, tokenising included."""
    model = model.to(device)
    rows = []
    for batch in batch_sizes:
        chunks = [list(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        greedy_loop(model, encode_source(tokenizer, chunks[0], 128), device)  # warm-up (kernels, allocator)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for chunk in chunks:
            greedy_loop(model, encode_source(tokenizer, chunk, 128), device)
        seconds = time.perf_counter() - t0
        rows.append({"batch": batch, "sentences": len(texts), "seconds": seconds, "sentences_s": len(texts) / seconds})
    return rows
