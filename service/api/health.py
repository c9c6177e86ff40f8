"""Liveness, readiness and metrics for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.common import registry

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers (models may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once every model is loaded and warmed; 503 while loading, when a model is refused, or stopping."""
    served = registry(request)
    state = served.readiness()
    if served.ready:
        return JSONResponse(state)
    return JSONResponse({"error": f"not ready: {state['status']}", **state}, status_code=503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
