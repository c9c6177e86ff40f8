"""The GPU code paths, run in CI: IOBinding bound to CPU OrtValues must answer exactly as plain ``run``.

``Runtime`` owns the device: ``Runtime.run`` (sentiment) and translation's device stepper both take it
from ``Runtime.binding_device``. On a GPU that is ``("cuda", id)``; with ``io_binding=True`` on CPU it is
``("cpu", 0)``, so the same binding code runs here against the host path.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.gpu_check import flickr_sentences
from bench.load import load_texts
from bench.translation import latest_version
from lstm_core.model_card import ModelCard
from service.pipelines.registry import discover
from service.runtime import Runtime, RuntimeOptions


def pipelines(task: str) -> tuple:
    folder = latest_version(task)
    cls = discover()[task]
    card = ModelCard.load(folder)
    plain = Runtime(RuntimeOptions(provider="cpu"))
    bound = Runtime(RuntimeOptions(provider="cpu", io_binding=True))
    assert plain.binding_device is None and bound.binding_device == ("cpu", 0)
    return cls(card, folder, plain), cls(card, folder, bound)


def test_sentiment_io_binding_path_equals_plain_run() -> None:
    plain, bound = pipelines("sentiment")
    texts = load_texts(96)
    for start in range(0, 96, 32):
        items = plain.preprocess(texts[start : start + 32], plain.wire.params())
        assert np.array_equal(np.stack(plain.run_batch(items)), np.stack(bound.run_batch(items)))


@pytest.mark.parametrize("beam", [1, 4])
def test_translation_device_stepper_equals_host_stepper(beam: int) -> None:
    plain, bound = pipelines("translation")
    assert bound.model.device == ("cpu", 0) and plain.model.device is None
    texts = flickr_sentences("en", 24)
    items = plain.preprocess(texts, plain.wire.params(beam_size=beam))
    assert plain.run_batch(items) == bound.run_batch(items)
