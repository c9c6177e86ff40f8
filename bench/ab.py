"""``python -m bench.ab``: this tree's server against a baseline commit's, in short paired runs.

Why another benchmark: on a noisy 2-core machine the spread between 5 s runs of the same server is
often 20-30%, wider than the change being measured. Here both servers run side by side (one process
each unless ``--env`` says otherwise), every repeat measures both back to back in alternating order,
and the quoted figure is the median of the per-repeat ratios: a slow stretch of the machine hits both
halves of a pair alike. Loads: single texts at c=64 (the request path) and 32-text requests at c=8
(the model), real SST-2 dev sentences, the lean client in this process (``bench/client.py``), server
CPU from ``/proc`` for the whole process tree.

    python -m bench.ab --baseline 85b44ba --baseline-worktree /tmp/wt-85b44ba --repeats 8 \\
        --out bench/results/ab_edge
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.client import encode_post
from bench.load import PATH, REPO_ROOT, Run, load_texts
from bench.servers import ServerHandle, launch_server
from bench.workers import baseline_worktree, measure

LOADS = (("x1 c=64", 1, 64), ("x32 c=8", 32, 8))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="commit to serve from a git worktree")
    p.add_argument("--baseline-worktree", type=Path, default=Path(tempfile.gettempdir()) / "lstm-serve-ab-baseline")
    p.add_argument("--baseline-cmd", default="-m service", help="python arguments that start the baseline")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE setting for both servers (LSTM_SERVE_KEY)")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "ab")
    return p.parse_args(list(argv))


def paired(runs: list[Run], load: str) -> dict[str, Any]:
    """Per repeat: this tree ÷ baseline, for throughput and server CPU per request; medians of both."""
    by = {(r.server, r.repeat): r for r in runs if r.mode == load}
    repeats = sorted({rep for _, rep in by})
    speed = [by["main", rep].throughput / by["baseline", rep].throughput for rep in repeats]
    cpu = [
        by["main", rep].extra["server_cpu_ms_per_request"] / by["baseline", rep].extra["server_cpu_ms_per_request"]
        for rep in repeats
    ]
    texts = {s: statistics.median(by[s, rep].extra["texts_s"] for rep in repeats) for s in ("baseline", "main")}
    cpu_ms = {
        s: statistics.median(by[s, rep].extra["server_cpu_ms_per_request"] for rep in repeats)
        for s in ("baseline", "main")
    }
    return {
        "texts_s_median": texts,
        "cpu_ms_per_request_median": cpu_ms,
        "throughput_ratios": speed,
        "throughput_ratio_median": statistics.median(speed),
        "cpu_ratios": cpu,
        "cpu_ratio_median": statistics.median(cpu),
        "pairs_faster": sum(r > 1 for r in speed),
    }


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for load, s in summary.items():
        ax.plot(range(1, len(s["throughput_ratios"]) + 1), s["throughput_ratios"], marker="o", label=f"{load} req/s")
        ax.plot(range(1, len(s["cpu_ratios"]) + 1), s["cpu_ratios"], marker="x", ls="--", label=f"{load} CPU/request")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("repeat")
    ax.set_ylabel("this tree ÷ baseline")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    texts = load_texts(2000)
    env = dict(kv.split("=", 1) for kv in args.env)
    logs = Path(tempfile.mkdtemp(prefix="lstm-serve-bench-ab-"))
    base = baseline_worktree(args.baseline, args.baseline_worktree)
    servers: dict[str, ServerHandle] = {}
    runs: list[Run] = []
    try:
        servers["baseline"] = launch_server(env, logs, repo=base, command=tuple(args.baseline_cmd.split()))
        servers["main"] = launch_server(env, logs)
        bodies = {
            1: [json.dumps({"texts": [t]}).encode() for t in texts],
            32: [json.dumps({"texts": texts[i : i + 32]}).encode() for i in range(0, 1984, 32)],
        }
        requests = {  # encoded once per server and load, not before every run
            (name, n): [encode_post(handle.url, PATH, b) for b in batch]
            for name, handle in servers.items()
            for n, batch in bodies.items()
        }
        for rep in range(args.repeats):
            for load, per_request, c in LOADS:
                order = ("baseline", "main") if rep % 2 == 0 else ("main", "baseline")
                for name in order:
                    run = measure(servers[name], name, requests[name, per_request], c, per_request, args)
                    run.mode, run.repeat = load, rep
                    runs.append(run)
    finally:
        exit_codes = {n: h.stop() for n, h in servers.items()}
    summary = {load: paired(runs, load) for load, _, _ in LOADS}
    print(
        f"\n| load | baseline texts/s | this tree texts/s | ratio (median of {args.repeats} pairs) | faster pairs "
        "| CPU/request ratio |"
    )
    print("|---|---|---|---|---|---|")
    for load, s in summary.items():
        t = s["texts_s_median"]
        print(
            f"| {load} | {t['baseline']:,.0f} | {t['main']:,.0f} | {s['throughput_ratio_median']:.3f}× "
            f"| {s['pairs_faster']}/{args.repeats} | {s['cpu_ratio_median']:.3f}× |"
        )
    result = {
        "command": "python -m bench.ab " + " ".join(argv or []),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "baseline": args.baseline,
        "env": env,
        "exit_codes": exit_codes,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, args.out.with_suffix(".png"), f"lstm-serve: this tree vs {args.baseline} ({result['when']})")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
