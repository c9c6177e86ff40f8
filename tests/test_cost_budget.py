"""Admission by cost, against real servers: one request over ``max_request_cost`` gets 413 saying why,
a client over ``cost_per_s_per_client`` gets 429 + Retry-After, and cheap requests keep being served."""

from __future__ import annotations

import httpx

from bench.servers import ServerHandle
from tests.test_service_load import metric

CAPTION = "A man in a blue shirt is playing the guitar."


def translate(server: ServerHandle, texts: list[str], **params: int) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/translate", json={"texts": texts, **params}, timeout=60)


def test_a_request_over_the_budget_gets_413_that_says_why(start_server) -> None:
    server = start_server(max_request_cost=1000)
    costly = translate(server, [CAPTION] * 8, beam_size=4, max_length=128)  # 8 × 4 × 128 = 4096
    assert costly.status_code == 413
    error = costly.json()["error"]
    assert "4096" in error and "1000" in error and "beam_size" in error
    v2 = httpx.post(
        f"{server.url}/v2/models/translation/infer",
        json={
            "inputs": [{"name": "text", "shape": [8, 1], "datatype": "BYTES", "data": [CAPTION] * 8}],
            "parameters": {"beam_size": 4, "max_length": 128},
        },
    )
    assert v2.status_code == 413 and "4096" in v2.json()["error"]
    assert translate(server, [CAPTION], beam_size=2, max_length=100).status_code == 200  # 200 ≤ 1000
    sentiment = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["fine"]})
    assert sentiment.status_code == 200
    assert metric(server, "lstm_serve_rejected_total", reason="too_costly") == 2


def test_a_client_over_its_cost_budget_gets_429_with_retry_after(start_server) -> None:
    server = start_server(max_request_cost=1000, cost_per_s_per_client=100)
    statuses = [translate(server, [CAPTION], beam_size=2, max_length=100).status_code for _ in range(6)]
    assert statuses[:5] == [200] * 5 and statuses[5] == 429, statuses  # a 1000-unit bucket, 200 a request
    refused = translate(server, [CAPTION], beam_size=2, max_length=100)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "cost budget" in refused.json()["error"]
    assert metric(server, "lstm_serve_rejected_total", reason="over_budget") >= 2
