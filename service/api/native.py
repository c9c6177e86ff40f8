"""Native JSON API: ``POST /v1/sentiment``, ``POST /v1/translate``, ``GET /v1/models``.

Thin on purpose: pydantic types for the wire format, everything else in the dataplane.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from service.dataplane import DataPlane

router = APIRouter(prefix="/v1", tags=["native"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"error": text}}}}
    for code, text in {
        400: "malformed JSON",
        404: "no such model",
        413: "request body too large",
        422: "invalid texts or parameters",
        503: "queue full or not ready (see Retry-After)",
        504: "request deadline passed",
    }.items()
}


class SentimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(
        min_length=1,
        description="1..max_texts_per_request texts, each 1..max_text_chars characters",
        examples=[["It's a charming, often affecting journey!"]],
    )


class SentimentResult(BaseModel):
    label: str
    score: float
    probabilities: dict[str, float]


class SentimentResponse(BaseModel):
    model: str
    version: str
    results: list[SentimentResult]


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, examples=[["A man is riding a bicycle."]])
    beam_size: int = Field(4, ge=1, le=8, description="beam width (1 = greedy)")
    max_length: int = Field(128, ge=1, le=256, description="most output tokens per translation")


class TranslateResponse(BaseModel):
    model: str
    version: str
    translations: list[str]


def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def _disconnected(request: Request) -> None:
    """Resolves when the client goes away (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/sentiment", response_model=SentimentResponse, responses=ERRORS)
async def sentiment(body: SentimentRequest, request: Request) -> JSONResponse:
    started = time.monotonic()
    dataplane = _dataplane(request)
    model = dataplane.for_task("sentiment")
    out = await dataplane.infer(model, body.texts, disconnected=_disconnected(request), started=started)
    # The results are plain dicts already shaped like SentimentResult; skip re-validating them.
    return JSONResponse({"model": model.name, "version": model.version, "results": out.results})


@router.post("/translate", response_model=TranslateResponse, responses=ERRORS)
async def translate(body: TranslateRequest, request: Request) -> JSONResponse:
    started = time.monotonic()
    dataplane = _dataplane(request)
    model = dataplane.for_task("translation")
    params = {"beam_size": body.beam_size, "max_length": body.max_length}
    out = await dataplane.infer(model, body.texts, params, disconnected=_disconnected(request), started=started)
    return JSONResponse({"model": model.name, "version": model.version, "translations": out.results})


@router.get("/models")
async def models(request: Request) -> JSONResponse:
    """The model cards of the served versions, plus the state of every model found."""
    dataplane = _dataplane(request)
    cards = [card.model_dump(mode="json") for card in dataplane.cards()]
    return JSONResponse({"models": cards, "state": dataplane.readiness()["models"]})
