"""Step-level (continuous) batching of translation, against real servers (the default ``decode_mode``).

A short request overtakes a long one, answers under concurrency equal answers alone, a client that
goes away frees its decoder rows at the next step, the 503 queue bound and the 504 deadline hold,
SIGTERM drains the running set. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.servers import ServerHandle
from tests.test_service_load import metric, wait_for

LONG = (
    "A man in a blue shirt and a woman in a red dress are walking their two small dogs along the sandy beach "
    "while three children in yellow raincoats play with a big red ball near the old wooden boat."
)
SHORT = "A dog runs."
ROWS = "lstm_serve_decoder_rows"


def translate(server: ServerHandle, texts: list[str], timeout: float = 120.0, **params) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/translate", json={"texts": texts, **params}, timeout=timeout)


def test_the_server_decodes_step_by_step(live_server: ServerHandle) -> None:
    log = live_server.log()
    assert "model translation/1: step-level decoding warmed up" in log
    # Only the step scheduler warms up: the round path nothing runs is neither warmed at full size nor timed.
    assert "model translation/1 warmed up with" not in log and "translation: batch cost" not in log
    assert "model sentiment/1 warmed up with" in log  # a round-batched model still is
    before = metric(live_server, "lstm_serve_decoder_tokens_total")
    assert translate(live_server, [SHORT], beam_size=1).status_code == 200
    assert metric(live_server, "lstm_serve_decoder_tokens_total") > before
    assert metric(live_server, "lstm_serve_decoder_step_duration_seconds_count") > 0


def test_a_short_request_sent_while_a_long_one_decodes_finishes_first(start_server) -> None:
    # CPU and fp32, the slower graphs, whatever the machine: on an H200 the long request's steps take about
    # a millisecond, so it ended before the short one could even be sent (seen: 3.9 ms apart).
    # One decode thread and no admission wait: this checks that a newcomer overtakes at all; the wait
    # bound of grouped admission is tests/test_decode_scheduler.py's.
    live_server = start_server(precision="fp32", provider="cpu", decode_intra_op_threads=1, decode_admit_wait_steps=0)
    finished: dict[str, float] = {}

    def long_request() -> None:
        # Three sentences in one text: about three times the steps, so the long request still decodes
        # when the short one arrives, even with a second thread and newcomers waiting up to 4 steps.
        # 4 × beam 8 = 32 rows of about 128 source positions: the short one fits beside them.
        response = translate(live_server, [" ".join([LONG] * 3)] * 4, beam_size=8, max_length=256)
        assert response.status_code == 200, response.text
        finished["long"] = time.monotonic()

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_for(live_server, ROWS, 8)  # the long request is decoding
    response = translate(live_server, [SHORT], beam_size=1)
    finished["short"] = time.monotonic()
    assert response.status_code == 200, response.text
    thread.join(timeout=120)
    assert finished["short"] < finished["long"], finished


def test_answers_under_concurrency_with_mixed_settings_equal_answers_alone(start_server) -> None:
    # fp32: the int8 graphs quantise activations per batch, so a sentence's answer would depend on the
    # rows it shares a step with (docs/benchmarks.md, precision variants).
    live_server = start_server(precision="fp32")
    from tests.test_translation_service import SENTENCES

    settings = [
        {"beam_size": 1},
        {"beam_size": 4},
        {"beam_size": 2, "max_length": 6},
        {"beam_size": 3, "length_penalty": 1.0},
        {"beam_size": 4, "length_penalty": 0.0},
    ]
    cases = [([text], settings[i % len(settings)]) for i, text in enumerate(SENTENCES)] * 2
    cases += [([LONG, SHORT], {"beam_size": 4}), ([SHORT, LONG, SHORT], {"beam_size": 1})]

    def send(case):
        texts, params = case
        return translate(live_server, texts, **params)

    alone = [send(case).json()["translations"] for case in cases]
    with ThreadPoolExecutor(len(cases)) as pool:
        together = list(pool.map(send, cases))
    for case, expected, response in zip(cases, alone, together, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["translations"] == expected, case


def test_length_penalty_is_a_request_parameter(live_server: ServerHandle) -> None:
    ok = translate(live_server, [LONG], beam_size=4, length_penalty=1.5)
    assert ok.status_code == 200, ok.text
    assert translate(live_server, [SHORT], length_penalty=-1).status_code == 422
    assert translate(live_server, [SHORT], length_penalty=3).status_code == 422
    v2 = httpx.post(
        f"{live_server.url}/v2/models/translation/infer",
        json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [LONG]}],
            "parameters": {"beam_size": 4, "length_penalty": 1.5},
        },
        timeout=60,
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == ok.json()["translations"]


def test_a_client_that_disconnects_frees_its_rows_at_the_next_step(start_server) -> None:
    server = start_server(decode_max_rows=64, precision="fp32", max_request_cost=65536)  # 32 × 8 × 256
    items_before = metric(server, "lstm_serve_items_total", model="translation")
    body = json.dumps({"texts": [LONG] * 32, "beam_size": 8, "max_length": 256}).encode()  # 256 rows queued
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /v1/translate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(server, ROWS, 64)  # the running set is full of this client's rows
    # Gone: its rows leave the running set at the next step, its queued sentences are never admitted.
    deadline = time.monotonic() + 10
    while metric(server, ROWS) > 0:
        assert time.monotonic() < deadline, "rows of a gone client were not freed"
        time.sleep(0.01)
    wait_for(server, "lstm_serve_rejected_total", 1, reason="cancelled")
    time.sleep(0.3)
    assert metric(server, ROWS) == 0
    assert metric(server, "lstm_serve_items_total", model="translation") - items_before < 32
    assert translate(server, [SHORT]).status_code == 200  # and it keeps serving


def test_full_queue_answers_503_and_deadline_answers_504(start_server) -> None:
    server = start_server(max_queue_items=8, decode_max_rows=8, precision="fp32")
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: translate(server, [LONG] * 4, beam_size=4), range(12)))
    statuses = [r.status_code for r in responses]
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "full" in refused.json()["error"]
    assert metric(server, "lstm_serve_rejected_total", model="translation", reason="queue_full") == statuses.count(503)

    slow = start_server(request_timeout_s=0.3, decode_max_rows=8, precision="fp32")
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: translate(slow, [LONG] * 8, beam_size=8, max_length=256), range(6)))
    statuses = [r.status_code for r in responses]
    assert 504 in statuses and set(statuses) <= {200, 504}, statuses
    assert "deadline" in next(r for r in responses if r.status_code == 504).json()["error"]
    deadline = time.monotonic() + 10
    while metric(slow, ROWS) > 0:  # expired sentences are dropped, not decoded to their end
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert metric(slow, "lstm_serve_items_total", model="translation") < 48


def test_sigterm_drains_the_running_set_and_exits_0(start_server) -> None:
    server = start_server(fresh=True, decode_max_rows=32, precision="fp32")
    n = 6
    results: list[httpx.Response | Exception] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)  # all requests leave together: on a loaded machine a thread that started
    # late once sent its request after the first had finished, and 6 were never in flight at once

    def client() -> None:
        barrier.wait()
        try:
            response = translate(server, [LONG, SHORT] * 3, beam_size=4)
        except Exception as exc:  # recorded and asserted on below
            response = exc
        with lock:
            results.append(response)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for thread in threads:
        thread.start()
    wait_for(server, "lstm_serve_inflight_requests", n, model="translation")
    wait_for(server, ROWS, 4)
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=120)
    assert server.process.wait(timeout=60) == 0, server.log()[-3000:]
    assert len(results) == n
    for response in results:
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        assert len(response.json()["translations"]) == 6
    assert "shutdown complete" in server.log()
