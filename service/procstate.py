"""What the processes of one multi-process server know of each other: a small shared-memory table.

Why shared memory: ``/readyz`` must answer 200 only when *every* process is ready, and any front-end
process may be the one asked; a lookup must cost nothing (no IPC round trip per probe). The supervisor
creates the table; each process writes only its own slot (state and pid); the supervisor clears the slot
of a process that died. ``/metrics`` reads the pids to report the resource use of all processes.

Slot layout (int64 each): ``[state, pid]`` per process; inference workers first, then front ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing import shared_memory

import numpy as np

STATE_ENV = "LSTM_SERVE_PROCESS_TABLE"  # "<shm name>:<workers>:<front ends>" for the children


class ProcessState(IntEnum):
    ABSENT = 0  # not started, or died (the supervisor cleared it)
    STARTING = 1
    READY = 2
    STOPPING = 3


@dataclass(frozen=True, slots=True)
class Slot:
    role: str  # "inference" | "frontend"
    index: int  # within its role
    state: ProcessState
    pid: int


class ProcessTable:
    """A fixed table of ``workers + frontends`` slots in shared memory."""

    def __init__(self, shm: shared_memory.SharedMemory, workers: int, frontends: int, owner: bool) -> None:
        self._shm = shm
        self.workers, self.frontends, self.owner = workers, frontends, owner
        self._table = np.ndarray((workers + frontends, 2), dtype=np.int64, buffer=shm.buf)

    @classmethod
    def create(cls, workers: int, frontends: int) -> ProcessTable:
        shm = shared_memory.SharedMemory(create=True, size=max(16, (workers + frontends) * 16))
        table = cls(shm, workers, frontends, owner=True)
        table._table[:] = 0
        return table

    @classmethod
    def attach(cls, spec: str) -> ProcessTable:
        name, workers, frontends = spec.rsplit(":", 2)
        # Spawned children share the supervisor's resource tracker, which unlinks the block only if the
        # supervisor leaks it; the supervisor unlinks it itself on exit (``close``).
        shm = shared_memory.SharedMemory(name=name)
        return cls(shm, int(workers), int(frontends), owner=False)

    @classmethod
    def from_env(cls) -> ProcessTable | None:
        """The supervisor's table, in a process it started (else None)."""
        spec = os.environ.get(STATE_ENV)
        return cls.attach(spec) if spec else None

    @property
    def spec(self) -> str:
        return f"{self._shm.name}:{self.workers}:{self.frontends}"

    def slot_of(self, role: str, index: int) -> int:
        return index if role == "inference" else self.workers + index

    def set(self, slot: int, state: ProcessState, pid: int | None = None) -> None:
        self._table[slot, 0] = int(state)
        if pid is not None:
            self._table[slot, 1] = pid

    def clear(self, slot: int) -> None:
        self._table[slot] = 0

    def slots(self) -> Iterator[Slot]:
        for i, (state, pid) in enumerate(self._table.tolist()):
            role, index = ("inference", i) if i < self.workers else ("frontend", i - self.workers)
            yield Slot(role, index, ProcessState(state), pid)

    def all_ready(self) -> bool:
        return bool((self._table[:, 0] == ProcessState.READY).all())

    def pids(self) -> list[int]:
        return [int(p) for p in self._table[:, 1] if p > 0]

    def summary(self) -> dict[str, str]:
        """``{"inference-0": "ready", "frontend-1": "starting", ...}`` for ``/readyz``."""
        return {f"{s.role}-{s.index}": s.state.name.lower() for s in self.slots()}

    def close(self) -> None:
        del self._table
        self._shm.close()
        if self.owner:
            self._shm.unlink()
