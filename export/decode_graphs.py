"""The two small graphs of step-level decoding, ``rows.onnx`` and ``topk.onnx``, built and checked.

Neither needs torch or a checkpoint: they are written with ``onnx.helper`` beside an exported
``decoder.onnx`` (``lstm_core/graphs.py`` names their tensors):

- ``rows.onnx`` rebuilds the running set's row tensors when sentences join or leave: Gather of the
  rows kept, Gather of the newly encoded sentences' rows (one per beam), each padded or cut to the
  running set's source width, Concat; the attention mask from each row's source length; the new
  sentences' decoder state appended after the current state. Run through IOBinding it keeps all of
  this on the decoder's device.
- ``topk.onnx`` returns each row's best ``k`` tokens (TopK over the log-probs, sorted, lower token id
  first on equal values) and their scores, the row's running score plus the log-prob, added in float64
  exactly as the numpy search adds them; only ``[rows, k]`` values leave the device.

Both are checked here against numpy on random inputs (including empty ones), and ``python -m
export.decode_graphs FOLDER`` adds them to an existing version folder, checks that step-level decoding
through them gives the numpy search's answers on real test sentences, and records the files, their
tensors and that check in the folder's ``model.json``. ``export translation`` writes them too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from lstm_core.checksums import sha256_of
from lstm_core.graphs import ROWS_FILE, ROWS_INPUTS, ROWS_OUTPUTS, TOPK_FILE, TOPK_INPUTS, TOPK_OUTPUTS

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime the service allows (>= 1.18)
F32, F64, I64, BOOL = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL


def _const(name: str, values: Sequence[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, I64, [len(values)], list(values)), name=name
    )


def _fit(x: str, out: str, nodes: list[onnx.NodeProto]) -> None:
    """``out`` = ``x`` [N, S, D] padded with zeros or cut to ``width`` positions on axis 1."""
    nodes += [
        helper.make_node("Shape", [x], [f"{x}_len"], start=1, end=2),
        helper.make_node("Sub", ["width", f"{x}_len"], [f"{x}_short"]),
        helper.make_node("Max", [f"{x}_short", "zero1"], [f"{x}_pad"]),
        helper.make_node("Concat", ["zero4", f"{x}_pad", "zero1"], [f"{x}_pads"], axis=0),
        helper.make_node("Pad", [x, f"{x}_pads"], [f"{x}_padded"], mode="constant"),
        helper.make_node("Slice", [f"{x}_padded", "zero1", "width", "one1"], [out]),
    ]


def rows_graph() -> onnx.ModelProto:
    nodes = [_const("zero1", [0]), _const("one1", [1]), _const("zero4", [0, 0, 0, 0])]
    for source, index, prefix in (("enc_out", "keep", "a_out"), ("enc_keys", "keep", "a_keys")):
        nodes.append(helper.make_node("Gather", [source, index], [prefix], axis=0))
        _fit(prefix, f"{prefix}_fit", nodes)
    for source, index, prefix in (("new_enc_out", "take", "b_out"), ("new_enc_keys", "take", "b_keys")):
        nodes.append(helper.make_node("Gather", [source, index], [prefix], axis=0))
        _fit(prefix, f"{prefix}_fit", nodes)
    nodes += [
        helper.make_node("Concat", ["a_out_fit", "b_out_fit"], ["rows_enc_out"], axis=0),
        helper.make_node("Concat", ["a_keys_fit", "b_keys_fit"], ["rows_enc_keys"], axis=0),
        helper.make_node("Squeeze", ["width", "zero1"], ["width_scalar"]),
        _const("zero_scalar_1", [0]),
        helper.make_node("Squeeze", ["zero_scalar_1", "zero1"], ["zero_scalar"]),
        _const("one_scalar_1", [1]),
        helper.make_node("Squeeze", ["one_scalar_1", "zero1"], ["one_scalar"]),
        helper.make_node("Range", ["zero_scalar", "width_scalar", "one_scalar"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "zero1"], ["positions_row"]),
        helper.make_node("Unsqueeze", ["lengths", "one1"], ["lengths_col"]),
        helper.make_node("Less", ["positions_row", "lengths_col"], ["rows_src_mask"]),
        helper.make_node("Concat", ["h", "new_h"], ["rows_h"], axis=0),
        helper.make_node("Concat", ["c", "new_c"], ["rows_c"], axis=0),
    ]
    types = {
        "enc_out": (F32, ["rows", "src_len", "enc_dim"]),
        "enc_keys": (F32, ["rows", "src_len", "key_dim"]),
        "keep": (I64, ["kept"]),
        "new_enc_out": (F32, ["sentences", "new_src_len", "enc_dim"]),
        "new_enc_keys": (F32, ["sentences", "new_src_len", "key_dim"]),
        "take": (I64, ["taken"]),
        "width": (I64, [1]),
        "lengths": (I64, ["out_rows"]),
        "h": (F32, ["state_rows", "hidden"]),
        "c": (F32, ["state_rows", "hidden"]),
        "new_h": (F32, ["sentences", "hidden"]),
        "new_c": (F32, ["sentences", "hidden"]),
    }
    outputs = {
        "rows_enc_out": (F32, ["out_rows", "width", "enc_dim"]),
        "rows_enc_keys": (F32, ["out_rows", "width", "key_dim"]),
        "rows_src_mask": (BOOL, ["out_rows", "width"]),
        "rows_h": (F32, ["all_state_rows", "hidden"]),
        "rows_c": (F32, ["all_state_rows", "hidden"]),
    }
    assert tuple(types) == ROWS_INPUTS and tuple(outputs) == ROWS_OUTPUTS
    graph = helper.make_graph(
        nodes,
        "rows",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in types.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
    )
    return _model(graph)


def topk_graph() -> onnx.ModelProto:
    nodes = [
        _const("one1", [1]),
        helper.make_node("TopK", ["log_probs", "k"], ["top_log_probs", "cand_tokens"], axis=-1, largest=1, sorted=1),
        helper.make_node("Cast", ["top_log_probs"], ["top_log_probs64"], to=F64),
        helper.make_node("Unsqueeze", ["scores", "one1"], ["scores_col"]),
        helper.make_node("Add", ["scores_col", "top_log_probs64"], ["cand_scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "topk",
        [
            helper.make_tensor_value_info("log_probs", F32, ["rows", "vocab"]),
            helper.make_tensor_value_info("scores", F64, ["rows"]),
            helper.make_tensor_value_info("k", I64, [1]),
        ],
        [
            helper.make_tensor_value_info("cand_scores", F64, ["rows", "k"]),
            helper.make_tensor_value_info("cand_tokens", I64, ["rows", "k"]),
        ],
    )
    assert tuple(i.name for i in graph.input) == TOPK_INPUTS and tuple(o.name for o in graph.output) == TOPK_OUTPUTS
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstm-serve")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# ---- checks against numpy ---------------------------------------------------------------------------


def _fit_np(x: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((x.shape[0], width, *x.shape[2:]), dtype=x.dtype)
    n = min(width, x.shape[1])
    out[:, :n] = x[:, :n]
    return out


def check_graphs(folder: Path, seed: int = 0) -> dict[str, int]:
    """Run both graphs on random inputs (some empty) and compare with numpy; raises on any difference."""
    rng = np.random.default_rng(seed)
    rows = ort.InferenceSession(str(folder / ROWS_FILE), providers=["CPUExecutionProvider"])
    topk = ort.InferenceSession(str(folder / TOPK_FILE), providers=["CPUExecutionProvider"])
    cases = 0
    for na, sa, nb, sb, width in [(5, 7, 2, 4, 7), (5, 7, 2, 9, 9), (6, 9, 0, 1, 5), (0, 1, 3, 6, 6), (4, 3, 1, 3, 8)]:
        a_out, a_keys = rng.normal(size=(na, sa, 6)).astype(np.float32), rng.normal(size=(na, sa, 4)).astype(np.float32)
        b_out, b_keys = rng.normal(size=(nb, sb, 6)).astype(np.float32), rng.normal(size=(nb, sb, 4)).astype(np.float32)
        keep = rng.integers(0, na, size=na + 1) if na else np.zeros(0, np.int64)
        take = np.repeat(np.arange(nb), 3)
        lengths = rng.integers(1, width + 1, size=len(keep) + len(take))
        h, c = rng.normal(size=(na, 5)).astype(np.float32), rng.normal(size=(na, 5)).astype(np.float32)
        nh, nc = rng.normal(size=(nb, 5)).astype(np.float32), rng.normal(size=(nb, 5)).astype(np.float32)
        feeds = dict(
            zip(
                ROWS_INPUTS,
                [a_out, a_keys, keep, b_out, b_keys, take, np.array([width]), lengths, h, c, nh, nc],
                strict=True,
            )
        )
        got = rows.run(list(ROWS_OUTPUTS), feeds)
        want = [
            np.concatenate([_fit_np(a_out[keep], width), _fit_np(b_out[take], width)]),
            np.concatenate([_fit_np(a_keys[keep], width), _fit_np(b_keys[take], width)]),
            np.arange(width)[None, :] < lengths[:, None],
            np.concatenate([h, nh]),
            np.concatenate([c, nc]),
        ]
        for name, g, w in zip(ROWS_OUTPUTS, got, want, strict=True):
            if g.shape != w.shape or not np.array_equal(g, w):
                raise RuntimeError(f"rows.onnx: {name} differs from numpy for case {cases} ({g.shape} vs {w.shape})")
        cases += 1
    for n, vocab, k in [(7, 50, 8), (3, 6000, 1), (0, 20, 2)]:
        logp = rng.normal(size=(n, vocab)).astype(np.float32)
        logp[:, 5] = logp[:, 3] = logp.max(axis=1, initial=0) + 1  # an exact tie: the lower id must come first
        scores = np.where(rng.random(n) < 0.3, -np.inf, rng.normal(size=n))
        cand_scores, cand_tokens = topk.run(
            list(TOPK_OUTPUTS), {"log_probs": logp, "scores": scores, "k": np.array([k])}
        )
        order = np.argsort(-logp, axis=1, kind="stable")[:, :k]
        want_scores = scores[:, None] + np.take_along_axis(logp, order, axis=1).astype(np.float64)
        if not (np.array_equal(cand_tokens, order) and np.array_equal(cand_scores, want_scores)):
            raise RuntimeError(f"topk.onnx differs from numpy for rows={n} vocab={vocab} k={k}")
        cases += 1
    return {"graph_cases": cases}


def write_graphs(folder: Path) -> list[str]:
    onnx.save(rows_graph(), str(folder / ROWS_FILE))
    onnx.save(topk_graph(), str(folder / TOPK_FILE))
    return [ROWS_FILE, TOPK_FILE]


def check_search(folder: Path, sentences: int, beams: Sequence[int] = (1, 4)) -> dict[str, int]:
    """Step-level decoding through the new graphs against the numpy search, each sentence alone.

    The rows go through ``rows.onnx`` (what a GPU runs) even on CPU, where the service lays them out in
    numpy; ``tests/test_device_seam.py`` checks that the two agree.

    Real test_2016_flickr sentences, all admitted to one running set (so they join and leave it at
    different steps); counts the sentences whose output differs, per beam size.
    """
    from tokenizers import Tokenizer

    from lstm_core.decode_scheduler import DecodeScheduler, Sentence
    from lstm_core.encoding import encode_source
    from lstm_core.tokens import BOS_ID, EOS_ID
    from lstm_core.translation_runtime import DeviceRows, Seq2SeqRuntime
    from lstm_core.translation_search import output_limit
    from models.translation.data import load_pairs

    runtime = Seq2SeqRuntime.from_folder(folder)
    source = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    texts, _ = load_pairs("test_2016_flickr", sentences)
    ids = [np.asarray(r, dtype=np.int64) for r in encode_source(source, texts, 256)]
    result: dict[str, int] = {"step_level_sentences": len(ids)}
    for beam in beams:
        alone = [runtime.search([r], beam, 128) for r in ids]
        scheduler = DecodeScheduler(
            DeviceRows.from_folder(folder, host_rows=False), max_rows=64, max_positions=4096, bos=BOS_ID, eos=EOS_ID
        )
        batch = [Sentence(r, beam, output_limit(128, len(r)), 0.6) for r in ids]
        for sentence in batch:
            scheduler.add(sentence)
        while not scheduler.idle:
            scheduler.step()
        name = "greedy" if beam == 1 else f"beam{beam}"
        result[f"step_level_{name}_mismatches"] = sum(s.result != a[0] for s, a in zip(batch, alone, strict=True))
    return result


def add_to_folder(folder: Path, sentences: int = 100) -> dict:
    """Write both graphs into a version folder and record them (files, tensors, checks) in its ``model.json``."""
    from export.translation import graph_spec
    from lstm_core.model_card import ModelCard

    card = ModelCard.load(folder)
    names = write_graphs(folder)
    checks = check_graphs(folder) | check_search(folder, sentences)
    for name in names:
        card.graphs[name] = graph_spec(folder / name)
        card.files[name] = sha256_of(folder / name)
    card.files = dict(sorted(card.files.items()))
    card.parity["step_level"] = checks
    card.save(folder)
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.decode_graphs", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a translation version folder, e.g. model_repository/translation/1")
    p.add_argument("--sentences", type=int, default=100, help="real test sentences decoded for the check")
    args = p.parse_args(argv)
    checks = add_to_folder(args.folder, args.sentences)
    print(f"{args.folder}: {ROWS_FILE}, {TOPK_FILE} written and recorded; checks {checks}", flush=True)
    if any(v for k, v in checks.items() if k.endswith("_mismatches")):
        print("warning: step-level decoding differs from the numpy search for some sentences", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
