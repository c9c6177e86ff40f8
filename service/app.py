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
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from service import heap
from service.api import health, native, openapi, v2
from service.api.common import DirectRoute
from service.dataplane import DataPlane
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyReader, RequestBodyMiddleware, RequestEdgeMiddleware
from service.pipelines.registry import discover
from service.registry import ModelRegistry, ServedModels
from service.security import ApiKeyMiddleware, KeySet, RateLimitMiddleware, token_buckets
from service.settings import Settings

log = logging.getLogger(__name__)


class ServiceApp(FastAPI):
    """FastAPI, handing a POST to a native task route straight to the request edge.

    Why: the edge already reads such a request's body and calls its endpoint itself (``call_direct``),
    but the request first went through FastAPI's telemetry check, Starlette's app call and three layers
    of FastAPI's stack (``ServerErrorMiddleware`` with its ``send`` wrapper, ``ExceptionTelemetryMiddleware``,
    ``AppBodyLimitMiddleware``): about an eighth of a one-process server's event loop at c=64 (py-spy),
    none of it doing anything for these requests (the edge is their 500 handler and their body limit).
    Every other request takes the full stack, where the same edge instance is the outermost user
    middleware; so does every request when CORS, API keys or a rate limit are on (they must run before
    the body is read) or when FastAPI's OpenTelemetry is (its spans come from its own layer): ``edge``
    is None then.
    """

    edge: RequestEdgeMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = self.edge
        if edge is not None and scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in edge.direct:
            scope["app"] = self  # what Starlette sets: the endpoints and exception handlers find the app here
            await edge(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None, registry: ServedModels | None = None, metrics: Metrics | None = None
) -> ServiceApp:
    """The app of a single-process server (it loads the models), or of a front end given its ``registry``."""
    settings = settings or Settings()
    tasks = discover(settings.task_modules)
    metrics = metrics or Metrics()
    registry = registry or ModelRegistry(settings, metrics)
    dataplane = DataPlane(registry, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start()
        heap.settle()  # the app and its modules are built; models load beside it (few Python objects)
        yield
        log.info("shutting down: draining queued work")
        await registry.close()
        log.info("shutdown complete")

    app = ServiceApp(
        title="lstm-serve",
        summary="LSTM models (" + ", ".join(tasks) + ") on onnxruntime, with dynamic batching.",
        version="0.1.0",
        lifespan=lifespan,
        responses=openapi.edge_errors(settings),  # what the request edge may answer on any route
        # FastAPI 0.165 asks OpenTelemetry for its providers on every request (an environment lookup when
        # none is set): 8% of a front end's samples at 2,000 single-text requests/s on the H200 machine.
        # Off unless asked for; Prometheus metrics do not depend on it.
        telemetry=dict.fromkeys(("tracing", "metrics", "logs"), settings.opentelemetry),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.dataplane = dataplane
    install_error_handlers(app)
    routers = (native.build_router(tasks, settings), health.router, v2.router)
    for router in routers:
        app.include_router(router)
    openapi.install(app, settings)
    # The last added is the outermost. At request time: request id and the 500 handler, metrics (they see
    # every answer), CORS (its headers on every answer, preflights answered before auth), API keys, rate
    # limit, then the body is read (so nobody unauthorised or over their rate makes the server buffer one).
    # Without CORS, keys and rate limit, one layer does it all (service.middleware: layers cost per request).
    body = BodyReader(settings.max_body_bytes, settings.body_timeout_s, metrics)
    keys = KeySet.load(settings.api_keys, settings.api_keys_file)
    inner_layers = settings.rate_limit_per_s > 0 or bool(keys) or bool(settings.cors_origins)
    if inner_layers:
        app.add_middleware(RequestBodyMiddleware, reader=body)
    if settings.rate_limit_per_s > 0:
        burst = settings.rate_limit_burst or max(1, round(settings.rate_limit_per_s))
        app.add_middleware(RateLimitMiddleware, buckets=token_buckets("rate", settings.rate_limit_per_s, burst))
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_auth=settings.metrics_auth)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Inference-Header-Content-Length"],
            expose_headers=["X-Request-ID", "Retry-After", "Inference-Header-Content-Length"],
        )
    route_tasks = {pipeline.wire.native_path: task for task, pipeline in tasks.items()}
    # From the routers themselves: FastAPI 0.165 keeps an included router as one ``_IncludedRouter`` entry
    # in ``app.routes``, so scanning those found no route and every request took the long way.
    direct = {
        r.path: r for router in routers for r in router.routes if isinstance(r, DirectRoute) and r.methods == {"POST"}
    }
    edge = RequestEdgeMiddleware(
        None,
        metrics=metrics,
        registry=registry,
        route_tasks=route_tasks,
        body=None if inner_layers else body,
        direct=direct,
    )
    app.add_middleware(edge.around)  # the same instance, outermost in the stack for every other request
    # With OpenTelemetry on, FastAPI's own layer makes the spans: every request goes through it.
    app.edge = None if inner_layers or settings.opentelemetry else edge
    return app
