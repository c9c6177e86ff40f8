"""``python -m bench.edge_overhead``: what the ASGI stack costs a native request, in-process, no sockets.

Why: on a GPU machine the request path, not the model, bounds single-text throughput, and end-to-end
runs on this 2-core machine swing by more than a few percent. This calls one app directly (uvloop, a
complete body, a ``send`` that drops the messages) with a trivial ``DirectRoute`` endpoint behind the
service's real request edge and error handlers, once passing every request through FastAPI's stack
(``direct={}``) and once with the edge calling the native endpoint itself (what the service does).
The difference is the time the skipped layers take per request. Medians of interleaved repeats.

Writes ``<out>.json`` and ``<out>.png``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.load import plot_bars
from bench.servers import REPO_ROOT
from service.api.common import DirectRoute
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import BodyReader, RequestEdgeMiddleware

PATH = "/v1/sentiment"
BODY = b'{"texts": ["A charming, funny film."]}'


async def _answer(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"model": "sentiment", "version": "1", "results": [{"label": "positive", "score": 0.9}]})


def build(direct: bool) -> FastAPI:
    app = FastAPI()
    app.router.add_api_route(PATH, _answer, methods=["POST"], route_class_override=DirectRoute)
    install_error_handlers(app)
    metrics = Metrics()
    routes = {r.path: r for r in app.routes if isinstance(r, DirectRoute)} if direct else {}
    registry: Any = type("NoModels", (), {"models": {}})()
    body = BodyReader(1 << 20, 5.0, metrics)
    app.add_middleware(
        RequestEdgeMiddleware, metrics=metrics, registry=registry, route_tasks={PATH: "sentiment"}, body=body,
        direct=routes,
    )  # fmt: skip
    return app


async def _per_request_us(app: FastAPI, n: int) -> float:
    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(_: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / n * 1e6


async def _measure(requests: int, repeats: int) -> dict[str, list[float]]:
    apps = {"full stack": build(direct=False), "direct (served)": build(direct=True)}
    for app in apps.values():
        await _per_request_us(app, requests // 2)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(repeats):
        for name, app in apps.items():
            runs[name].append(await _per_request_us(app, requests))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=5000, help="requests per measurement")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "edge_overhead")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    import uvloop

    runs = uvloop.run(_measure(args.requests, args.repeats))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print("| path | µs per request (median) | runs |\n|---|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"argv": sys.argv[1:], "runs_us": runs, "medians_us": medians}, indent=2) + "\n"
    )
    title = "ASGI stack of a native request (in-process)"
    plot_bars(list(medians), list(medians.values()), args.out.with_suffix(".png"), "µs per request", title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
