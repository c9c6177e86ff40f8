"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from service.api.common import registry
from service.api.openapi import errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers (models may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503))
async def readyz(request: Request) -> JSONResponse:
    """200 once every model is loaded and warmed; 503 while loading, when a model is refused, or stopping."""
    served = registry(request)
    state = served.readiness()
    if served.ready:
        return JSONResponse(state)
    return JSONResponse({"error": f"not ready: {state['status']}", **state}, status_code=503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus exposition text (``lstm_serve_*`` and process metrics)."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
