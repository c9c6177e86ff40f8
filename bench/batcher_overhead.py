"""``python -m bench.batcher_overhead``: what the inference worker spends per item outside onnxruntime.

Why: on a GPU the model's own time per item is tiny (the H200 runs the sentiment graph at about
250,000 sequences/s at batch 1,024), so the worker's Python per item (decode the request frame, queue,
take, cut, deliver, observe metrics, encode the answers) bounds what one device can serve. This drives
a real ``Batcher`` with a pipeline that answers at once, fed 64-text requests of real SST-2 token ids
in the worker's wire format, in multiprocess metrics mode as a worker runs, and reports items/s and
µs per item with the CUDA batching settings (rounds of 1,024) and the CPU ones (32).

Writes ``<out>.json`` and ``<out>.png``; prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import load_texts, plot_bars
from bench.servers import REPO_ROOT


def _setup_multiprocess_metrics() -> None:
    """Multiprocess metric values, as in a worker (prometheus-client chooses them at import)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lstm-serve-bench-metrics-")
    from prometheus_client import values

    values.ValueClass = values.MultiProcessValue()


class InstantPipeline:
    """Answers every batch at once with a two-class output per item, as the sentiment graph's shape."""

    def run_batch(self, items: Sequence[Any]) -> list[Any]:
        return list(np.zeros((len(items), 2), np.float32))


async def _drive(cuda: bool, requests: int, concurrency: int) -> float:
    from tokenizers import Tokenizer

    from lstm_core.cost import CostModel
    from service.batching import Batcher
    from service.ipc import decode_items, encode_items, encode_outputs
    from service.metrics import Metrics
    from service.pipelines.base import Item
    from service.settings import Settings

    tokenizer = Tokenizer.from_file(str(REPO_ROOT / "model_repository" / "sentiment" / "1" / "tokenizer.json"))
    ids = [np.asarray(e.ids or [1], np.int64) for e in tokenizer.encode_batch(load_texts(2048))]
    frames = [encode_items([Item(row, len(row)) for row in ids[i : i + 64]]) for i in range(0, 2048 - 63, 64)]
    batching = Settings().batching_for({}, cuda=cuda)
    cost = CostModel(360e-6, 37e-6, 0.04e-6) if cuda else CostModel(62.6e-6, 3.0e-6, 4.8e-6)  # H200 / card
    batcher = Batcher(InstantPipeline(), batching, Metrics(), "sentiment", "1", cost)
    batcher.start()
    concurrency = min(concurrency, batching.max_queue_items // 64)  # the CPU queue holds 2,048 items
    pending: set[asyncio.Future] = set()
    started = time.perf_counter()
    for r in range(requests):
        key, lengths, raw = frames[r % len(frames)]
        pending.add(batcher.submit(decode_items(key, lengths, raw), time.monotonic() + 60).future)
        if len(pending) >= concurrency:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                encode_outputs(future.result())
    for future in asyncio.as_completed(pending):
        encode_outputs(await future)
    seconds = time.perf_counter() - started
    await batcher.close()
    return seconds / (requests * 64)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="64-text requests per measurement")
    p.add_argument("--concurrency", type=int, default=64, help="requests outstanding at once")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "batcher_overhead")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    _setup_multiprocess_metrics()
    rows = []
    for cuda in (True, False):
        per_item = [asyncio.run(_drive(cuda, args.requests, args.concurrency)) for _ in range(args.repeats)]
        median = statistics.median(per_item)
        rows.append(
            {
                "settings": "CUDA" if cuda else "CPU",
                "us_per_item": median * 1e6,
                "items_s": 1 / median,
                "runs_us": [x * 1e6 for x in per_item],
            }
        )
    print("| batching settings | µs per item (median) | items/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['settings']} | {row['us_per_item']:.2f} | {row['items_s']:,.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=2) + "\n")
    labels, values = [r["settings"] for r in rows], [r["us_per_item"] for r in rows]
    plot_bars(labels, values, args.out.with_suffix(".png"), "µs per item", "inference worker, outside onnxruntime")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
