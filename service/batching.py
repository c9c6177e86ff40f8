"""The dynamic batcher: one per served model version (docs/design.md, "Dynamic batching").

Requests are split into items (one text each) and queued per batching key. One worker coroutine forms
a batch as soon as the runtime is free and runs it in a dedicated thread (onnxruntime releases the GIL,
so the event loop keeps parsing requests meanwhile). Batches are formed while the previous one runs
(items pile up in the queue), so an item reaching an idle runtime runs at once: there is no fixed wait
at low load. Only under concurrency (the previous round held more than one item) does the worker wait,
at most ``max_delay_ms`` after the oldest item arrived, for a round to fill.

A round takes the oldest items (FIFO) up to ``max_batch_size``, sorts them by length and cuts them into
the batches of least modelled cost (``lstm_core.cost.CostModel``: measured at export, again at warm-up), within
``max_batch_tokens`` padded tokens (items × longest) and ``max_padding_ratio``, run back to back:
padding costs a recurrent model as much as text, and one batch of mixed lengths can cost more than
running its items one by one.

With ``model_instances`` > 1 the batcher holds that many copies of the pipeline (their own sessions),
each with its own thread, and a round is taken as soon as one copy is free, so rounds run concurrently
(Triton's instance groups). Why: on a GPU one LSTM batch is a chain of small latency-bound kernels
(the H100 was 30-40% busy at its best single-text load) and the host work between rounds leaves it
idle; a second copy overlaps its run with the first one's gaps. On CPU each copy is one more core.

The queue is bounded: a submit that would overflow it raises ``QueueFull`` at once. Items of jobs that were cancelled
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
from typing import Any, Protocol

from lstm_core.cost import CostModel
from service.batch_cuts import cheapest_cuts
from service.errors import BatchFailed, QueueFull, ShuttingDown
from service.metrics import Metrics, observe_many
from service.pipelines.base import Item
from service.settings import BatchingSettings

log = logging.getLogger(__name__)
# ``submit`` updates the queue gauge at most this often; every round's take updates it exactly. Why: in a
# multi-process server each gauge write is an mmap write behind an ``os.getpid`` call, and one per request
# was 6% of the inference worker's event loop at 2,000 single-text requests/s (py-spy). The gauge is
# scraped every few seconds, so it is never more than 10 ms or one round behind.
QUEUE_GAUGE_EVERY_S = 0.01


class BatchRunner(Protocol):
    """What the batcher needs of a pipeline: run one batch, one output per item (tests pass a fake), and
    tokenise the items it deferred (``Item.text`` set; only pipelines that defer are asked)."""

    def run_batch(self, items: Sequence[Item]) -> list[Any]: ...

    def tokenize(self, items: Sequence[Item]) -> None: ...


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
        pipeline: BatchRunner | Sequence[BatchRunner],
        config: BatchingSettings,
        metrics: Metrics,
        model: str,
        version: str,
        cost_model: CostModel,
    ) -> None:
        """``pipeline``: one runner, or several copies of it (model instances) that may run at the same time."""
        self.runners: list[BatchRunner] = list(pipeline) if isinstance(pipeline, Sequence) else [pipeline]
        if not self.runners:
            raise ValueError("a batcher needs at least one pipeline")
        self.pipeline = self.runners[0]
        self.config = config
        self.cost_model = cost_model
        self._queues: dict[Hashable, deque[_Queued]] = {}
        self._count = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_batch_size = 0
        # One thread per instance: one batch at a time on each copy's sessions, so onnxruntime's own
        # threads are not oversubscribed.
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{model}-{version}-{i}")
            for i in range(len(self.runners))
        ]
        self._free = deque(range(len(self.runners)))  # instances without a round
        self._rounds: set[asyncio.Task[None]] = set()  # rounds running on other instances (several instances)
        labels = (model, version)
        self._m_queue = metrics.queue_items.labels(*labels)
        self._queue_shown_at = -QUEUE_GAUGE_EVERY_S
        metrics.queue_capacity_items.labels(*labels).set(config.max_queue_items)
        self._m_queue_duration = metrics.queue_duration.labels(*labels)
        self._m_inference = metrics.inference_duration.labels(*labels)
        self._m_size = metrics.batch_size.labels(*labels)
        self._m_tokens = metrics.batch_tokens.labels(*labels)
        self._m_padding = metrics.batch_padding_ratio.labels(*labels)
        self._m_items = metrics.items_total.labels(*labels)
        self._name = f"{model}/{version}"

    # ---- event-loop side -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"batcher {self._name}")

    @property
    def queued(self) -> int:
        return self._count

    def submit(self, items: Sequence[Item], deadline: float) -> Job:
        """Queue the items of one request; raises ``QueueFull``/``ShuttingDown`` at once instead of waiting."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._count + len(items) > self.config.max_queue_items:
            raise QueueFull(f"queue of {self._name} is full ({self._count}/{self.config.max_queue_items} items)")
        loop = self._loop or asyncio.get_running_loop()  # set by start(): no lookup (a getpid call) per request
        job = Job(loop.create_future(), [None] * len(items), len(items), deadline)
        now = time.monotonic()
        for index, item in enumerate(items):
            queue = self._queues.get(item.key)
            if queue is None:
                queue = self._queues[item.key] = deque()
            queue.append(_Queued(item, job, index, now))
        self._count += len(items)
        if now - self._queue_shown_at >= QUEUE_GAUGE_EVERY_S:
            self._queue_shown_at = now
            self._m_queue.set(self._count)
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """No one waits for this job any more (client gone, deadline passed): its queued items are dropped."""
        job.cancelled = True

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for executor in self._executors:
            executor.shutdown(wait=True)

    # ---- the worker --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._count == 0 or not self._free:
                if self._closing and self._count == 0:
                    if self._rounds:
                        await asyncio.gather(*self._rounds)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._maybe_wait_for_more()
            entries = self._take()
            if not entries:
                continue
            if len(self.runners) == 1:  # one instance: the round runs inline, no task per round
                await self._execute(entries, 0)
                continue
            task = asyncio.get_running_loop().create_task(self._execute(entries, self._free.popleft()))
            self._rounds.add(task)
            task.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        self._wakeup.set()  # an instance is free: a queued round may start
        if not task.cancelled() and task.exception() is not None:  # batch failures are handled inside
            log.error("round on %s failed outside its batches", self._name, exc_info=task.exception())

    def _oldest_queue(self) -> deque[_Queued] | None:
        heads = [q for q in self._queues.values() if q]
        return min(heads, key=lambda q: q[0].enqueued) if heads else None

    async def _maybe_wait_for_more(self) -> None:
        """Under concurrency, wait (≤ max_delay_ms after the oldest item arrived) for a fuller batch.

        At low load the previous round held one item, so nothing waits: latency stays that of an
        unbatched server. Otherwise the wait ends as soon as as many items are queued as the previous
        round held (the concurrency just seen), so a steady 4 clients never wait for a 32-item batch.
        """
        delay = self.config.max_delay_ms / 1000.0
        if delay <= 0 or self._last_batch_size <= 1 or self._closing:
            return
        queue = self._oldest_queue()
        if queue is None:
            return
        until = queue[0].enqueued + delay
        target = min(self.config.max_batch_size, self._last_batch_size)
        while len(queue) < target and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Queued]:
        """Pop the next round: the oldest live items (FIFO, up to ``max_batch_size``).

        Taking the round in arrival order keeps latency FIFO-fair (no item is passed over for
        better-fitting ones); the round is cut into length groups where it runs (``_prepare``).
        """
        now = time.monotonic()
        queue = self._oldest_queue()
        if queue is None:
            return []
        taken: list[_Queued] = []
        dropped = 0
        while queue and len(taken) < self.config.max_batch_size:
            entry = queue.popleft()
            if entry.job.dead(now):
                dropped += 1
            else:
                taken.append(entry)
        self._forget(dropped + len(taken))
        return taken

    def _group(self, entries: list[_Queued]) -> list[list[_Queued]]:
        """Cut length-sorted items into the batches of least modelled cost (``service.batch_cuts``).

        Why groups: a recurrent model steps through the longest sequence of a batch, so padding costs
        as much as text. Measured on the shipped biLSTM (CPU, SST-2 dev sentences): one batch of 32
        random lengths costs more per item than no batching, while the same 32 sorted and cut into
        groups of similar length cost about half of no batching.
        """
        cfg = self.config
        entries.sort(key=lambda e: e.item.length)
        lengths = [e.item.length for e in entries]
        cuts = cheapest_cuts(lengths, self.cost_model, cfg.max_batch_tokens, cfg.max_padding_ratio)
        return [entries[i:j] for i, j in cuts]

    def _forget(self, n: int) -> None:
        self._count -= n
        self._m_queue.set(self._count)  # once a round: the gauge is exact after every take

    def _timed_run(self, runner: BatchRunner, items: list[Item]) -> tuple[list[Any], float]:
        """Worker thread: one batch through one instance's pipeline, timed where it runs."""
        started = time.perf_counter()
        outputs = runner.run_batch(items)
        if len(outputs) != len(items):
            raise RuntimeError(f"pipeline returned {len(outputs)} outputs for {len(items)} items")
        return outputs, time.perf_counter() - started

    async def _execute(self, entries: list[_Queued], instance: int) -> None:
        """Run a round's batches back to back on one instance's thread; deliver each batch as it finishes."""
        try:
            await self._deliver(entries, instance)
        finally:
            if len(self.runners) > 1:
                self._free.append(instance)

    async def _deliver(self, entries: list[_Queued], instance: int) -> None:
        """One hand-off per round: the instance's thread prepares the round (``_prepare``), runs its batches
        back to back and posts each batch's outputs to the loop as it finishes; this returns once the last
        one is delivered.

        Why not one executor job per batch: a CPU round of single texts is cut into about six batches, and
        submitting them one by one woke the thread at the first and then fought it for the GIL at every
        next submit (8.6% of a one-process server's event loop at c=64, py-spy).
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._last_batch_size = len(entries)
        runner = self.runners[instance]

        def run_round() -> None:  # the instance's thread
            try:
                groups = self._prepare(runner, entries, started, loop)
            except Exception as exc:  # a bug in cutting or recording: the round's jobs fail, the worker goes on
                loop.call_soon_threadsafe(self._failed, entries, exc)
                return
            for group in groups:
                try:
                    outputs, seconds = self._timed_run(runner, [e.item for e in group])
                except Exception as exc:  # a failing batch fails its own jobs, never the worker
                    loop.call_soon_threadsafe(self._failed, group, exc)
                else:
                    loop.call_soon_threadsafe(self._finished, group, outputs, seconds)

        # Posted after every batch's delivery, so the round is complete when this returns.
        await loop.run_in_executor(self._executors[instance], run_round)

    def _prepare(
        self, runner: BatchRunner, entries: list[_Queued], started: float, loop: asyncio.AbstractEventLoop
    ) -> list[list[_Queued]]:
        """Worker thread: tokenise the round's deferred items, cut it into length groups, record the batches.

        Items a pipeline left untokenised (``Item.text``, single-process servers: ``DataPlane.infer``) are
        tokenised here in one call, which releases the GIL: the event loop parses the next requests
        meanwhile instead of waiting on the tokenizer (``service.pipelines.base.Pipeline.tokenize``).
        If that call fails, each item is tried alone, and only the requests whose text fails are
        answered with the error: one client's text never fails another's request.
        """
        deferred = [e for e in entries if e.item.text is not None]
        if deferred:
            try:
                runner.tokenize([e.item for e in deferred])
            except Exception:
                failed = []
                for entry in deferred:
                    try:
                        runner.tokenize([entry.item])
                    except Exception as exc:
                        failed.append(entry)
                        loop.call_soon_threadsafe(self._failed, [entry], exc)
                if failed:  # their requests are answered: none of their items runs
                    dropped = {id(e.job) for e in failed}
                    entries = [e for e in entries if id(e.job) not in dropped]
                if not entries:
                    return []
        groups = self._group(entries)
        observe_many(self._m_queue_duration, [started - entry.enqueued for entry in entries])
        for group in groups:
            lengths = [e.item.length for e in group]
            padded = max(lengths) * len(lengths)
            self._m_size.observe(len(group))
            self._m_tokens.observe(padded)
            self._m_padding.observe(1.0 - sum(lengths) / padded)
        return groups

    def _finished(self, group: list[_Queued], outputs: list[Any], seconds: float) -> None:
        self._m_inference.observe(seconds)
        self._m_items.inc(len(group))
        for entry, output in zip(group, outputs, strict=True):
            job = entry.job
            if job.future.done():
                continue
            job.results[entry.index] = output
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)

    def _failed(self, group: list[_Queued], exc: Exception) -> None:
        log.error("batch of %d items on %s failed", len(group), self._name, exc_info=exc)
        self._fail(group, exc)

    def _fail(self, batch: list[_Queued], exc: Exception) -> None:
        for job in {id(entry.job): entry.job for entry in batch}.values():
            if not job.future.done():
                job.future.set_exception(BatchFailed(f"inference failed: {type(exc).__name__}: {exc}"))
            job.cancelled = True  # its other items, if still queued, are dropped before compute
