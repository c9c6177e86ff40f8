"""The FastAPI application: settings, metrics, dataplane, routers, error mapping, and the lifespan.

Start-up only begins loading (in the background): the server accepts connections at once, ``/healthz``
says alive, ``/readyz`` says 503 until models are loaded and warmed. Shutdown (after uvicorn has let
in-flight requests finish) drains every batcher, so nothing accepted is lost.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import health, native
from service.dataplane import DataPlane
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.settings import Settings

log = logging.getLogger(__name__)

# Routers added by other parts of the project when their module exists (the V2 protocol).
OPTIONAL_ROUTERS = ("service.api.v2",)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    dataplane = DataPlane(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dataplane.start()
        yield
        log.info("shutting down: draining queued work")
        await dataplane.stop()
        log.info("shutdown complete")

    app = FastAPI(
        title="lstm-serve",
        summary="LSTM sentiment and translation models on onnxruntime, with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.dataplane = dataplane
    install_error_handlers(app)
    app.include_router(native.router)
    app.include_router(health.router)
    for module_name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        app.include_router(module.router)
    # Outermost first at request time: metrics see every answer, including the body limit's 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, dataplane=dataplane)
    return app
