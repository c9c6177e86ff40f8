"""The PyTorch reference loop of issue 11 decodes with the shipped weights: same greedy answers as the server.

``bench.torch_reference`` rebuilds the torch module from the shipped ONNX graphs (gate order, transposed
MatMuls, fp16-stored weights). If that mapping were wrong, the GPU comparison would time a different
model; here it must reproduce the ONNX greedy translations exactly, on CPU.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from bench.gpu_check import _params, _pipeline, flickr_sentences
from bench.torch_reference import greedy_loop, load_torch_model, throughput
from bench.translation import latest_version
from lstm_core.encoding import encode_source
from models.translation.subwords import decode_target


def test_rebuilt_torch_model_translates_like_the_onnx_graphs() -> None:
    folder = latest_version("translation")
    texts = flickr_sentences("en", 48)
    source = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    target = Tokenizer.from_file(str(folder / "target_tokenizer.json"))
    reference = decode_target(target, greedy_loop(load_torch_model(folder), encode_source(source, texts, 128), "cpu"))
    served = _pipeline("translation", "cpu")
    onnx_text = served.run_batch(served.preprocess(texts, _params(served, beam_size=1)))
    assert reference == onnx_text
    assert len(set(reference)) == len(texts)  # real, distinct translations, not an empty decode


def test_throughput_reports_every_batch_size() -> None:
    folder = latest_version("translation")
    source = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    rows = throughput(load_torch_model(folder), source, flickr_sentences("en", 16), [4, 16], "cpu")
    assert [r["batch"] for r in rows] == [4, 16]
    assert all(r["sentences"] == 16 and r["sentences_s"] > 0 for r in rows)
