"""SIGTERM that reaches a child process before it can drain: remembered, then honoured once it can.

Why: the supervisor spawns children with SIGTERM blocked (``spawning_with_sigterm_blocked``), so a stop
that arrives while a child is still importing or loading is held by the kernel instead of killing it
with -15 (seen on a 16-core GPU machine: a front end still starting when the test stopped the server
turned a clean drain into exit code 1). The child installs ``remember`` and unblocks SIGTERM first
thing; once its own drain handler is in place it asks ``arrived`` and stops the normal way.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_received: list[int] = []


def remember(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler until the process can drain (also the one uvicorn restores and re-raises to)."""
    _received.append(signum)


def install() -> None:
    """Hold early SIGTERMs in ``arrived`` and let any the kernel kept pending through now."""
    signal.signal(signal.SIGTERM, remember)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def arrived() -> bool:
    return bool(_received)


@contextmanager
def spawning_with_sigterm_blocked() -> Iterator[None]:
    """Start children inside this block: they inherit the blocked mask through fork and exec."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
