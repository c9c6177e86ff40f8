"""Precision variants (issue 15): the export gate, the shipped variants, and which one the service serves.

The gate tests run the real variant step (``export.precision.add_variants``) on a copy of the shipped
sentiment folder with a deliberately damaged graph; the choice tests inject provider lists, so every
branch runs on a CPU machine (what needs a GPU is in ``tests/test_gpu.py`` and ``make gpu-check``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

import export.precision as precision_module
from bench.servers import launch_server
from export.precision import MAX_ACCURACY_DELTA_POINTS, MIN_LABEL_AGREEMENT, add_variants, variant_problems
from lstm_core.checksums import sha256_of
from lstm_core.model_card import ModelCard
from models.sentiment.data import sentence_split
from service.pipelines.sentiment import SentimentPipeline
from service.runtime import CPU, CUDA, Runtime, RuntimeOptions, VariantUnavailable
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1] / "model_repository"
SENTIMENT = REPO / "sentiment" / "1"
TRANSLATION = REPO / "translation" / "1"
# The fp32 graphs as trained and first exported: adding variants must not touch them.
FP32_SHA256 = {
    "model.onnx": "a0e7559353adfa2ce8cd10cea53b16396ca3951b24acc6cbee5cea0f1d01f41a",
    "encoder.onnx": "1571359ff674c95a9222e5b0cc6bce952369dfc237034ffd8b9a5f21b7e1c014",
    "decoder.onnx": "b1ad3389fd1ff0561cec4eb201be3ae8227294a94456c5d1820cb98b16b8fb28",
}


def damaged_graph(source: Path, target: Path) -> None:
    """The fp32 graph with its classifier's weights negated: every label flips, the graph stays valid."""
    model = onnx.load(str(source))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weight = next(i for i in model.graph.initializer if i.name == gemm.input[1])
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    onnx.save(model, str(target))


@pytest.fixture()
def sentiment_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "sentiment" / "1"
    shutil.copytree(SENTIMENT, folder)
    return folder


def test_gate_refuses_a_damaged_graph_and_removes_the_old_variant(sentiment_copy: Path) -> None:
    card = ModelCard.load(sentiment_copy)
    assert (sentiment_copy / "model.int8.onnx").is_file() and "int8" in card.variants
    report = add_variants(
        sentiment_copy, card, ["int8"], limit=1000, builders={"int8": damaged_graph}, measure_cost=False
    )
    figures = report.refused["int8"]
    assert not figures["passed"] and figures["label_agreement"] < MIN_LABEL_AGREEMENT
    assert abs(figures["accuracy_delta_points"]) > MAX_ACCURACY_DELTA_POINTS
    assert "int8" not in report.written and "int8" not in report.card.variants
    assert not (sentiment_copy / "model.int8.onnx").exists()  # not written, and the earlier one is gone
    assert "model.int8.onnx" not in report.card.files
    assert set(report.card.variants) == {"fp32", "fp16"}  # the variant not asked for keeps its entry
    report.card.save(sentiment_copy)
    reloaded = ModelCard.load(sentiment_copy)
    assert variant_problems(reloaded, sentiment_copy) == [] and reloaded.mismatched_files(sentiment_copy) == []
    assert sha256_of(sentiment_copy / "model.onnx") == FP32_SHA256["model.onnx"]


def test_gate_passes_the_real_int8_build_and_records_it(sentiment_copy: Path) -> None:
    card = ModelCard.load(sentiment_copy)
    report = add_variants(sentiment_copy, card, ["int8"], limit=1000, measure_cost=False, log=lambda _: None)
    variant = report.card.variants["int8"]
    assert variant.gate["passed"] and variant.gate["n"] == 1000 and variant.gate["provider"] == CPU
    assert variant.provider == CPU and variant.files == {"model.onnx": "model.int8.onnx"}
    assert variant.sha256["model.int8.onnx"] == sha256_of(sentiment_copy / "model.int8.onnx")
    assert report.card.files["model.int8.onnx"] == variant.sha256["model.int8.onnx"]


def test_an_int8_build_the_gate_refuses_gives_way_to_the_next_op_choice(
    sentiment_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 tries its op choices in order (translation: with the embeddings first) and records the one kept."""
    real_build = precision_module.build_int8

    def build(source: Path, target: Path, op_types=None) -> None:
        if op_types == ("Broken",):
            damaged_graph(source, target)
        else:
            real_build(source, target, op_types)

    monkeypatch.setattr(precision_module, "build_int8", build)
    monkeypatch.setattr(precision_module.SentimentGate, "int8_op_types", (("Broken",), ("LSTM", "Gemm")))
    lines: list[str] = []
    report = add_variants(
        sentiment_copy, ModelCard.load(sentiment_copy), ["int8"], limit=1000, measure_cost=False, log=lines.append
    )
    variant = report.card.variants["int8"]
    assert variant.gate["passed"] and variant.gate["quantized_ops"] == ["LSTM", "Gemm"]
    assert any("refused, trying the next build" in line and "'Broken'" in line for line in lines)
    assert variant.sha256["model.int8.onnx"] == sha256_of(sentiment_copy / "model.int8.onnx")
    assert "int8" not in report.refused


@pytest.mark.parametrize("folder", [SENTIMENT, TRANSLATION], ids=["sentiment", "translation"])
def test_shipped_variants_match_their_files_and_passed_their_gate(folder: Path) -> None:
    card = ModelCard.load(folder)
    assert variant_problems(card, folder) == [] and card.mismatched_files(folder) == []
    fp32 = card.variants["fp32"].files
    assert fp32 == {g: g for g in fp32} and set(fp32) <= set(card.graphs)
    assert all(set(v.files) == set(fp32) for v in card.variants.values())
    for graph, digest in card.variants["fp32"].sha256.items():
        assert digest == FP32_SHA256[graph] == card.files[graph]  # fp32 as trained and exported
    for precision, variant in card.variants.items():
        if precision == "fp32":
            continue
        assert variant.gate["passed"] is True, precision
        assert variant.provider == {"int8": CPU, "fp16": CUDA}[precision]
        for graph, name in variant.files.items():
            # every variant takes and gives the tensors the card's graph spec says: pipelines feed them alike
            session = ort.InferenceSession(str(folder / name), providers=[CPU])
            spec = card.graphs[graph]
            assert [i.name for i in session.get_inputs()] == [t.name for t in spec.inputs]
            assert [o.name for o in session.get_outputs()] == [t.name for t in spec.outputs]
            assert session.get_outputs()[0].type == "tensor(float)"


def _card_with(folder: Path, **gate_provider: str) -> ModelCard:
    card = ModelCard.load(folder)
    for precision, provider in gate_provider.items():
        card.variants[precision].gate["provider"] = provider
    return card


@pytest.mark.parametrize(
    ("provider", "offered", "precision", "fp16_gated_on", "served"),
    [
        ("cpu", [CPU], "auto", CPU, "int8"),
        ("auto", [CUDA, CPU], "auto", CUDA, "fp16"),
        ("auto", [CUDA, CPU], "auto", CPU, "fp32"),  # fp16 gated only on CPU: not served by default on CUDA
        ("cpu", [CPU], "fp32", CPU, "fp32"),
        ("cpu", [CPU], "fp16", CPU, "fp16"),
        ("auto", [CUDA, CPU], "int8", CUDA, "int8"),
        ("auto", [CUDA, CPU], "fp32", CUDA, "fp32"),
    ],
)
def test_variant_choice_by_provider_and_override(provider, offered, precision, fp16_gated_on, served) -> None:
    runtime = Runtime(RuntimeOptions(provider=provider, precision=precision), available_providers=offered)
    variant = runtime.choose_variant(_card_with(SENTIMENT, fp16=fp16_gated_on))
    assert variant.precision == served
    assert variant.files["model.onnx"] == {"fp32": "model.onnx"}.get(served, f"model.{served}.onnx")


def test_auto_serves_fp32_from_a_card_without_variants_and_forcing_a_missing_one_is_refused(caplog) -> None:
    card = ModelCard.load(SENTIMENT)
    card.variants = {}
    cpu = Runtime(RuntimeOptions(provider="cpu"), available_providers=[CPU])
    with caplog.at_level(logging.INFO):
        assert cpu.choose_variant(card).precision == "fp32"
    assert "no int8 variant" in caplog.text
    forced = Runtime(RuntimeOptions(provider="cpu", precision="int8"), available_providers=[CPU])
    with pytest.raises(VariantUnavailable, match=r"sentiment/1: precision=int8 but model.json offers \['fp32'\]"):
        forced.choose_variant(card)


def test_an_unknown_precision_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_SERVE_PRECISION", "int4")
    with pytest.raises(ValidationError, match="precision"):
        Settings()


def test_server_start_with_an_unknown_precision_exits_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with .*precision"):
        launch_server({"precision": "int4"}, tmp_path / "logs", timeout=60)


def test_server_forced_to_a_variant_the_card_lacks_is_not_ready_and_says_why(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(SENTIMENT, repo / "sentiment" / "1")
    card = ModelCard.load(repo / "sentiment" / "1")
    card.variants.pop("fp16")
    card.save(repo / "sentiment" / "1")
    server = launch_server(
        {"model_repository": repo, "precision": "fp16", "warmup": "false"}, tmp_path / "logs", wait_for="/healthz"
    )
    try:
        server.wait_for_log("refusing model")
        server.settle()  # every front end has the worker's state
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert "precision=fp16 but model.json offers ['fp32', 'int8']" in ready.json()["models"]["sentiment"]
    finally:
        assert server.stop() == 0


def test_server_shows_the_variant_it_serves(tmp_path: Path) -> None:
    settings = {"model_repository": REPO, "precision": "int8", "provider": "cpu", "warmup": "false"}  # int8 is CPU's
    server = launch_server(settings, tmp_path / "logs")
    try:
        serving = httpx.get(f"{server.url}/v1/models").json()["serving"]
        assert serving["sentiment"]["precision"] == "int8" and serving["sentiment"]["provider"] == CPU
        assert serving["sentiment"]["files"] == ["model.int8.onnx"]
        metrics = httpx.get(f"{server.url}/metrics").text
        info = f'lstm_serve_model_info{{model="sentiment",precision="int8",provider="{CPU}",version="1"}} 1.0'
        assert info in metrics
        config = httpx.get(f"{server.url}/v2/models/sentiment/config").json()
        assert config["parameters"]["precision"] == {"string_value": "int8"}
        assert config["parameters"]["graph_files"] == {"string_value": "model.int8.onnx"}
    finally:
        assert server.stop() == 0


def test_int8_answers_on_fixed_sentences_are_within_the_gate_of_fp32() -> None:
    """Through the serving pipeline: the first 1,000 validation sentences, int8 against fp32."""
    dev = sentence_split()[1]
    answers = {}
    for precision in ("fp32", "int8"):
        pipeline = SentimentPipeline(
            ModelCard.load(SENTIMENT), SENTIMENT, Runtime(RuntimeOptions(provider="cpu", precision=precision))
        )
        assert pipeline.variant.precision == precision
        items = pipeline.preprocess(dev.texts, None)  # type: ignore[arg-type]
        answers[precision] = np.concatenate(
            [np.asarray(pipeline.run_batch(items[i : i + 32])) for i in range(0, len(items), 32)]
        )
    labels = {p: a.argmax(axis=1) for p, a in answers.items()}
    agreement = float((labels["int8"] == labels["fp32"]).mean())
    accuracy = {p: float((lab == np.asarray(dev.labels)).mean()) for p, lab in labels.items()}
    assert agreement >= MIN_LABEL_AGREEMENT
    assert abs(100 * (accuracy["int8"] - accuracy["fp32"])) <= MAX_ACCURACY_DELTA_POINTS
    assert float(np.abs(answers["int8"] - answers["fp32"]).max()) < 0.1


def _round_trips(model: onnx.ModelProto) -> list[str]:
    """Cast(to=fp16) nodes whose only reader casts straight back to fp32."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    return [
        n.name
        for n in model.graph.node
        if to(n) == onnx.TensorProto.FLOAT16
        and [to(r) for r in readers.get(n.output[0], [])] == [onnx.TensorProto.FLOAT]
    ]


@pytest.mark.parametrize("shipped", [False, True], ids=["built", "shipped"])
def test_fp16_variant_answers_the_fp32_softmax_values_not_fp16_rounded_ones(tmp_path: Path, shipped: bool) -> None:
    """The Softmax runs in fp32; its output must reach the client unrounded (sums to 1 within 1e-6)."""
    path = SENTIMENT / "model.fp16.onnx"
    if not shipped:
        path = tmp_path / "model.fp16.onnx"
        precision_module.build_fp16(SENTIMENT / "model.onnx", path)
    assert _round_trips(onnx.load(str(path))) == []
    ids = np.random.default_rng(0).integers(4, 2000, size=(64, 12), dtype=np.int64)
    lengths = np.full(64, 12, dtype=np.int64)
    session = ort.InferenceSession(str(path), providers=[CPU])
    (probabilities,) = session.run(None, {"input_ids": ids, "lengths": lengths})
    assert probabilities.dtype == np.float32
    assert float(np.abs(probabilities.sum(axis=1) - 1.0).max()) < 1e-6
