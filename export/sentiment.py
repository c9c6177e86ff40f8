"""``lstm-serve export sentiment RUN_DIR``: a trained run -> ``model_repository/sentiment/<version>/``.

Writes ``model.onnx`` (inputs ``input_ids`` INT64 [batch, time] and ``lengths`` INT64 [batch], output
``probabilities`` FP32 [batch, 2], softmax inside), the run's ``tokenizer.json`` and ``model.json``.
Weights are stored as fp16 and computed in fp32 (``export.fp16_storage``): that halves the graph, so the
folder with its variants stays under 10 MB; the torch model is rounded the same way before parity, and
the card's validation accuracy is measured on the exported graph itself.
Before anything is published, onnxruntime is run on real, variable-length validation sentences: the export
fails if it differs from torch by more than ``--tolerance`` or if a sentence's probabilities change
when it is batched with longer ones (padding must not change answers). The precision variants
(``--precisions``, default int8 and fp16) are then built and gated by ``export.precision``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from export.fp16_storage import round_to_fp16, store_exact_fp16
from export.precision import DEFAULT_VARIANTS, add_variants, parse_precisions, sentiment_probabilities
from export.repository import DEFAULT_REPOSITORY, next_version, publish_version, utc_now
from lstm_core.cost import CARD_KEY, CostModel, InconsistentTimings, ProbeShape, fit_cost_model
from lstm_core.encoding import encode_words
from lstm_core.graphs import SENTIMENT_FILE, SENTIMENT_INPUTS, SENTIMENT_OUTPUTS
from lstm_core.model_card import DatasetInfo, GraphSpec, ModelCard, TensorSpec
from lstm_core.padding import pad_batch
from lstm_core.tokens import UNK_ID
from models.common.runs import git_commit
from models.sentiment import LABELS
from models.sentiment.data import sentence_split
from models.sentiment.evaluate import accuracy_report
from models.sentiment.model import TOKENIZER, ProbabilityHead, SentimentClassifier, load_classifier
from models.sentiment.train import command_line

MODEL_NAME = "sentiment"
ONNX_FILE = SENTIMENT_FILE
OPSET = 17
GRAPH = GraphSpec(
    inputs=[
        TensorSpec(name=SENTIMENT_INPUTS[0], dtype="INT64", shape=[-1, -1]),
        TensorSpec(name=SENTIMENT_INPUTS[1], dtype="INT64", shape=[-1]),
    ],
    outputs=[TensorSpec(name=SENTIMENT_OUTPUTS[0], dtype="FP32", shape=[-1, len(LABELS)])],
)
SERVED_INPUTS = [TensorSpec(name="text", dtype="BYTES", shape=[-1, 1])]
SERVED_OUTPUTS = [
    TensorSpec(name="label", dtype="BYTES", shape=[-1, 1]),
    TensorSpec(name="probabilities", dtype="FP32", shape=[-1, len(LABELS)]),
]
# What padding may change in a sentence's probabilities (the contract).
PADDING_TOLERANCE = 1e-5


class ExportCheckError(RuntimeError):
    """The exported graph does not answer like the trained model: nothing is published."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-serve export sentiment", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a folder written by `lstm-serve train sentiment`")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--version", default=None, help="version folder name (default: one above the highest)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    p.add_argument("--parity-sentences", type=int, default=64, help="real validation sentences in the parity batch")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |onnxruntime - torch| allowed")
    p.add_argument(
        "--precisions", default=",".join(DEFAULT_VARIANTS), help="variants to build and gate besides fp32 ('' = none)"
    )
    return p


def load_run(run_dir: Path) -> tuple[SentimentClassifier, dict, Tokenizer]:
    """The selected model (eval mode), its checkpoint dict and the run's tokenizer."""
    model, checkpoint = load_classifier(run_dir)
    return model, checkpoint, Tokenizer.from_file(str(run_dir / TOKENIZER))


def parity_sentences(tokenizer: Tokenizer, max_length: int, count: int) -> list[list[int]]:
    """``count`` validation sentences spread evenly over the length range, the shortest cut to one word."""
    texts = sentence_split()[1].texts
    ids = encode_words(tokenizer, texts, max_length)
    order = np.argsort([len(s) for s in ids], kind="stable")
    picks = np.linspace(0, len(order) - 1, num=min(count, len(order))).round().astype(int)
    chosen = [ids[order[i]] for i in picks]
    # whole sentences are 2+ tokens; one-word texts are served too, so the shortest gives its first word
    chosen[0] = chosen[0][:1]
    return chosen


def export_onnx(model: SentimentClassifier, sample: list[list[int]], path: Path) -> None:
    """Trace to ONNX with dynamic batch and time axes.

    The TorchScript-based exporter (``dynamo=False``) is used on purpose: it turns the packed sequence
    into an ONNX LSTM/GRU/RNN node with ``sequence_lens``; ``torch.export`` cannot trace packing.
    """
    input_ids, lengths = (torch.from_numpy(a) for a in pad_batch(sample))
    with warnings.catch_warnings():
        # the tracer warns about every Python-level shape check and that this exporter is deprecated;
        # what matters is checked right after, on real inputs of other shapes (check_parity)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ProbabilityHead(model).eval(),  # a module in train mode is put back in train mode after export
            (input_ids, lengths),
            str(path),
            input_names=list(SENTIMENT_INPUTS),
            output_names=list(SENTIMENT_OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (*SENTIMENT_INPUTS, *SENTIMENT_OUTPUTS)}
            | {SENTIMENT_INPUTS[0]: {0: "batch", 1: "time"}},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    store_exact_fp16(graph.graph)  # the weights round_to_fp16 rounded; biases and the like stay fp32
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def check_graph(session: ort.InferenceSession) -> None:
    """The graph's names, types and ranks are the contract the service is written against."""
    found = [(i.name, i.type, len(i.shape)) for i in session.get_inputs()]
    found += [(o.name, o.type, len(o.shape)) for o in session.get_outputs()]
    expected = [
        (SENTIMENT_INPUTS[0], "tensor(int64)", 2),
        (SENTIMENT_INPUTS[1], "tensor(int64)", 1),
        (SENTIMENT_OUTPUTS[0], "tensor(float)", 2),
    ]
    if found != expected:
        raise ExportCheckError(f"exported graph has inputs/outputs {found}, expected {expected}")


def run_onnx(session: ort.InferenceSession, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    input_ids, lengths = pad_batch(sequences)
    return session.run(list(SENTIMENT_OUTPUTS), dict(zip(SENTIMENT_INPUTS, (input_ids, lengths), strict=True)))[0]


def check_parity(model: SentimentClassifier, session: ort.InferenceSession, sequences: list[list[int]]) -> dict:
    """Max |onnxruntime - torch| on one padded batch, and max change of a sentence alone vs batched."""
    input_ids, lengths = pad_batch(sequences)
    with torch.no_grad():
        expected = ProbabilityHead(model).eval()(torch.from_numpy(input_ids), torch.from_numpy(lengths)).numpy()
    batched = run_onnx(session, sequences)
    alone = np.concatenate([run_onnx(session, [s]) for s in sequences])
    return {
        "max_abs_diff": float(np.abs(batched - expected).max()),
        "padding_max_abs_diff": float(np.abs(batched - alone).max()),
        "n_sentences": len(sequences),
        "lengths": {"min": int(lengths.min()), "max": int(lengths.max())},
        "reference": "torch (eval mode, fp32, weights rounded through fp16 as stored) vs onnxruntime "
        "CPUExecutionProvider on real validation sentences",
    }


def graph_validation(session: ort.InferenceSession, tokenizer: Tokenizer, checkpoint: dict) -> dict:
    """Accuracy of the exported graph on the run's own validation split, overall and by length.

    Measured on the graph, not taken from the run: the graph computes with fp16-rounded weights, and
    the card must state what the served file does (``tests/test_sentiment_shipped.py`` recomputes it).
    """
    recipe = checkpoint["report"]["recipe"]
    _, val = sentence_split(recipe["heldout"], recipe["split_seed"])
    val = val.head(recipe.get("limit_val"))
    ids = encode_words(tokenizer, val.texts, checkpoint["max_length"])
    return accuracy_report(sentiment_probabilities(session, ids), val.labels, [len(s) for s in ids])


def measure_cost(session: ort.InferenceSession) -> CostModel | None:
    """The batcher's cost constants for this graph on this machine, written to ``serving.cost_model``.

    Batches of ``[UNK]`` rows: the graph's cost depends on the shape only, not on which ids it reads.
    None (and a warning) when the timings do not fit; the service then measures at warm-up only.
    """

    def prepare(size: int, length: int):
        rows = [[UNK_ID] * length] * size
        return lambda: run_onnx(session, rows)

    try:
        return fit_cost_model(prepare, ProbeShape())
    except InconsistentTimings as exc:
        print(f"warning: no cost model in the card, timings inconsistent: {exc}", file=sys.stderr)
        return None


def model_card(
    checkpoint: dict, parity: dict, version: str, cost: CostModel | None, validation: dict | None = None
) -> ModelCard:
    """``model.json`` from what the run recorded and what the export measured (``validation``: on the graph)."""
    report = checkpoint["report"]
    validation = {**report["validation"], **(validation or {})}
    return ModelCard(
        name=MODEL_NAME,
        version=version,
        task="sentiment",
        inputs=SERVED_INPUTS,
        outputs=SERVED_OUTPUTS,
        graphs={ONNX_FILE: GRAPH},
        files={ONNX_FILE: "", TOKENIZER: ""},
        labels=LABELS,
        max_length=checkpoint["max_length"],
        dataset=DatasetInfo(**report["dataset"]),
        training={
            "recipe": report["recipe"],
            "seed": report["recipe"]["seed"],
            "model": report["model"],
            "parameters": report["parameters"],
            "vocab_size": report["tokenizer"]["vocab_size"],
            "epochs_run": report["epochs_run"],
            "best_epoch": report["best_epoch"],
            "best_is_average": report.get("best_is_average", False),
            "train_seconds": round(report["train_seconds"], 1),
            "threads": report["threads"],
            "run_git_commit": report["git_commit"],
            "command": f"{command_line(report['recipe'])} --out <run folder>",
            **({"distillation": report["distillation"]} if "distillation" in report else {}),
        },
        metrics={
            "validation_accuracy": validation["accuracy"],
            "validation_split": validation["split"],
            "validation_n": validation["n"],
            "validation_by_length": validation["by_length"],
            "comparability": (
                "not GLUE's 872-sentence SST-2 dev set (BiLSTM baselines there: about 0.85-0.87); the validation "
                "sentences are whole sentences of GLUE's SST-2 training set, held out with all their phrases, so "
                "no piece of them was trained on"
            ),
            "gradient_reach_ratio": report["gradient_reach"]["trained"]["ratio_first_to_last"],
        },
        parity=parity,
        created=utc_now(),
        git_commit=git_commit(),
        serving={CARD_KEY: cost.to_card()} if cost else {},
    )


def export_run(
    run_dir: Path,
    repository: Path = DEFAULT_REPOSITORY,
    version: str | None = None,
    overwrite: bool = False,
    parity_count: int = 64,
    tolerance: float = 1e-4,
    precisions: Sequence[str] = DEFAULT_VARIANTS,
) -> Path:
    """Export, check and publish; returns the version folder. Raises ``ExportCheckError`` on a failed check."""
    model, checkpoint, tokenizer = load_run(run_dir)
    round_to_fp16(model)  # what the fp16-stored graph will compute with
    version = version or next_version(repository, MODEL_NAME)
    sequences = parity_sentences(tokenizer, checkpoint["max_length"], parity_count)
    (repository / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repository / MODEL_NAME))
    staging.chmod(0o755)  # mkdtemp's 0700 would travel with the folder into the repository
    try:
        export_onnx(model, sequences, staging / ONNX_FILE)
        session = ort.InferenceSession(str(staging / ONNX_FILE), providers=["CPUExecutionProvider"])
        check_graph(session)
        parity = check_parity(model, session, sequences)
        if parity["max_abs_diff"] > tolerance:
            raise ExportCheckError(
                f"onnxruntime differs from torch by {parity['max_abs_diff']:.3g} > {tolerance:g} "
                f"on {parity['n_sentences']} validation sentences; not publishing"
            )
        if parity["padding_max_abs_diff"] > PADDING_TOLERANCE:
            raise ExportCheckError(
                f"padding changes probabilities by {parity['padding_max_abs_diff']:.3g} > {PADDING_TOLERANCE:g}; "
                "not publishing"
            )
        shutil.copyfile(run_dir / TOKENIZER, staging / TOKENIZER)
        validation = graph_validation(session, tokenizer, checkpoint)
        card = model_card(checkpoint, parity, version, measure_cost(session), validation)
        if precisions:
            add_variants(staging, card, precisions)
        return publish_version(staging, card, repository, overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target = export_run(
            args.run_dir,
            args.repository,
            args.version,
            args.overwrite,
            args.parity_sentences,
            args.tolerance,
            parse_precisions(args.precisions),
        )
    except (ExportCheckError, FileExistsError) as error:
        print(f"lstm-serve export sentiment: FAILED: {error}", file=sys.stderr)
        return 1
    card = ModelCard.load(target)
    print(
        f"exported {target}: validation accuracy {card.metrics['validation_accuracy']:.4f}, "
        f"parity max |ort - torch| {card.parity['max_abs_diff']:.2e}, "
        f"padding max diff {card.parity['padding_max_abs_diff']:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
