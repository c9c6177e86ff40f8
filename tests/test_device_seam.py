"""The GPU code paths, run in CI: IOBinding bound to CPU OrtValues must answer exactly as plain ``run``.

``Runtime`` owns the device: ``Runtime.run`` (sentiment) and translation's device stepper both take it
from ``Runtime.binding_device``. On a GPU that is ``("cuda", id)``; with ``io_binding=True`` on CPU it is
``("cpu", 0)``, so the same binding code runs here against the host path.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from bench.gpu_check import flickr_sentences
from bench.load import load_texts
from bench.translation import latest_version
from lstm_core.decode_scheduler import DecodeScheduler, Sentence, StepPlan
from lstm_core.model_card import ModelCard
from lstm_core.tokens import BOS_ID, EOS_ID
from lstm_core.translation_runtime import DeviceRows
from lstm_core.translation_search import output_limit
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


class _Twin:
    """Runs every planned step on two backends and checks they return the very same candidates."""

    def __init__(self, graph_rows: DeviceRows, host_rows: DeviceRows) -> None:
        self.graph_rows, self.host_rows = graph_rows, host_rows
        self.steps = self.joins_in_place = 0

    def reset(self) -> None:
        self.graph_rows.reset()
        self.host_rows.reset()

    def step(self, plan: StepPlan) -> tuple[np.ndarray, np.ndarray]:
        before = self.host_rows._host
        want = self.graph_rows.step(plan)
        got = self.host_rows.step(plan)
        assert np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
        after = self.host_rows._host
        if plan.new_sources and before is not None and after is not None and after[0] is before[0]:
            self.joins_in_place += 1  # sentences joined without a copy of the rows already there
        self.steps += 1
        return got


@pytest.mark.parametrize("beam", [1, 4])
def test_translation_rows_laid_out_on_the_host_equal_rows_onnx(beam: int) -> None:
    """The CPU default (numpy buffers with spare rows) against ``rows.onnx`` (the GPU's), step by step.

    Sentences trickle in three a step with lazy retirement and grouped admission, so the running set
    grows in place, is re-laid out when it widens or sheds finished rows, and empties."""
    folder = latest_version("translation")
    twin = _Twin(DeviceRows.from_folder(folder, host_rows=False), DeviceRows.from_folder(folder))
    assert twin.host_rows.host_rows and not twin.graph_rows.host_rows
    scheduler = DecodeScheduler(
        twin, max_rows=96, max_positions=4096, bos=BOS_ID, eos=EOS_ID, lazy_retire=True, admit_wait_steps=2
    )
    plain, _ = pipelines("translation")
    items = plain.preprocess(flickr_sentences("en", 60), plain.wire.params(beam_size=beam))
    sentences = [Sentence(item.data, beam, output_limit(64, item.length), 0.6) for item in items]
    queue = list(sentences)
    while queue or not scheduler.idle:
        for sentence in queue[:3]:
            scheduler.add(sentence)
        del queue[:3]
        scheduler.step()
    assert all(s.result is not None for s in sentences)
    assert twin.steps > 20 and twin.joins_in_place > 0


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.parametrize("io_binding", [False, True], ids=["plain", "io-binding"])
def test_release_after_a_full_size_warmup_gives_arena_memory_back(io_binding: bool) -> None:
    """Both run paths pass the shrink option: a 1,024-row warm-up's arena goes back, answers stay the same."""
    folder = latest_version("sentiment")
    runtime = Runtime(RuntimeOptions(provider="cpu", precision="fp32", io_binding=io_binding))
    pipeline = discover()["sentiment"](ModelCard.load(folder), folder, runtime)
    items = pipeline.preprocess(load_texts(32), pipeline.wire.params())
    before = np.stack(pipeline.run_batch(items))
    pipeline.warmup(1024)
    warm = _rss_mib()
    pipeline.release_memory()
    released = _rss_mib()
    assert warm - released > 200, (warm, released)  # about 830 MiB on the machine that wrote this
    assert np.array_equal(np.stack(pipeline.run_batch(items)), before)
