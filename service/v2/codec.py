"""Bodies of V2 ``/infer`` requests and responses: JSON tensors and Triton's binary tensor extension.

The binary extension puts the JSON object first and the raw tensors after it, in the order the tensors
are listed; the ``Inference-Header-Content-Length`` HTTP header gives the JSON's length and each binary
tensor carries ``parameters.binary_data_size``. Raw data is little-endian and row-major; a BYTES element
is a 4-byte little-endian length followed by its bytes. perf_analyzer and tritonclient send inputs this
way by default and ask for binary outputs, so this path is the one that matters for throughput.

Everything the client got wrong raises :class:`CodecError` (the router answers 400) with a message that
names the tensor, because that is what a person debugging a client needs.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.errors import ServiceError
from service.v2.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

BINARY_HEADER = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

# Little-endian numpy types for every fixed-size V2 datatype (BYTES is handled element by element).
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

_LENGTH = struct.Struct("<I")
# Parameters that belong to extensions we do not implement: refuse them rather than silently ignore.
_SHARED_MEMORY_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class CodecError(ServiceError):
    """The request breaks the protocol or asks for something not served: 400, in the V2 error form."""

    status_code = 400


class PayloadTooLarge(CodecError):
    """A compressed body inflates past the body limit (413, like an uncompressed body that large)."""

    status_code = 413


@dataclass(frozen=True)
class Tensor:
    """A named tensor. BYTES tensors hold ``bytes`` elements in an object array; others a numeric array."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


@dataclass(frozen=True)
class DecodedRequest:
    """The parsed JSON header (for ``id``, ``parameters``, ``outputs``) and the input tensors by name."""

    header: InferenceRequest
    inputs: dict[str, Tensor]


@dataclass(frozen=True)
class EncodedResponse:
    """A response body; ``header_length`` is set (and must be sent as a header) when binary data follows."""

    body: bytes
    header_length: int | None

    @property
    def content_type(self) -> str:
        return JSON_CONTENT_TYPE if self.header_length is None else BINARY_CONTENT_TYPE

    @property
    def headers(self) -> dict[str, str]:
        """Headers besides Content-Type: the JSON length when binary data follows it."""
        return {} if self.header_length is None else {BINARY_HEADER: str(self.header_length)}


# --- BYTES elements ------------------------------------------------------------------------------------


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    """Length-prefix every element (4-byte little-endian unsigned) and concatenate them."""
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str = "tensor") -> list[bytes]:
    """Split a length-prefixed buffer into exactly ``count`` elements that use up the whole buffer."""
    view = memoryview(buffer)
    elements: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(view):
            raise CodecError(f"input '{name}': binary data ends inside the length of element {index}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise CodecError(f"input '{name}': element {index} claims {length} bytes, more than remain")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise CodecError(f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements")
    return elements


# --- requests ------------------------------------------------------------------------------------------


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression), at most ``limit`` bytes."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in {"gzip", "deflate"}:
        raise CodecError(f"unsupported Content-Encoding '{content_encoding}' (use gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # accepts both gzip and zlib framing
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise CodecError(f"body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is larger than {limit} bytes")
    return data


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """Cut the body into the JSON header and the binary part, using ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise CodecError(f"{BINARY_HEADER} must be an integer, got '{header_length}'") from None
    if not 0 < length <= len(body):
        raise CodecError(f"{BINARY_HEADER} is {length} but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def parse_header(raw: bytes) -> InferenceRequest:
    """Parse and validate the JSON inference request object in one pass (pydantic-core's JSON parser).

    Unlike ``json.loads`` it refuses what is not text (lone surrogates such as ``"\\ud800"``, which
    cannot be encoded back to UTF-8), integers too long to be numbers, and deep nesting, all as
    malformed JSON (400), before any of it reaches a tensor, a log line or an answer.
    """
    try:
        return InferenceRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        syntax = next((err for err in errors if err["type"] == "json_invalid"), None)
        if syntax is not None:
            if "recursion limit" in syntax["msg"]:
                raise CodecError("request JSON is nested too deeply") from None
            reason = syntax.get("ctx", {}).get("error", syntax["msg"])
            raise CodecError(f"request JSON is malformed: {reason}") from None
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'request'}: {err['msg']}" for err in errors
        )
        raise CodecError(f"invalid inference request: {problems}") from None


def decode_request(body: bytes, header_length: str | None = None) -> DecodedRequest:
    """Parse a whole ``/infer`` body (JSON only, or JSON + binary tensors) into tensors."""
    raw_header, binary = split_body(body, header_length)
    header = parse_header(raw_header)
    inputs: dict[str, Tensor] = {}
    offset = 0
    for spec in header.inputs:
        if spec.name in inputs:
            raise CodecError(f"input '{spec.name}' is given more than once")
        if any(key in spec.parameters for key in _SHARED_MEMORY_KEYS):
            raise CodecError(f"input '{spec.name}': the shared-memory extension is not supported")
        size = spec.parameters.get("binary_data_size")
        if size is None:
            inputs[spec.name] = _tensor_from_json(spec)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CodecError(f"input '{spec.name}': binary_data_size must be a non-negative integer")
        if spec.data is not None:
            raise CodecError(f"input '{spec.name}' has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise CodecError(
                f"input '{spec.name}': binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of binary data remain)"
            )
        inputs[spec.name] = _tensor_from_binary(spec, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise CodecError(f"{len(binary) - offset} bytes of binary data follow the JSON but no input claims them")
    return DecodedRequest(header=header, inputs=inputs)


def _flatten(data: list[Any]) -> list[Any]:
    """Tensor data may be nested (natural shape) or flat (row-major); both mean the same elements."""
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _tensor_from_json(spec: RequestInput) -> Tensor:
    if spec.data is None:
        raise CodecError(f"input '{spec.name}' has neither 'data' nor binary_data_size")
    flat = _flatten(spec.data)
    count = math.prod(spec.shape)
    if len(flat) != count:
        raise CodecError(f"input '{spec.name}': shape {spec.shape} needs {count} elements, got {len(flat)}")
    if spec.datatype == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise CodecError(f"input '{spec.name}': BYTES data in JSON must be strings")
        array = np.empty(count, dtype=object)
        try:
            array[:] = [item.encode("utf-8") for item in flat]
        except UnicodeEncodeError:  # a lone surrogate: not text (the JSON parser refuses these already)
            raise CodecError(f"input '{spec.name}': BYTES data is not valid Unicode text") from None
        return Tensor(spec.name, spec.datatype, array.reshape(spec.shape))
    if spec.datatype == "BOOL":
        valid = all(isinstance(item, bool) for item in flat)
    else:
        valid = all(isinstance(item, int | float) and not isinstance(item, bool) for item in flat)
    if not valid:
        raise CodecError(f"input '{spec.name}': data does not match datatype {spec.datatype}")
    dtype = NUMPY_TYPES[spec.datatype]
    if dtype.kind in "iu" and flat:
        # numpy < 2 wraps out-of-range integers silently; check the range ourselves.
        bounds = np.iinfo(dtype)
        if not all(isinstance(item, int) and bounds.min <= item <= bounds.max for item in flat):
            raise CodecError(f"input '{spec.name}': values must be integers in [{bounds.min}, {bounds.max}]")
    try:
        array = np.array(flat, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise CodecError(f"input '{spec.name}': {exc}") from exc
    return Tensor(spec.name, spec.datatype, array.reshape(spec.shape))


def _tensor_from_binary(spec: RequestInput, raw: memoryview) -> Tensor:
    count = math.prod(spec.shape)
    if spec.datatype == "BYTES":
        if count * _LENGTH.size > len(raw):  # checked before allocating: the shape is the client's word
            raise CodecError(
                f"input '{spec.name}': shape {spec.shape} needs more bytes than binary_data_size {len(raw)}"
            )
        array = np.empty(count, dtype=object)
        array[:] = deserialize_bytes(raw, count, spec.name)
        return Tensor(spec.name, spec.datatype, array.reshape(spec.shape))
    dtype = NUMPY_TYPES[spec.datatype]
    if len(raw) != count * dtype.itemsize:
        raise CodecError(
            f"input '{spec.name}': shape {spec.shape} of {spec.datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    return Tensor(spec.name, spec.datatype, np.frombuffer(raw, dtype=dtype).reshape(spec.shape))


# --- responses -----------------------------------------------------------------------------------------


def requested_outputs(request: InferenceRequest, available: Sequence[str]) -> list[tuple[str, bool]]:
    """The outputs to return, in order, each with whether it goes out as binary data.

    No ``outputs`` in the request means all of them. ``binary_data`` on an output overrides the request's
    ``binary_data_output``; both default to JSON.
    """
    default_binary = _bool_parameter(request.parameters, "binary_data_output", False, "request")
    if request.outputs is None:
        return [(name, default_binary) for name in available]
    chosen: list[tuple[str, bool]] = []
    for output in request.outputs:
        if output.name not in available:
            raise CodecError(f"unknown output '{output.name}'; this model has {', '.join(available)}")
        if any(name == output.name for name, _ in chosen):
            raise CodecError(f"output '{output.name}' is requested more than once")
        if "classification" in output.parameters:
            raise CodecError(f"output '{output.name}': the classification extension is not supported")
        if any(key in output.parameters for key in _SHARED_MEMORY_KEYS):
            raise CodecError(f"output '{output.name}': the shared-memory extension is not supported")
        binary = _bool_parameter(output.parameters, "binary_data", default_binary, f"output '{output.name}'")
        chosen.append((output.name, binary))
    return chosen


def _bool_parameter(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise CodecError(f"{where}: parameter '{key}' must be a boolean")
    return value


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[tuple[Tensor, bool]],
) -> EncodedResponse:
    """Build the response body: JSON only, or the JSON header followed by the binary outputs in order."""
    described: list[ResponseOutput] = []
    chunks: list[bytes] = []
    for tensor, binary in outputs:
        if binary:
            raw = _tensor_bytes(tensor)
            chunks.append(raw)
            described.append(
                ResponseOutput(
                    name=tensor.name,
                    datatype=tensor.datatype,
                    shape=tensor.shape,
                    parameters={"binary_data_size": len(raw)},
                )
            )
        else:
            described.append(
                ResponseOutput(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape, data=_json_data(tensor))
            )
    response = InferenceResponse(model_name=model_name, model_version=model_version, id=request_id, outputs=described)
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return EncodedResponse(body=header, header_length=None)
    return EncodedResponse(body=header + b"".join(chunks), header_length=len(header))


def _tensor_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.array.reshape(-1))
    return np.ascontiguousarray(tensor.array, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()


def _json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.array.reshape(-1)
    if tensor.datatype != "BYTES":
        return flat.tolist()
    try:
        return [element.decode("utf-8") for element in flat]
    except UnicodeDecodeError:
        raise CodecError(f"output '{tensor.name}' is not UTF-8 text; request it with binary_data") from None
