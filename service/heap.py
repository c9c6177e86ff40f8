"""Garbage collection tuned for a server process: the start-up heap frozen, young collections rarer.

Why: a profile of a one-process server under single-text load at c=64 (py-spy, 2026-11-26) had 8% of
the event loop's samples in ``gc_collect_main``. After start-up the heap holds a few hundred thousand
long-lived objects (FastAPI, pydantic, numpy, onnxruntime's bindings, the routes and models) that no
request frees, yet every full collection walks all of them. ``gc.freeze()`` moves them to a
permanent generation that collections skip (as Instagram's Django fleet and gunicorn's preload
recipes do), and a larger first-generation threshold collects the short-lived cycles a request
leaves (futures, exceptions with tracebacks) in fewer, larger sweeps. Reference counting still frees
everything that is not a cycle at once, so memory stays bounded by the threshold's few thousand
objects.
"""

from __future__ import annotations

import gc

# Objects allocated (net) between young collections: CPython's default is 700.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect once, freeze what is left, and space out young collections. Call when start-up is done:
    the app's lifespan (every HTTP process) and the model registry once its models are loaded."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
