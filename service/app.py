"""The FastAPI application: settings, task registry, model registry, dataplane, routers, errors, lifespan.

Start-up only begins loading (in the background): the server accepts connections at once, ``/healthz``
says alive, ``/readyz`` says 503 until models are loaded and warmed. Shutdown (after uvicorn has let
in-flight requests finish) drains every batcher, so nothing accepted is lost. The native routes and
the metrics middleware's route → task table come from the registered task pipelines, so no task is
named here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import health, native, v2
from service.dataplane import DataPlane
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.pipelines.registry import discover
from service.registry import ModelRegistry, ServedModels
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, registry: ServedModels | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """The app of a single-process server (it loads the models), or of a front end given its ``registry``."""
    settings = settings or Settings()
    tasks = discover(settings.task_modules)
    metrics = metrics or Metrics()
    registry = registry or ModelRegistry(settings, metrics)
    dataplane = DataPlane(registry, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start()
        yield
        log.info("shutting down: draining queued work")
        await registry.close()
        log.info("shutdown complete")

    app = FastAPI(
        title="lstm-serve",
        summary="LSTM models (" + ", ".join(tasks) + ") on onnxruntime, with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.dataplane = dataplane
    install_error_handlers(app)
    app.include_router(native.build_router(tasks))
    app.include_router(health.router)
    app.include_router(v2.router)
    # Outermost first at request time: metrics see every answer, including the body limit's 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    route_tasks = {pipeline.wire.native_path: task for task, pipeline in tasks.items()}
    app.add_middleware(MetricsMiddleware, metrics=metrics, registry=registry, route_tasks=route_tasks)
    return app
