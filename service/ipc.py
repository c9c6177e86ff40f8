"""The wire between front-end processes and inference workers: length-prefixed frames on a Unix socket.

Why this shape (measured, ``bench/ipc.py``): one frame per *request* (all its texts), not per text, and
token ids as raw int64 bytes rather than pickled ``Item`` objects: pickling one single-text ``Item``
plus its answer cost about 32 µs a request, the compact form about a third of that. Frames written in
one event-loop iteration leave in one ``write`` (the transport buffers them), so a busy front end sends
many requests per system call, and a worker answers a whole batch in one.

Messages (tuples, pickled with protocol 5):
- front end → worker: ``("submit", req_id, model, deadline, key, lengths, ids)`` — ``ids`` the texts'
  int64 token ids concatenated, ``lengths`` their lengths, ``deadline`` on ``time.monotonic`` (one
  clock for all processes of a machine); ``("submit_items", req_id, model, deadline, items)`` for
  pipelines whose items are not token-id arrays; ``("cancel", req_id)``.
- worker → front end: ``("result", req_id, outputs)``, ``("error", req_id, kind, message)`` and
  ``("state", {...})`` — what the worker serves, sent on connect and whenever it changes.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from service.pipelines.base import Item

HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024


def encode_items(items: Sequence[Item]) -> tuple[Any, ...] | None:
    """``(key, lengths, ids)`` when every item is a 1-D int64 array with one shared key, else None."""
    key = items[0].key
    if not all(isinstance(i.data, np.ndarray) and i.data.dtype == np.int64 and i.key == key for i in items):
        return None
    lengths = [i.length for i in items]
    if any(len(i.data) != n for i, n in zip(items, lengths, strict=True)):
        return None
    return key, lengths, b"".join(i.data.tobytes() for i in items)


def decode_items(key: Any, lengths: Sequence[int], ids: bytes) -> list[Item]:
    flat = np.frombuffer(ids, dtype=np.int64)
    items, start = [], 0
    for n in lengths:
        items.append(Item(flat[start : start + n], n, key))
        start += n
    return items


def encode_outputs(outputs: Sequence[Any]) -> Any:
    """Same-shaped numpy outputs travel as one array's bytes; anything else (strings) as is."""
    first = outputs[0] if outputs else None
    if isinstance(first, np.ndarray) and len(outputs) == 1:  # a single-text request: no stacking
        return ("nd", first.dtype.str, first.shape, 1, first.tobytes())
    if isinstance(first, np.ndarray) and all(
        isinstance(o, np.ndarray) and o.shape == first.shape and o.dtype == first.dtype for o in outputs
    ):
        return ("nd", first.dtype.str, first.shape, len(outputs), np.stack(outputs).tobytes())
    return ("py", list(outputs))


def decode_outputs(encoded: Any) -> list[Any]:
    if encoded[0] == "nd":
        _, dtype, shape, n, raw = encoded
        return list(np.frombuffer(raw, dtype=np.dtype(dtype)).reshape((n, *shape)))
    return encoded[1]


class FramedProtocol(asyncio.Protocol):
    """Length-prefixed pickled frames both ways; outgoing frames of one loop iteration share one write."""

    def __init__(
        self,
        on_message: Callable[[Any], None],
        on_lost: Callable[[Exception | None], None],
        on_made: Callable[[], None] | None = None,
    ) -> None:
        self.on_message, self.on_lost, self.on_made = on_message, on_lost, on_made
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._outbox: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.on_made is not None:
            self.on_made()

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        offset = 0
        while len(buf) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, offset)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            end = offset + HEADER.size + size
            if len(buf) < end:
                break
            message = pickle.loads(buf[offset + HEADER.size : end])
            offset = end
            self.on_message(message)
        del buf[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost(exc)

    def send(self, message: Any) -> None:
        if self.closed or self.transport is None:
            return
        payload = pickle.dumps(message, protocol=5)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(HEADER.pack(len(payload)) + payload)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if frames and not self.closed and self.transport is not None:
            self.transport.write(b"".join(frames))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
