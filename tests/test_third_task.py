"""A third task, defined in the tests only (``tests/toy_task.py``), served by a real server with no core edit.

The core derives everything from the task's ``Wire``: the native route and its validation, the V2 input
check, request parameters and output columns, and the metric labels. V2 clients read V2 names in errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bench.servers import ServerHandle
from tests.toy_task import build_version


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory: pytest.TempPathFactory) -> ServerHandle:
    repo = tmp_path_factory.mktemp("toy-repo")
    build_version(repo / "toy" / "1")
    return start_server(model_repository=repo, task_modules=json.dumps(["tests.toy_task"]))


def _text(texts: list[str]) -> httpclient.InferInput:
    array = np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1)
    return httpclient.InferInput("text", list(array.shape), "BYTES").set_data_from_numpy(array)


def test_native_route_params_and_errors(server: ServerHandle) -> None:
    url = f"{server.url}/v1/bytecount"
    answer = httpx.post(url, json={"texts": ["abc", "é"], "scale": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model": "toy", "version": "1", "counts": [6, 4]}
    assert httpx.post(url, json={"texts": ["abc"]}).json()["counts"] == [3]  # the parameter's default
    bad = httpx.post(url, json={"texts": ["abc"], "scale": 11})
    assert bad.status_code == 422 and bad.json()["error"].startswith("scale:")
    unknown = httpx.post(url, json={"texts": ["abc"], "beam_size": 2})
    assert unknown.status_code == 422 and "beam_size" in unknown.json()["error"]
    assert httpx.post(url, json={"texts": [""]}).json() == {"error": "texts.0: expected 1 to 2000 characters, got 0"}
    # The other tasks' routes exist (built from the task registry) and say that no such model is served.
    missing = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["fine"]})
    assert missing.status_code == 404 and "sentiment" in missing.json()["error"]
    assert "/v1/bytecount" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_v2_metadata_infer_and_v2_names_in_errors(server: ServerHandle) -> None:
    with httpclient.InferenceServerClient(server.url.removeprefix("http://")) as client:
        assert client.is_model_ready("toy")
        metadata = client.get_model_metadata("toy")
        assert metadata["outputs"] == [{"name": "count", "datatype": "INT64", "shape": [-1, 1]}]
        result = client.infer("toy", [_text(["abcd", "ü"])], parameters={"scale": 3})
        assert result.as_numpy("count").tolist() == [[12], [6]]
        for inputs, parameters, message in [
            ([_text(["abcd"])], {"scale": 0}, "invalid parameters: scale: "),
            ([_text([""])], {}, "input 'text' element 0: expected 1 to 2000 characters, got 0"),
            ([_text(["x"] * 65)], {}, "input 'text': expected 1 to 64 texts, got 65"),
        ]:
            with pytest.raises(InferenceServerException) as error:
                client.infer("toy", inputs, parameters=parameters)
            assert error.value.status() == "400"
            assert error.value.message().startswith(message), error.value.message()
            assert "texts" not in error.value.message().split(":")[0]


def test_metric_labels_and_calibration_contract(server: ServerHandle) -> None:
    assert httpx.post(f"{server.url}/v1/bytecount", json={"texts": ["abc"]}).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'lstm_serve_requests_total{endpoint="/v1/bytecount",model="toy",status="200",version="1"}' in metrics
    toy_info = 'lstm_serve_model_info{model="toy",precision="fp32",provider="CPUExecutionProvider",version="1"} 1.0'
    assert toy_info in metrics
    # The task says why it is not calibrated; that is information, not a warning.
    assert "INFO service.registry: toy: no cost calibration (one multiplication per row" in server.log()


def test_the_toy_task_needed_no_core_edit() -> None:
    """Nothing outside tests/ names the toy task: routes, V2 and metrics came from its Wire."""
    root = Path(__file__).resolve().parents[1]
    for folder in ("service", "lstm_core", "lstm_serve"):
        for path in (root / folder).rglob("*.py"):
            assert "bytecount" not in path.read_text(), path
