"""``python -m bench.workers``: the multi-process front end against a baseline commit, in one run.

Three servers on the same shipped models, measured interleaved (the order flips every repeat, so a
shared machine's noise hits all alike; medians quoted):
- ``baseline``: a commit served from its own ``git worktree`` (default d32e1cb, the main before issue 10);
- ``workers=1``: this checkout, one process (the default);
- ``workers=2``: this checkout, two front ends and one inference worker.

Load: real SST-2 dev sentences from this process's lean client (``bench/client.py``), closed loop:
single-text requests at c=1 (latency) and c=64 (throughput), and 32-text requests at c=8 (the
texts/s the server reaches when batching is free). For every run: the server's CPU seconds per request
(its whole process tree, ``/proc``), and its resident memory. Plus the IPC's own cost per request (the
frames a front end and a worker exchange, encoded and decoded in this process), and a JSON + PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.client import encode_post
from bench.load import Run, _summary, closed_loop, interleaved, load_texts, median_by
from bench.servers import REPO_ROOT, ServerHandle, launch_server

PATH = "/v1/sentiment"


def ipc_cost(texts: list[str], repeats: int = 2000) -> dict[str, float]:
    """µs per request of what the IPC adds on both sides: frames encoded, decoded, answers likewise."""
    import pickle

    from service.ipc import decode_items, decode_outputs, encode_items, encode_outputs
    from service.pipelines.base import Item

    out: dict[str, float] = {}
    for n in (1, 32):
        items = [Item(np.arange(len(t.split()) + 1, dtype=np.int64), len(t.split()) + 1) for t in texts[:n]]
        outputs = [np.array([0.25, 0.75], dtype=np.float32) for _ in items]
        started = time.perf_counter()
        for i in range(repeats):
            frame = pickle.dumps(("submit", i, "sentiment", 0.0, *encode_items(items)), protocol=5)  # type: ignore[misc]
            _, _, _, _, key, lengths, ids = pickle.loads(frame)
            decode_items(key, lengths, ids)
            answer = pickle.dumps(("result", i, encode_outputs(outputs)), protocol=5)
            decode_outputs(pickle.loads(answer)[2])
        out[f"texts_{n}_us_per_request"] = (time.perf_counter() - started) / repeats * 1e6
    return out


def measure(server: ServerHandle, name: str, reqs: list[bytes], c: int, texts_per_request: int, args: Any) -> Run:
    cpu0 = server.cpu_seconds()
    latencies, statuses = asyncio.run(closed_loop(server.url, reqs, c, args.duration, args.warmup))
    cpu = server.cpu_seconds() - cpu0
    run = _summary(name, f"x{texts_per_request}", c, 0, args.duration, latencies, statuses)
    answered = sum(v for k, v in statuses.items() if k != "connection_error")
    # CPU over warm-up + measured window, per request answered in both (the warm-up answers are not
    # counted in ``statuses``, so scale by time instead: the load is steady).
    run.extra = {
        "texts_s": run.throughput * texts_per_request,
        "server_cpu_ms_per_request": 1000 * cpu * args.duration / (args.duration + args.warmup) / max(1, answered),
        "rss_mb": server.rss() / 2**20,
    }
    print(
        f"{name} x{texts_per_request} c={c}: {run.throughput:,.0f} req/s, {run.extra['texts_s']:,.0f} texts/s, "
        f"p50 {run.p50_ms:.2f} p99 {run.p99_ms:.2f} ms, CPU {run.extra['server_cpu_ms_per_request']:.3f} ms/req, "
        f"RSS {run.extra['rss_mb']:.0f} MiB, errors {run.errors or '-'}",
        flush=True,
    )
    return run


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="d32e1cb", help="commit to serve from a git worktree as the baseline")
    p.add_argument("--baseline-worktree", type=Path, default=Path(tempfile.gettempdir()) / "lstm-serve-baseline")
    p.add_argument(
        "--baseline-cmd", default="-m service.cli serve", help="python arguments that start the baseline (d32e1cb's)"
    )
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="front ends of the multi-process server")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "workers_cpu")
    return p.parse_args(list(argv))


def baseline_worktree(commit: str, where: Path) -> Path:
    if not (where / ".git").exists():
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(where), commit], check=True)
    head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    wanted = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", commit], capture_output=True, text=True)
    if head.stdout.strip() != wanted.stdout.strip():
        subprocess.run(["git", "-C", str(where), "checkout", "--detach", commit], check=True)
    return where


def summary(runs: list[Run]) -> dict[str, Any]:
    def med(server: str, mode: str, c: int, key: str) -> float:
        values = [
            r.extra[key] if key in r.extra else getattr(r, key)
            for r in runs
            if (r.server, r.mode, r.level) == (server, mode, c)
        ]
        return float(np.median(values)) if values else float("nan")

    out: dict[str, Any] = {}
    for s in dict.fromkeys(r.server for r in runs):
        out[s] = {
            "c64_req_s": med(s, "x1", 64, "throughput"),
            "c64_cpu_ms_per_request": med(s, "x1", 64, "server_cpu_ms_per_request"),
            "c1_p50_ms": med(s, "x1", 1, "p50_ms"),
            "x32_texts_s": med(s, "x32", 8, "texts_s"),
            "rss_mb": med(s, "x1", 64, "rss_mb"),
        }
        out[s]["single_vs_x32"] = out[s]["c64_req_s"] / out[s]["x32_texts_s"]
    base = out.get("baseline")
    if base:
        for v in out.values():
            v["c64_vs_baseline"] = v["c64_req_s"] / base["c64_req_s"]
            v["cpu_vs_baseline"] = v["c64_cpu_ms_per_request"] / base["c64_cpu_ms_per_request"]
            v["c1_p50_minus_baseline_ms"] = v["c1_p50_ms"] - base["c1_p50_ms"]
    return out


def plot(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(dict.fromkeys(r.server for r in runs))
    panels = [
        ("x1 c=64 req/s", "x1", 64, "throughput"),
        ("x32 c=8 texts/s", "x32", 8, "texts_s"),
        ("x1 c=64 server CPU ms/req", "x1", 64, "server_cpu_ms_per_request"),
        ("x1 c=1 p50 ms", "x1", 1, "p50_ms"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.2))
    for ax, (label, mode, c, key) in zip(axes, panels, strict=True):
        values = [
            median_by(runs, s, mode, c, key)
            if key in ("throughput", "p50_ms")
            else float(np.median([r.extra[key] for r in runs if (r.server, r.mode, r.level) == (s, mode, c)]))
            for s in servers
        ]
        ax.bar(servers, values, color=["#888", "#4c72b0", "#dd8452"][: len(servers)])
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.2f}" if v < 10 else f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    texts = load_texts(2000)
    logs = Path(tempfile.mkdtemp(prefix="lstm-serve-bench-workers-"))
    base = baseline_worktree(args.baseline, args.baseline_worktree)
    servers: dict[str, ServerHandle] = {}
    try:
        servers["baseline"] = launch_server({}, logs, repo=base, command=tuple(args.baseline_cmd.split()))
        servers["workers=1"] = launch_server({"workers": 1}, logs)
        servers[f"workers={args.workers}"] = launch_server({"workers": args.workers}, logs)
        names = list(servers)
        single = {
            n: [encode_post(h.url, PATH, json.dumps({"texts": [t]}).encode()) for t in texts]
            for n, h in servers.items()
        }
        many = {
            n: [encode_post(h.url, PATH, json.dumps({"texts": texts[i : i + 32]}).encode()) for i in range(0, 1984, 32)]
            for n, h in servers.items()
        }
        runs: list[Run] = []
        for c in (1, 64):
            runs += interleaved(names, args.repeats, lambda n, rep, c=c: measure(servers[n], n, single[n], c, 1, args))
        runs += interleaved(names, args.repeats, lambda n, rep: measure(servers[n], n, many[n], 8, 32, args))
    finally:
        exit_codes = {n: h.stop() for n, h in servers.items()}
    result = {
        "command": "python -m bench.workers " + " ".join(argv or []),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "baseline": args.baseline,
        "exit_codes": exit_codes,
        "ipc_us_per_request": ipc_cost(texts),
        "summary": summary(runs),
        "runs": [asdict(r) for r in runs],
    }
    print(json.dumps({k: result[k] for k in ("ipc_us_per_request", "summary")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.out.with_suffix(".png"), f"lstm-serve: workers vs {args.baseline} ({result['when']})")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
