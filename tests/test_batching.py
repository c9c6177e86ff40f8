"""The dynamic batcher around a pure-Python fake pipeline: no model file, no onnxruntime.

The fake records every batch it runs and waits on a gate the test controls, so queueing, grouping,
dropping and draining are observed deterministically. Assertions are on what ran, in which batches
and in which order; none is on how long anything took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from lstm_core.cost import CostModel
from service.batching import Batcher
from service.errors import BatchFailed, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.pipelines.base import Item
from service.settings import BatchingSettings

# The shipped sentiment biLSTM's constants on a 2-core CPU: any measured model would do here.
COST = CostModel(run=67e-6, step=3e-6, row=8.5e-6)
FAR = 3600.0  # a deadline or delay no test can reach: if the batcher waited for it, the test would hang


class FakePipeline:
    """Echoes each item's data; records each batch's (data, length) pairs; ``gate`` decides when it may run."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.batches: list[list[tuple[Any, int]]] = []

    def run_batch(self, items: Sequence[Item]) -> list[Any]:
        self.started.set()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        self.batches.append([(item.data, item.length) for item in items])
        if any(item.data == "boom" for item in items):
            raise RuntimeError("a real inference failure")
        return [f"out:{item.data}" for item in items]

    def lengths(self) -> list[list[int]]:
        return [[length for _, length in batch] for batch in self.batches]

    def tokenize(self, items: Sequence[Item]) -> None:
        """Deferred items (``Item.text``): data is the text, length its number of words, as ``items`` makes them."""
        self.tokenized_in = threading.current_thread().name
        self.tokenize_calls = getattr(self, "tokenize_calls", 0) + 1
        if any(item.text == "untokenisable" for item in items):
            raise RuntimeError("a tokenizer failure")
        for item in items:
            assert item.text is not None
            item.data, item.length, item.text = item.text, len(item.text.split()), None


def items(*texts: str, key: Any = None) -> list[Item]:
    """One item per text, its length the number of words (as a tokenizer would count)."""
    return [Item(text, len(text.split()), key) for text in texts]


def deadline() -> float:
    return time.monotonic() + FAR


@pytest.fixture
def fake() -> FakePipeline:
    return FakePipeline()


def make_batcher(fake: FakePipeline, **overrides: Any) -> Batcher:
    config = {"max_batch_size": 8, "max_batch_tokens": 4096, "max_delay_ms": 0.0, "max_padding_ratio": 1.0}
    config["max_queue_items"] = 64
    config.update(overrides)
    batcher = Batcher(fake, BatchingSettings(**config), Metrics(), "fake", "1", COST)
    batcher.start()
    return batcher


async def busy(batcher: Batcher, fake: FakePipeline) -> Any:
    """Occupy the runtime with one item (the gate closed) and return its job once it is running."""
    fake.gate.clear()
    job = batcher.submit(items("blocker"), deadline())
    await asyncio.to_thread(fake.started.wait, 30)
    return job


async def test_results_come_back_in_order_and_queued_requests_coalesce(fake: FakePipeline) -> None:
    batcher = make_batcher(fake)
    blocker = await busy(batcher, fake)
    texts = ["a b c", "d", "e f", "g h i j", "k"]
    jobs = [batcher.submit(items(t), deadline()) for t in texts]
    many = batcher.submit(items("x y", "z"), deadline())
    fake.gate.set()
    assert await blocker.future == ["out:blocker"]
    assert [await job.future for job in jobs] == [[f"out:{t}"] for t in texts]
    assert await many.future == ["out:x y", "out:z"]  # a request's results in its own order
    await batcher.close()
    # The blocker, then everything queued meanwhile as one round: sorted by length and cut where the
    # cost model says two batches are cheaper than one padded to 4 tokens.
    assert fake.lengths() == [[1], [1, 1, 1, 2, 2], [3, 4]]


async def test_length_groups_respect_padding_ratio_and_sizes(fake: FakePipeline) -> None:
    batcher = make_batcher(fake, max_batch_size=4, max_padding_ratio=0.25)
    blocker = await busy(batcher, fake)
    lengths = [2, 30, 3, 31, 2, 29, 3, 30]  # two rounds of 4 (FIFO), each cut into short and long groups
    job = batcher.submit([Item(f"t{i}", n) for i, n in enumerate(lengths)], deadline())
    fake.gate.set()
    await blocker.future
    assert len(await job.future) == len(lengths)
    await batcher.close()
    assert fake.lengths()[1:] == [[2, 3], [30, 31], [2, 3], [29, 30]]


async def test_token_budget_splits_a_round(fake: FakePipeline) -> None:
    batcher = make_batcher(fake, max_batch_tokens=20)
    blocker = await busy(batcher, fake)
    job = batcher.submit([Item(f"t{i}", 10) for i in range(4)], deadline())
    fake.gate.set()
    await blocker.future
    await job.future
    await batcher.close()
    assert fake.lengths()[1:] == [[10, 10], [10, 10]]  # 2 × 10 padded tokens per batch at most


async def test_items_with_different_keys_never_share_a_batch(fake: FakePipeline) -> None:
    batcher = make_batcher(fake)
    blocker = await busy(batcher, fake)
    greedy = batcher.submit(items("a", "b", key=1), deadline())
    beam = batcher.submit(items("c", "d", key=4), deadline())
    fake.gate.set()
    await asyncio.gather(blocker.future, greedy.future, beam.future)
    await batcher.close()
    assert [sorted(d for d, _ in b) for b in fake.batches[1:]] == [["a", "b"], ["c", "d"]]  # oldest key first


async def test_cancelled_and_expired_items_are_dropped_before_compute(fake: FakePipeline) -> None:
    batcher = make_batcher(fake)
    blocker = await busy(batcher, fake)
    gone = batcher.submit(items("g1", "g2", "g3"), deadline())
    expired = batcher.submit(items("e1", "e2"), time.monotonic())  # its deadline is already over
    kept = batcher.submit(items("kept"), deadline())
    gone.cancelled = True  # what the dataplane does when the client disconnects
    fake.gate.set()
    await blocker.future
    assert await kept.future == ["out:kept"]
    await batcher.close()
    assert [d for b in fake.batches for d, _ in b] == ["blocker", "kept"]
    assert not gone.future.done() and not expired.future.done()
    assert batcher.queued == 0


async def test_full_queue_refuses_at_once(fake: FakePipeline) -> None:
    batcher = make_batcher(fake, max_queue_items=4, max_batch_size=1)
    blocker = await busy(batcher, fake)
    queued = batcher.submit(items("a", "b", "c", "d"), deadline())
    with pytest.raises(QueueFull):
        batcher.submit(items("one too many"), deadline())
    fake.gate.set()
    await blocker.future
    assert len(await queued.future) == 4
    await batcher.close()


async def test_failing_batch_fails_only_its_requests(fake: FakePipeline) -> None:
    batcher = make_batcher(fake, max_batch_size=1)
    bad = batcher.submit(items("boom"), deadline())
    good = batcher.submit(items("a", "b"), deadline())
    with pytest.raises(BatchFailed):
        await bad.future
    assert await good.future == ["out:a", "out:b"]
    after = batcher.submit(items("c"), deadline())  # the worker keeps running
    assert await after.future == ["out:c"]
    await batcher.close()


async def test_close_drains_the_queue_then_refuses(fake: FakePipeline) -> None:
    batcher = make_batcher(fake, max_batch_size=2)
    fake.gate.clear()
    jobs = [batcher.submit(items(t), deadline()) for t in ("a", "b", "c", "d", "e")]
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0)  # close() has begun: intake is shut
    with pytest.raises(ShuttingDown):
        batcher.submit(items("late"), deadline())
    fake.gate.set()
    await closing
    assert [job.future.result() for job in jobs] == [[f"out:{t}"] for t in "abcde"]
    assert sum(len(b) for b in fake.batches) == 5


async def test_no_wait_when_idle_even_with_a_delay(fake: FakePipeline) -> None:
    """A lone request on an idle runtime runs at once: the hour-long max_delay applies only under concurrency."""
    batcher = make_batcher(fake, max_delay_ms=FAR * 1000)
    for text in ("one", "two", "three"):  # one after another: each round holds one item, none waits
        assert await asyncio.wait_for(batcher.submit(items(text), deadline()).future, 30) == [f"out:{text}"]
    await batcher.close()
    assert fake.lengths() == [[1], [1], [1]]


async def test_two_instances_run_rounds_at_the_same_time() -> None:
    """With two model instances, a round starts on the free one while the other's is still running."""
    first, second = FakePipeline(), FakePipeline()
    first.gate.clear()
    config = BatchingSettings(
        max_batch_size=8, max_batch_tokens=4096, max_delay_ms=0.0, max_padding_ratio=1.0, max_queue_items=64
    )
    batcher = Batcher([first, second], config, Metrics(), "fake", "1", COST)
    batcher.start()
    blocked = batcher.submit(items("blocker"), deadline())
    await asyncio.to_thread(first.started.wait, 30)
    quick = batcher.submit(items("quick one"), deadline())  # the first instance is held: this runs on the second
    assert await asyncio.wait_for(quick.future, 30) == ["out:quick one"]
    assert not blocked.future.done() and second.batches == [[("quick one", 2)]]
    first.gate.set()
    assert await asyncio.wait_for(blocked.future, 30) == ["out:blocker"]
    await batcher.close()


async def test_close_drains_rounds_on_every_instance() -> None:
    """Both instances busy and more queued: close() returns only once every item has run, on either copy."""
    first, second = FakePipeline(), FakePipeline()
    first.gate.clear()
    second.gate.clear()
    config = BatchingSettings(
        max_batch_size=2, max_batch_tokens=4096, max_delay_ms=0.0, max_padding_ratio=1.0, max_queue_items=64
    )
    batcher = Batcher([first, second], config, Metrics(), "fake", "1", COST)
    batcher.start()
    jobs = [batcher.submit(items(t), deadline()) for t in "abcdefg"]
    await asyncio.to_thread(first.started.wait, 30)
    await asyncio.to_thread(second.started.wait, 30)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        batcher.submit(items("late"), deadline())
    first.gate.set()
    second.gate.set()
    await asyncio.wait_for(closing, 30)
    assert [job.future.result() for job in jobs] == [[f"out:{t}"] for t in "abcdefg"]
    assert sum(len(b) for b in first.batches + second.batches) == 7 and first.batches and second.batches


async def run_round_of(fake: FakePipeline, requests: list[list[Item]]) -> list[list[Any]]:
    """Queue ``requests`` behind a running blocker, so they form one round; their outputs."""
    batcher = make_batcher(fake)
    blocker = await busy(batcher, fake)
    jobs = [batcher.submit(request, deadline()) for request in requests]
    fake.gate.set()
    assert await blocker.future == ["out:blocker"]
    outputs = [await asyncio.wait_for(job.future, 30) for job in jobs]
    await batcher.close()
    return outputs


async def test_deferred_items_are_tokenised_in_the_batch_thread_before_the_round_is_cut() -> None:
    """Items queued with their text only are tokenised in one call per round, in the instance's thread, and
    the round is cut by their real lengths: the same batches as items that came tokenised."""
    texts = ["a b c", "d", "e f", "g h i j k l m n o p q r", "k", "l m"]
    tokenised, deferred = FakePipeline(), FakePipeline()
    expected = await run_round_of(tokenised, [items(t) for t in texts])
    got = await run_round_of(deferred, [[Item(None, 0, None, t)] for t in texts])
    assert got == expected == [[f"out:{t}"] for t in texts]
    assert deferred.batches == tokenised.batches and len(deferred.batches) > 2  # blocker, then a cut round
    assert deferred.tokenize_calls == 1  # the whole round at once
    assert deferred.tokenized_in.startswith("batch-fake-1-")  # the instance's thread, not the event loop


async def test_a_text_that_fails_to_tokenise_fails_only_its_own_request(fake: FakePipeline) -> None:
    """In the same round as a text the tokenizer refuses, the other requests are answered; the batcher goes on."""
    batcher = make_batcher(fake)
    blocker = await busy(batcher, fake)
    good = batcher.submit([Item(None, 0, None, "fine text")], deadline())
    broken = batcher.submit([Item(None, 0, None, "a"), Item(None, 0, None, "untokenisable")], deadline())
    tokenised = batcher.submit(items("c d e"), deadline())
    fake.gate.set()
    assert await blocker.future == ["out:blocker"]
    assert await asyncio.wait_for(good.future, 30) == ["out:fine text"]
    assert await asyncio.wait_for(tokenised.future, 30) == ["out:c d e"]
    with pytest.raises(BatchFailed, match="a tokenizer failure"):
        await asyncio.wait_for(broken.future, 30)
    assert await asyncio.wait_for(batcher.submit(items("after"), deadline()).future, 30) == ["out:after"]
    await batcher.close()
    ran = [data for batch in fake.batches for data, _ in batch]
    assert "untokenisable" not in ran and "a" not in ran  # nothing of the failed request ran


async def test_the_queue_gauge_is_exact_after_each_round_and_at_most_10_ms_behind_between(fake: FakePipeline) -> None:
    metrics = Metrics()
    config = BatchingSettings(
        max_batch_size=8, max_batch_tokens=4096, max_delay_ms=0.0, max_padding_ratio=1.0, max_queue_items=64
    )
    batcher = Batcher(fake, config, metrics, "fake", "1", COST)
    batcher.start()

    def shown() -> float | None:
        return metrics.registry.get_sample_value("lstm_serve_queue_items", {"model": "fake", "version": "1"})

    blocker = await busy(batcher, fake)  # taken: the queue is empty again, and the gauge says so
    assert shown() == 0
    first = batcher.submit(items("a"), deadline())
    await asyncio.sleep(0.02)  # past QUEUE_GAUGE_EVERY_S: the next submit writes the gauge
    second = batcher.submit(items("b c"), deadline())
    assert shown() == 2
    fake.gate.set()
    assert [await j.future for j in (blocker, first, second)] == [["out:blocker"], ["out:a"], ["out:b c"]]
    await batcher.close()
    assert shown() == 0
