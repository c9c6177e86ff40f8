"""The dynamic batcher on the real shipped sentiment model (real tokenizer, real onnxruntime session).

The pipeline is the real ``SentimentPipeline`` with a gate in front of ``run_batch``: the test decides
when the runtime is busy, so queueing, dropping and draining can be observed deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.batching import Batcher
from service.errors import BatchFailed, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.pipelines.base import Item
from service.pipelines.sentiment import SentimentPipeline
from service.repository import check_version
from service.runtime import Runtime, RuntimeOptions
from service.settings import BatchingSettings

SHIPPED = Path(__file__).resolve().parents[1] / "model_repository" / "sentiment" / "1"
TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish",
    "it 's a charming and often affecting journey .",
    "unfunny and lame .",
    "one of the greatest family-oriented , fantasy-adventure movies ever .",
    "bad",
]


class GatedSentiment(SentimentPipeline):
    """The real pipeline, recording each batch and waiting on ``gate`` before running it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[int]] = []  # lengths of the items of each batch run
        self.started = threading.Event()

    def run_batch(self, items: Sequence[Item]) -> list[Any]:
        self.started.set()
        self.gate.wait(timeout=30)
        self.batches.append([item.length for item in items])
        return super().run_batch(items)


@pytest.fixture(scope="module")
def pipeline() -> GatedSentiment:
    mv = check_version("sentiment", "1", SHIPPED)
    assert mv.problem is None, mv.problem
    return GatedSentiment(mv.card, mv.folder, Runtime(RuntimeOptions(provider="cpu")))


def make_batcher(pipeline: GatedSentiment, **overrides: Any) -> Batcher:
    config = {"max_batch_size": 8, "max_batch_tokens": 4096, "max_delay_ms": 0.0, "max_padding_ratio": 1.0}
    config["max_queue_items"] = 64
    config.update(overrides)
    pipeline.gate.set()
    pipeline.started.clear()
    pipeline.batches.clear()
    batcher = Batcher(pipeline, BatchingSettings(**config), Metrics(), "sentiment", "1")
    batcher.start()
    return batcher


def far() -> float:
    return time.monotonic() + 60


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_results_match_unbatched_and_requests_coalesce(pipeline: GatedSentiment) -> None:
    expected = [pipeline.run_batch(pipeline.preprocess([t], {}))[0] for t in TEXTS]
    batcher = make_batcher(pipeline)
    pipeline.gate.clear()  # the runtime is busy with a first request while the others arrive
    first = batcher.submit(pipeline.preprocess(TEXTS[:1], {}), far())
    await asyncio.to_thread(pipeline.started.wait, 5)
    jobs = [batcher.submit(pipeline.preprocess([t], {}), far()) for t in TEXTS[1:]]
    pipeline.gate.set()
    results = [(await first.future)[0]] + [(await job.future)[0] for job in jobs]
    await batcher.close()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert pipeline.batches[0] == [len(pipeline.preprocess(TEXTS[:1], {})[0].data)]
    rest = pipeline.batches[1:]  # the five texts queued meanwhile ran as one round, sorted by length
    assert sum(len(b) for b in rest) == 5 and len(rest) < 5, pipeline.batches
    flat = [n for batch in rest for n in batch]
    assert flat == sorted(flat)


async def test_length_groups_respect_padding_ratio_and_sizes(pipeline: GatedSentiment) -> None:
    batcher = make_batcher(pipeline, max_batch_size=4, max_padding_ratio=0.25)
    pipeline.gate.clear()
    blocker = batcher.submit(pipeline.preprocess(["x"], {}), far())
    await asyncio.to_thread(pipeline.started.wait, 5)
    lengths = [2, 30, 3, 31, 2, 29, 3, 30]  # two rounds of 4, each cut into short and long groups
    items = [Item(np.full(n, 5, dtype=np.int64), n) for n in lengths]
    job = batcher.submit(items, far())
    pipeline.gate.set()
    await blocker.future
    outputs = await job.future
    await batcher.close()
    assert len(outputs) == len(lengths)
    for batch in pipeline.batches[1:]:
        assert len(batch) <= 4
        assert 1 - sum(batch) / (max(batch) * len(batch)) <= 0.25, batch
    assert pipeline.batches[1:] == [[2, 3], [30, 31], [2, 3], [29, 30]]


async def test_cancelled_and_expired_items_are_dropped_before_compute(pipeline: GatedSentiment) -> None:
    batcher = make_batcher(pipeline)
    pipeline.gate.clear()
    blocker = batcher.submit(pipeline.preprocess(["first"], {}), far())
    await asyncio.to_thread(pipeline.started.wait, 5)
    gone = batcher.submit(pipeline.preprocess(TEXTS[:3], {}), far())
    expired = batcher.submit(pipeline.preprocess(TEXTS[3:5], {}), time.monotonic() + 0.01)
    kept = batcher.submit(pipeline.preprocess(TEXTS[5:], {}), far())
    gone.cancelled = True  # what the dataplane does when the client disconnects
    await asyncio.sleep(0.05)  # the deadline of `expired` passes while the runtime is busy
    pipeline.gate.set()
    await blocker.future
    await kept.future
    await batcher.close()
    ran = sum(len(b) for b in pipeline.batches)
    assert ran == 2, pipeline.batches  # the blocker and the kept item only
    assert not gone.future.done() and not expired.future.done()
    assert batcher.queued == 0


async def test_full_queue_refuses_at_once(pipeline: GatedSentiment) -> None:
    batcher = make_batcher(pipeline, max_queue_items=4, max_batch_size=1)
    pipeline.gate.clear()
    batcher.submit(pipeline.preprocess(["busy"], {}), far())
    await asyncio.to_thread(pipeline.started.wait, 5)
    queued = batcher.submit(pipeline.preprocess(TEXTS[:4], {}), far())
    with pytest.raises(QueueFull):
        batcher.submit(pipeline.preprocess(TEXTS[:1], {}), far())
    pipeline.gate.set()
    assert len(await queued.future) == 4
    await batcher.close()


async def test_failing_batch_fails_only_its_requests(pipeline: GatedSentiment) -> None:
    batcher = make_batcher(pipeline, max_batch_size=1)
    # A token id far outside the vocabulary: onnxruntime's Gather refuses it, a real inference failure.
    bad = batcher.submit([Item(np.array([10**9], dtype=np.int64), 1)], far())
    good = batcher.submit(pipeline.preprocess(TEXTS[:2], {}), far())
    with pytest.raises(BatchFailed):
        await bad.future
    assert len(await good.future) == 2
    after = batcher.submit(pipeline.preprocess(TEXTS[2:3], {}), far())  # the worker keeps running
    assert len(await after.future) == 1
    await batcher.close()


async def test_close_drains_the_queue_then_refuses(pipeline: GatedSentiment) -> None:
    batcher = make_batcher(pipeline, max_batch_size=2)
    pipeline.gate.clear()
    jobs = [batcher.submit(pipeline.preprocess([t], {}), far()) for t in TEXTS]
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    with pytest.raises(ShuttingDown):
        batcher.submit(pipeline.preprocess(["late"], {}), far())
    pipeline.gate.set()
    await closing
    assert all(job.future.done() and len(job.future.result()) == 1 for job in jobs)


async def test_no_wait_when_idle_even_with_a_delay(pipeline: GatedSentiment) -> None:
    """A lone request on an idle runtime runs at once; max_delay_ms applies only under concurrency."""
    batcher = make_batcher(pipeline, max_delay_ms=500.0)
    t0 = time.monotonic()
    job = batcher.submit(pipeline.preprocess(TEXTS[:1], {}), far())
    await job.future
    assert time.monotonic() - t0 < 0.4
    await batcher.close()
