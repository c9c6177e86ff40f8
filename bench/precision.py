"""``python -m bench.precision``: int8 against fp32 on the same server code, measured interleaved in one run.

Starts two real servers on the shipped ``model_repository/`` (CPU provider, default settings), one with
``LSTM_SERVE_PRECISION=fp32`` and one with ``int8``, and measures them interleaved (fp32/int8,
int8/fp32, ...) so the noise of a shared machine hits both alike:
- single-text sentiment requests, closed loop at ``--c-single`` (req/s);
- 32-text sentiment requests, closed loop at ``--c-multi`` (texts/s);
- translation at beam 4, one sentence per request, closed loop at ``--c-translation`` (sentences/s);
then BLEU of each server's beam-4 translations of test_2016_flickr (sacrebleu, cased, detokenised).
Real SST-2 dev sentences and Multi30k test sentences. Writes ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.client import encode_post
from bench.load import Run, _summary, closed_loop, interleaved, load_texts
from bench.servers import REPO_ROOT, launch_server
from bench.translation import post_json

FLICKR = REPO_ROOT / "data" / "multi30k" / "test_2016_flickr"
PRECISIONS = ["fp32", "int8"]


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--c-single", type=int, default=64)
    p.add_argument("--c-multi", type=int, default=4)
    p.add_argument("--c-translation", type=int, default=32)
    p.add_argument("--bleu-sentences", type=int, default=1000, help="test_2016_flickr sentences for BLEU")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "precision_cpu")
    return p.parse_args(argv)


def _bleu(url: str, sources: list[str], references: list[str]) -> tuple[float, float]:
    import sacrebleu

    started, outputs = time.perf_counter(), []
    for start in range(0, len(sources), 32):
        outputs += post_json(url, {"texts": sources[start : start + 32], "beam_size": 4})["translations"]
    return sacrebleu.corpus_bleu(outputs, [references]).score, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="lstm-serve-precision-bench-"))
    servers = {p: launch_server({"precision": p}, logs / p, timeout=180) for p in PRECISIONS}
    texts = load_texts(2048)
    sources, references = _lines(FLICKR.with_suffix(".en.gz")), _lines(FLICKR.with_suffix(".de.gz"))
    bodies = {
        "sentiment x1": ("/v1/sentiment", [{"texts": [t]} for t in texts], 1, args.c_single),
        "sentiment x32": (
            "/v1/sentiment", [{"texts": texts[i : i + 32]} for i in range(0, 2017, 32)], 32, args.c_multi
        ),
        "translation beam4": (
            "/v1/translate", [{"texts": [t], "beam_size": 4} for t in sources[:500]], 1, args.c_translation
        ),
    }  # fmt: skip
    result: dict = {
        "command": "python -m bench.precision " + " ".join(argv or []),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out)},
        "runs": [],
        "bleu": {},
    }
    try:
        result["model_info"] = {p: _model_info(s.url) for p, s in servers.items()}
        for load, (path, load_bodies, per_request, c) in bodies.items():
            requests = {
                p: [encode_post(s.url, path, json.dumps(b).encode()) for b in load_bodies] for p, s in servers.items()
            }

            def measure(precision: str, rep: int, load=load, requests=requests, per_request=per_request, c=c) -> Run:
                url = servers[precision].url
                lat, statuses = asyncio.run(closed_loop(url, requests[precision], c, args.duration, args.warmup))
                run = _summary(f"{load} {precision}", "closed", c, rep, args.duration, lat, statuses)
                run.extra = {"texts_s": run.throughput * per_request, "load": load, "precision": precision}
                return run

            result["runs"] += [asdict(r) for r in interleaved(PRECISIONS, args.repeats, measure)]
        n = args.bleu_sentences
        for precision in PRECISIONS:
            bleu, seconds = _bleu(servers[precision].url, sources[:n], references[:n])
            result["bleu"][precision] = {"beam4": round(bleu, 2), "sentences": n, "seconds": round(seconds, 1)}
            print(f"BLEU {precision} beam 4, {n} test_2016_flickr sentences: {bleu:.2f} ({seconds:.0f} s)", flush=True)
    finally:
        result["exit_codes"] = {p: s.stop() for p, s in servers.items()}
        result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = {}
    for load in bodies:
        med = {
            p: {
                key: statistics.median(r[key] if key != "texts_s" else r["extra"]["texts_s"] for r in result["runs"]
                                       if r["extra"]["load"] == load and r["extra"]["precision"] == p)
                for key in ("throughput", "texts_s", "p50_ms", "p99_ms")
            }
            for p in PRECISIONS
        }  # fmt: skip
        summary[load] = med | {"int8_over_fp32_texts_s": med["int8"]["texts_s"] / med["fp32"]["texts_s"]}
    result["summary"] = summary
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    return 0


def _model_info(url: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return [line for line in response.read().decode().splitlines() if line.startswith("lstm_serve_model_info")]


def table(result: dict) -> str:
    lines = [
        "| load | c | fp32 req/s | int8 req/s | fp32 texts/s | int8 texts/s | int8 / fp32 | p99 ms fp32 / int8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load, s in result["summary"].items():
        c = next(r["level"] for r in result["runs"] if r["extra"]["load"] == load)
        lines.append(
            f"| {load} | {c:g} | {s['fp32']['throughput']:,.0f} | {s['int8']['throughput']:,.0f} "
            f"| {s['fp32']['texts_s']:,.0f} | {s['int8']['texts_s']:,.0f} | **{s['int8_over_fp32_texts_s']:.2f}×** "
            f"| {s['fp32']['p99_ms']:.1f} / {s['int8']['p99_ms']:.1f} |"
        )
    for p, b in result["bleu"].items():
        lines.append(f"\nBLEU {p}, beam 4, {b['sentences']} test_2016_flickr sentences: {b['beam4']}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(result["summary"])
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 4))
    for ax, load in zip(axes, loads, strict=True):
        for i, p in enumerate(PRECISIONS):
            values = [
                r["extra"]["texts_s"]
                for r in result["runs"]
                if r["extra"]["load"] == load and r["extra"]["precision"] == p
            ]
            ax.scatter([i] * len(values), values, alpha=0.6)
            ax.bar(i, statistics.median(values), alpha=0.4, label=p)
        ax.set_xticks(range(len(PRECISIONS)), PRECISIONS)
        ax.set_title(f"{load} (×{result['summary'][load]['int8_over_fp32_texts_s']:.2f})")
        ax.set_ylabel("texts/s (dots: repeats, bar: median)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"int8 vs fp32, CPU, same server code, interleaved ({result['when']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
