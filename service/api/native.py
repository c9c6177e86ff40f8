"""Native JSON API: ``POST /v1/sentiment``, ``POST /v1/translate``, ``GET /v1/models``.

Thin on purpose: pydantic types for the wire format, everything else in the dataplane.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

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


BodyT = TypeVar("BodyT", bound=BaseModel)


def _body_spec(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for a route that parses its own body (``parse_body``)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """Parse and validate the JSON body in one pass (pydantic-core), whatever the Content-Type says.

    Why not a FastAPI body parameter: on the hot path its dependency machinery plus ``json.loads`` plus
    validation costs a sizeable share of a small model's request CPU. Errors take the same route as
    FastAPI's (``RequestValidationError``: 400 malformed JSON, 422 wrong shape).
    """
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise RequestValidationError(errors) from None


@router.post(
    "/sentiment", response_model=SentimentResponse, responses=ERRORS, openapi_extra=_body_spec(SentimentRequest)
)
async def sentiment(request: Request) -> JSONResponse:
    started = time.monotonic()
    body = await parse_body(request, SentimentRequest)
    dataplane = _dataplane(request)
    model = dataplane.for_task("sentiment")
    out = await dataplane.infer(model, body.texts, disconnected=_disconnected(request), started=started)
    # The results are plain dicts already shaped like SentimentResult; skip re-validating them.
    return JSONResponse({"model": model.name, "version": model.version, "results": out.results})


@router.post(
    "/translate", response_model=TranslateResponse, responses=ERRORS, openapi_extra=_body_spec(TranslateRequest)
)
async def translate(request: Request) -> JSONResponse:
    started = time.monotonic()
    body = await parse_body(request, TranslateRequest)
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
