"""``lstm-serve serve`` (or ``python -m service``): uvicorn on the model repository, with graceful shutdown.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and lets in-flight requests finish (up to
``graceful_timeout_s``), then the app's lifespan drains the batch queues; the process exits 0.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from types import FrameType

import uvicorn

from service.app import create_app
from service.layout import process_layout
from service.logs import configure as configure_logging_as
from service.protocol import protocol_class
from service.registry import ServedModels
from service.settings import Settings


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lstm-serve serve",
        description="Serve model_repository/ over HTTP. Every setting is also an env var LSTM_SERVE_<NAME> "
        "(see the README's settings table); options given here win.",
    )
    parser.add_argument("--host", help="interface (LSTM_SERVE_HOST)")
    parser.add_argument("--port", type=int, help="port (LSTM_SERVE_PORT)")
    parser.add_argument("--model-repository", help="model repository folder (LSTM_SERVE_MODEL_REPOSITORY)")
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], help="LSTM_SERVE_PROVIDER")
    parser.add_argument("--max-batch-size", type=int, help="LSTM_SERVE_MAX_BATCH_SIZE (1 = no batching)")
    parser.add_argument("--workers", type=int, help="LSTM_SERVE_WORKERS (HTTP processes; 0 = auto)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return parser.parse_args(list(argv))


class _Server(uvicorn.Server):
    """uvicorn's server, telling the model registry the moment a stop signal arrives.

    From then on ``/readyz`` answers 503 (load balancers stop routing here) and new inference requests
    get 503 + ``Connection: close``, while everything already accepted is finished.
    """

    def __init__(self, config: uvicorn.Config, registry: ServedModels) -> None:
        super().__init__(config)
        self.registry = registry

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.registry.begin_shutdown()
        super().handle_exit(sig, frame)


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    """uvicorn's settings for a server process (the single one, or each front end)."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the format configured by configure_logging for uvicorn's loggers too
        access_log=False,  # per-request logging costs more than the inference; metrics count requests
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        lifespan="on",
        # The request edge (docs/security.md): headers within header_timeout_s or the connection is closed,
        # idle keep-alive connections closed, at most max_connections at once (503 beyond), no Server header.
        http=protocol_class(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        server_header=False,
    )


def configure_logging(settings: Settings) -> None:
    """Every process of a server logs alike (``log_level``, ``log_format``: text or JSON lines)."""
    configure_logging_as(settings.log_level, settings.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv or [])
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings)
    layout = process_layout(settings)
    if layout.frontends > 1:
        from service.supervisor import Supervisor

        return Supervisor(settings, layout, overrides).run()
    app = create_app(settings)
    server = _Server(uvicorn_config(app, settings), app.state.registry)
    # uvicorn re-raises the signal it caught once it has shut down; a no-op handler makes that re-raise
    # harmless, so a drained SIGTERM exits 0 (not -15) as orchestrators expect from a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return 0 if server.started else 1
