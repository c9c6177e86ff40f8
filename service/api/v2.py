"""Open Inference Protocol (KServe V2) routes, so tritonclient, perf_analyzer and KServe tooling work as is.

Thin on purpose: model/version lookup and inference go through the dataplane (same batcher, same limits,
same metrics as the native API: the metrics middleware labels these requests by route template and the
``model_name``/``model_version`` path parameters), the wire format through ``service.v2.codec``. No task
is named here: each task's pipeline declares its input column, its request parameters and its output
columns (``Wire``, ``Pipeline.v2_columns``); what is here is shaping them as the model card declares.
Errors name what V2 clients sent (``input 'text'``, request parameters), never native field names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from lstm_core.model_card import TensorSpec
from service.api.common import dataplane, disconnected, registry, request_body
from service.api.openapi import errors, json_body
from service.dataplane import TextsName
from service.errors import InvalidInput
from service.registry import ServedModel
from service.security import client_of
from service.v2.codec import (
    BINARY_CONTENT_TYPE,
    BINARY_HEADER,
    CodecError,
    DecodedRequest,
    Tensor,
    decode_request,
    decompress,
    encode_response,
    requested_outputs,
)
from service.v2.types import (
    TRITON_CONFIG_TYPES,
    ConfigTensor,
    DynamicBatching,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    MetadataTensor,
    ModelConfig,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadata,
)

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

SERVER_NAME = "lstm-serve"
# Only what is implemented: perf_analyzer asks for /stats only when "statistics" is listed.
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
# Both tasks run ONNX graphs on onnxruntime (Triton's name for that platform); tokenisation and decoding
# around the graphs is ours, which the model-config "backend" says.
PLATFORM = "onnxruntime_onnx"
BACKEND = "lstm-serve"

MODEL = "/models/{model_name}"
VERSION = "/models/{model_name}/versions/{model_version}"


# --- inference (first: routes are matched in order, and this one is under load) -------------------------


BINARY = {"schema": {"type": "string", "format": "binary"}}
INFER_EXAMPLE = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["A charming journey."]}]}
INFER_BODY = json_body(InferenceRequest, **{BINARY_CONTENT_TYPE: BINARY}) | {
    "parameters": [
        {
            "name": BINARY_HEADER,
            "in": "header",
            "required": False,
            "description": "binary tensor extension: the length of the JSON part; binary tensors follow it",
            "schema": {"type": "integer", "minimum": 1},
        }
    ]
}
INFER_DOC = {
    "response_model": InferenceResponse,
    "responses": {200: {"content": {BINARY_CONTENT_TYPE: BINARY}}, **errors(400, 404, 413, 503, 504)},
    "openapi_extra": INFER_BODY,
}
INFER_BODY["requestBody"]["content"]["application/json"]["example"] = INFER_EXAMPLE
MODEL_ERRORS = errors(404, 503)


@router.post(MODEL + "/infer", **INFER_DOC)
@router.post(VERSION + "/infer", **INFER_DOC)
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    started = time.monotonic()
    model = registry(request).get(model_name, model_version)
    body = decompress(
        await request_body(request), request.headers.get("content-encoding"), request.app.state.settings.max_body_bytes
    )
    decoded = decode_request(body, request.headers.get(BINARY_HEADER))
    wire = model.pipeline.wire
    texts = _texts(decoded, model.name, wire.text_input)
    # Unknown output names are refused before any compute is spent.
    outputs = requested_outputs(decoded.header, [spec.name for spec in model.card.outputs])
    params = _params(wire.params, decoded.header.parameters)
    name = TextsName(f"input '{wire.text_input}'", f"input '{wire.text_input}' element {{i}}")
    try:
        result = await dataplane(request).infer(
            model,
            texts,
            params,
            disconnected=disconnected(request),
            started=started,
            name=name,
            client=client_of(request.scope),
        )
    except InvalidInput as exc:  # the V2 protocol answers every bad request with 400
        raise CodecError(str(exc)) from exc
    tensors = _output_tensors(model, result.results)
    encoded = encode_response(
        model.name, model.version, decoded.header.id, [(tensors[name], binary) for name, binary in outputs]
    )
    return Response(encoded.body, media_type=encoded.content_type, headers=encoded.headers)


# --- server ------------------------------------------------------------------------------------------


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live", response_model=LiveResponse)
async def server_live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get("/health/ready", response_model=ReadyResponse, responses=errors(503))
async def server_ready(request: Request) -> JSONResponse:
    served = registry(request)
    if served.ready:
        return JSONResponse(ReadyResponse(ready=True).model_dump())
    return JSONResponse({"error": f"not ready: {served.readiness()['status']}"}, status_code=503)


# --- models ------------------------------------------------------------------------------------------


@router.get(MODEL, response_model=ModelMetadata, responses=MODEL_ERRORS)
@router.get(VERSION, response_model=ModelMetadata, responses=MODEL_ERRORS)
async def model_metadata(request: Request, model_name: str, model_version: str | None = None) -> ModelMetadata:
    model = registry(request).get(model_name, model_version)
    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=[MetadataTensor(name=t.name, datatype=t.dtype, shape=t.shape) for t in model.card.inputs],
        outputs=[MetadataTensor(name=t.name, datatype=t.dtype, shape=t.shape) for t in model.card.outputs],
    )


@router.get(MODEL + "/ready", response_model=ModelReadyResponse, responses=MODEL_ERRORS)
@router.get(VERSION + "/ready", response_model=ModelReadyResponse, responses=MODEL_ERRORS)
async def model_ready(request: Request, model_name: str, model_version: str | None = None) -> JSONResponse:
    """200 when the version is loaded and warmed; 404 unknown, 503 (V2 error body) loading, refused, stopping."""
    served = registry(request)
    model = served.get(model_name, model_version)
    if served.stopping:
        return JSONResponse({"error": "the server is shutting down"}, status_code=503)
    return JSONResponse(ModelReadyResponse(name=model.name, ready=True).model_dump())


@router.get(MODEL + "/config", response_model=ModelConfig, responses=MODEL_ERRORS)
@router.get(VERSION + "/config", response_model=ModelConfig, responses=MODEL_ERRORS)
async def model_config(request: Request, model_name: str, model_version: str | None = None) -> ModelConfig:
    """Triton-style model config: what perf_analyzer reads to shape its requests.

    ``max_batch_size`` is the most texts one request may carry: the batcher's batch size, capped by the
    per-request limit (a bigger ``-b`` would be refused). ``dims`` leave out the batch dimension.
    ``parameters`` carry the batcher's other limits and the precision variant served (and its graph files).
    """
    model = registry(request).get(model_name, model_version)
    batching = model.batching
    settings = request.app.state.settings
    return ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=min(batching.max_batch_size, settings.max_texts_per_request),
        input=[_config_tensor(t) for t in model.card.inputs],
        output=[_config_tensor(t) for t in model.card.outputs],
        dynamic_batching=DynamicBatching(max_queue_delay_microseconds=round(batching.max_delay_ms * 1000)),
        parameters={
            name: {"string_value": str(value)}
            for name, value in {
                "max_batch_tokens": batching.max_batch_tokens,
                "max_queue_items": batching.max_queue_items,
                "max_text_chars": settings.max_text_chars,
                "request_timeout_s": settings.request_timeout_s,
                "precision": model.precision,
                "graph_files": ",".join(sorted(set(model.pipeline.variant.files.values()))),
            }.items()
        },
    )


def _config_tensor(spec: TensorSpec) -> ConfigTensor:
    return ConfigTensor(name=spec.name, data_type=TRITON_CONFIG_TYPES[spec.dtype], dims=spec.shape[1:])


# --- helpers -----------------------------------------------------------------------------------------


def _texts(decoded: DecodedRequest, model_name: str, text_input: str) -> list[str]:
    """The one input: BYTES ``text_input`` of shape ``[N, 1]`` (or ``[N]``), UTF-8 text per element."""
    unknown = sorted(set(decoded.inputs) - {text_input})
    if unknown:
        raise CodecError(f"unknown input {', '.join(map(repr, unknown))}; model {model_name} takes '{text_input}'")
    tensor = decoded.inputs.get(text_input)
    if tensor is None:
        raise CodecError(f"input '{text_input}' is required")
    if tensor.datatype != "BYTES":
        raise CodecError(f"input '{text_input}' must be BYTES, got {tensor.datatype}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise CodecError(f"input '{text_input}' must have shape [N, 1] or [N], got {shape}")
    try:
        return [element.decode("utf-8") for element in tensor.array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise CodecError(f"input '{text_input}' is not UTF-8 text: {exc}") from None


def _params(model: type[BaseModel], parameters: dict[str, Any]) -> BaseModel:
    """The task's request parameters from the V2 ``parameters`` of the same names, validated once.

    Other ``parameters`` belong to the protocol or to clients (``binary_data_output``, ``sequence_id``...)
    and are ignored, as V2 servers do.
    """
    chosen = {key: parameters[key] for key in model.model_fields if key in parameters}
    try:
        return model.model_validate(chosen, strict=True)  # "4" or true is not a number
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CodecError(f"invalid parameters: {problems}") from None


def _output_tensors(model: ServedModel, results: Sequence[Any]) -> dict[str, Tensor]:
    """Each output the card declares, from the task's columns, shaped as the card says (batch first)."""
    columns = model.pipeline.v2_columns(results)
    return {
        spec.name: Tensor(spec.name, spec.dtype, columns[spec.name].reshape([len(results), *spec.shape[1:]]))
        for spec in model.card.outputs
    }
