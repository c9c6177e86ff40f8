"""The parent of a multi-process server: starts, watches, restarts and stops its processes.

``workers`` front ends share one listening socket bound here; one inference worker per device listens
on a Unix socket in a private temporary folder. The supervisor serves nothing itself: it only

- starts the inference workers, then the front ends (spawned, so no process inherits a copy of another's
  onnxruntime or CUDA state);
- replaces any child that exits while the server is running (a front end killed with SIGKILL, an
  inference worker that crashed: its front ends answer 503 at once meanwhile), backing off when a child
  keeps dying at start;
- on SIGTERM or Ctrl-C: stops the front ends first (each finishes its accepted requests, which still
  need the workers), then the workers (each finishes what is queued), and exits 0.

It clears a dead child's slot in the process table (``/readyz`` then says 503) and its live gauges in
the metrics folder (prometheus-client's ``mark_process_dead``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from service import early_stop, frontend, worker
from service.layout import ProcessLayout
from service.procstate import STATE_ENV, ProcessState, ProcessTable
from service.settings import Settings
from service.shared_buckets import SharedTokenBuckets

log = logging.getLogger(__name__)
POLL_S = 0.1
MAX_BACKOFF_S = 10.0


@dataclass
class _Child:
    role: str
    index: int
    slot: int
    args: tuple[Any, ...]
    process: BaseProcess | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Supervisor:
    def __init__(self, settings: Settings, layout: ProcessLayout, overrides: dict[str, Any]) -> None:
        self.settings, self.layout, self.overrides = settings, layout, overrides
        self.context = multiprocessing.get_context("spawn")
        self.stopping = False
        self.children: list[_Child] = []
        self.buckets: list[SharedTokenBuckets] = []

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.port))
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _start(self, child: _Child) -> None:
        target = worker.run if child.role == "inference" else frontend.run
        name = f"lstm-serve {child.role}-{child.index}"
        child.process = self.context.Process(target=target, args=child.args, name=name)
        with early_stop.spawning_with_sigterm_blocked():  # a stop while it starts waits for its handler
            child.process.start()
        child.started = time.monotonic()
        self.table.set(child.slot, ProcessState.STARTING, child.process.pid)
        log.info("started %s-%d (pid %d)", child.role, child.index, child.process.pid)

    def _reap(self, child: _Child) -> None:
        """A child exited while serving: clear its traces and schedule its replacement."""
        assert child.process is not None
        pid, code = child.process.pid, child.process.exitcode
        log.error("%s-%d (pid %s) exited with %s; restarting it", child.role, child.index, pid, code)
        self.table.clear(child.slot)
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
        lived = time.monotonic() - child.started
        child.backoff = 0.0 if lived > 30 else min(MAX_BACKOFF_S, max(0.5, child.backoff * 2))
        child.restart_at = time.monotonic() + child.backoff
        child.restarts += 1
        child.process = None

    def run(self) -> int:
        workdir = Path(tempfile.mkdtemp(prefix="lstm-serve-"))
        metrics_dir = workdir / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # children inherit it at spawn
        self.table = ProcessTable.create(len(self.layout.devices), self.layout.frontends)
        os.environ[STATE_ENV] = self.table.spec
        # Rate limits and cost budgets hold for the server, not per front end: one shared table each.
        limits = [("rate", self.settings.rate_limit_per_s), ("cost", self.settings.cost_per_s_per_client)]
        self.buckets = [SharedTokenBuckets.create(purpose, workdir) for purpose, rate in limits if rate > 0]
        for buckets in self.buckets:
            os.environ.update(buckets.env)  # children inherit it at spawn
        # The front ends are the parallelism: a tokenizer thread pool in each (one thread per core) only
        # oversubscribes the cores and spins; 20-25% more CPU per 64-text batch even on 2 cores. The
        # operator's own TOKENIZERS_PARALLELISM wins.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        listener = self._bind()
        paths = [str(workdir / f"inference-{i}.sock") for i in range(len(self.layout.devices))]
        for i, device in enumerate(self.layout.devices):
            args = (i, paths[i], device, self.overrides)
            self.children.append(_Child("inference", i, self.table.slot_of("inference", i), args))
        for i in range(self.layout.frontends):
            args = (self.table.slot_of("frontend", i), listener, paths, self.overrides)
            self.children.append(_Child("frontend", i, self.table.slot_of("frontend", i), args))
        log.info(
            "serving on %s:%d with %d front ends and %d inference worker(s) on %s",
            self.settings.host,
            self.settings.port,
            self.layout.frontends,
            len(self.layout.devices),
            f"CUDA devices {list(self.layout.devices)}" if self.layout.cuda else "CPU",
        )
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            for child in self.children:
                self._start(child)
            self._watch()
            return self._stop_all(listener)
        finally:
            self.table.close()
            for buckets in self.buckets:
                buckets.close(unlink=True)
            shutil.rmtree(workdir, ignore_errors=True)

    def _request_stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping = True

    def _watch(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.process is not None and not child.process.is_alive():
                    child.process.join()
                    if self.stopping:
                        break
                    self._reap(child)
                if child.process is None and now >= child.restart_at and not self.stopping:
                    self._start(child)
            time.sleep(POLL_S)

    def _stop_role(self, role: str, timeout: float) -> None:
        group = [c for c in self.children if c.role == role and c.process is not None]
        for child in group:
            if child.process.is_alive():  # type: ignore[union-attr]
                os.kill(child.process.pid, signal.SIGTERM)  # type: ignore[union-attr, arg-type]
        deadline = time.monotonic() + timeout
        for child in group:
            assert child.process is not None
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.error("%s-%d did not stop in %.0fs; killing it", role, child.index, timeout)
                child.process.kill()
                child.process.join()

    def _stop_all(self, listener: socket.socket) -> int:
        listener.close()  # the front ends hold their own copies until they stop accepting
        grace = self.settings.graceful_timeout_s + 5.0
        self._stop_role("frontend", grace)
        self._stop_role("inference", grace)
        codes = {f"{c.role}-{c.index}": c.process.exitcode for c in self.children if c.process is not None}
        log.info("all processes stopped: %s", codes)
        return 0 if all(code == 0 for code in codes.values()) else 1
