"""The request edge against real servers (loopback subprocesses): every hostile input of issue 13 gets its
documented 4xx with a JSON error and the server serves normally afterwards; API keys, rate limits,
slow and stalled clients, clients that leave mid-upload, repository faults, no leaks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from bench.servers import ServerHandle, launch_server
from service.repository import choose, scan

REPO_ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = REPO_ROOT / "model_repository" / "sentiment"
HUGE = b"9" * 5001  # longer than Python's int-from-text limit (4300 digits)
# 5xx answers other than /readyz's 503 while loading (which the launcher polls for)
SERVER_ERRORS = r'lstm_serve_requests_total\{endpoint="(?!/readyz")[^"]*".*status="5\d\d"'


@pytest.fixture(scope="module")
def sentiment_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo-sentiment")
    shutil.copytree(SENTIMENT, repo / "sentiment")
    return repo


def _host_port(server: ServerHandle) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _metric(server: ServerHandle, pattern: str, headers: dict[str, str] | None = None) -> float:
    """The sum of every sample of /metrics whose line matches ``pattern`` (a regex on the series)."""
    text = httpx.get(f"{server.url}/metrics", headers=headers).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("#") and re.match(pattern, line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _serves(server: ServerHandle) -> bool:
    ok = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["still serving"]}, timeout=30)
    return ok.status_code == 200 and ok.json()["results"][0]["label"] in {"positive", "negative"}


# --- the regression corpus: (name, path, body, headers, status, error fragment) --------------------------

V2_TEXT = {"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["A dog."]}
JSON = {"content-type": "application/json"}


def _v2(**request: object) -> bytes:
    return json.dumps({"inputs": [V2_TEXT], **request}).encode()


def _binary(elements: list[bytes], shape: object = None, size: object = None, **request: object) -> tuple[bytes, str]:
    """A Triton binary-extension body: JSON header + length-prefixed BYTES, and its header length."""
    raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    shape_json = json.dumps(shape if shape is not None else [len(elements), 1]).encode()
    size_json = str(len(raw)).encode() if size is None else size
    header = (
        b'{"inputs":[{"name":"text","shape":'
        + shape_json
        + b',"datatype":"BYTES","parameters":{"binary_data_size":'
        + size_json
        + b"}}]"
        + (b"," + json.dumps(request).encode()[1:-1] if request else b"")
        + b"}"
    )
    return header + raw, str(len(header))


def _binary_case(name, elements, status, fragment, **kw):
    body, length = _binary(elements, **kw)
    return (name, "/v2/models/sentiment/infer", body, {"Inference-Header-Content-Length": length}, status, fragment)


CORPUS = [
    # native, JSON
    ("native lone surrogate", "/v1/sentiment", b'{"texts": ["\\ud800"]}', JSON, 400, "Invalid JSON"),
    ("native huge integer", "/v1/translate", b'{"texts": ["A dog."], "beam_size": ' + HUGE + b"}", JSON, 400, ""),
    ("native beam as string", "/v1/translate", b'{"texts": ["A dog."], "beam_size": "4"}', JSON, 422, "beam_size"),
    ("native beam as bool", "/v1/translate", b'{"texts": ["A dog."], "beam_size": true}', JSON, 422, "beam_size"),
    ("native beam as float", "/v1/translate", b'{"texts": ["A dog."], "beam_size": 4.0}', JSON, 422, "beam_size"),
    ("native whitespace translate", "/v1/translate", b'{"texts": [" \\t\\n "]}', JSON, 422, "white space"),
    ("native whitespace sentiment", "/v1/sentiment", b'{"texts": ["ok", "\\u3000"]}', JSON, 422, "texts.1"),
    ("native deep nesting", "/v1/sentiment", b'{"texts": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON, 400, ""),
    (
        "native text/plain",
        "/v1/sentiment",
        b'{"texts": ["x"]}',
        {"content-type": "text/plain"},
        415,
        "application/json",
    ),
    ("native form post", "/v1/translate", b"texts=x", {"content-type": "application/x-www-form-urlencoded"}, 415, ""),
    ("native no content type", "/v1/sentiment", b'{"texts": ["x"]}', {}, 415, "Content-Type"),
    # V2, JSON
    ("v2 lone surrogate data", "/v2/models/sentiment/infer", _v2(inputs=[V2_TEXT | {"data": ["\ud800"]}]), {}, 400, ""),
    ("v2 lone surrogate id", "/v2/models/sentiment/infer", b'{"id": "\\ud800", ' + _v2()[1:], {}, 400, "malformed"),
    (
        "v2 lone surrogate input name",
        "/v2/models/sentiment/infer",
        b'{"inputs": [{"name": "\\udfff", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}',
        {},
        400,
        "",
    ),
    (
        "v2 lone surrogate output",
        "/v2/models/sentiment/infer",
        _v2()[:-1] + b', "outputs": [{"name": "\\udc00"}]}',
        {},
        400,
        "",
    ),
    (
        "v2 huge shape",
        "/v2/models/sentiment/infer",
        b'{"inputs": [{"name": "text", "shape": [1, ' + HUGE + b'], "datatype": "BYTES", "data": ["x"]}]}',
        {},
        400,
        "malformed",
    ),
    (
        "v2 int64 overflow shape",
        "/v2/models/sentiment/infer",
        _v2(inputs=[V2_TEXT | {"shape": [2**64, 1]}]),
        {},
        400,
        "shape",
    ),
    (
        "v2 huge beam_size",
        "/v2/models/translation/infer",
        _v2()[:-1] + b', "parameters": {"beam_size": ' + HUGE + b"}}",
        {},
        400,
        "malformed",
    ),
    ("v2 beam as string", "/v2/models/translation/infer", _v2(parameters={"beam_size": "4"}), {}, 400, "beam_size"),
    ("v2 beam as bool", "/v2/models/translation/infer", _v2(parameters={"beam_size": True}), {}, 400, "beam_size"),
    (
        "v2 whitespace",
        "/v2/models/translation/infer",
        _v2(inputs=[V2_TEXT | {"data": ["   "]}]),
        {},
        400,
        "white space",
    ),
    (
        "v2 deep nesting",
        "/v2/models/sentiment/infer",
        b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
        + b"[" * 5000
        + b'"x"'
        + b"]" * 5000
        + b"}]}",
        {},
        400,
        "nested too deeply",
    ),
    # V2, binary tensors
    _binary_case("v2 binary not utf-8", [b"\xff\xfe"], 400, "not UTF-8"),
    _binary_case("v2 binary encoded surrogate", [b"\xed\xa0\x80"], 400, "not UTF-8"),
    _binary_case("v2 binary whitespace", [b"  "], 400, "white space"),
    _binary_case("v2 binary huge shape", [b"x"], 400, "", shape=[10**12, 1]),
    _binary_case("v2 binary huge size", [b"x"], 400, "malformed", size=HUGE),
    _binary_case("v2 binary surrogate id", [b"x"], 400, "", id="\ud800"),
    (
        "v2 binary huge header length",
        "/v2/models/sentiment/infer",
        _binary([b"x"])[0],
        {"Inference-Header-Content-Length": HUGE.decode()},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "v2 gzip bomb",
        "/v2/models/sentiment/infer",
        gzip.compress(b"{" + b" " * 20_000_000 + b"}"),
        {"Content-Encoding": "gzip"},
        413,
        "decompressed",
    ),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "fragment"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_input_gets_its_4xx_and_the_server_keeps_serving(
    live_server: ServerHandle, name: str, path: str, body: bytes, headers: dict, status: int, fragment: str
) -> None:
    answer = httpx.post(f"{live_server.url}{path}", content=body, headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert set(error) == {"error"} and fragment in error["error"], error
    assert _serves(live_server)


def test_the_corpus_added_no_server_error(live_server: ServerHandle) -> None:
    for item in CORPUS:  # run all of it once more (order-independent), then read the counters
        httpx.post(f"{live_server.url}{item[1]}", content=item[2], headers=item[3], timeout=30)
    assert _metric(live_server, SERVER_ERRORS) == 0
    log = live_server.log()
    assert "Traceback" not in log and "never awaited" not in log


# --- no leaks ---------------------------------------------------------------------------------------


def test_no_server_header_and_request_ids_are_echoed(live_server: ServerHandle) -> None:
    answer = httpx.get(f"{live_server.url}/healthz", headers={"X-Request-ID": "trace-42.a"})
    assert "server" not in answer.headers
    assert answer.headers["x-request-id"] == "trace-42.a"
    made_up = httpx.get(f"{live_server.url}/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert re.fullmatch(r"[0-9a-f]{32}", made_up.headers["x-request-id"])


def test_openapi_describes_what_the_server_does(live_server: ServerHandle) -> None:
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v2/models/{model_name}", "/v2/models/{model_name}/ready", "/v2/models/{model_name}/config"):
        assert "404" in paths[path]["get"]["responses"], path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert {"application/json", "application/octet-stream"} <= set(body)
    assert body["application/json"]["schema"]["properties"]["inputs"]["minItems"] == 1
    assert {"400", "404", "413"} <= set(infer["responses"])
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    texts = paths["/v1/translate"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert texts["texts"]["maxItems"] == 64
    assert texts["texts"]["items"] == {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": r"\S"}
    assert texts["beam_size"]["type"] == "integer"
    assert "415" in paths["/v1/sentiment"]["post"]["responses"]
    assert "503" in paths["/healthz"]["get"]["responses"]  # the connection limit holds on every route


# --- API keys --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(start_server, sentiment_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerHandle:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# one key, or its sha256, a line\n{hashlib.sha256(b'gamma-key').hexdigest()}\ndelta-key\n")
    return start_server(model_repository=sentiment_repo, api_keys="alpha-key, beta-key", api_keys_file=keys_file)


def test_api_keys_are_required_except_on_probes(keyed_server: ServerHandle) -> None:
    url = keyed_server.url
    body = {"texts": ["A fine film."]}
    missing = httpx.post(f"{url}/v1/sentiment", json=body)
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    for wrong in ("Bearer nope", "Bearer alpha-key2", "Basic YWxwaGEta2V5", "Bearer", "alpha-key"):
        answer = httpx.post(f"{url}/v1/sentiment", json=body, headers={"Authorization": wrong})
        assert answer.status_code == 401 and set(answer.json()) == {"error"}, wrong
    for key in ("alpha-key", "beta-key", "gamma-key", "delta-key"):
        answer = httpx.post(f"{url}/v1/sentiment", json=body, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, (key, answer.text)
    for path in ("/v1/models", "/v2/models/sentiment", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{path}").status_code == 401, path
        assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer beta-key"}).status_code == 200, path
    for probe in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{url}{probe}").status_code == 200, probe
    assert _metric(keyed_server, r'lstm_serve_rejected_total\{.*reason="unauthorized"') >= 5
    log = keyed_server.log()
    assert not any(key in log for key in ("alpha-key", "beta-key", "gamma-key", "delta-key"))
    spec = httpx.get(f"{url}/openapi.json", headers={"Authorization": "Bearer alpha-key"}).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "401" in spec["paths"]["/v1/sentiment"]["post"]["responses"]
    assert "401" not in spec["paths"]["/readyz"]["get"]["responses"]


def test_metrics_can_need_a_key(start_server, sentiment_repo: Path) -> None:
    server = start_server(model_repository=sentiment_repo, api_keys="m-key", metrics_auth="true")
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer m-key"}).status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200


# --- rate limits -----------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(start_server, sentiment_repo: Path) -> None:
    server = start_server(model_repository=sentiment_repo, rate_limit_per_s=0.2, rate_limit_burst=2)
    answers = [httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["fine"]}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    limited = answers[-1]
    assert 1 <= int(limited.headers["retry-after"]) <= 5 and "rate limit" in limited.json()["error"]
    assert all(httpx.get(f"{server.url}/readyz").status_code == 200 for _ in range(5))  # probes are never limited
    assert _metric(server, r'lstm_serve_rejected_total\{.*reason="rate_limited"') == 1


# --- slow, stalled and vanishing clients -----------------------------------------------------------


@pytest.fixture(scope="module")
def impatient_server(start_server, sentiment_repo: Path) -> ServerHandle:
    return start_server(model_repository=sentiment_repo, header_timeout_s=1, body_timeout_s=2)


def _closed_after(sock: socket.socket, trickle: bytes | None, limit: float) -> float:
    """Seconds until the server closes ``sock``, sending ``trickle`` every 0.2 s meanwhile."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if trickle:
            try:
                sock.sendall(trickle)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
    raise AssertionError(f"connection still open after {limit}s")


def test_slowloris_connections_are_closed_within_the_header_timeout(impatient_server: ServerHandle) -> None:
    address = _host_port(impatient_server)
    slow = [socket.create_connection(address) for _ in range(20)]
    idle = socket.create_connection(address)
    try:
        for sock in slow:
            sock.sendall(b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\n")
        assert _serves(impatient_server)  # a normal client is served meanwhile
        assert _closed_after(slow[0], b"X-Slow: 1\r\n", limit=5) < 2.5
        assert _closed_after(idle, None, limit=5) < 2.5
        for sock in slow[1:]:
            assert _closed_after(sock, None, limit=3) < 3
        # A kept-alive connection gets the same time for its next request's headers.
        with socket.create_connection(address) as keep:
            keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert keep.recv(65536).startswith(b"HTTP/1.1 200")
            keep.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert _closed_after(keep, b"X-Slow: 1\r\n", limit=5) < 2.5
    finally:
        for sock in [*slow, idle]:
            sock.close()
    assert _serves(impatient_server)


def test_past_the_connection_limit_a_json_503_with_retry_after_then_serving_resumes(
    start_server, sentiment_repo: Path
) -> None:
    """uvicorn's own answer there is plain text without Retry-After; the service's is like its other 503s."""
    server = start_server(model_repository=sentiment_repo, max_connections=3, workers=1)
    address = _host_port(server)
    held = [socket.create_connection(address) for _ in range(2)]  # open, no request yet: they count
    try:
        time.sleep(0.2)
        refused = httpx.get(f"{server.url}/healthz", timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        assert refused.headers["content-type"] == "application/json"
        assert "too many connections" in refused.json()["error"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert _serves(server)


def test_a_stalled_body_gets_408_and_its_memory_is_freed(impatient_server: ServerHandle) -> None:
    address = _host_port(impatient_server)
    held = "lstm_serve_request_body_bytes "
    head = (
        b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    stalled = [socket.create_connection(address) for _ in range(10)]
    try:
        for sock in stalled:
            sock.sendall(head + b'{"texts": ["' + b"x" * 600_000)
        deadline = time.monotonic() + 1.5
        while _metric(impatient_server, held) < 10 * 600_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric(impatient_server, held) >= 10 * 600_000  # what the stalled uploads hold, while they stall
        for sock in stalled:
            sock.settimeout(5)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"connection: close" in answer.lower()
            assert _closed_after(sock, None, limit=3) < 3
    finally:
        for sock in stalled:
            sock.close()
    assert _metric(impatient_server, held) == 0  # dropped with their requests
    assert _metric(impatient_server, r'lstm_serve_rejected_total\{.*reason="slow_client"') >= 10
    assert _serves(impatient_server)


def test_a_client_leaving_mid_upload_is_not_a_server_error(impatient_server: ServerHandle) -> None:
    address = _host_port(impatient_server)
    gone = r'lstm_serve_requests_total\{endpoint="/v1/sentiment",model="sentiment",status="499"'
    before = _metric(impatient_server, gone)
    lines_before = impatient_server.log().count("client disconnected during the request body")
    head = b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    for _ in range(5):
        with socket.create_connection(address) as sock:
            sock.sendall(head + b'{"texts": ["' + b"y" * 5000)
            time.sleep(0.1)
    deadline = time.monotonic() + 5
    while _metric(impatient_server, gone) < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(impatient_server, gone) == before + 5
    assert _metric(impatient_server, SERVER_ERRORS) == 0
    log = impatient_server.log()
    assert log.count("client disconnected during the request body") == lines_before + 5  # one line each
    assert "Traceback" not in log
    assert _serves(impatient_server)


# --- the model repository: faults are reported, without absolute paths ------------------------------


def _copy_sentiment(repo: Path, folder: str) -> Path:
    shutil.copytree(SENTIMENT / "1", repo / "sentiment" / folder)
    return repo / "sentiment" / folder


def test_repository_policy(tmp_path: Path) -> None:
    _copy_sentiment(tmp_path, "v1")
    (refused,) = scan(tmp_path)
    assert refused.problem and "no version folder" in refused.problem and "v1" in refused.problem
    shutil.move(tmp_path / "sentiment" / "v1", tmp_path / "sentiment" / "1")
    (tmp_path / "sentiment" / "2").mkdir()
    (tmp_path / "sentiment" / "old").mkdir()
    served = choose(tmp_path / "sentiment")
    assert served.problem is None and served.version == "1"
    notes = dict(served.notes)
    assert notes["sentiment/2"] == "refused: no model.json; serving version 1"
    assert notes["sentiment/old"].startswith("ignored: not a version folder")
    pinned = choose(tmp_path / "sentiment", pin="2")  # a pin never falls back
    assert pinned.problem == "no model.json"
    shutil.rmtree(tmp_path / "sentiment" / "1")
    (alone,) = scan(tmp_path)
    assert alone.problem == "no model.json" and alone.version == "2"
    (tmp_path / "lost+found").mkdir()  # a volume's root: nothing of a model, ignored
    assert [mv.name for mv in scan(tmp_path)] == ["sentiment"]
    flat = tmp_path / "flat"  # files straight in the model folder
    shutil.copytree(SENTIMENT / "1", flat)
    assert choose(flat).problem == "no version folder: model.json belongs in flat/<version>/"


def _reports(server: ServerHandle, tmp: Path) -> tuple[httpx.Response, dict]:
    ready = httpx.get(f"{server.url}/readyz")
    models = httpx.get(f"{server.url}/v1/models").json()
    for body in (ready.text, json.dumps(models)):
        assert str(tmp) not in body and "/work" not in body and str(REPO_ROOT) not in body, body
    return ready, models


def test_misnamed_version_folder_is_refused_and_reported(tmp_path: Path) -> None:
    _copy_sentiment(tmp_path / "repo", "v1")
    server = launch_server({"model_repository": tmp_path / "repo"}, tmp_path / "logs", wait_for="/healthz")
    try:
        server.wait_for_log("refusing model sentiment")
        server.settle()  # every front end has the worker's state
        ready, models = _reports(server, tmp_path)
        assert ready.status_code == 503
        assert (
            "no version folder" in ready.json()["models"]["sentiment"] and "v1" in ready.json()["models"]["sentiment"]
        )
        assert models["state"]["sentiment"] == ready.json()["models"]["sentiment"]
        assert models["problems"]["sentiment/v1"].startswith("ignored")
    finally:
        assert server.stop() == 0


def test_a_broken_newer_version_does_not_block_the_good_one(tmp_path: Path) -> None:
    _copy_sentiment(tmp_path / "repo", "1")
    (tmp_path / "repo" / "sentiment" / "2").mkdir()
    server = launch_server({"model_repository": tmp_path / "repo"}, tmp_path / "logs")
    try:
        ready, models = _reports(server, tmp_path)
        assert ready.status_code == 200 and ready.json()["models"] == {"sentiment": "ready"}
        problem = "refused: no model.json; serving version 1"
        assert ready.json()["problems"] == {"sentiment/2": problem} == models["problems"]
        assert [card["version"] for card in models["models"]] == ["1"]
        answer = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["Lovely."]})
        assert answer.status_code == 200 and answer.json()["version"] == "1"
        assert "sentiment/2: refused: no model.json" in server.log()
    finally:
        assert server.stop() == 0


def test_a_version_that_fails_to_load_is_reported_without_paths(tmp_path: Path) -> None:
    folder = _copy_sentiment(tmp_path / "repo", "1")
    (folder / "model.onnx").write_bytes(b"not an onnx graph")
    card = json.loads((folder / "model.json").read_text())
    card["files"]["model.onnx"] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (folder / "model.json").write_text(json.dumps(card))
    # fp32: the graph broken here (precision=auto would serve the intact int8 variant beside it)
    overrides = {"model_repository": tmp_path / "repo", "precision": "fp32"}
    server = launch_server(overrides, tmp_path / "logs", wait_for="/healthz")
    try:
        server.wait_for_log("refusing model sentiment version 1: loading failed")
        server.settle()  # every front end has the worker's state
        ready, _ = _reports(server, tmp_path)
        assert ready.status_code == 503
        assert ready.json()["models"]["sentiment"] == "refused: version 1 failed to load (see the server log)"
        refused = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["hello"]})
        assert refused.status_code == 503 and str(tmp_path) not in refused.text
    finally:
        assert server.stop() == 0
    assert str(folder) in server.log()  # the operator gets the whole story in the log
