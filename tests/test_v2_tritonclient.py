"""The V2 (Open Inference Protocol) endpoints against a real server, driven by the real tritonclient.

Results must equal the native API's for the same texts; errors must come back in the V2 form with the
protocol's codes. perf_analyzer cannot be installed here, so one test replays the requests its C++
client sends (as read from its source) and parses the answers the way that client does.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
PERF_DATA = REPO_ROOT / "bench" / "perf_analyzer"
SENTIMENT_TEXTS = [
    "It's a charming, often affecting journey!",
    "A tedious, joyless mess that never finds its footing.",
    "Ünïcödé reviews are reviews too — and this one is great.",
    "meh",
]
TRANSLATION_TEXTS = ["A man is riding a bicycle.", "Two dogs play in the snow.", "A girl in a red dress."]


def _client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))


def _tensor(name: str, datatype: str, array: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    return httpclient.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array, binary_data=binary)


def _text_input(texts: list[str], binary: bool) -> httpclient.InferInput:
    return _tensor("text", "BYTES", np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1), binary)


def _strings(array: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else x for x in array.reshape(-1)]


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return exc.value.status()


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def tuned_server(start_server):
    """One extra server for the settings-dependent tests (each server start loads and warms every model)."""
    return start_server(max_batch_size=8, max_delay_ms=5, max_queue_items=2)


@pytest.fixture(scope="module")
def client(server):
    with _client(server) as client:
        yield client


# --- server and model endpoints ------------------------------------------------------------------------


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "lstm-serve"
    assert metadata["extensions"] == ["binary_tensor_data", "model_configuration"]


def test_sentiment_metadata_ready_and_config(client):
    for version in ("", "1"):
        assert client.is_model_ready("sentiment", version)
        metadata = client.get_model_metadata("sentiment", version)
        assert metadata["name"] == "sentiment"
        assert metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
        assert metadata["outputs"] == [
            {"name": "label", "datatype": "BYTES", "shape": [-1, 1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        ]
        config = client.get_model_config("sentiment", version)
        assert config["input"][0] | {"data_type": "TYPE_STRING", "dims": [1]} == config["input"][0]
        assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
            ("label", "TYPE_STRING", [1]),
            ("probabilities", "TYPE_FP32", [2]),
        ]


def test_config_reflects_the_batcher_settings(tuned_server):
    with _client(tuned_server) as client:
        config = client.get_model_config("sentiment")
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000


def test_unknown_model_or_version_is_404(client, server):
    for call in (
        lambda: client.get_model_metadata("nope"),
        lambda: client.get_model_metadata("sentiment", "7"),
        lambda: client.get_model_config("sentiment", "7"),
        lambda: client.infer("nope", [_text_input(["x"], True)]),
        lambda: client.infer("sentiment", [_text_input(["x"], True)], model_version="7"),
    ):
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert _status(exc) == "404"
        assert "not found" in exc.value.message()
    assert not client.is_model_ready("sentiment", "7")
    answer = httpx.get(f"{server.url}/v2/models/nope/ready")
    assert (answer.status_code, set(answer.json())) == (404, {"error"})


# --- inference -----------------------------------------------------------------------------------------


def _native_sentiment(server, texts: list[str]) -> list[dict]:
    answer = httpx.post(f"{server.url}/v1/sentiment", json={"texts": texts}, timeout=30)
    answer.raise_for_status()
    return answer.json()["results"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_sentiment_infer_equals_native(client, server, binary):
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=binary),
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
    ]
    result = client.infer(
        "sentiment", [_text_input(SENTIMENT_TEXTS, binary)], outputs=outputs, request_id=f"req-{binary}"
    )
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("sentiment", "1", f"req-{binary}")
    native = _native_sentiment(server, SENTIMENT_TEXTS)
    labels = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")
    assert labels.shape == (len(SENTIMENT_TEXTS), 1)
    assert probabilities.shape == (len(SENTIMENT_TEXTS), 2)
    assert probabilities.dtype == np.float32
    assert _strings(labels) == [r["label"] for r in native]
    expected = [[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in native]
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


def test_default_outputs_are_all_binary(client, server):
    """tritonclient without ``outputs`` asks for every output as binary (binary_data_output)."""
    result = client.infer("sentiment", [_text_input(SENTIMENT_TEXTS[:2], True)], model_version="1")
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(by_name) == ["label", "probabilities"]
    assert all("binary_data_size" in o["parameters"] for o in by_name.values())
    assert _strings(result.as_numpy("label")) == [r["label"] for r in _native_sentiment(server, SENTIMENT_TEXTS[:2])]


def test_only_requested_outputs_come_back(client):
    result = client.infer(
        "sentiment",
        [_text_input(SENTIMENT_TEXTS[:1], False)],
        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    assert result.as_numpy("label") is None


def test_flat_text_shape_and_compressed_request(client, server):
    flat = _tensor("text", "BYTES", np.array([t.encode() for t in SENTIMENT_TEXTS[:2]], dtype=object))
    for compression in (None, "gzip", "deflate"):
        result = client.infer("sentiment", [flat], request_compression_algorithm=compression)
        assert _strings(result.as_numpy("label")) == [
            r["label"] for r in _native_sentiment(server, SENTIMENT_TEXTS[:2])
        ]


def test_async_infer_echoes_ids(server):
    """perf_analyzer's async mode matches responses to requests by ``id``."""
    with httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=4) as client:
        pending = {
            str(i): client.async_infer("sentiment", [_text_input([text], True)], request_id=str(i))
            for i, text in enumerate(SENTIMENT_TEXTS)
        }
        for request_id, handle in pending.items():
            assert handle.get_result().get_response()["id"] == request_id


# --- errors --------------------------------------------------------------------------------------------


def _infer_error(client, **kwargs) -> InferenceServerException:
    kwargs.setdefault("inputs", [_text_input(["fine"], True)])
    with pytest.raises(InferenceServerException) as exc:
        client.infer("sentiment", **kwargs)
    return exc.value


def test_unknown_output_is_400(client):
    error = _infer_error(client, outputs=[httpclient.InferRequestedOutput("score")])
    assert (error.status(), error.message()) == ("400", "unknown output 'score'; this model has label, probabilities")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([_tensor("words", "BYTES", np.array([[b"x"]], object))], "unknown input 'words'"),
        ([_tensor("text", "INT32", np.array([[1]], np.int32))], "must be BYTES"),
        ([_tensor("text", "BYTES", np.array([[b"a", b"b"]], object))], r"shape \[N, 1\] or \[N\]"),
        ([_tensor("text", "BYTES", np.array([[b"\xff"]], object))], "not UTF-8"),
        ([_text_input([""], True)], "characters"),
        ([_text_input(["x"] * 65, True)], "texts"),
    ],
    ids=["unknown-input", "wrong-type", "wrong-shape", "not-utf8", "empty-text", "too-many-texts"],
)
def test_bad_inputs_are_400(client, inputs, message):
    error = _infer_error(client, inputs=inputs)
    assert error.status() == "400"
    assert re.search(message, error.message())


def _post_infer(server, body: bytes, headers: dict[str, str], model: str = "sentiment") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("header_length", ["abc", "0", "-5", "100000"])
def test_malformed_binary_header_is_400(server, header_length):
    body, _ = httpclient.InferenceServerClient.generate_request_body([_text_input(["fine"], True)])
    answer = _post_infer(server, body, {"Inference-Header-Content-Length": header_length})
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"}
    assert "Inference-Header-Content-Length" in answer.json()["error"]


def test_truncated_binary_tensor_is_400(server):
    body, header_length = httpclient.InferenceServerClient.generate_request_body([_text_input(["fine"], True)])
    answer = _post_infer(server, body[:-2], {"Inference-Header-Content-Length": str(header_length)})
    assert answer.status_code == 400
    assert "runs past the end" in answer.json()["error"]


def test_malformed_json_is_400(server):
    answer = _post_infer(server, b'{"inputs": [', {"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("request JSON is malformed")


def test_full_queue_is_503(tuned_server):
    with _client(tuned_server) as client:
        error = _infer_error(client, inputs=[_text_input(["one", "two", "three"], True)])
    assert error.status() == "503"
    assert "queue" in error.message()


def test_v2_requests_are_in_the_request_metrics(client, server):
    client.infer("sentiment", [_text_input(["counted"], True)])
    _infer_error(client, outputs=[httpclient.InferRequestedOutput("score")])
    text = httpx.get(f"{server.url}/metrics").text
    for status in ("200", "400"):
        pattern = (
            r'lstm_serve_requests_total\{endpoint="/v2/models/\{model_name\}/infer",model="sentiment",'
            rf'status="{status}",version="1"\}} ([0-9.]+)'
        )
        found = re.search(pattern, text)
        assert found and float(found.group(1)) >= 1, status


def test_unknown_model_names_are_not_metric_labels(server):
    """Model names in V2 paths come from clients; only served ones may become label values."""
    for path in ("/v2/models/guess-1", "/v2/models/guess-2/config", "/v2/models/sentiment/versions/guess-3"):
        assert httpx.get(f"{server.url}{path}").status_code == 404
    text = httpx.get(f"{server.url}/metrics").text
    assert "guess-" not in text


# --- what perf_analyzer does ---------------------------------------------------------------------------


def _perf_analyzer_shapes(metadata: dict, config: dict) -> dict[str, list[int]]:
    """perf_analyzer's ModelParser: drop the batch dimension of metadata shapes when max_batch_size > 0,
    and every config input must have metadata."""
    assert config["max_batch_size"] > 0
    assert "dynamic_batching" in config and "sequence_batching" not in config
    assert config["model_transaction_policy"]["decoupled"] is False
    shapes = {tensor["name"]: tensor["shape"][1:] for tensor in metadata["inputs"]}
    assert {tensor["name"] for tensor in config["input"]} <= set(shapes)
    return shapes


def _perf_analyzer_infer(server, model: str, batch_size: int) -> tuple[list[str], dict[str, bytes]]:
    """Replay what perf_analyzer's C++ HTTP client sends and parse the answer the way it does.

    From its source: the request JSON always has ``id``, each input ``binary_data_size``, each requested
    output (all outputs in the metadata) ``binary_data: true``; only ``Inference-Header-Content-Length``
    is set. The answer: any ``parameters`` object on an output must carry ``binary_data_size``, and the
    binary parts follow the JSON in output order. Texts come from the committed ``--input-data`` file.
    """
    metadata = httpx.get(f"{server.url}/v2/models/{model}").json()
    config = httpx.get(f"{server.url}/v2/models/{model}/config").json()
    assert "statistics" not in httpx.get(f"{server.url}/v2").json()["extensions"]
    shapes = _perf_analyzer_shapes(metadata, config)
    assert shapes == {"text": [1]}  # fixed: perf_analyzer needs no --shape
    assert batch_size <= config["max_batch_size"]
    entries = json.loads((PERF_DATA / f"{model}.json").read_text())["data"]
    batch = [entry["text"][0] for entry in entries[:batch_size]]  # -b N: N entries' elements in one request
    raw = serialize_byte_tensor(np.array([t.encode() for t in batch], dtype=object)).item()
    text = {"name": "text", "datatype": "BYTES", "shape": [batch_size, *shapes["text"]]}
    header = json.dumps(
        {
            "id": "17",
            "inputs": [text | {"parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": o["name"], "parameters": {"binary_data": True}} for o in metadata["outputs"]],
        }
    ).encode()
    answer = _post_infer(server, header + raw, {"Inference-Header-Content-Length": str(len(header))}, model)
    assert answer.status_code == 200, answer.text
    json_size = int(answer.headers["Inference-Header-Content-Length"])
    response = json.loads(answer.content[:json_size])
    assert response["id"] == "17"
    assert [o["name"] for o in response["outputs"]] == [o["name"] for o in metadata["outputs"]]
    offset = json_size
    parsed = {}
    for output in response["outputs"]:
        size = output["parameters"]["binary_data_size"]
        parsed[output["name"]] = answer.content[offset : offset + size]
        offset += size
    assert offset == len(answer.content)
    return batch, parsed


def test_perf_analyzer_requests_sentiment(server):
    batch, parsed = _perf_analyzer_infer(server, "sentiment", 4)
    native = _native_sentiment(server, batch)
    assert list(deserialize_bytes_tensor(parsed["label"])) == [r["label"].encode() for r in native]
    probabilities = np.frombuffer(parsed["probabilities"], dtype="<f4").reshape(4, 2)
    np.testing.assert_allclose(probabilities[:, 1], [r["probabilities"]["positive"] for r in native], atol=1e-5)


def test_perf_analyzer_input_files_fit_the_models():
    """Each committed --input-data entry is one batch-1 request: one element for input ``text`` of dims [1]."""
    for name in ("sentiment", "translation"):
        entries = json.loads((PERF_DATA / f"{name}.json").read_text())["data"]
        assert len(entries) >= 100
        assert all(set(e) == {"text"} and len(e["text"]) == 1 and e["text"][0].strip() for e in entries)


def test_gzip_body_bomb_is_413(server):
    """A compressed body may not inflate past the body limit that an uncompressed one must respect."""
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        [_text_input(["x" * 1000] * 2000, True)]
    )
    answer = _post_infer(
        server,
        gzip.compress(body),
        {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(header_length)},
    )
    assert answer.status_code == 413
    assert set(answer.json()) == {"error"}


# --- translation ---------------------------------------------------------------------------------------


def _native_translate(server, texts: list[str], **params) -> list[str]:
    answer = httpx.post(f"{server.url}/v1/translate", json={"texts": texts, **params}, timeout=60)
    answer.raise_for_status()
    return answer.json()["translations"]


def test_translation_metadata_and_config(client):
    assert client.is_model_ready("translation")
    metadata = client.get_model_metadata("translation")
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    assert metadata["outputs"] == [{"name": "translation", "datatype": "BYTES", "shape": [-1, 1]}]
    config = client.get_model_config("translation")
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [("translation", "TYPE_STRING", [1])]
    assert config["max_batch_size"] > 0 and "dynamic_batching" in config


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_translation_infer_equals_native(client, server, binary):
    result = client.infer(
        "translation",
        [_text_input(TRANSLATION_TEXTS, binary)],
        outputs=[httpclient.InferRequestedOutput("translation", binary_data=binary)],
        parameters={"beam_size": 2, "max_length": 40},
    )
    translations = result.as_numpy("translation")
    assert translations.shape == (len(TRANSLATION_TEXTS), 1)
    native = _native_translate(server, TRANSLATION_TEXTS, beam_size=2, max_length=40)
    assert _strings(translations) == native
    assert all(native)


def test_translation_defaults_equal_native_defaults(client, server):
    result = client.infer("translation", [_text_input(TRANSLATION_TEXTS[:1], True)])
    assert _strings(result.as_numpy("translation")) == _native_translate(server, TRANSLATION_TEXTS[:1])


@pytest.mark.parametrize(
    ("parameters", "message"),
    [({"beam_size": 0}, "beam_size"), ({"beam_size": 9}, "beam_size"), ({"max_length": "long"}, "max_length")],
)
def test_translation_bad_parameters_are_400(client, parameters, message):
    with pytest.raises(InferenceServerException) as exc:
        client.infer("translation", [_text_input(["A dog runs."], True)], parameters=parameters)
    assert _status(exc) == "400"
    assert message in exc.value.message()


def test_perf_analyzer_requests_translation(server):
    batch, parsed = _perf_analyzer_infer(server, "translation", 2)
    translations = [t.decode() for t in deserialize_bytes_tensor(parsed["translation"])]
    assert translations == _native_translate(server, batch)
