"""The V2 codec against the real tritonclient: what it sends we must parse, what we send it must read.

tritonclient's own request builder (``generate_request_body``) and response parser
(``parse_response_body``) are the reference, so these tests check wire compatibility, not our own
round trip.
"""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.v2.codec import (
    BINARY_HEADER,
    CodecError,
    PayloadTooLarge,
    Tensor,
    decode_request,
    decompress,
    deserialize_bytes,
    encode_response,
    requested_outputs,
    serialize_bytes,
)
from service.v2.types import InferenceRequest

TEXTS = ["It's a charming, often affecting journey!", "", "Ünïcödé — 日本語 ✓", "a" * 1000]


def _text_input(texts: list[str], binary: bool, shape: list[int] | None = None) -> httpclient.InferInput:
    array = np.array([t.encode() for t in texts], dtype=object).reshape(shape or [len(texts), 1])
    tensor = httpclient.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _body(inputs, outputs=None, **kwargs) -> tuple[bytes, str | None]:
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def _texts_of(tensor: Tensor) -> list[str]:
    return [element.decode() for element in tensor.array.reshape(-1)]


# --- BYTES serialization ------------------------------------------------------------------------------


def test_serialize_bytes_matches_tritonclient():
    elements = [t.encode() for t in TEXTS]
    expected = serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert serialize_bytes(elements) == expected
    assert deserialize_bytes(expected, len(elements)) == elements


def test_deserialize_bytes_is_read_by_tritonclient_the_same():
    raw = serialize_bytes([b"x", b"\x00\xff", b""])
    assert list(deserialize_bytes_tensor(raw)) == [b"x", b"\x00\xff", b""]


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x05\x00", 1, "ends inside the length"),
        (b"\x05\x00\x00\x00abc", 1, "claims 5 bytes"),
        (b"\x01\x00\x00\x00ab", 1, "1 bytes left over"),
        (b"\x01\x00\x00\x00a", 2, "ends inside the length of element 1"),
    ],
)
def test_deserialize_bytes_rejects_broken_buffers(raw, count, message):
    with pytest.raises(CodecError, match=message):
        deserialize_bytes(raw, count, "text")


# --- requests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_decode_tritonclient_request(binary):
    body, header_length = _body([_text_input(TEXTS, binary)], request_id="42", parameters={"beam_size": 3})
    assert (header_length is not None) == binary
    decoded = decode_request(body, header_length)
    text = decoded.inputs["text"]
    assert text.datatype == "BYTES"
    assert text.shape == [len(TEXTS), 1]
    assert _texts_of(text) == TEXTS
    assert decoded.header.id == "42"
    assert decoded.header.parameters["beam_size"] == 3


def test_decode_mixed_binary_and_json_inputs_in_order():
    """Binary tensors are laid out in the order of the inputs that carry binary_data_size."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    numbers = httpclient.InferInput("numbers", [2, 3], "FP32")
    numbers.set_data_from_numpy(values, binary_data=True)
    flags = httpclient.InferInput("flags", [2], "BOOL")
    flags.set_data_from_numpy(np.array([True, False]), binary_data=False)
    body, header_length = _body([_text_input(TEXTS[:2], True), flags, numbers])
    decoded = decode_request(body, header_length)
    assert _texts_of(decoded.inputs["text"]) == TEXTS[:2]
    np.testing.assert_array_equal(decoded.inputs["numbers"].array, values)
    np.testing.assert_array_equal(decoded.inputs["flags"].array, [True, False])


def test_decode_nested_json_data_and_flat_shape():
    body = json.dumps(
        {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["good"], ["bad"]]}]}
    ).encode()
    assert _texts_of(decode_request(body).inputs["text"]) == ["good", "bad"]
    body, header_length = _body([_text_input(["one", "two"], True, shape=[2])])
    assert decode_request(body, header_length).inputs["text"].shape == [2]


def _json_request(**tensor) -> bytes:
    base = {"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}
    return json.dumps({"inputs": [base | tensor]}).encode()


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "malformed"),
        (b"\xff\xfe", None, "malformed"),
        (json.dumps({"inputs": []}).encode(), None, "inputs"),
        (json.dumps({"outputs": []}).encode(), None, "inputs: Field required"),
        (_json_request(datatype="STRING"), None, "datatype"),
        (_json_request(shape=[-1, 1]), None, "shape"),
        (_json_request(shape=[2, 1]), None, "needs 2 elements, got 1"),
        (_json_request(data=[1]), None, "must be strings"),
        (_json_request(data=None), None, "neither 'data' nor binary_data_size"),
        (_json_request(datatype="FP32", data=["1.0"]), None, "does not match datatype FP32"),
        (_json_request(datatype="BOOL", data=[1]), None, "does not match datatype BOOL"),
        (_json_request(datatype="UINT8", data=[300]), None, r"integers in \[0, 255\]"),
        (_json_request(datatype="INT32", data=[1.5]), None, "integers in"),
        (_json_request(parameters={"shared_memory_region": "r"}), None, "shared-memory"),
        (_json_request(parameters={"binary_data_size": 5}, data=None), None, "runs past the end"),
        (_json_request(parameters={"binary_data_size": -1}, data=None), None, "non-negative"),
        (_json_request(parameters={"binary_data_size": 5}), None, "both 'data' and binary_data_size"),
        (json.dumps({"inputs": [json.loads(_json_request())["inputs"][0]] * 2}).encode(), None, "more than once"),
        (_json_request(), "abc", "must be an integer"),
        (_json_request(), "0", "is 0 but"),
        (_json_request(), "100000", "is 100000 but"),
    ],
)
def test_decode_rejects_bad_requests(body, header_length, message):
    with pytest.raises(CodecError, match=message):
        decode_request(body, header_length)


def test_decode_checks_a_huge_bytes_shape_before_allocating():
    body, header_length = _body([_text_input(["x"], True)])
    document = json.loads(body[: int(header_length)])
    document["inputs"][0]["shape"] = [10**12, 1]
    header = json.dumps(document).encode()
    with pytest.raises(CodecError, match="needs more bytes than binary_data_size 5"):
        decode_request(header + body[int(header_length) :], str(len(header)))


def test_decode_rejects_absurdly_nested_json():
    depth = 100_000
    body = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": %s"x"%s}]}' % (
        b"[" * depth,
        b"]" * depth,
    )
    with pytest.raises(CodecError, match="nested too deeply"):
        decode_request(body)


def test_decode_rejects_a_header_length_that_cuts_the_json():
    body, header_length = _body([_text_input(TEXTS, True)])
    with pytest.raises(CodecError, match="malformed"):
        decode_request(body, str(int(header_length) - 3))


def test_decode_rejects_binary_data_nobody_claims():
    body, header_length = _body([_text_input(TEXTS, True)])
    with pytest.raises(CodecError, match="4 bytes of binary data follow"):
        decode_request(body + b"junk", header_length)


def test_decode_rejects_fp32_binary_of_the_wrong_size():
    numbers = httpclient.InferInput("numbers", [3], "FP32")
    numbers.set_data_from_numpy(np.ones(3, dtype=np.float32), binary_data=True)
    body, header_length = _body([numbers])
    document = json.loads(body[: int(header_length)])
    document["inputs"][0]["shape"] = [4]
    header = json.dumps(document).encode()
    with pytest.raises(CodecError, match="needs 16 bytes"):
        decode_request(header + body[int(header_length) :], str(len(header)))


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_decompress_what_tritonclient_compresses(encoding, compress):
    body, header_length = _body([_text_input(TEXTS, True)])
    restored = decompress(compress(body), encoding, limit=len(body))
    assert _texts_of(decode_request(restored, header_length).inputs["text"]) == TEXTS
    with pytest.raises(PayloadTooLarge):
        decompress(compress(body), encoding, limit=len(body) - 1)


def test_decompress_refuses_unknown_or_broken_encodings():
    assert decompress(b"abc", None, limit=10) == b"abc"
    with pytest.raises(CodecError, match="unsupported Content-Encoding"):
        decompress(b"abc", "br", limit=10)
    with pytest.raises(CodecError, match="not valid gzip"):
        decompress(b"abc", "gzip", limit=10)


# --- which outputs, how --------------------------------------------------------------------------------

AVAILABLE = ["label", "probabilities"]


def _header(outputs=None, **kwargs) -> InferenceRequest:
    body, header_length = _body([_text_input(["x"], False)], outputs=outputs, **kwargs)
    return decode_request(body, header_length).header


def test_no_outputs_means_all_as_binary_for_tritonclient():
    # tritonclient sets binary_data_output=true when no outputs are given.
    assert requested_outputs(_header(), AVAILABLE) == [("label", True), ("probabilities", True)]
    assert requested_outputs(InferenceRequest.model_validate(json.loads(_json_request())), AVAILABLE) == [
        ("label", False),
        ("probabilities", False),
    ]


def test_requested_outputs_are_honoured_in_order_with_their_format():
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
        httpclient.InferRequestedOutput("label", binary_data=True),
    ]
    assert requested_outputs(_header(outputs), AVAILABLE) == [("probabilities", False), ("label", True)]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([httpclient.InferRequestedOutput("score")], "unknown output 'score'"),
        ([httpclient.InferRequestedOutput("label", class_count=2)], "classification"),
        ([httpclient.InferRequestedOutput("label")] * 2, "more than once"),
    ],
)
def test_requested_outputs_rejects(outputs, message):
    with pytest.raises(CodecError, match=message):
        requested_outputs(_header(outputs), AVAILABLE)


def test_binary_data_output_must_be_boolean():
    request = InferenceRequest.model_validate(
        json.loads(_json_request()) | {"parameters": {"binary_data_output": "yes"}}
    )
    with pytest.raises(CodecError, match="must be a boolean"):
        requested_outputs(request, AVAILABLE)


# --- responses -----------------------------------------------------------------------------------------


def _outputs() -> tuple[Tensor, Tensor]:
    labels = np.array([b"positive", "négatif".encode()], dtype=object).reshape(2, 1)
    probabilities = np.array([[0.03, 0.97], [0.8, 0.2]], dtype=np.float32)
    return Tensor("label", "BYTES", labels), Tensor("probabilities", "FP32", probabilities)


@pytest.mark.parametrize("binary", [(False, False), (True, True), (True, False), (False, True)])
def test_encoded_response_reads_back_in_tritonclient(binary):
    label, probabilities = _outputs()
    encoded = encode_response("sentiment", "1", "42", [(label, binary[0]), (probabilities, binary[1])])
    assert (encoded.header_length is not None) == any(binary)
    if encoded.header_length is not None:
        assert encoded.headers == {BINARY_HEADER: str(encoded.header_length)}
        assert encoded.content_type == "application/octet-stream"
    result = httpclient.InferenceServerClient.parse_response_body(encoded.body, header_length=encoded.header_length)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("sentiment", "1", "42")
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities.array)
    labels = result.as_numpy("label")
    assert labels.shape == (2, 1)
    assert [x.decode() if isinstance(x, bytes) else x for x in labels.reshape(-1)] == ["positive", "négatif"]


def test_json_outputs_carry_no_parameters_object():
    """Triton's C++ client (perf_analyzer) reads any output 'parameters' as the binary form."""
    label, probabilities = _outputs()
    encoded = encode_response("sentiment", "1", None, [(label, False), (probabilities, True)])
    header = json.loads(encoded.body[: encoded.header_length])
    assert "id" not in header
    by_name = {output["name"]: output for output in header["outputs"]}
    assert "parameters" not in by_name["label"]
    assert by_name["label"]["data"] == ["positive", "négatif"]
    assert by_name["probabilities"]["parameters"] == {"binary_data_size": 16}
    assert "data" not in by_name["probabilities"]
    assert encoded.body[encoded.header_length :] == probabilities.array.tobytes()


def test_json_only_response_has_no_binary_header():
    label, _ = _outputs()
    encoded = encode_response("sentiment", "1", "", [(label, False)])
    assert encoded.header_length is None
    assert (encoded.content_type, encoded.headers) == ("application/json", {})
    assert json.loads(encoded.body)["id"] == ""


def test_non_utf8_bytes_output_needs_binary():
    tensor = Tensor("label", "BYTES", np.array([b"\xff"], dtype=object))
    with pytest.raises(CodecError, match="binary_data"):
        encode_response("m", "1", None, [(tensor, False)])
    encoded = encode_response("m", "1", None, [(tensor, True)])
    assert encoded.body[encoded.header_length :] == b"\x01\x00\x00\x00\xff"
