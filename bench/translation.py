"""Translation load test: ``python -m bench.translation`` drives ``POST /v1/translate``.

Closed loop (``bench.load.closed_loop``, the same lean client as the sentiment benchmark) at each
concurrency level with one real test_2016_flickr English sentence per request, for greedy and beam
search. Reports sentences/s and tokens/s: target (German subword) tokens per second is sentences/s
times the mean output length of the cycled sentences, measured by translating them once before the
runs (same server, same settings), and source tokens/s likewise from the source tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tokenizers import Tokenizer

from bench.client import encode_post
from bench.load import Run, _summary, closed_loop, median_by
from bench.servers import REPO_ROOT, ServerHandle, launch_server
from models.datasets import read_lines

PATH = "/v1/translate"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + PATH, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def mean_tokens(url: str, texts: list[str], beam: int, folder: Path) -> tuple[float, float]:
    """Mean source and output subword tokens per sentence, translating the texts once through the server."""
    source = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    target = Tokenizer.from_file(str(folder / "target_tokenizer.json"))
    outputs: list[str] = []
    for start in range(0, len(texts), 32):
        outputs += post_json(url, {"texts": texts[start : start + 32], "beam_size": beam})["translations"]
    src = sum(len(e.ids) for e in source.encode_batch(texts)) / len(texts)
    out = sum(len(e.ids) + 1 for e in target.encode_batch(outputs)) / len(texts)  # +1: the EOS step
    return src, out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.translation", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="measure this running server (default: start one)")
    p.add_argument("--concurrency", type=_ints, default=_ints("1,32"))
    p.add_argument("--beams", type=_ints, default=_ints("1,4"), help="beam sizes to measure (1 = greedy)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--texts", type=int, default=200, help="test_2016_flickr sentences to cycle through")
    p.add_argument("--model-folder", type=Path, default=None, help="version folder (tokenizers for token counts)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "translation_cpu")
    p.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the spawned server")
    return p.parse_args(list(argv))


def latest_version(model: str = "translation", repository: Path = REPO_ROOT / "model_repository") -> Path:
    folder = repository / model
    return max((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    texts = list(read_lines("multi30k/test_2016_flickr.en.gz"))[: args.texts]
    folder = args.model_folder or latest_version()
    server: ServerHandle | None = None
    if args.url is None:
        env = dict(kv.split("=", 1) for kv in args.server_env)
        server = launch_server(env, Path(tempfile.mkdtemp(prefix="lstm-serve-bench-tr-")))
    url = args.url or server.url
    runs: list[Run] = []
    tokens: dict[int, tuple[float, float]] = {}
    try:
        for beam in args.beams:
            tokens[beam] = mean_tokens(url, texts, beam, folder)
            reqs = [encode_post(url, PATH, json.dumps({"texts": [t], "beam_size": beam}).encode()) for t in texts]
            for c in args.concurrency:
                for rep in range(args.repeats):
                    lat, st = asyncio.run(closed_loop(url, reqs, c, args.duration, args.warmup))
                    run = _summary(f"beam{beam}", "closed", c, rep, args.duration, lat, st)
                    run.extra = {
                        "sentences_s": run.throughput,
                        "source_tokens_s": run.throughput * tokens[beam][0],
                        "output_tokens_s": run.throughput * tokens[beam][1],
                    }
                    runs.append(run)
                    print(
                        f"beam {beam} c={c} rep={rep}: {run.throughput:.1f} sentences/s, "
                        f"{run.extra['output_tokens_s']:.0f} output tokens/s, p50 {run.p50_ms:.0f} ms "
                        f"p99 {run.p99_ms:.0f} ms errors {run.errors or '-'}",
                        flush=True,
                    )
    finally:
        exit_code = server.stop() if server else None
    lines = [
        "| beam | concurrency | sentences/s | output tokens/s | source tokens/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for beam in args.beams:
        for c in args.concurrency:
            s = median_by(runs, f"beam{beam}", "closed", c, "throughput")
            lines.append(
                f"| {beam} | {c} | {s:.1f} | {s * tokens[beam][1]:.0f} | {s * tokens[beam][0]:.0f} "
                f"| {median_by(runs, f'beam{beam}', 'closed', c, 'p50_ms'):.0f} "
                f"| {median_by(runs, f'beam{beam}', 'closed', c, 'p99_ms'):.0f} |"
            )
    table = "\n".join(lines)
    print(table, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python -m bench.translation " + " ".join(argv or []),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model_folder": str(folder.relative_to(REPO_ROOT)) if folder.is_relative_to(REPO_ROOT) else str(folder),
        "server": server.overrides if server else args.url,
        "exit_code": exit_code,
        "mean_tokens_per_sentence": {str(b): {"source": s, "output": o} for b, (s, o) in tokens.items()},
        "runs": [asdict(r) for r in runs],
        "table": table,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
