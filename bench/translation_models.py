"""``python -m bench.translation_models CANDIDATE_REPOSITORY``: a candidate translation model against the
shipped one, on the same server code, measured interleaved in one run.

Why: a larger model has to say what it costs to serve before it ships (issue 12: "report the shipped
model's sentences/s against today's, measured in the same run"). Starts one real server per model
repository and precision (``model_repository/`` and the candidate, each forced to fp32 and, where its
card has it, int8), and measures them interleaved so a noisy machine hits all alike:
- translation, one sentence per request, closed loop, beam 4 at each ``--concurrency``;
then BLEU of each server's beam-4 answers on test_2016_flickr with its card's default length penalty.
Writes ``<out>.json`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench.load import Run, _summary, closed_loop, interleaved, plot_bars
from bench.precision import FLICKR, _bleu, _lines
from bench.servers import REPO_ROOT, launch_server
from lstm_core.model_card import ModelCard

SHIPPED = REPO_ROOT / "model_repository"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.translation_models", description=__doc__.splitlines()[0])
    p.add_argument("candidate", type=Path, help="a model repository holding the candidate translation/<version>/")
    p.add_argument("--precisions", default="fp32,int8", help="variants to serve, where a card has them")
    p.add_argument("--concurrency", default="1,32", help="closed-loop levels, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    p.add_argument("--bleu-sentences", type=int, default=1000, help="test_2016_flickr sentences for BLEU")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "translation_models_cpu")
    return p.parse_args(argv)


def _card(repository: Path) -> ModelCard:
    versions = sorted((repository / "translation").iterdir(), key=lambda f: int(f.name))
    return ModelCard.load(versions[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repositories = {"shipped": SHIPPED, "candidate": args.candidate.resolve()}
    cards = {model: _card(repository) for model, repository in repositories.items()}
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    names = [
        f"{model} {precision}"
        for model, card in cards.items()
        for precision in wanted
        if precision in card.precision_variants()
    ]
    logs = Path(tempfile.mkdtemp(prefix="lstm-serve-translation-models-"))
    servers = {}
    sources, references = _lines(FLICKR.with_suffix(".en.gz")), _lines(FLICKR.with_suffix(".de.gz"))
    result: dict = {
        "command": "python -m bench.translation_models " + " ".join(argv or []),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": vars(args) | {"out": str(args.out), "candidate": str(args.candidate)},
        "cards": {model: {"metrics": card.metrics, "files": sorted(card.files)} for model, card in cards.items()},
        "runs": [],
        "bleu": {},
    }
    try:
        for name in names:
            model, precision = name.split()
            overrides = {"precision": precision, "model_repository": repositories[model]}
            servers[name] = launch_server(overrides, logs / name.replace(" ", "-"), timeout=300)
        bodies = [json.dumps({"texts": [t], "beam_size": 4}).encode() for t in sources[:500]]
        requests = {name: [encode_post(s.url, "/v1/translate", b) for b in bodies] for name, s in servers.items()}
        for c in (int(x) for x in args.concurrency.split(",")):

            def measure(name: str, rep: int, c: int = c) -> Run:
                loop = closed_loop(servers[name].url, requests[name], c, args.duration, args.warmup)
                lat, statuses = asyncio.run(loop)
                return _summary(name, "closed", c, rep, args.duration, lat, statuses)

            result["runs"] += [asdict(r) for r in interleaved(names, args.repeats, measure)]
        n = args.bleu_sentences
        for name, server in servers.items():
            bleu, seconds = _bleu(server.url, sources[:n], references[:n])
            result["bleu"][name] = {"beam4": round(bleu, 2), "sentences": n, "seconds": round(seconds, 1)}
            print(f"BLEU {name}, beam 4, {n} test_2016_flickr sentences: {bleu:.2f} ({seconds:.0f} s)", flush=True)
    finally:
        result["exit_codes"] = {name: s.stop() for name, s in servers.items()}
        result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["summary"] = {
        f"{name} c={c:g}": {
            key: statistics.median(r[key] for r in result["runs"] if r["server"] == name and r["level"] == c)
            for key in ("throughput", "p50_ms", "p99_ms")
        }
        for name in names
        for c in sorted({r["level"] for r in result["runs"]})
    }
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    labels = list(result["summary"])
    plot_bars(
        labels,
        [s["throughput"] for s in result["summary"].values()],
        args.out.with_suffix(".png"),
        "sentences/s (median)",
        "translation, beam 4: shipped vs candidate",
    )
    return 0


def table(result: dict) -> str:
    lines = ["| server | c | sentences/s (median) | p50 / p99 ms | BLEU beam 4 |", "|---|---|---|---|---|"]
    for key, s in result["summary"].items():
        name, c = key.rsplit(" c=", 1)
        bleu = result["bleu"].get(name, {}).get("beam4", "-")
        lines.append(f"| {name} | {c} | {s['throughput']:,.1f} | {s['p50_ms']:.0f} / {s['p99_ms']:.0f} | {bleu} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
