"""Shared fixtures: REAL servers (``python -m service`` subprocesses, what ``lstm-serve serve`` runs) on loopback.

``start_server(**overrides)`` starts (or reuses, for the same overrides) a server with extra
``LSTM_SERVE_*`` settings, e.g. ``start_server(max_batch_size=1)`` -> ``LSTM_SERVE_MAX_BATCH_SIZE=1``,
waits until ``/readyz`` answers 200 and returns a ``ServerHandle`` (``.url``, ``.process``, ``.stop()``,
``.log()``, ``.rss()``). Servers live for the whole test session and get SIGTERM at the end; pass
``fresh=True`` for a private server a test may stop itself. ``live_server`` is the default-settings
server. The launcher is shared with the benchmark (``bench/servers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.servers import ServerHandle, launch_server

__all__ = ["ServerHandle"]


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerHandle]]:
    log_dir = tmp_path_factory.mktemp("servers")
    shared: dict[tuple, ServerHandle] = {}
    private: list[ServerHandle] = []

    def start(fresh: bool = False, **overrides: Any) -> ServerHandle:
        key = tuple(sorted((k, str(v)) for k, v in overrides.items()))
        if not fresh and key in shared and shared[key].process.poll() is None:
            return shared[key]
        handle = launch_server(overrides, log_dir)
        if fresh:
            private.append(handle)
        else:
            shared[key] = handle
        return handle

    yield start
    for handle in [*shared.values(), *private]:
        handle.stop()


@pytest.fixture(scope="session")
def live_server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    return start_server()
