"""Step-level decoding against a baseline commit: ``python -m bench.translation_compare``.

Starts two real servers on the same model files: this tree (step-level decoding, the default
``decode_mode``) and a baseline commit checked out in a ``git worktree`` and started with its own
code (``--baseline-cmd``; for ``d32e1cb``: ``python -m service.cli serve``). This tree's server serves
the baseline's translation graphs (fp32), copied with the step-level graphs added
(``export.decode_graphs``), not the model this tree ships: the comparison is of the serving code. Then:

1. **Same answers.** Every test_2016_flickr sentence, greedy and beam 4: the baseline translates each
   sentence alone (one request at a time: its round-based decoder's answer for that sentence), this
   tree under concurrency 32 (sentences joining and leaving a shared running set). Greedy must be
   identical. Beam outputs that differ are rescored by forced decoding on the shipped graphs
   (numpy, one sentence at a time): a difference whose two length-normalised scores are within
   ``--tie-tolerance`` is a tie. BLEU (sacrebleu 13a, cased) of both.
2. **Speed.** Closed loop, one sentence per request (cycled test sentences), for each beam and
   concurrency, the two servers measured interleaved (order flipped every repeat) in the same run;
   medians over the repeats, and the ratios new/baseline.

Writes ``OUT.json`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench.client import encode_post
from bench.load import Run, _summary, closed_loop, interleaved, median_by
from bench.servers import READY_TIMEOUT_S, REPO_ROOT, ServerHandle, _answers, free_port, launch_server
from bench.translation import PATH, latest_version

NEW, BASE = "step_level", "baseline"


def _pairs(text: str) -> list[tuple[int, int]]:
    """``"1:1,1:32,4:1,4:32"`` → [(beam, concurrency), ...]."""
    return [tuple(int(x) for x in part.split(":")) for part in text.split(",") if part]  # type: ignore[misc]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.translation_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-dir", type=Path, required=True, help="a git worktree of the baseline commit")
    p.add_argument("--baseline-cmd", default="-m service.cli serve", help="python arguments that start it")
    p.add_argument("--runs", type=_pairs, default=_pairs("1:1,1:32,4:1,4:32"), help="beam:concurrency,...")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--texts", type=int, default=1000, help="test_2016_flickr sentences (answers and load)")
    p.add_argument("--tie-tolerance", type=float, default=1e-4)
    p.add_argument("--skip-answers", action="store_true")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "translation_step_level_cpu")
    return p.parse_args(list(argv))


def launch_baseline(folder: Path, command: str, log_dir: Path) -> ServerHandle:
    """The baseline commit's own server, from its own tree (its code, its model repository)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(folder), PYTHONUNBUFFERED="1")
    env.update({"LSTM_SERVE_HOST": "127.0.0.1", "LSTM_SERVE_PORT": str(port)})
    env.update({"LSTM_SERVE_MODEL_REPOSITORY": str(folder / "model_repository")})
    log_path = log_dir / f"baseline-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, *command.split()], cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", process, env, log_path, {"baseline": str(folder)})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _answers(handle.url, "/readyz"):
        if process.poll() is not None or time.monotonic() > deadline:
            handle.stop(timeout=5)
            raise RuntimeError(f"baseline server did not become ready:\n{handle.log()[-3000:]}")
        time.sleep(0.2)
    return handle


def same_model_repository(baseline: Path, work: Path) -> Path:
    """A repository holding the baseline's newest translation version plus ``rows.onnx``/``topk.onnx`` (checked)."""
    from export.decode_graphs import add_to_folder

    source = latest_version("translation", baseline / "model_repository")
    target = work / "model_repository" / "translation" / source.name
    shutil.copytree(source, target)
    if not (target / "rows.onnx").is_file():
        add_to_folder(target)
    return target


def translate(url: str, texts: list[str], beam: int) -> list[str]:
    body = json.dumps({"texts": texts, "beam_size": beam}).encode()
    request = urllib.request.Request(url + PATH, body, {"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["translations"]


def forced_score(runtime, source_ids: list[int], target_ids: list[int], alpha: float) -> float:
    """Length-normalised log-probability of ``target_ids`` + EOS, as beam search ranks finished hypotheses."""
    from lstm_core.tokens import BOS_ID, EOS_ID
    from lstm_core.translation_search import length_penalty

    src = np.asarray([source_ids], dtype=np.int64)
    step = runtime.stepper(src, np.asarray([len(source_ids)], dtype=np.int64), 1)
    prev, total = BOS_ID, 0.0
    for token in [*target_ids, EOS_ID]:
        logp = step(np.asarray([prev], dtype=np.int64), np.zeros(1, dtype=np.int64))
        total += float(logp[0, token])
        prev = token
    return total / length_penalty(len(target_ids) + 1, alpha)


def compare_answers(base_url: str, new_url: str, texts: list[str], references: list[str], folder: Path) -> dict:
    from tokenizers import Tokenizer

    from lstm_core.encoding import encode_source
    from lstm_core.translation_runtime import Seq2SeqRuntime
    from models.translation.decode import bleu

    source = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    target = Tokenizer.from_file(str(folder / "target_tokenizer.json"))
    runtime = Seq2SeqRuntime.from_folder(folder)
    result: dict = {}
    for beam in (1, 4):
        started = time.monotonic()
        alone = [translate(base_url, [t], beam)[0] for t in texts]
        base_seconds = time.monotonic() - started
        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:  # one sentence per request, 32 at a time: a shared running set
            together = list(pool.map(lambda t: translate(new_url, [t], beam)[0], texts))  # noqa: B023
        new_seconds = time.monotonic() - started
        differ = [i for i, (a, b) in enumerate(zip(alone, together, strict=True)) if a != b]
        entry = {
            "sentences": len(texts),
            "different": len(differ),
            "bleu_baseline_alone": round(bleu(alone, references), 2),
            "bleu_step_level_c32": round(bleu(together, references), 2),
            "seconds_baseline_alone": round(base_seconds, 1),
            "seconds_step_level_c32": round(new_seconds, 1),
            "examples": [{"source": texts[i], "baseline": alone[i], "step_level": together[i]} for i in differ[:10]],
        }
        if beam > 1 and differ:
            src_ids = encode_source(source, [texts[i] for i in differ], 256)
            gaps = []
            for ids, i in zip(src_ids, differ, strict=True):
                a = forced_score(runtime, ids, target.encode(alone[i]).ids, 0.6)
                b = forced_score(runtime, ids, target.encode(together[i]).ids, 0.6)
                gaps.append(abs(a - b))
            entry["score_gaps"] = [float(g) for g in gaps]
        result["greedy" if beam == 1 else f"beam{beam}"] = entry
        print(
            f"answers beam {beam}: {entry['different']} of {len(texts)} differ; BLEU "
            f"{entry['bleu_baseline_alone']} vs {entry['bleu_step_level_c32']}",
            flush=True,
        )
    return result


def plot(runs: list[Run], pairs: list[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"beam {b}, c={c}" for b, c in pairs]
    x = np.arange(len(pairs))
    for offset, server in ((-0.2, BASE), (0.2, NEW)):
        tput = [median_by(runs, f"{server} beam{b}", "closed", c, "throughput") for b, c in pairs]
        p99 = [median_by(runs, f"{server} beam{b}", "closed", c, "p99_ms") for b, c in pairs]
        axes[0].bar(x + offset, tput, width=0.4, label=server)
        axes[1].bar(x + offset, p99, width=0.4, label=server)
    axes[0].set(ylabel="sentences/s (median)", title="throughput")
    axes[1].set(ylabel="ms (median of runs)", title="p99 latency", yscale="log")
    for ax in axes:
        ax.set_xticks(x, labels)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.suptitle("translation: step-level decoding vs the round-based baseline (CPU, one sentence per request)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    from models.translation.data import load_pairs

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    texts, references = load_pairs("test_2016_flickr", args.texts)
    log_dir = Path(tempfile.mkdtemp(prefix="lstm-serve-bench-tr-compare-"))
    folder = same_model_repository(args.baseline_dir.resolve(), log_dir)
    servers: dict[str, ServerHandle] = {}
    runs: list[Run] = []
    answers: dict = {}
    try:
        servers[BASE] = launch_baseline(args.baseline_dir.resolve(), args.baseline_cmd, log_dir)
        # the baseline's fp32 graphs (the same files); a card with variants would get int8 from ``auto`` on CPU
        servers[NEW] = launch_server({"precision": "fp32", "model_repository": str(folder.parents[1])}, log_dir)
        if not args.skip_answers:
            answers = compare_answers(servers[BASE].url, servers[NEW].url, texts, references, folder)
        for beam, c in args.runs:
            reqs = {
                name: [encode_post(h.url, PATH, json.dumps({"texts": [t], "beam_size": beam}).encode()) for t in texts]
                for name, h in servers.items()
            }

            def measure(name: str, rep: int, beam: int = beam, c: int = c, reqs: dict = reqs) -> Run:
                lat, st = asyncio.run(closed_loop(servers[name].url, reqs[name], c, args.duration, args.warmup))
                return _summary(f"{name} beam{beam}", "closed", c, rep, args.duration, lat, st)

            runs += interleaved([BASE, NEW], args.repeats, measure)
    finally:
        exit_codes = {name: h.stop() for name, h in servers.items()}
    lines = [
        "| beam | c | baseline sent/s | step-level sent/s | ratio | baseline p50 / p99 ms | step-level p50 / p99 ms "
        "| p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for beam, c in args.runs:
        m = {
            s: {k: median_by(runs, f"{s} beam{beam}", "closed", c, k) for k in ("throughput", "p50_ms", "p99_ms")}
            for s in (BASE, NEW)
        }
        row = {
            "beam": beam,
            "concurrency": c,
            **{f"{s}_{k}": v for s in (BASE, NEW) for k, v in m[s].items()},
            "throughput_ratio": m[NEW]["throughput"] / m[BASE]["throughput"],
            "p50_ratio": m[NEW]["p50_ms"] / m[BASE]["p50_ms"],
            "p99_ratio": m[NEW]["p99_ms"] / m[BASE]["p99_ms"],
        }
        summary.append(row)
        lines.append(
            f"| {beam} | {c} | {m[BASE]['throughput']:.1f} | {m[NEW]['throughput']:.1f} | "
            f"**{row['throughput_ratio']:.2f}×** | {m[BASE]['p50_ms']:.1f} / {m[BASE]['p99_ms']:.1f} | "
            f"{m[NEW]['p50_ms']:.1f} / {m[NEW]['p99_ms']:.1f} | {row['p50_ratio']:.2f} | {row['p99_ratio']:.2f} |"
        )
    table = "\n".join(lines)
    print(table, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python -m bench.translation_compare " + " ".join(argv),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "baseline": str(args.baseline_dir),
        "baseline_commit": subprocess.run(
            ["git", "-C", str(args.baseline_dir), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "exit_codes": exit_codes,
        "answers": answers,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
        "table": table,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.runs, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
