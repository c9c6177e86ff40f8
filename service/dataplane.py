"""The request path: one request's texts → validated → items → batcher → one result per text.

The one place with serving logic, shared by both protocols. HTTP routers (native, V2) stay thin: they
parse the wire format, validate the task's parameters (``Wire.params``), call ``DataPlane.infer`` and
format the answer. What is served, and whether the server is ready, is the registry's business
(``service.registry``); the dataplane only serves the ``ServedModel`` it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from service.batching import Job
from service.errors import ClientGone, CostTooHigh, DeadlineExceeded, InvalidInput, OverBudget, QueueFull, ShuttingDown
from service.metrics import Metrics
from service.registry import ServedModel, ServedModels
from service.security import token_buckets
from service.settings import Settings


@dataclass(frozen=True, slots=True)
class TextsName:
    """How a protocol names the texts in error messages, so clients read their own field names."""

    whole: str
    element: str  # a format string with ``{i}``

    def at(self, index: int) -> str:
        return self.element.format(i=index)


NATIVE_TEXTS = TextsName("texts", "texts.{i}")


class ClientWatch(Protocol):
    """Tells when a request's client goes away (``service.api.common.disconnected``)."""

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once the client is gone; returns the function that unsubscribes it."""
        ...


@dataclass(frozen=True, slots=True)
class Inference:
    model: ServedModel
    results: list[Any]


class DataPlane:
    def __init__(self, registry: ServedModels, settings: Settings, metrics: Metrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        rate = settings.cost_per_s_per_client
        # The bucket holds at least one largest request, so any admissible request can eventually run.
        self.budgets = token_buckets("cost", rate, max(settings.max_request_cost, round(rate))) if rate > 0 else None
        self._inflight: dict[tuple[str, str], Any] = {}  # model labels -> gauge child (``labels()`` is dear)

    def admit(self, model: ServedModel, n_texts: int, params: BaseModel, client: str | None) -> None:
        """Admission by cost: one request over ``max_request_cost`` gets 413, a client over its budget 429.

        Requests differ in cost by orders of magnitude (one short sentence vs 64 texts at beam 8 and 256
        steps), so counting requests cannot protect the device; the unit is the task's own
        (``Pipeline.request_cost``).
        """
        cost = model.pipeline.request_cost(n_texts, params)
        limit = self.settings.max_request_cost
        if cost > limit:
            self.metrics.rejected_total.labels(*model.labels, "too_costly").inc()
            raise CostTooHigh(
                f"request cost {cost} is over the per-request budget of {limit} "
                f"({type(model.pipeline).request_cost.__doc__.splitlines()[0].rstrip('.')}); send fewer texts "
                "or a smaller search"
            )
        if self.budgets is not None and client is not None:
            wait = self.budgets.take(client, amount=cost)
            if wait > 0:
                self.metrics.rejected_total.labels(*model.labels, "over_budget").inc()
                raise OverBudget(f"cost budget of this client spent: retry in {wait:.1f}s", wait)

    def validate_texts(self, texts: Sequence[str], name: TextsName = NATIVE_TEXTS) -> None:
        """The per-request limits of the settings (count and characters), named as the client's protocol names them."""
        limit = self.settings.max_texts_per_request
        if not 1 <= len(texts) <= limit:
            raise InvalidInput(f"{name.whole}: expected 1 to {limit} texts, got {len(texts)}")
        max_chars = self.settings.max_text_chars
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"{name.at(i)}: expected a string, got {type(text).__name__}")
            if not 1 <= len(text) <= max_chars:
                raise InvalidInput(f"{name.at(i)}: expected 1 to {max_chars} characters, got {len(text)}")
            if text.isspace():  # nothing to read: any answer would be made up
                raise InvalidInput(f"{name.at(i)}: only white space; expected some text")

    async def infer(
        self,
        model: ServedModel,
        texts: Sequence[str],
        params: BaseModel | None = None,
        disconnected: ClientWatch | None = None,
        started: float | None = None,
        name: TextsName = NATIVE_TEXTS,
        client: str | None = None,
    ) -> Inference:
        """Validate, tokenise (here or in the batcher's thread), batch, run, post-process: one request's texts →
        one result per text.

        ``params`` are the task's request parameters, already validated (``Wire.params``; default:
        its defaults). ``disconnected`` tells when the client goes away (its items are then dropped
        unrun); the deadline is ``request_timeout_s`` after ``started`` (default: now).
        """
        params = params if params is not None else model.pipeline.wire.params()
        started = time.monotonic() if started is None else started
        deadline = started + self.settings.request_timeout_s
        self.validate_texts(texts, name)
        self.admit(model, len(texts), params, client)
        if self.registry.stopping:
            raise ShuttingDown("the server is shutting down")
        inflight = self._inflight.get(model.labels)
        if inflight is None:
            inflight = self._inflight[model.labels] = self.metrics.inflight_requests.labels(*model.labels)
        inflight.inc()
        try:
            pipeline = model.pipeline
            if model.tokenize_in_batcher:  # one process: the batcher's thread tokenises, off the event loop
                items = pipeline.preprocess_deferred(texts, params)
            else:
                items = pipeline.preprocess(texts, params)
            try:
                job = model.batcher.submit(items, deadline)
            except QueueFull:
                self.metrics.rejected_total.labels(*model.labels, "queue_full").inc()
                raise
            outputs = await self._wait(model, job, deadline, disconnected)
            return Inference(model, [model.pipeline.postprocess(o, params) for o in outputs])
        finally:
            inflight.dec()

    async def _wait(self, model: ServedModel, job: Job, deadline: float, disconnected: ClientWatch | None) -> list[Any]:
        """The job's outputs; 504 at the deadline, 499 once the client is gone, its queued items dropped.

        The deadline and the disconnect each end the wait by failing the job's own future (a job whose
        future is done is dead to the batcher: its queued items are never run). One timer and one
        callback per request, where ``asyncio.wait`` over a watcher task cost a task, a waiter and
        several running-loop lookups (each a ``getpid`` call on Python 3.11): about a tenth of a
        one-process server's event loop at c=64.
        """
        future = job.future
        timeout = self.settings.request_timeout_s

        def expire() -> None:
            if not future.done():
                future.set_exception(DeadlineExceeded(f"deadline of {timeout}s passed"))

        def gone() -> None:
            if not future.done():
                future.set_exception(ClientGone("client disconnected"))

        timer = future.get_loop().call_later(max(deadline - time.monotonic(), 0.0), expire)
        unsubscribe = disconnected.subscribe(gone) if disconnected is not None else None
        try:
            return await future
        except DeadlineExceeded:
            model.batcher.cancel(job)
            self.metrics.rejected_total.labels(*model.labels, "timeout").inc()
            raise
        except (ClientGone, asyncio.CancelledError):
            model.batcher.cancel(job)
            self.metrics.rejected_total.labels(*model.labels, "cancelled").inc()
            raise
        finally:
            timer.cancel()
            if unsubscribe is not None:
                unsubscribe()
