"""The request path: one request's texts → validated → items → batcher → one result per text.

The one place with serving logic, shared by both protocols. HTTP routers (native, V2) stay thin: they
parse the wire format, validate the task's parameters (``Wire.params``), call ``DataPlane.infer`` and
format the answer. What is served, and whether the server is ready, is the registry's business
(``service.registry``); the dataplane only serves the ``ServedModel`` it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

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
        disconnected: Awaitable[Any] | None = None,
        started: float | None = None,
        name: TextsName = NATIVE_TEXTS,
        client: str | None = None,
    ) -> Inference:
        """Validate, tokenise, batch, run, post-process: one request's texts → one result per text.

        ``params`` are the task's request parameters, already validated (``Wire.params``; default:
        its defaults). ``disconnected`` resolves when the client goes away (its items are then dropped
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
            items = model.pipeline.preprocess(texts, params)
            try:
                job = model.batcher.submit(items, deadline)
            except QueueFull:
                self.metrics.rejected_total.labels(*model.labels, "queue_full").inc()
                raise
            outputs = await self._wait(model, job, deadline, disconnected)
            return Inference(model, [model.pipeline.postprocess(o, params) for o in outputs])
        finally:
            inflight.dec()

    async def _wait(
        self, model: ServedModel, job: Job, deadline: float, disconnected: Awaitable[Any] | None
    ) -> list[Any]:
        watcher = asyncio.ensure_future(disconnected) if disconnected is not None else None
        waiters: set[asyncio.Future[Any]] = {job.future} if watcher is None else {job.future, watcher}
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=max(deadline - time.monotonic(), 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            model.batcher.cancel(job)
            self.metrics.rejected_total.labels(*model.labels, "cancelled").inc()
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
        if job.future in done:
            return job.future.result()
        model.batcher.cancel(job)  # queued items are dropped before compute
        if done:
            self.metrics.rejected_total.labels(*model.labels, "cancelled").inc()
            raise ClientGone("client disconnected")
        self.metrics.rejected_total.labels(*model.labels, "timeout").inc()
        raise DeadlineExceeded(f"deadline of {self.settings.request_timeout_s}s passed")
