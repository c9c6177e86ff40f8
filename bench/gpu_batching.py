"""``python -m bench.gpu_batching``: which batching knobs feed a GPU, measured on the served sentiment model.

Why: on the H200 the multi-process server kept the GPU 30% busy while its one inference worker spent
about 70% of its time inside onnxruntime's CUDA run. A run there costs about the same from 1 to 256
sequences, so what a round costs is mostly *how many runs* it is cut into, and the CPU defaults
(``max_padding_ratio`` 0.3, made for a CPU where padding costs as much as text) may cut a 256-item round
of real sentences into several runs. This sweep serves the same model under several batching settings,
every server up at once and measured in turn (``--repeats`` interleaved rounds, medians), and reads for
each load the texts/s, p50/p99, GPU busy share, server CPU
per request and, from ``/metrics``, the mean batch (items per ``session.run``) and runs per second;
the cost model the server calibrated at warm-up comes from its log.

Writes ``<out>.json`` and ``<out>.png`` and prints a table. ``--allow-cpu`` runs it on the CPU provider
(small sizes with ``--quick``), so the script itself is exercised without a GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.gpu_check import GPU_SERVER_SETTINGS, load_run
from bench.load import Run, load_texts
from bench.servers import REPO_ROOT, launch_server

#: The settings swept by default: the CUDA defaults before the first sweep (rounds of 256, the CPU's padding
#: share), today's CUDA defaults (``service.settings.CUDA_BATCHING``), and rounds of 2,048.
DEFAULT_VARIANTS: list[dict[str, Any]] = [
    {"max_batch_size": 256, "max_batch_tokens": 65536, "max_padding_ratio": 0.3},
    {},
    {"max_batch_size": 2048, "max_batch_tokens": 262144},
]
#: The per-run figures ``table`` and ``plot`` give as medians over repeats.
MEDIAN_KEYS = ("texts_s", "gpu_busy", "mean_batch", "runs_per_s", "server_cpu_ms_per_request")
COST_LINE = re.compile(r"sentiment: batch cost = (\d+) µs \+ tokens × \(([\d.]+) µs \+ ([\d.]+) µs × items\)")


def variant_label(variant: dict[str, Any]) -> str:
    """How tables and plots name a settings variant ("defaults" for none)."""
    return ", ".join(f"{k}={v}" for k, v in variant.items()) or "defaults"


def batch_counters(url: str) -> tuple[float, float]:
    """(batches run, items run) of the sentiment model so far, from ``/metrics`` (all processes)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    batches = items = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "lstm_serve_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != "sentiment":
                continue
            if sample.name.endswith("_count"):
                batches += sample.value
            elif sample.name.endswith("_sum"):
                items += sample.value
    return batches, items


def measure(server: Any, name: str, bodies: list[dict], per_request: int, c: int, args: argparse.Namespace) -> Run:
    """One load run with the batches it caused: mean items per run and runs per second."""
    batches0, items0 = batch_counters(server.url)
    run = load_run(server, name, "/v1/sentiment", bodies, per_request, c, args)
    batches1, items1 = batch_counters(server.url)
    batches, items = batches1 - batches0, items1 - items0
    seconds = args.duration + args.warmup
    run.extra.update({"mean_batch": items / batches if batches else None, "runs_per_s": batches / seconds})
    return run


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant's server up at once, measured in turn ``args.repeats`` times (the order reversed on
    odd repeats), so a slow moment of the machine falls on every variant alike; then all are stopped."""
    texts = load_texts(2000)
    single = [{"texts": [t]} for t in texts]
    multi = [{"texts": texts[i : i + 64]} for i in range(0, len(texts) - 63, 64)]
    entries: list[dict[str, Any]] = []
    servers: list[Any] = []
    try:
        for variant in args.variants:
            settings = {
                "provider": args.provider,
                "precision": "fp32",
                "workers": args.workers,
                **(GPU_SERVER_SETTINGS if args.provider != "cpu" else {}),
                **variant,
            }
            print(f"== starting {variant_label(variant)}", flush=True)
            servers.append(launch_server(settings, Path(tempfile.mkdtemp(prefix="lstm-serve-gpu-batching-")), 300))
            entries.append({"variant": variant, "settings": settings, "runs": []})
        for server in servers:
            server.settle()
        for repeat in range(args.repeats):
            order = range(len(servers)) if repeat % 2 == 0 else reversed(range(len(servers)))
            for i in order:
                label = variant_label(entries[i]["variant"])
                print(f"== {label}, repeat {repeat + 1}/{args.repeats}", flush=True)
                loads = [(f"x1 [{label}]", single, 1, c) for c in args.single_concurrency]
                loads += [(f"x64 [{label}]", multi, 64, c) for c in args.multi_concurrency]
                for name, bodies, per_request, c in loads:
                    run = measure(servers[i], name, bodies, per_request, c, args)
                    run.repeat = repeat
                    print(f"   mean batch {run.extra['mean_batch'] or 0:.1f}, {run.extra['runs_per_s']:.0f} runs/s")
                    entries[i]["runs"].append(asdict(run))
        for entry, server in zip(entries, servers, strict=True):
            cost = COST_LINE.search(server.log())
            entry["cost_model_us"] = [float(x) for x in cost.groups()] if cost else None
    finally:
        for entry, server in zip(entries, servers, strict=True):
            entry["exit_code"] = server.stop()
    return {"argv": sys.argv[1:], "repeats": args.repeats, "results": entries}


def medians(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per load of a variant: the median over repeats of each figure."""
    by_load: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in entry["runs"]:
        by_load.setdefault((run["server"].split(" ", 1)[0], run["level"]), []).append(run)

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    rows = []
    for (load, level), runs in by_load.items():
        extra = [r["extra"] for r in runs]
        rows.append(
            {
                "load": load,
                "level": level,
                "repeats": len(runs),
                "p50_ms": median([r["p50_ms"] for r in runs]),
                "p99_ms": median([r["p99_ms"] for r in runs]),
                **{key: median([x[key] for x in extra]) for key in MEDIAN_KEYS},
            }
        )
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [
        "| settings | load | c | repeats | texts/s | p50 ms | p99 ms | GPU busy | mean batch | runs/s | CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["results"]:
        label = variant_label(entry["variant"])
        for row in medians(entry):
            busy = "-" if row["gpu_busy"] is None else f"{row['gpu_busy']:.0%}"
            lines.append(
                f"| {label} | {row['load']} | {row['level']:.0f} | {row['repeats']} | {row['texts_s']:,.0f} | "
                f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {busy} | {row['mean_batch'] or 0:.1f} | "
                f"{row['runs_per_s']:.0f} | {row['server_cpu_ms_per_request']:.2f} |"
            )
    rows = "\n".join(lines)
    costs = "\n".join(f"{variant_label(e['variant'])}: {e['cost_model_us']}" for e in result["results"])
    return f"(medians over repeats)\n{rows}\n\ncalibrated cost model (run µs, step µs, row µs):\n{costs}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({(r["server"].split(" ", 1)[0], r["level"]) for e in result["results"] for r in e["runs"]})
    labels = [variant_label(e["variant"]) for e in result["results"]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(1, len(labels))
    for k, (entry, label) in enumerate(zip(result["results"], labels, strict=True)):
        by_load = {(row["load"], row["level"]): row["texts_s"] for row in medians(entry)}
        xs = [i + k * width for i in range(len(loads))]
        ax.bar(xs, [by_load.get(load, 0) for load in loads], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(loads))], [f"{n} c={c:.0f}" for n, c in loads])
    ax.set(ylabel="texts/s", title="sentiment on one device: batching settings")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=json.loads, default=DEFAULT_VARIANTS, help="JSON list of settings overrides")
    p.add_argument("--allow-cpu", action="store_true", help="serve on the CPU provider (the CI test of this script)")
    p.add_argument("--quick", action="store_true", help="short runs and low concurrency")
    p.add_argument("--workers", type=int, default=0, help="front ends (0 = the server's auto)")
    p.add_argument("--client-processes", type=int, default=4, help="forked load-generating processes")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds over the variants (medians)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--single-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[256])
    p.add_argument("--multi-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "gpu_batching")
    args = p.parse_args(argv)
    args.provider = "cpu" if args.allow_cpu else "cuda"
    if args.quick:
        args.duration, args.warmup, args.client_processes = 1.0, 0.3, 1
        args.single_concurrency, args.multi_concurrency = [8], [2]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = sweep(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, args.out.with_suffix(".png"))
    print(table(result))
    return 0 if all(e["exit_code"] == 0 for e in result["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
