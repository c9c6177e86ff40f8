"""Precision variants of a version folder: int8 for CPU, fp16 for CUDA, each written only if it passes a gate.

``lstm-serve export variants model_repository/<model>/<version>`` builds the variants from the folder's
fp32 graphs (which stay as they are) and records them in ``model.json`` ``variants``; the sentiment and
translation exports call the same step (``add_variants``) before they publish.

- **int8** (for ``CPUExecutionProvider``): onnxruntime's pre-processing (shape inference, graph
  optimisation) then dynamic quantization: int8 weights for LSTM (``DynamicQuantizeLSTM``), MatMul/Gemm
  and embedding Gather; activations are quantized at run time, inputs and outputs stay as they were.
- **fp16** (for ``CUDAExecutionProvider``): every float tensor in fp16, except the graph's inputs and
  outputs (so the service feeds and reads the same tensors for every variant) and Softmax/LogSoftmax
  (kept in fp32: a sum over a whole vocabulary, where fp16 loses the small probabilities).

The gate compares a variant with the fp32 graphs on the validation data, both under onnxruntime:
- sentiment: accuracy within 0.3 points of fp32 (either way), and the same label on at least 99% of
  the validation sentences (``sentiment_gate_split``: the one function that names the split);
- translation: BLEU (sacrebleu, detokenised) on Multi30k val within 0.3 of fp32, greedy and beam 4.
A variant that fails is not written (and an earlier file of it is removed from the folder and the card).

Where the gate runs: int8 on CPU, its provider. fp16 on CUDA when onnxruntime-gpu sees a GPU; on a
machine without one, on CPU, where onnxruntime runs each fp16 node in fp32 between casts: that checks
the fp16 rounding of every weight and of every tensor between nodes, not CUDA's fp16 kernels. The card
records where each gate ran (``gate.provider``), and the service's ``auto`` choice serves fp16 on CUDA
only once its gate has run on CUDA (run this step on a GPU machine; ``make gpu-check`` also measures
the fp16 gate on CUDA).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from export.fp16_storage import store_exact_fp16
from lstm_core.checksums import sha256_of
from lstm_core.cost import CARD_KEY, CostModel
from lstm_core.encoding import encode_source, encode_words
from lstm_core.graphs import DECODER_FILE, ENCODER_FILE, SENTIMENT_FILE, SENTIMENT_INPUTS, SENTIMENT_OUTPUTS
from lstm_core.model_card import PRECISIONS, ModelCard, Variant, variant_file
from lstm_core.padding import pad_batch
from lstm_core.translation_runtime import Seq2SeqRuntime

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
TARGET_PROVIDER = {"fp32": None, "int8": CPU, "fp16": CUDA}
DEFAULT_VARIANTS = ("int8", "fp16")
# The gate's thresholds (issue 15).
MAX_ACCURACY_DELTA_POINTS = 0.3
MIN_LABEL_AGREEMENT = 0.99
MAX_BLEU_DELTA = 0.3
GATE_BEAMS = (1, 4)
# Ops kept in fp32 in the fp16 variant, beside onnxruntime's own list of ops without fp16 support.
FP32_OPS = ("Softmax", "LogSoftmax")


class GateFailed(RuntimeError):
    """A variant answered too differently from fp32: it is not written."""


# ---- building ---------------------------------------------------------------------------------------


def plain_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo the fp16 weight storage (``export.fp16_storage.store_fp16``): fp16 initializer + Cast -> fp32.

    The quantizer and the fp16 converter both want the weights as plain initializers. Converting the
    stored fp16 values to fp32 is exact, so the variants start from exactly the served fp32 weights.
    """
    graph = model.graph
    fp16 = {i.name: i for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    casts = [
        n
        for n in graph.node
        if n.op_type == "Cast"
        and len(n.input) == 1
        and n.input[0] in fp16
        and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)
    ]
    if not casts:
        return model
    unpacked = {
        n.output[0]: numpy_helper.from_array(numpy_helper.to_array(fp16[n.input[0]]).astype(np.float32), n.output[0])
        for n in casts
    }
    used = {name for n in graph.node if n not in casts for name in n.input}
    kept = [i for i in graph.initializer if i.name not in fp16 or i.name in used]
    nodes = [n for n in graph.node if n not in casts]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *unpacked.values()])
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def build_int8(source: Path, target: Path, op_types: Sequence[str] | None = None) -> None:
    """onnxruntime's quantization pre-processing, then dynamic quantization with int8 weights.

    ``op_types``: the ops whose weights are quantized (None: onnxruntime's default, which includes the
    embeddings' Gather). Float weights left unquantized whose values fp16 holds exactly (translation's,
    stored that way by its export) are stored as fp16 + Cast again, as in the fp32 graph.
    """
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    plain, prepared = target.with_name(target.name + ".plain"), target.with_name(target.name + ".pre")
    try:
        onnx.save(plain_fp32(onnx.load(str(source))), str(plain))
        quant_pre_process(str(plain), str(prepared))
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None,
        )
    finally:
        plain.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)
    model = onnx.load(str(target))
    if store_exact_fp16(model.graph):
        onnx.save(model, str(target))
    onnx.checker.check_model(str(target))


def build_fp16(source: Path, target: Path) -> None:
    """fp16 weights and compute; graph inputs/outputs and (Log)Softmax stay fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(
        plain_fp32(onnx.load(str(source))),
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
    )
    drop_fp16_round_trips(model)
    sort_nodes(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def drop_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Replace each fp32 -> fp16 -> fp32 pair of Casts with an Identity; return how many were dropped.

    ``keep_io_types`` makes the converter cast a blocked op's fp32 output (the Softmax that must stay
    fp32) to fp16 and then back to fp32 for the graph's fp32 output. The pair does no work but rounding:
    the served probabilities came out on fp16's grid and summed to 1 only within about 2e-4. Without it
    they are the fp32 Softmax's own values.
    """
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in graph.input})
    types.update({i.name: i.data_type for i in graph.initializer})
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    pairs: dict[int, onnx.NodeProto] = {}  # id(second cast) -> the Identity that replaces both
    firsts: set[int] = set()
    for first in graph.node:
        if cast_to(first) != TensorProto.FLOAT16 or types.get(first.input[0]) != TensorProto.FLOAT:
            continue
        following = readers.get(first.output[0], [])
        if len(following) != 1 or first.output[0] in graph_outputs or cast_to(following[0]) != TensorProto.FLOAT:
            continue
        second = following[0]
        firsts.add(id(first))
        pairs[id(second)] = helper.make_node(
            "Identity", [first.input[0]], [second.output[0]], name=f"{second.name}__exact"
        )
    kept = [pairs.get(id(node), node) for node in graph.node if id(node) not in firsts]
    del graph.node[:]
    graph.node.extend(kept)
    return len(pairs)


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes topologically (the fp16 converter appends the casts it inserts at the end)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in known for name in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near {pending[0].name!r}")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


Builder = Callable[[Path, Path], None]
BUILDERS: dict[str, Builder] = {"int8": build_int8, "fp16": build_fp16}


def gate_provider(precision: str, available: Sequence[str] | None = None) -> str:
    """Where a variant's gate runs: fp16 on CUDA when onnxruntime offers it, everything else on CPU."""
    offered = ort.get_available_providers() if available is None else available
    return CUDA if precision == "fp16" and CUDA in offered else CPU


def _session(path: Path, provider: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    providers = [provider, CPU] if provider != CPU else [CPU]
    session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"{path.name}: asked for {provider}, onnxruntime runs it on {session.get_providers()[0]}")
    return session


# ---- the gate, per task -----------------------------------------------------------------------------


def sentiment_gate_split() -> tuple[str, list[str], list[int]]:
    """The sentences the sentiment gate runs on: the data loader's validation split (name, texts, labels).

    The one place that names it, so the split can change underneath (issue 12) without touching the gate.
    """
    from models.sentiment.data import sentence_split

    split = sentence_split()[1]  # the 1,000 held-out whole sentences (issue 12), not the leaky dev.tsv
    return split.name, split.texts, split.labels


def sentiment_probabilities(
    session: ort.InferenceSession, ids: Sequence[Sequence[int]], batch_size: int = 256
) -> np.ndarray:
    """A sentiment graph's probabilities in input order, from batches of similar length (padding costs
    time, not answers)."""
    order = np.argsort([len(s) for s in ids], kind="stable")
    parts = []
    for start in range(0, len(order), batch_size):
        input_ids, lengths = pad_batch([ids[i] for i in order[start : start + batch_size]])
        feeds = dict(zip(SENTIMENT_INPUTS, (input_ids, lengths), strict=True))
        parts.append(session.run(list(SENTIMENT_OUTPUTS), feeds)[0])
    out = np.empty_like(np.concatenate(parts))
    out[order] = np.concatenate(parts)
    return out


class SentimentGate:
    graph_files = (SENTIMENT_FILE,)
    # Which ops int8 quantizes, tried in order until one passes the gate (None: onnxruntime's default,
    # LSTM, Gemm and the embedding's Gather).
    int8_op_types: tuple[tuple[str, ...] | None, ...] = (None,)

    def __init__(self, folder: Path, card: ModelCard, limit: int | None = None) -> None:
        self.split, texts, labels = sentiment_gate_split()
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.ids = encode_words(tokenizer, texts[:limit], card.max_length)
        self.labels = np.asarray(labels[:limit])

    def evaluate(self, files: Mapping[str, Path], provider: str) -> dict[str, Any]:
        labels = sentiment_probabilities(_session(files[SENTIMENT_FILE], provider), self.ids).argmax(axis=1)
        return {"labels": labels, "accuracy": float((labels == self.labels).mean())}

    def judge(self, reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
        delta = 100.0 * (candidate["accuracy"] - reference["accuracy"])
        agreement = float((candidate["labels"] == reference["labels"]).mean())
        passed = abs(delta) <= MAX_ACCURACY_DELTA_POINTS and agreement >= MIN_LABEL_AGREEMENT
        return {
            "split": self.split,
            "n": len(self.ids),
            "accuracy": round(candidate["accuracy"], 5),
            "fp32_accuracy": round(reference["accuracy"], 5),
            "accuracy_delta_points": round(delta, 3),
            "label_agreement": round(agreement, 5),
            "thresholds": {
                "max_abs_accuracy_delta_points": MAX_ACCURACY_DELTA_POINTS,
                "min_label_agreement": MIN_LABEL_AGREEMENT,
            },
            "passed": passed,
        }

    def reference_figures(self, reference: Mapping[str, Any]) -> dict[str, Any]:
        return {"split": self.split, "n": len(self.ids), "accuracy": round(reference["accuracy"], 5)}

    def measure_cost(self, files: Mapping[str, Path]) -> CostModel | None:
        from export.sentiment import measure_cost

        return measure_cost(_session(files[SENTIMENT_FILE], CPU))


class TranslationGate:
    graph_files = (ENCODER_FILE, DECODER_FILE)
    # With the embeddings' Gather first: int8 embeddings save 1.5 MB a graph for a 6,000 × 256 table,
    # which a model near the folder's size limit needs, but they cost the shipped model 0.4 greedy BLEU
    # on val (30.50 -> 30.12), which the gate refuses; without them its greedy BLEU is 30.51.
    int8_op_types: tuple[tuple[str, ...] | None, ...] = (
        ("LSTM", "MatMul", "Gemm", "Gather"),
        ("LSTM", "MatMul", "Gemm"),
    )

    def __init__(self, folder: Path, card: ModelCard, limit: int | None = None) -> None:
        from models.translation.data import load_pairs

        self.split = "val"
        sources, self.references = load_pairs(self.split, limit)
        self.source_tokenizer = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
        self.target_tokenizer = Tokenizer.from_file(str(folder / "target_tokenizer.json"))
        self.ids = encode_source(self.source_tokenizer, sources, 256)  # as export's BLEU: no source cut
        self.alpha = float(card.serving.get("length_penalty_alpha", 0.6))
        self.max_length = card.max_length
        self.beam = int(card.serving.get("default_beam_size", 4))

    def runtime(self, files: Mapping[str, Path], provider: str) -> Seq2SeqRuntime:
        return Seq2SeqRuntime(_session(files[ENCODER_FILE], provider), _session(files[DECODER_FILE], provider))

    def evaluate(self, files: Mapping[str, Path], provider: str) -> dict[str, Any]:
        from models.translation.decode import bleu
        from models.translation.subwords import decode_target

        runtime = self.runtime(files, provider)
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        figures: dict[str, Any] = {}
        for beam in GATE_BEAMS:
            out = [""] * len(self.ids)
            for start in range(0, len(order), 64):
                chunk = order[start : start + 64]
                hyps = runtime.search([self.ids[i] for i in chunk], beam, self.max_length, self.alpha)
                for i, text in zip(chunk, decode_target(self.target_tokenizer, hyps), strict=True):
                    out[i] = text
            figures[_beam_name(beam)] = bleu(out, self.references)
        return figures

    def judge(self, reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
        figures: dict[str, Any] = {"split": self.split, "n": len(self.ids), "alpha": self.alpha}
        passed = True
        for beam in GATE_BEAMS:
            name = _beam_name(beam)
            delta = candidate[name] - reference[name]
            figures |= {
                f"bleu_{name}": round(candidate[name], 2),
                f"fp32_bleu_{name}": round(reference[name], 2),
                f"bleu_delta_{name}": round(delta, 2),
            }
            passed = passed and abs(delta) <= MAX_BLEU_DELTA
        return figures | {"thresholds": {"max_abs_bleu_delta": MAX_BLEU_DELTA}, "passed": passed}

    def reference_figures(self, reference: Mapping[str, Any]) -> dict[str, Any]:
        return {"split": self.split, "n": len(self.ids)} | {f"bleu_{k}": round(v, 2) for k, v in reference.items()}

    def measure_cost(self, files: Mapping[str, Path]) -> CostModel | None:
        from export.translation import measure_cost

        return measure_cost(self.runtime(files, CPU), self.source_tokenizer, self.beam, self.alpha)


def _beam_name(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam{beam}"


GATES: dict[str, type[SentimentGate] | type[TranslationGate]] = {
    "sentiment": SentimentGate,
    "translation": TranslationGate,
}


# ---- the variant step -------------------------------------------------------------------------------


@dataclass
class VariantReport:
    card: ModelCard
    written: dict[str, dict[str, Any]] = field(default_factory=dict)  # precision -> gate figures
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)


def add_variants(
    folder: Path,
    card: ModelCard,
    precisions: Sequence[str] = DEFAULT_VARIANTS,
    *,
    limit: int | None = None,
    builders: Mapping[str, Builder] | None = None,
    measure_cost: bool = True,
    log: Callable[[str], None] = print,
) -> VariantReport:
    """Build, gate and write the variants into ``folder``; returns the card with ``variants`` (not saved).

    The fp32 graphs are read, never changed. A variant that fails its gate is not written; its earlier
    file and entry, if any, are removed. Variants not asked for keep their entries. The card's ``files``
    gain (or lose) the variant files' sha256 where it lists files already (a published folder); an
    export's staging card with no ``files`` yet gets them all at publication.
    """
    unknown = sorted(set(precisions) - set(BUILDERS))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}: choose from {sorted(BUILDERS)}")
    if card.task not in GATES:
        raise ValueError(f"no precision gate for task {card.task!r}")
    gate = GATES[card.task](folder, card, limit)
    # Each precision's builds, tried in order until one passes its gate: int8 over a choice of op types.
    attempts: dict[str, list[tuple[dict[str, Any], Builder]]] = {p: [({}, b)] for p, b in BUILDERS.items()}
    attempts["int8"] = [
        ({"quantized_ops": list(ops) if ops else "onnxruntime default"}, partial(build_int8, op_types=ops))
        for ops in gate.int8_op_types
    ]
    attempts |= {p: [({}, b)] for p, b in (builders or {}).items()}
    base = {g: folder / g for g in gate.graph_files}
    started = time.monotonic()
    reference = gate.evaluate(base, CPU)
    seconds = time.monotonic() - started
    log(f"{card.name}/{card.version} fp32 on {CPU}: {gate.reference_figures(reference)} ({seconds:.0f}s)")
    variants: dict[str, Variant] = {
        "fp32": Variant(
            precision="fp32",
            provider=None,
            files={g: g for g in gate.graph_files},
            sha256={g: sha256_of(base[g]) for g in gate.graph_files},
            gate={"reference": True, "provider": CPU} | gate.reference_figures(reference),
        )
    }
    variants |= {p: v for p, v in card.variants.items() if p not in precisions and p != "fp32"}
    report = VariantReport(card)
    for precision in precisions:
        final = {g: folder / variant_file(g, precision) for g in gate.graph_files}
        staged = {g: path.with_name(f".{path.name}.tmp") for g, path in final.items()}
        where = gate_provider(precision)
        started = time.monotonic()
        try:
            for number, (build_figures, build) in enumerate(attempts[precision], 1):
                for g in gate.graph_files:
                    build(base[g], staged[g])
                figures = {"provider": where} | build_figures | gate.judge(reference, gate.evaluate(staged, where))
                if where != TARGET_PROVIDER[precision]:
                    figures["note"] = (
                        f"gated on {where}, not {TARGET_PROVIDER[precision]}: fp16 rounding of weights and of the "
                        "tensors between nodes, not the CUDA kernels"
                    )
                if figures["passed"]:
                    break
                if number < len(attempts[precision]):
                    log(f"{card.name}/{card.version} {precision}: refused, trying the next build: {figures}")
            seconds = time.monotonic() - started
            if not figures["passed"]:
                report.refused[precision] = figures
                log(f"{card.name}/{card.version} {precision}: REFUSED by the gate, not written: {figures}")
                for path in final.values():
                    path.unlink(missing_ok=True)
                continue
            # export measures cost models on CPU: only a CPU variant gets one (the server calibrates CUDA itself)
            cost = gate.measure_cost(staged) if measure_cost and where == TARGET_PROVIDER[precision] == CPU else None
            for g in gate.graph_files:
                os.replace(staged[g], final[g])
        finally:
            for path in staged.values():
                path.unlink(missing_ok=True)
        variants[precision] = Variant(
            precision=precision,
            provider=TARGET_PROVIDER[precision],
            files={g: final[g].name for g in gate.graph_files},
            sha256={final[g].name: sha256_of(final[g]) for g in gate.graph_files},
            gate=figures,
            serving={CARD_KEY: cost.to_card()} if cost else {},
        )
        report.written[precision] = figures
        size = sum(final[g].stat().st_size for g in gate.graph_files)
        log(f"{card.name}/{card.version} {precision}: passed ({seconds:.0f}s, {size / 1e6:.1f} MB): {figures}")
    card.variants = {p: variants[p] for p in PRECISIONS if p in variants}
    if card.files:
        variant_names = {variant_file(g, p) for g in gate.graph_files for p in PRECISIONS if p != "fp32"}
        kept = {name: digest for name, digest in card.files.items() if name not in variant_names}
        served = {name: digest for v in card.variants.values() for name, digest in v.sha256.items()}
        card.files = dict(sorted((kept | served).items()))
    return report


def variant_problems(card: ModelCard, folder: Path) -> list[str]:
    """What is wrong between the card's ``variants`` and the folder's files (empty: nothing)."""
    problems = []
    for precision, variant in card.variants.items():
        if variant.precision != precision:
            problems.append(f"variants.{precision} says precision {variant.precision}")
        # A variant lists the graphs that carry weights; the others (translation's rows.onnx and topk.onnx,
        # which only move and rank tensors) are served as they are whatever the precision.
        if not variant.files or not set(variant.files) <= set(card.graphs):
            problems.append(f"variants.{precision} covers {sorted(variant.files)}, not graphs of {sorted(card.graphs)}")
        for name in variant.files.values():
            path = folder / name
            digest = variant.sha256.get(name)
            if not path.is_file() or sha256_of(path) != digest or card.files.get(name) != digest:
                problems.append(f"variants.{precision}: {name} missing or not matching its sha256")
    return problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-serve export variants", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a published version folder, e.g. model_repository/sentiment/1")
    p.add_argument(
        "--precisions", default=",".join(DEFAULT_VARIANTS), help="comma-separated, from int8,fp16 (default: both)"
    )
    p.add_argument("--limit", type=int, default=None, help="gate on the first N validation examples only (tests)")
    p.add_argument("--no-cost", action="store_true", help="do not measure the int8 variant's cost model")
    return p.parse_args(argv)


def parse_precisions(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    card = ModelCard.load(args.folder)
    bad = card.mismatched_files(args.folder)
    if bad:
        print(f"lstm-serve export variants: {args.folder}: files not matching model.json: {bad}", file=sys.stderr)
        return 1
    report = add_variants(
        args.folder, card, parse_precisions(args.precisions), limit=args.limit, measure_cost=not args.no_cost
    )
    report.card.save(args.folder)
    print(f"{args.folder}: variants {sorted(report.card.variants)}; refused {sorted(report.refused) or 'none'}")
    return 1 if report.refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
