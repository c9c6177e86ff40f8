"""Starting real ``lstm-serve serve`` subprocesses on free loopback ports (for the benchmark and tests).

One implementation for both, so a benchmark measures exactly the server the integration tests check.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc``), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a multi-process server's front ends and workers), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process so far (Linux ``/proc``; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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

    def rss(self) -> int:
        """Resident memory of the server: its process and every process it started."""
        return sum(rss_bytes(pid) for pid in process_tree(self.process.pid))

    def cpu_seconds(self) -> float:
        """CPU seconds of the server's whole process tree so far."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.process.pid))

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """Block until ``text`` appears in the server's log (raises with the log after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout}s:\n{log[-4000:]}")
            time.sleep(0.05)
        return log

    def settle(self, timeout: float = 30.0, in_a_row: int = 8) -> None:
        """Block until ``/readyz`` stops saying "loading" on ``in_a_row`` answers in a row.

        A multi-process server's front ends learn the inference worker's state within about 100 ms of
        its log line, each on its own; every probe is a fresh connection, so they are asked in turn.
        """
        deadline, streak = time.monotonic() + timeout, 0
        while streak < in_a_row:
            if time.monotonic() > deadline:
                raise TimeoutError(f"/readyz still says loading after {timeout}s")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as response:
                    body = response.read()
            except urllib.error.HTTPError as error:
                body = error.read()
            streak = 0 if b'"status":"loading"' in body else streak + 1
            time.sleep(0.01)

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


def _answers(url: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch_server(
    overrides: dict[str, Any],
    log_dir: Path,
    timeout: float = READY_TIMEOUT_S,
    wait_for: str = "/readyz",
    repo: Path = REPO_ROOT,
    command: Sequence[str] = ("-m", "service"),
) -> ServerHandle:
    """Start a server with ``LSTM_SERVE_<KEY>=value`` for each override; return once ``wait_for`` is 200.

    ``wait_for="/healthz"`` returns as soon as the process is alive (for servers expected not to be ready).
    ``repo``/``command``: another checkout's server (a baseline commit in a ``git worktree``; older commits
    start with ``-m service.cli serve``), run from that checkout so its own code is imported.
    """
    port = free_port()
    env = dict(os.environ)
    env.update({f"LSTM_SERVE_{k.upper()}": str(v) for k, v in overrides.items()})
    env.update({"LSTM_SERVE_HOST": "127.0.0.1", "LSTM_SERVE_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    if repo != REPO_ROOT:  # its code first, whatever this venv's editable install points at
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=repo,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", process, env, log_path, dict(overrides))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before ready:\n{handle.log()[-4000:]}")
        if _answers(handle.url, wait_for):
            return handle
        time.sleep(0.1)
    handle.stop(timeout=5)
    raise RuntimeError(f"server not ready after {timeout}s:\n{handle.log()[-4000:]}")
