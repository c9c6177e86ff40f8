"""Shared fixtures: REAL servers (``python -m service.cli serve`` subprocesses) on loopback.

``start_server(**overrides)`` starts (or reuses, for the same overrides) a server with extra
``LSTM_SERVE_*`` settings, e.g. ``start_server(max_batch_size=1)`` -> ``LSTM_SERVE_MAX_BATCH_SIZE=1``,
waits until ``/readyz`` answers 200 and returns a ``ServerHandle`` (``.url``, ``.process``). Servers
live for the whole test session and get SIGTERM at the end; pass ``fresh=True`` for a private server a
test may stop itself (``handle.stop()``). ``live_server`` is the default-settings server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerHandle:
    """A running ``lstm-serve serve`` subprocess and where it listens."""

    url: str
    process: subprocess.Popen
    env: dict[str, str]
    log_path: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: finish queued work) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _launch(overrides: dict[str, Any], log_dir: Path) -> ServerHandle:
    port = free_port()
    env = dict(os.environ)
    env.update({f"LSTM_SERVE_{k.upper()}": str(v) for k, v in overrides.items()})
    env.update({"LSTM_SERVE_HOST": "127.0.0.1", "LSTM_SERVE_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", process, env, log_path, dict(overrides))
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before ready:\n{handle.log()[-4000:]}")
            try:
                if client.get(f"{handle.url}/readyz").status_code == 200:
                    return handle
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    handle.stop(timeout=5)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s:\n{handle.log()[-4000:]}")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerHandle]]:
    log_dir = tmp_path_factory.mktemp("servers")
    shared: dict[tuple, ServerHandle] = {}
    private: list[ServerHandle] = []

    def start(fresh: bool = False, **overrides: Any) -> ServerHandle:
        key = tuple(sorted((k, str(v)) for k, v in overrides.items()))
        if not fresh and key in shared and shared[key].process.poll() is None:
            return shared[key]
        handle = _launch(overrides, log_dir)
        (private.append(handle) if fresh else shared.__setitem__(key, handle))
        return handle

    yield start
    for handle in [*shared.values(), *private]:
        handle.stop()


@pytest.fixture(scope="session")
def live_server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    return start_server()
