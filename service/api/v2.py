"""Open Inference Protocol (KServe V2) routes, so tritonclient, perf_analyzer and KServe tooling work as is.

Thin on purpose: model/version lookup and inference go through the dataplane (same batcher, same limits,
same metrics as the native API: the metrics middleware labels these requests by route template and the
``model_name``/``model_version`` path parameters), the wire format through ``service.v2.codec``. What is
here is only the mapping between a task's results and the named tensors the model card declares.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.api.native import TranslateRequest
from service.dataplane import DataPlane, ServedModel
from service.errors import InvalidInput
from service.model_card import TensorSpec
from service.v2.codec import (
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
TEXT_INPUT = "text"

MODEL = "/models/{model_name}"
VERSION = "/models/{model_name}/versions/{model_version}"


def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


# --- inference (first: routes are matched in order, and this one is under load) -------------------------


@router.post(MODEL + "/infer")
@router.post(VERSION + "/infer")
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    started = time.monotonic()
    dataplane = _dataplane(request)
    model = dataplane.get(model_name, model_version)
    body = decompress(
        await request.body(), request.headers.get("content-encoding"), request.app.state.settings.max_body_bytes
    )
    decoded = decode_request(body, request.headers.get(BINARY_HEADER))
    texts = _texts(decoded, model)
    # Unknown output names are refused before any compute is spent.
    outputs = requested_outputs(decoded.header, [spec.name for spec in model.card.outputs])
    params = _params(model, texts, decoded.header.parameters)
    try:
        result = await dataplane.infer(model, texts, params, disconnected=_disconnected(request), started=started)
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


@router.get("/health/ready", response_model=ReadyResponse)
async def server_ready(request: Request) -> JSONResponse:
    dataplane = _dataplane(request)
    if dataplane.ready:
        return JSONResponse(ReadyResponse(ready=True).model_dump())
    return JSONResponse({"error": f"not ready: {dataplane.readiness()['status']}"}, status_code=503)


# --- models ------------------------------------------------------------------------------------------


@router.get(MODEL, response_model=ModelMetadata)
@router.get(VERSION, response_model=ModelMetadata)
async def model_metadata(request: Request, model_name: str, model_version: str | None = None) -> ModelMetadata:
    model = _dataplane(request).get(model_name, model_version)
    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=[MetadataTensor(name=t.name, datatype=t.dtype, shape=t.shape) for t in model.card.inputs],
        outputs=[MetadataTensor(name=t.name, datatype=t.dtype, shape=t.shape) for t in model.card.outputs],
    )


@router.get(MODEL + "/ready", response_model=ModelReadyResponse)
@router.get(VERSION + "/ready", response_model=ModelReadyResponse)
async def model_ready(request: Request, model_name: str, model_version: str | None = None) -> JSONResponse:
    """200 when the version is loaded and warmed; 404 unknown, 503 (V2 error body) loading, refused, stopping."""
    dataplane = _dataplane(request)
    model = dataplane.get(model_name, model_version)
    if dataplane.stopping:
        return JSONResponse({"error": "the server is shutting down"}, status_code=503)
    return JSONResponse(ModelReadyResponse(name=model.name, ready=True).model_dump())


@router.get(MODEL + "/config", response_model=ModelConfig)
@router.get(VERSION + "/config", response_model=ModelConfig)
async def model_config(request: Request, model_name: str, model_version: str | None = None) -> ModelConfig:
    """Triton-style model config: what perf_analyzer reads to shape its requests.

    ``max_batch_size`` is the most texts one request may carry: the batcher's batch size, capped by the
    per-request limit (a bigger ``-b`` would be refused). ``dims`` leave out the batch dimension.
    """
    model = _dataplane(request).get(model_name, model_version)
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
            }.items()
        },
    )


def _config_tensor(spec: TensorSpec) -> ConfigTensor:
    return ConfigTensor(name=spec.name, data_type=TRITON_CONFIG_TYPES[spec.dtype], dims=spec.shape[1:])


# --- helpers -----------------------------------------------------------------------------------------


async def _disconnected(request: Request) -> None:
    """Resolves when the client goes away (the body is already read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _texts(decoded: DecodedRequest, model: ServedModel) -> list[str]:
    """The one input: BYTES ``text`` of shape ``[N, 1]`` (or ``[N]``), UTF-8 text per element."""
    unknown = sorted(set(decoded.inputs) - {TEXT_INPUT})
    if unknown:
        raise CodecError(f"unknown input {', '.join(map(repr, unknown))}; model {model.name} takes '{TEXT_INPUT}'")
    tensor = decoded.inputs.get(TEXT_INPUT)
    if tensor is None:
        raise CodecError(f"input '{TEXT_INPUT}' is required")
    if tensor.datatype != "BYTES":
        raise CodecError(f"input '{TEXT_INPUT}' must be BYTES, got {tensor.datatype}")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise CodecError(f"input '{TEXT_INPUT}' must have shape [N, 1] or [N], got {shape}")
    try:
        return [element.decode("utf-8") for element in tensor.array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise CodecError(f"input '{TEXT_INPUT}' is not UTF-8 text: {exc}") from None


def _params(model: ServedModel, texts: list[str], parameters: dict[str, Any]) -> dict[str, Any]:
    """Translation takes ``beam_size``/``max_length`` request parameters, checked like the native API's."""
    if model.task != "translation":
        return {}
    chosen = {key: parameters[key] for key in ("beam_size", "max_length") if key in parameters}
    try:
        checked = TranslateRequest.model_validate({"texts": texts, **chosen})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CodecError(f"invalid parameters: {problems}") from None
    return {"beam_size": checked.beam_size, "max_length": checked.max_length}


def _sentiment_columns(model: ServedModel, results: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    labels = model.card.labels or []
    return {
        "label": _bytes_array([r["label"] for r in results]),
        "probabilities": np.array([[r["probabilities"][label] for label in labels] for r in results], np.float32),
    }


def _translation_columns(model: ServedModel, results: Sequence[str]) -> dict[str, np.ndarray]:
    return {"translation": _bytes_array(results)}


COLUMNS: dict[str, Callable[[ServedModel, Sequence[Any]], dict[str, np.ndarray]]] = {
    "sentiment": _sentiment_columns,
    "translation": _translation_columns,
}


def _bytes_array(texts: Sequence[str]) -> np.ndarray:
    array = np.empty(len(texts), dtype=object)
    array[:] = [text.encode("utf-8") for text in texts]
    return array


def _output_tensors(model: ServedModel, results: Sequence[Any]) -> dict[str, Tensor]:
    """Each output the card declares, shaped as the card says (batch first)."""
    columns = COLUMNS[model.task](model, results)
    return {
        spec.name: Tensor(spec.name, spec.dtype, columns[spec.name].reshape([len(results), *spec.shape[1:]]))
        for spec in model.card.outputs
    }
