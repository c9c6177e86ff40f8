"""Native JSON API: one ``POST`` route per registered task (``Wire.native_path``), and ``GET /v1/models``.

Thin on purpose: the request model is the task's parameters plus ``texts``, the answer is
``{"model", "version", <Wire.results_field>: [...]}``; everything else is in the dataplane. No task is
named here: the routes are built from the task registry, so a route exists (and answers 404 "no <task>
model") even when no model of its task is in the repository.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, StrictStr, ValidationError, create_model

from service.api.common import DirectRoute, dataplane, disconnected, registry, request_body
from service.api.openapi import errors, json_body
from service.api.responses import NativeJSON
from service.errors import UnsupportedMediaType
from service.pipelines.base import Pipeline
from service.security import client_of
from service.settings import Settings

PREFIX = "/v1"

ERRORS = errors(400, 404, 415, 422, 503, 504)

BodyT = TypeVar("BodyT", bound=BaseModel)


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """Check the Content-Type, then parse and validate the JSON body in one pass (pydantic-core), strictly.

    Why not a FastAPI body parameter: on the hot path its dependency machinery plus ``json.loads`` plus
    validation costs a sizeable share of a small model's request CPU. Errors take the same route as
    FastAPI's (``RequestValidationError``: 400 malformed JSON, 422 wrong shape). A body that is not
    declared JSON is refused (415): a cross-site ``text/plain`` form post cannot run inference. Strict:
    ``"4"`` or ``true`` is not a number.
    """
    if not is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType("Content-Type must be application/json")
    raw = await request_body(request)
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def request_model(pipeline: type[Pipeline], settings: Settings) -> type[BaseModel]:
    """The native request body: the task's parameters (``Wire.params``) plus ``texts``.

    A subclass of the parameters model, so the validated body is passed to the pipeline as its params.
    The schema states the settings' limits on ``texts`` (the dataplane enforces them, with messages that
    name the protocol's fields); a text must hold something besides white space.
    """
    wire = pipeline.wire
    limits = {
        "maxItems": settings.max_texts_per_request,
        "items": {"type": "string", "minLength": 1, "maxLength": settings.max_text_chars, "pattern": r"\S"},
    }
    texts = Field(
        min_length=1,
        description=f"1..{settings.max_texts_per_request} texts, each 1..{settings.max_text_chars} characters, "
        "not only white space",
        examples=[list(wire.example)] if wire.example else None,
        json_schema_extra=limits,
    )
    return create_model(f"{wire.schema_name}Request", __base__=wire.params, texts=(list[StrictStr], texts))


def response_model(pipeline: type[Pipeline]) -> type[BaseModel]:
    wire = pipeline.wire
    results = {wire.results_field: (list[wire.result_type], ...)}
    return create_model(f"{wire.schema_name}Response", model=(str, ...), version=(str, ...), **results)


def _task_endpoint(
    task: str, body_model: type[BaseModel], field: str
) -> Callable[[Request], Coroutine[Any, Any, Response]]:

    async def endpoint(request: Request) -> Response:
        started = time.monotonic()
        body = await parse_body(request, body_model)
        model = registry(request).for_task(task)
        out = await dataplane(request).infer(
            model,
            body.texts,
            body,
            disconnected=disconnected(request),
            started=started,
            client=client_of(request.scope),
        )
        # The results are plain JSON values already shaped like the response model; skip re-validating them.
        return NativeJSON({"model": model.name, "version": model.version, field: out.results})

    endpoint.__doc__ = f"Run the {task} model on 1..n texts; one result per text, in order."
    return endpoint


def build_router(tasks: Mapping[str, type[Pipeline]], settings: Settings) -> APIRouter:
    """The native routes of every registered task, plus ``GET /v1/models``."""
    router = APIRouter(tags=["native"])
    for task, pipeline in tasks.items():
        body_model = request_model(pipeline, settings)
        router.add_api_route(
            pipeline.wire.native_path,
            _task_endpoint(task, body_model, pipeline.wire.results_field),
            methods=["POST"],
            name=task,
            response_model=response_model(pipeline),
            responses=ERRORS,
            openapi_extra=json_body(body_model),
            route_class_override=DirectRoute,  # the hot path: no per-request dependency solving
        )
    router.add_api_route(PREFIX + "/models", models, methods=["GET"])
    return router


async def models(request: Request) -> JSONResponse:
    """The model cards of the served versions, what runs for each (provider, precision), every model's state,
    and repository problems beside the served versions."""
    served = registry(request)
    cards = [card.model_dump(mode="json") for card in served.cards()]
    readiness = served.readiness()
    return JSONResponse(
        {"models": cards, "serving": served.serving(), "state": readiness["models"], "problems": readiness["problems"]}
    )
