"""Per-client token buckets shared by every front end of a multi-process server.

Why: a rate limit or cost budget kept in each front end's memory lets a client through N times over
when N front ends serve it (the kernel spreads its connections across them): on a 16-core GPU machine
the default is 8 front ends, so ``rate_limit_per_s=10`` would have meant 80. The supervisor creates one
table per limit in shared memory (``create``) and names it in the environment; each front end attaches
(``from_env``) and takes tokens under an ``flock``, so the limit holds for the server as a whole.

Layout: three arrays of ``slots + PROBE`` entries, the client's 64-bit key (BLAKE2b of its id, so every
process hashes alike; 0 = empty), its tokens and when they were counted (``time.monotonic``, one clock
for all processes). A client lives in one of the ``PROBE`` slots after ``key % slots``; a new client
takes an empty one, or the one seen longest ago, which then starts again with a full bucket (the same
forgetting as the in-process ``TokenBuckets`` beyond ``max_clients``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

ENV_PREFIX = "LSTM_SERVE_SHARED_BUCKETS_"  # + purpose ("RATE", "COST") = "<shm name>:<slots>:<lock file>"
PROBE = 8
DEFAULT_SLOTS = 1 << 17  # 131,072 clients before forgetting (3 MiB per table)


def spend(tokens: float, elapsed: float, rate: float, burst: float, amount: float) -> tuple[float, float]:
    """One token bucket's rule: refill for ``elapsed`` seconds (up to ``burst``), then take ``amount``.

    Returns ``(tokens left, seconds to wait)``: the wait is 0.0 when granted (tokens are taken), else how
    long until ``amount`` would be there (nothing is taken). Both ``TokenBuckets`` and the shared table use it.
    """
    tokens = min(burst, tokens + elapsed * rate)
    if tokens >= amount:
        return tokens - amount, 0.0
    return tokens, (amount - tokens) / rate


def client_key(client: str) -> int:
    """A stable, non-zero 64-bit key: Python's ``hash`` differs between processes."""
    key = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little")
    return key or 1


class SharedTokenBuckets:
    """``TokenBuckets``' interface (``take``) over a table every front end of the server shares."""

    def __init__(
        self, purpose: str, shm: shared_memory.SharedMemory, slots: int, lock_path: Path, rate: float, burst: int
    ) -> None:
        self.purpose, self._shm, self.slots, self.lock_path = purpose, shm, slots, lock_path
        self.rate, self.burst = rate, float(burst)
        n = slots + PROBE  # no wrap-around: the last key's window runs into the spare PROBE slots
        self._keys = np.ndarray((n,), dtype=np.uint64, buffer=shm.buf, offset=0)
        self._tokens = np.ndarray((n,), dtype=np.float64, buffer=shm.buf, offset=8 * n)
        self._at = np.ndarray((n,), dtype=np.float64, buffer=shm.buf, offset=16 * n)
        self._lock_fd: int | None = None  # opened in the process that takes (flock is per open file)

    @classmethod
    def create(cls, purpose: str, workdir: Path, slots: int = DEFAULT_SLOTS) -> SharedTokenBuckets:
        """The supervisor's table for ``purpose``; ``env`` names it for the children it spawns."""
        shm = shared_memory.SharedMemory(create=True, size=24 * (slots + PROBE))
        lock_path = workdir / f"buckets-{purpose}.lock"
        lock_path.touch()
        table = cls(purpose, shm, slots, lock_path, rate=1.0, burst=1)
        table._keys[:] = 0
        return table

    @property
    def env(self) -> dict[str, str]:
        """The environment entry through which a child finds this table (``from_env``)."""
        return {ENV_PREFIX + self.purpose.upper(): f"{self._shm.name}:{self.slots}:{self.lock_path}"}

    @classmethod
    def from_env(cls, purpose: str, rate: float, burst: int) -> SharedTokenBuckets | None:
        """The server-wide table for ``purpose`` in a process the supervisor started (else None)."""
        spec = os.environ.get(ENV_PREFIX + purpose.upper())
        if not spec:
            return None
        name, slots, lock_path = spec.split(":", 2)
        return cls(purpose, shared_memory.SharedMemory(name=name), int(slots), Path(lock_path), rate, burst)

    def take(self, client: str, now: float | None = None, amount: float = 1.0) -> float:
        """Take ``amount`` tokens (one request, or its cost): 0.0 when granted, else the seconds until they are."""
        key = np.uint64(client_key(client))
        base = int(key % np.uint64(self.slots))
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic() if now is None else now
            window = self._keys[base : base + PROBE]
            hits = np.flatnonzero(window == key)
            if hits.size:
                slot = base + int(hits[0])
                tokens, at = float(self._tokens[slot]), float(self._at[slot])
            else:
                empty = np.flatnonzero(window == 0)
                slot = base + (int(empty[0]) if empty.size else int(np.argmin(self._at[base : base + PROBE])))
                self._keys[slot] = key
                tokens, at = self.burst, now
            tokens, wait = spend(tokens, max(0.0, now - at), self.rate, self.burst, amount)
            self._tokens[slot], self._at[slot] = tokens, now
            return wait
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self, unlink: bool = False) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        del self._keys, self._tokens, self._at  # numpy views must go before the mapping closes
        self._shm.close()
        if unlink:
            self._shm.unlink()
