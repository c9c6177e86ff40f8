"""The Open Inference Protocol (KServe V2) REST objects, plus Triton's model-configuration JSON.

Field names follow the KServe "Open Inference Protocol" REST specification exactly, because clients
(tritonclient, perf_analyzer, KServe and Seldon tooling) read them by name. Unknown request fields are
ignored rather than rejected so that newer clients keep working; what we cannot honour is refused
explicitly by the codec instead.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The tensor element types of the protocol (BF16 is a Triton addition we do not serve).
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]

# $parameters: string keys, scalar values. bool is listed first so JSON true stays a bool, not 1.
ParameterValue = bool | int | float | str
Parameters = dict[str, ParameterValue]
# A dimension is an int64 in the protocol (and in Triton): anything larger is refused as invalid (400).
Dimension = Annotated[int, Field(ge=0, le=2**63 - 1)]

# V2 datatype -> Triton model-config data_type (what /config shows; perf_analyzer and Model Analyzer read it).
TRITON_CONFIG_TYPES: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


class _Lenient(BaseModel):
    """Request objects: ignore fields we do not know (forward compatibility with newer clients)."""

    model_config = ConfigDict(extra="ignore")


class RequestInput(_Lenient):
    """$request_input. ``data`` is absent when the tensor travels as binary (``binary_data_size``)."""

    name: str
    shape: list[Dimension]
    datatype: Datatype
    parameters: Parameters = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(_Lenient):
    """$request_output: which output to return and how (``parameters.binary_data``)."""

    name: str
    parameters: Parameters = Field(default_factory=dict)


class InferenceRequest(_Lenient):
    """$inference_request. ``outputs`` absent means "all outputs, default settings"."""

    id: str | None = None
    parameters: Parameters = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """$response_output. A binary output has ``parameters.binary_data_size`` and no ``data``; a JSON output
    has ``data`` and no ``parameters`` at all (Triton's C++ client treats any ``parameters`` object on an
    output as the binary form and fails when ``binary_data_size`` is missing)."""

    name: str
    datatype: Datatype
    shape: list[int]
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """$inference_response. ``id`` is echoed when the request had one (perf_analyzer matches async
    responses to requests by it)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    """Every V2 error body (and, by design.md, every error body of the service)."""

    error: str


class ServerMetadata(BaseModel):
    """$metadata_server_response. ``extensions`` lists only what is implemented: perf_analyzer calls the
    statistics endpoints only when ``statistics`` is listed, so listing more than we serve breaks it."""

    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    """$metadata_tensor: shape with the batch dimension first, -1 for variable."""

    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    """$metadata_model_response."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


# --- Triton model configuration (the "model_configuration" extension: GET .../config) ---------------


class ConfigTensor(BaseModel):
    """One input/output of a Triton model config. ``dims`` exclude the batch dimension when
    ``max_batch_size`` > 0 (Triton's convention, which perf_analyzer relies on)."""

    name: str
    data_type: str
    dims: list[int]
    optional: bool = False
    is_shape_tensor: bool = False


class DynamicBatching(BaseModel):
    """Presence of this object is what makes perf_analyzer treat the model as dynamically batched."""

    max_queue_delay_microseconds: int
    preferred_batch_size: list[int] = Field(default_factory=list)
    preserve_ordering: bool = False


class TransactionPolicy(BaseModel):
    decoupled: bool = False


class ModelConfig(BaseModel):
    """The subset of Triton's model config JSON that clients read: perf_analyzer takes ``max_batch_size``,
    ``dynamic_batching``, ``input``/``output`` (names, ``optional``, ``is_shape_tensor``) and
    ``model_transaction_policy.decoupled``."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[ConfigTensor]
    output: list[ConfigTensor]
    dynamic_batching: DynamicBatching
    model_transaction_policy: TransactionPolicy = Field(default_factory=TransactionPolicy)
    version_policy: dict[str, Any] = Field(default_factory=lambda: {"latest": {"num_versions": 1}})
    parameters: dict[str, Any] = Field(default_factory=dict)
