"""Step-level (continuous) batching for pipelines that decode step by step (translation).

``ContinuousBatcher`` has the round-based ``Batcher``'s face — ``start``, ``submit(items, deadline)
-> Job``, ``queued``, ``close`` — so the dataplane (503 on a full queue, 504 at the deadline, the
client's disconnect) serves both the same way. Behind it, one thread per model version drives a
``lstm_core.decode_scheduler.DecodeScheduler``: between two decoder steps it takes newly queued
sentences in, drops the sentences whose request is dead (client gone, deadline passed, failed), and
after each step answers every sentence that finished, at once. The event loop is never blocked and
never hopped through per step: submits go in through a lock-protected list, answers come back with
``call_soon_threadsafe``.

The queue bound counts sentences not yet admitted to the running set (as the round batcher counts
items not yet taken into a round). ``close()`` refuses new work and returns once the queue and the
running set are empty (SIGTERM drains).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from lstm_core.decode_scheduler import DecodeScheduler, Sentence
from service.batching import Job
from service.errors import BatchFailed, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.pipelines.base import Item, StepDecoding
from service.settings import BatchingSettings

log = logging.getLogger(__name__)

# The decode thread and the event loop hand the GIL back and forth several times per decoder step
# (ORT releases it while it computes). With CPython's default 5 ms switch interval a thread that wants
# the GIL back can wait up to 5 ms for the other one to block: measured on the shipped model at
# concurrency 1, greedy 13.5 ms vs 11.1 ms per request for the round batcher. At 0.1 ms: 11.65 ms.
SWITCH_INTERVAL_S = 1e-4


class _Tag:
    """What the scheduler carries for one sentence: whose answer it is and since when it waits."""

    __slots__ = ("enqueued", "index", "job")

    def __init__(self, job: Job, index: int, enqueued: float) -> None:
        self.job, self.index, self.enqueued = job, index, enqueued


def _dead(sentence: Sentence) -> bool:
    # Read from the decode thread; the flags are set on the event loop (plain attribute reads).
    return sentence.tag.job.dead(time.monotonic())


class ContinuousBatcher:
    """Queue + decode thread for one model version; ``submit`` from the event loop, results via ``Job.future``."""

    def __init__(
        self, engine: StepDecoding, config: BatchingSettings, metrics: Metrics, model: str, version: str
    ) -> None:
        self.engine = engine
        self.config = config
        self._name = f"{model}/{version}"
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[Sentence] = []
        self._count = 0  # sentences queued, not yet admitted (inbox + scheduler's pending)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        labels = (model, version)
        self._m_queue = metrics.queue_items.labels(*labels)
        metrics.queue_capacity_items.labels(*labels).set(config.max_queue_items)
        self._m_queue_duration = metrics.queue_duration.labels(*labels)
        self._m_items = metrics.items_total.labels(*labels)
        self._m_rows = metrics.decoder_rows.labels(*labels)
        self._m_step = metrics.decoder_step_duration.labels(*labels)
        self._m_tokens = metrics.decoder_tokens_total.labels(*labels)

    # ---- event-loop side -------------------------------------------------------------------------

    def start(self) -> None:
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"decode-{self._name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._count

    def submit(self, items: Sequence[Item], deadline: float) -> Job:
        """Queue the sentences of one request; raises ``QueueFull``/``ShuttingDown`` at once instead of waiting."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        loop = self._loop or asyncio.get_running_loop()  # set by start(): no lookup (a getpid call) per request
        job = Job(loop.create_future(), [None] * len(items), len(items), deadline)
        now = time.monotonic()
        sentences = [self.engine.sentence(item, _Tag(job, i, now)) for i, item in enumerate(items)]
        with self._lock:
            if self._count + len(items) > self.config.max_queue_items:
                raise QueueFull(f"queue of {self._name} is full ({self._count}/{self.config.max_queue_items} items)")
            self._inbox.extend(sentences)
            self._count += len(items)
            self._m_queue.set(self._count)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """No one waits for this job any more: its sentences leave the running set at the next step."""
        job.cancelled = True

    async def close(self) -> None:
        """Refuse new work, finish what is queued and running, stop the thread."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._stopped is not None:
            await self._stopped

    def _deliver(self, done: list[tuple[Sentence, Any]]) -> None:
        for sentence, output in done:
            job = sentence.tag.job
            if job.future.done():
                continue
            job.results[sentence.tag.index] = output
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)

    def _fail(self, sentences: list[Sentence], message: str) -> None:
        for job in {id(s.tag.job): s.tag.job for s in sentences}.values():
            if not job.future.done():
                job.future.set_exception(BatchFailed(message))
            job.cancelled = True  # its other sentences, queued or running, are dropped at the next step

    # ---- the decode thread -------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._loop is not None and self._stopped is not None
        try:
            scheduler = self.engine.scheduler()
            while True:
                with self._lock:
                    while not self._inbox and scheduler.idle and not self._closing:
                        self._wake.wait()
                    if not self._inbox and scheduler.idle:  # closing, and nothing left
                        break
                    for sentence in self._inbox:
                        scheduler.add(sentence)
                    self._inbox.clear()
                self._step(scheduler)
        except BaseException:  # the thread must never die silently: nothing could be answered any more
            log.exception("decode thread of %s stopped", self._name)
            raise
        finally:
            self._loop.call_soon_threadsafe(self._stopped.set_result, None)

    def _step(self, scheduler: DecodeScheduler) -> None:
        started, admitting = time.perf_counter(), time.monotonic()
        try:
            report = scheduler.step(is_dead=_dead)
        except Exception as exc:  # a failing step fails the sentences it held, never the thread
            log.exception("decode step on %s failed", self._name)
            lost = scheduler.reset()
            self._unqueue(len([s for s in lost if s.steps == 0]))
            self._loop.call_soon_threadsafe(self._fail, lost, f"inference failed: {type(exc).__name__}: {exc}")
            self._m_rows.set(0)
            return
        elapsed = time.perf_counter() - started
        left_queue = len(report.admitted) + sum(1 for s in report.dropped if s.steps == 0)
        if left_queue:
            self._unqueue(left_queue)
        for sentence in report.admitted:  # time in queue before the first step
            self._m_queue_duration.observe(admitting - sentence.tag.enqueued)
        self._m_rows.set(report.rows)
        if report.stepped_rows:
            self._m_step.observe(elapsed)
            self._m_tokens.inc(report.tokens)
        if report.finished:
            outputs = self.engine.outputs(report.finished)
            self._m_items.inc(len(report.finished))
            self._loop.call_soon_threadsafe(self._deliver, list(zip(report.finished, outputs, strict=True)))

    def _unqueue(self, n: int) -> None:
        with self._lock:
            self._count -= n
            self._m_queue.set(self._count)
