"""Behaviour under load, against real servers: batching forms, full queue → 503, deadline → 504,
disconnected clients' items are dropped, SIGTERM drains. Nothing here asserts a speed.

The tests that need seconds of queued work serve the fp32 graphs (the slower variant). Every test runs
twice: on a single-process server (``workers=1``) and on two front-end processes
feeding one inference worker (``workers=2``), where the queue, deadlines and cancellation cross the IPC.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench.servers import ServerHandle

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish , and the script is even worse",
    "unfunny and lame .",
    "one of the greatest family-oriented , fantasy-adventure movies ever .",
]
LONG = [" ".join(["good", "bad"] * 64)]


@pytest.fixture(params=[1, 2], ids=["one-process", "two-front-ends"])
def workers(request: pytest.FixtureRequest) -> int:
    return request.param


def metric(server: ServerHandle, name: str, **labels: str) -> float:
    """Sum of the samples of one metric whose labels include ``labels``."""
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def send(server: ServerHandle, texts: list[str], timeout: float = 60.0) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/sentiment", json={"texts": texts}, timeout=timeout)


def crowd(server: ServerHandle, requests: list[list[str]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda texts: send(server, texts), requests))


def test_batches_of_more_than_one_item_form_under_concurrency(start_server, workers: int) -> None:
    live_server = start_server(workers=workers)
    batches_before = metric(live_server, "lstm_serve_batch_size_count")
    singles_before = metric(live_server, "lstm_serve_batch_size_bucket", le="1.0")
    items_before = metric(live_server, "lstm_serve_items_total")
    responses = crowd(live_server, [[TEXTS[i % 4]] for i in range(96)])
    assert all(r.status_code == 200 for r in responses)
    batches = metric(live_server, "lstm_serve_batch_size_count") - batches_before
    singles = metric(live_server, "lstm_serve_batch_size_bucket", le="1.0") - singles_before
    assert metric(live_server, "lstm_serve_items_total") - items_before == 96
    assert batches - singles > 0, "no batch of more than one item formed"
    assert batches < 96


def test_full_queue_answers_503_with_retry_after(start_server, workers: int) -> None:
    server = start_server(max_queue_items=8, max_batch_size=1, workers=workers, precision="fp32")
    responses = crowd(server, [TEXTS for _ in range(24)])  # 96 items offered to an 8-item queue
    statuses = [r.status_code for r in responses]
    assert 503 in statuses and 200 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "full" in refused.json()["error"]
    assert set(statuses) <= {200, 503}
    assert metric(server, "lstm_serve_rejected_total", reason="queue_full") == statuses.count(503)
    assert send(server, TEXTS[:1]).status_code == 200  # and it recovers


def test_deadline_answers_504(start_server, workers: int) -> None:
    server = start_server(request_timeout_s=0.05, max_batch_size=1, workers=workers, precision="fp32")
    responses = crowd(server, [TEXTS * 16 for _ in range(8)])  # 512 single-item batches, 50 ms each
    statuses = [r.status_code for r in responses]
    assert 504 in statuses, statuses
    assert set(statuses) <= {200, 504}
    late = next(r for r in responses if r.status_code == 504)
    assert "deadline" in late.json()["error"]
    assert metric(server, "lstm_serve_rejected_total", reason="timeout") == statuses.count(504)
    time.sleep(0.5)
    # The expired requests' queued items were dropped, not computed: far fewer than 512 items ran.
    assert metric(server, "lstm_serve_items_total") < 512


def wait_for(server: ServerHandle, name: str, at_least: float, timeout: float = 20.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while metric(server, name, **labels) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {at_least}"
        time.sleep(0.01)


def test_disconnected_client_items_are_dropped(start_server, workers: int) -> None:
    server = start_server(max_batch_size=1, workers=workers, precision="fp32")
    items_before = metric(server, "lstm_serve_items_total")
    clients = [httpx.Client(timeout=60) for _ in range(4)]
    barrier = threading.Barrier(5)

    def busy(http: httpx.Client) -> int:
        barrier.wait()  # 4 × 64 long items, one at a time: well over 100 ms of work ahead
        return http.post(f"{server.url}/v1/sentiment", json={"texts": LONG * 64}).status_code

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(busy, http) for http in clients]
        barrier.wait()
        wait_for(server, "lstm_serve_inflight_requests", 1)
        body = json.dumps({"texts": TEXTS * 16}).encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:  # a client that sends, then goes away
            sock.sendall(
                f"POST /v1/sentiment HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            # Gone at once: its end arrives right behind its request, before any answer could. (It stayed
            # 50 ms: once in CI no cancellation was counted, most likely an answer within them.)
        assert [f.result() for f in futures] == [200] * 4
    for http in clients:
        http.close()
    wait_for(server, "lstm_serve_rejected_total", 1, reason="cancelled")
    time.sleep(0.3)
    # The 64 items of the gone client were dropped before compute (not all of them ran, at the very least).
    assert metric(server, "lstm_serve_items_total") - items_before < 256 + 64


def test_sigterm_finishes_accepted_work_and_exits_0(start_server, workers: int) -> None:
    # 256 long texts a request (the default per-request cost budget), run one at a time: the first request
    # cannot finish before the last one is in (with 64 it once did on a 2-core CI machine once the request
    # path got faster). The deadline is not what this checks: on an H100 the 3,072 one-row runs took over
    # the default 10 s (a CUDA run costs more than a CPU one at batch 1), and the last requests got 504.
    server = start_server(
        fresh=True,
        max_batch_size=1,
        workers=workers,
        precision="fp32",
        max_texts_per_request=256,
        max_queue_items=4096,
        request_timeout_s=120,
    )
    n = 12
    results: list[httpx.Response | Exception] = []
    lock = threading.Lock()
    clients = [httpx.Client(timeout=60) for _ in range(n)]
    barrier = threading.Barrier(n)  # all requests leave together, so all are in flight at once

    def client(http: httpx.Client) -> None:
        barrier.wait()
        try:  # 256 items of 128 tokens each, run one at a time: seconds of queued work in all
            response = http.post(f"{server.url}/v1/sentiment", json={"texts": LONG * 256})
        except Exception as exc:  # recorded and asserted on below
            response = exc
        with lock:
            results.append(response)

    threads = [threading.Thread(target=client, args=(http,)) for http in clients]
    for thread in threads:
        thread.start()
    wait_for(server, "lstm_serve_inflight_requests", n)  # all accepted and queued
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    try:  # intake has stopped: a new connection is refused, or answered 503
        late = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["late"]}, timeout=10)
        assert late.status_code == 503, late.text
    except httpx.TransportError:
        pass
    for thread in threads:
        thread.join(timeout=60)
    assert server.process.wait(timeout=60) == 0, server.log()[-3000:]
    assert len(results) == n
    for response in results:
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 256
    assert "shutdown complete" in server.log()
    for http in clients:
        http.close()
