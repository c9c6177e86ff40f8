"""The dynamic batcher: one per served model version (docs/design.md, "Dynamic batching").

Requests are split into items (one text each) and queued per batching key. One worker coroutine forms
a batch as soon as the runtime is free and runs it in a dedicated thread (onnxruntime releases the GIL,
so the event loop keeps parsing requests meanwhile). Batches are formed while the previous one runs
(items pile up in the queue), so an item reaching an idle runtime runs at once: there is no fixed wait
at low load. Only under concurrency (the previous batch held more than one item) does the worker wait,
at most ``max_delay_ms`` after the oldest item arrived, for a batch to fill.

A batch takes items until ``max_batch_size`` items or ``max_batch_tokens`` padded tokens (items ×
longest); when the queue is longer than one batch, items of similar length to the oldest item are
taken together (from a window of the oldest items, so nothing starves) to cut padding. The queue is
bounded: a submit that would overflow it raises ``QueueFull`` at once. Items of jobs that were cancelled
(client gone) or whose deadline passed are dropped before they cost compute. A failing batch fails only
its own jobs; the worker keeps running. ``close()`` refuses new work and returns once the queue is empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.errors import BatchFailed, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.pipelines.base import Item, Pipeline
from service.settings import BatchingSettings

log = logging.getLogger(__name__)

#: How many of the oldest items (× max_batch_size) length grouping may choose from.
GROUPING_WINDOW = 4


@dataclass(eq=False, slots=True)
class Job:
    """The items of one request: the future resolves to one output per item, in order."""

    future: asyncio.Future[list[Any]]
    results: list[Any]
    remaining: int
    deadline: float
    cancelled: bool = False

    def dead(self, now: float) -> bool:
        """No one will read this job's results: drop its queued items."""
        return self.cancelled or self.future.done() or now >= self.deadline


@dataclass(eq=False, slots=True)
class _Queued:
    item: Item
    job: Job
    index: int
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Queue + worker for one model version; ``submit`` from the event loop, results via ``Job.future``."""

    def __init__(
        self,
        pipeline: Pipeline,
        config: BatchingSettings,
        metrics: Metrics,
        model: str,
        version: str,
    ) -> None:
        self.pipeline = pipeline
        self.config = config
        self._queues: dict[Hashable, deque[_Queued]] = {}
        self._count = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_batch_size = 0
        # One thread: one batch at a time per model, so onnxruntime's own threads are not oversubscribed.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{model}-{version}")
        labels = (model, version)
        self._m_queue = metrics.queue_items.labels(*labels)
        self._m_queue_duration = metrics.queue_duration.labels(*labels)
        self._m_inference = metrics.inference_duration.labels(*labels)
        self._m_size = metrics.batch_size.labels(*labels)
        self._m_tokens = metrics.batch_tokens.labels(*labels)
        self._m_padding = metrics.batch_padding_ratio.labels(*labels)
        self._m_items = metrics.items_total.labels(*labels)
        self._name = f"{model}/{version}"

    # ---- event-loop side -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher {self._name}")

    @property
    def queued(self) -> int:
        return self._count

    def submit(self, items: Sequence[Item], deadline: float) -> Job:
        """Queue the items of one request; raises ``QueueFull``/``ShuttingDown`` at once instead of waiting."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._count + len(items) > self.config.max_queue_items:
            raise QueueFull(f"queue of {self._name} is full ({self._count}/{self.config.max_queue_items} items)")
        job = Job(asyncio.get_running_loop().create_future(), [None] * len(items), len(items), deadline)
        now = time.monotonic()
        for index, item in enumerate(items):
            queue = self._queues.get(item.key)
            if queue is None:
                queue = self._queues[item.key] = deque()
            queue.append(_Queued(item, job, index, now))
        self._count += len(items)
        self._m_queue.set(self._count)
        self._wakeup.set()
        return job

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # ---- the worker --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._count == 0:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._maybe_wait_for_more()
            batch = self._take()
            if batch:
                await self._execute(batch)

    def _oldest_queue(self) -> deque[_Queued] | None:
        heads = [q for q in self._queues.values() if q]
        return min(heads, key=lambda q: q[0].enqueued) if heads else None

    async def _maybe_wait_for_more(self) -> None:
        """Under concurrency, wait (≤ max_delay_ms after the oldest item arrived) for a fuller batch.

        At low load the previous batch held one item, so nothing waits: latency stays that of an
        unbatched server. Under load the queue usually holds a full batch already and nothing waits either.
        """
        delay = self.config.max_delay_ms / 1000.0
        if delay <= 0 or self._last_batch_size <= 1 or self._closing:
            return
        queue = self._oldest_queue()
        if queue is None:
            return
        until = queue[0].enqueued + delay
        while len(queue) < self.config.max_batch_size and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Queued]:
        """Pop the next batch: the oldest live item plus, up to the limits, items of similar length."""
        now = time.monotonic()
        queue = self._oldest_queue()
        if queue is None:
            return []
        dropped = 0
        while queue and queue[0].job.dead(now):
            queue.popleft()
            dropped += 1
        cfg = self.config
        if not queue:
            self._forget(dropped)
            return []
        window_size = min(len(queue), GROUPING_WINDOW * cfg.max_batch_size)
        if window_size <= cfg.max_batch_size:
            candidates = [queue.popleft() for _ in range(window_size)]
        else:  # long queue: oldest item first, then the closest lengths among the oldest items
            window = [queue.popleft() for _ in range(window_size)]
            anchor = window[0].item.length
            order = [0, *sorted(range(1, window_size), key=lambda i: abs(window[i].item.length - anchor))]
            candidates = [window[i] for i in order]
        batch: list[_Queued] = []
        longest = 0
        leftover: list[_Queued] = []
        for entry in candidates:
            if entry.job.dead(now):
                dropped += 1
                continue
            grown = max(longest, entry.item.length)
            fits = len(batch) < cfg.max_batch_size and grown * (len(batch) + 1) <= cfg.max_batch_tokens
            if fits or not batch:  # the oldest item always runs, even alone over the token budget
                batch.append(entry)
                longest = grown
            else:
                leftover.append(entry)
        if leftover:  # back to the front, in arrival order, so they stay the oldest
            leftover.sort(key=lambda e: e.enqueued)
            queue.extendleft(reversed(leftover))
        self._forget(dropped + len(batch))
        return batch

    def _forget(self, n: int) -> None:
        self._count -= n
        self._m_queue.set(self._count)

    async def _execute(self, batch: list[_Queued]) -> None:
        items = [entry.item for entry in batch]
        started = time.monotonic()
        for entry in batch:
            self._m_queue_duration.observe(started - entry.enqueued)
        longest = max(item.length for item in items)
        real = sum(item.length for item in items)
        self._m_size.observe(len(items))
        self._m_tokens.observe(longest * len(items))
        self._m_padding.observe(1.0 - real / (longest * len(items)))
        self._last_batch_size = len(items)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self.pipeline.run_batch, items)
            if len(outputs) != len(items):
                raise RuntimeError(f"pipeline returned {len(outputs)} outputs for {len(items)} items")
        except Exception as exc:  # a failing batch fails its own jobs, never the worker
            log.exception("batch of %d items on %s failed", len(items), self._name)
            self._fail(batch, exc)
            return
        finally:
            self._m_inference.observe(time.monotonic() - started)
        self._m_items.inc(len(items))
        for entry, output in zip(batch, outputs, strict=True):
            job = entry.job
            if job.future.done():
                continue
            job.results[entry.index] = output
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)

    def _fail(self, batch: list[_Queued], exc: Exception) -> None:
        for job in {id(entry.job): entry.job for entry in batch}.values():
            if not job.future.done():
                job.future.set_exception(BatchFailed(f"inference failed: {type(exc).__name__}: {exc}"))
            job.cancelled = True  # its other items, if still queued, are dropped before compute
