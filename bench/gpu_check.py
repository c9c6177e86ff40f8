"""``make gpu-check`` (``python -m bench.gpu_check``): verify a GPU machine end to end, in one command.

Why one command: a GPU machine is lent rarely and briefly, so everything worth knowing about the CUDA
path is gathered in one run that keeps going when a step fails and always writes its results:

1. **provider**: onnxruntime-gpu is installed, ``provider=cuda`` sessions of both shipped models really
   run on ``CUDAExecutionProvider`` (asserted: the check fails otherwise);
2. **parity**: GPU against CPU on real data through the serving pipelines: sentiment probabilities on
   SST-2 sentences (max abs difference, label agreement) and translation token ids, greedy and beam 4,
   on test_2016_flickr (identical share, BLEU of each);
3. **model throughput**: sentiment ``Runtime.run`` (the server's own call, IOBinding on CUDA) by batch
   size, sequences/s, GPU and CPU;
4. **server**: a real ``lstm-serve serve`` on CUDA under closed-loop load from this process's lean
   client: single-text requests at c=1/64/256, 64-text requests, translation at beam 4; texts/s,
   p50/p99, the server's CPU seconds per request (``/proc``) and the share of time the GPU was busy
   (NVML utilisation sampled every 100 ms);
5. **precision** (CUDA only): the fp16 variants built again from the shipped fp32 graphs (into a
   temporary copy) and gated on CUDA (sentiment: accuracy and label agreement against fp32 on the
   validation split; translation: val BLEU, greedy and beam 4), then two servers on that copy, forced
   to ``fp32`` and to ``fp16``, measured interleaved: single-text sentiment at c=256 (texts/s), 64-text
   requests, translation at beam 4. Steps 1-4 pin ``precision=fp32`` (they check the CUDA path itself).

Writes ``<out>.json`` and ``<out>.png`` (default ``bench/results/gpu_check``) and prints tables.
``--allow-cpu`` (or ``--provider cpu``) runs the same steps on the CPU provider (small sizes with
``--quick``) so the script itself is exercised in CI, where no GPU exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.client import encode_post
from bench.load import ClientProcesses, Run, _summary, load_texts
from bench.servers import REPO_ROOT, ServerHandle, launch_server, process_tree
from bench.translation import latest_version
from models.datasets import read_lines
from service.settings import CUDA_BATCHING

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
#: Batching settings for the GPU server: the service's own CUDA defaults, named so that every run says them.
GPU_SERVER_SETTINGS = dict(CUDA_BATCHING)


#: GPU vs CPU sentiment probabilities: the H200 run (2026-11-26) differed by up to 4.0e-4 on 4,096 SST-2
#: sentences. CUDA's fp32 LSTM is not bit-equal to the CPU kernels (onnxruntime's CUDA provider allows TF32
#: math by default on Ampere and later); what a user sees, the label, must agree.
SENTIMENT_TOLERANCE, SENTIMENT_LABEL_AGREEMENT = 2e-3, 0.999


class CheckFailed(AssertionError):
    """A verification step found the GPU path wrong (not merely slow)."""


def flickr_sentences(lang: str, limit: int) -> list[str]:
    """The first ``limit`` test_2016_flickr sentences (``en`` or ``de``), checksum-verified by the loader."""
    return list(read_lines(f"multi30k/test_2016_flickr.{lang}.gz"))[:limit]


def _pipeline(task: str, provider: str, threads: int = 1, precision: str = "fp32") -> Any:
    """A serving pipeline of the shipped model on one provider (``cuda`` must really be CUDA), fp32 by default."""
    from lstm_core.model_card import ModelCard
    from service.pipelines.registry import discover
    from service.runtime import Runtime, RuntimeOptions

    folder = latest_version(task)
    options = RuntimeOptions(provider=provider, intra_op_threads=threads, precision=precision)  # type: ignore[arg-type]
    runtime = Runtime(options)
    return discover()[task](ModelCard.load(folder), folder, runtime)


def _params(pipeline: Any, **values: Any) -> Any:
    """The task's own request-parameter model (what the wire validates), built from ``values``."""
    return type(pipeline).wire.params(**values)


def _timed(fn: Callable[[], Any], min_seconds: float, min_runs: int = 3, max_runs: int = 1000) -> float:
    """Median seconds of one call of ``fn`` (after one unmeasured call)."""
    fn()
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - begin < min_seconds and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- steps


def check_provider(provider: str) -> dict[str, Any]:
    """Sessions of both shipped models on the asked provider; with CUDA, every session must be on CUDA."""
    import onnxruntime as ort

    out: dict[str, Any] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    sentiment, translation = _pipeline("sentiment", provider), _pipeline("translation", provider)
    out["sessions"] = {
        "sentiment/model.onnx": sentiment.session.get_providers()[0],
        "translation/encoder.onnx": translation.model.encoder.get_providers()[0],
        "translation/decoder.onnx": translation.model.decoder.get_providers()[0],
    }
    out["runtime_provider"] = sentiment.runtime.provider
    if provider == "cuda" and set(out["sessions"].values()) != {CUDA}:
        raise CheckFailed(f"provider=cuda but sessions run on {out['sessions']}")
    return out


def check_sentiment_parity(provider: str, texts: list[str], batch: int = 64) -> dict[str, Any]:
    """The same batches through the pipeline on ``provider`` and on CPU: probabilities and labels."""
    device, host = _pipeline("sentiment", provider), _pipeline("sentiment", "cpu", threads=4)
    diffs, same_label = [], 0
    for start in range(0, len(texts), batch):
        items = device.preprocess(texts[start : start + batch], _params(device))
        a, b = np.stack(device.run_batch(items)), np.stack(host.run_batch(items))
        diffs.append(float(np.abs(a - b).max()))
        same_label += int((a.argmax(1) == b.argmax(1)).sum())
    out = {"texts": len(texts), "max_abs_diff": max(diffs), "label_agreement": same_label / len(texts)}
    if out["max_abs_diff"] > SENTIMENT_TOLERANCE or out["label_agreement"] < SENTIMENT_LABEL_AGREEMENT:
        raise CheckFailed(f"sentiment on {provider} vs cpu: {out} (tolerance {SENTIMENT_TOLERANCE:g})")
    return out


def _bleu(hypotheses: list[str], references: list[str]) -> float | None:
    try:
        import sacrebleu
    except ImportError:
        return None
    return round(float(sacrebleu.corpus_bleu(hypotheses, [references]).score), 2)


def check_translation_parity(provider: str, texts: list[str], refs: list[str], batch: int = 64) -> dict[str, Any]:
    """Token ids of greedy and beam-4 decodes on ``provider`` against CPU, batch by batch; BLEU of each."""
    device, host = _pipeline("translation", provider), _pipeline("translation", "cpu", threads=4)
    out: dict[str, Any] = {"texts": len(texts)}
    for beam in (1, 4):
        params = _params(device, beam_size=beam)
        same, dev_text, host_text, dev_s = 0, [], [], 0.0
        for start in range(0, len(texts), batch):
            items = device.preprocess(texts[start : start + batch], params)
            t0 = time.perf_counter()
            a = device.run_batch(items)
            dev_s += time.perf_counter() - t0
            b = host.run_batch(items)
            same += sum(x == y for x, y in zip(a, b, strict=True))
            dev_text += a
            host_text += b
        out[f"beam{beam}"] = {
            "identical_share": same / len(texts),
            "differing": len(texts) - same,
            "bleu_device": _bleu(dev_text, refs),
            "bleu_cpu": _bleu(host_text, refs),
            "device_sentences_s_batch64": len(texts) / dev_s,
        }
        if len(texts) - same > max(2, len(texts) // 100):  # the H200 run: 1 of 1,000 differed, BLEU equal
            raise CheckFailed(f"beam {beam}: only {same}/{len(texts)} translations equal on {provider} and cpu")
    return out


def model_throughput(provider: str, texts: list[str], sizes: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    """Sequences/s of the sentiment graph through ``Runtime.run`` (the server's call) by batch size."""
    from lstm_core.padding import pad_batch
    from lstm_core.tokens import PAD_ID

    threads = 1 if provider == "cuda" else min(16, os.cpu_count() or 1)
    pipe = _pipeline("sentiment", provider, threads=threads)
    rng = np.random.default_rng(0)
    encoded = [item.data for item in pipe.preprocess(texts, _params(pipe))]
    rows = []
    for size in sizes:
        picks = rng.choice(len(encoded), size=size, replace=size > len(encoded))
        ids, lengths = pad_batch([encoded[i] for i in picks], PAD_ID)
        feeds = {"input_ids": ids, "lengths": lengths}
        per_batch = _timed(lambda f=feeds: pipe.runtime.run(pipe.session, [pipe.output_name], f), seconds)
        rows.append(
            {
                "provider": pipe.runtime.provider,
                "threads": threads,
                "batch": size,
                "padded_length": int(ids.shape[1]),
                "ms_per_batch": per_batch * 1000,
                "sequences_s": size / per_batch,
            }
        )
        print(f"model {rows[-1]['provider']} batch {size}: {per_batch * 1000:.2f} ms, {size / per_batch:,.0f} seq/s")
    return rows


class GpuSampler:
    """NVML utilisation (share of time a kernel ran) sampled every 100 ms while a load runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML (CPU run): busy share is reported as None
            self.nvml = self.handle = None

    def __enter__(self) -> GpuSampler:
        if self.nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def load_run(
    server: ServerHandle, name: str, path: str, bodies: list[dict], texts_per_request: int, c: int, args: Any
) -> Run:
    """One closed-loop run with GPU busy share and server CPU per request recorded in ``Run.extra``."""
    reqs = [encode_post(server.url, path, json.dumps(b).encode()) for b in bodies]
    cpu0 = server.cpu_seconds()  # the whole process tree: front ends and workers too
    # Forked (when several) before the sampler thread starts.
    clients = ClientProcesses(server.url, reqs, c, args.duration, args.warmup, args.client_processes)
    with GpuSampler() as sampler:
        lat, statuses = clients.join()
    cpu = server.cpu_seconds() - cpu0
    run = _summary(name, "closed", c, 0, args.duration, lat, statuses)
    answered = sum(v for k, v in statuses.items() if k != "connection_error")
    run.extra = {
        "texts_s": run.throughput * texts_per_request,
        "gpu_busy": sampler.busy,
        "server_cpu_ms_per_request": 1000 * cpu / max(1, answered),
        "texts_per_request": texts_per_request,
    }
    busy = "-" if sampler.busy is None else f"{sampler.busy:.0%}"
    print(
        f"server {name} c={c}: {run.throughput:,.0f} req/s = {run.extra['texts_s']:,.0f} texts/s, p50 {run.p50_ms:.1f} "
        f"p99 {run.p99_ms:.1f} ms, GPU busy {busy}, server CPU {run.extra['server_cpu_ms_per_request']:.2f} ms/req, "
        f"errors {run.errors or '-'}",
        flush=True,
    )
    return run


def server_runs(provider: str, args: argparse.Namespace, workers: int, label: str = "") -> tuple[list[Run], dict]:
    """The load runs against one server with ``workers`` front ends; ``label`` suffixes the run names."""
    settings = {
        "provider": provider,
        "precision": "fp32",
        "workers": workers,  # 0 = auto: on a GPU machine, several front ends feed the device
        **(GPU_SERVER_SETTINGS if provider == "cuda" else {}),
    }
    server = launch_server(settings, Path(tempfile.mkdtemp(prefix="lstm-serve-gpu-check-")), timeout=300)
    runs: list[Run] = []
    texts = load_texts(2000)
    flickr = flickr_sentences("en", 200)
    ready_gpu_mib = _gpu_memory_mib(server.url)  # what warm-up left held, before any load (None without NVML)
    try:
        single = [{"texts": [t]} for t in texts]
        for c in args.concurrency:
            runs.append(load_run(server, f"sentiment x1{label}", "/v1/sentiment", single, 1, c, args))
        multi = [{"texts": texts[i : i + 64]} for i in range(0, len(texts) - 63, 64)]
        for c in args.multi_concurrency:
            runs.append(load_run(server, f"sentiment x64{label}", "/v1/sentiment", multi, 64, c, args))
        beam4 = [{"texts": [t], "beam_size": 4} for t in flickr]
        for c in args.translation_concurrency:
            runs.append(load_run(server, f"translation beam4{label}", "/v1/translate", beam4, 1, c, args))
        info = {"settings": settings, "rss_mb": server.rss() / 2**20, "model_info": _model_info(server.url)}
        info["gpu_memory_mib"] = {"ready": ready_gpu_mib, "after_load": _gpu_memory_mib(server.url)}
        info["processes"] = len(process_tree(server.process.pid))
    finally:
        info_exit = server.stop()
    info["exit_code"] = info_exit
    return runs, info


def torch_greedy_step(device: str, args: argparse.Namespace) -> dict[str, Any]:
    """Issue 11's reference: a plain PyTorch greedy loop over the shipped weights, sentences/s by batch size."""
    from tokenizers import Tokenizer

    from bench.torch_reference import greedy_loop, load_torch_model, throughput
    from lstm_core.encoding import encode_source
    from models.translation.subwords import decode_target

    folder = latest_version("translation")
    model = load_torch_model(folder)
    tokenizer = Tokenizer.from_file(str(folder / "source_tokenizer.json"))
    texts = flickr_sentences("en", 64 if args.quick else 1000)
    served = _pipeline("translation", "cpu", threads=4)  # the ONNX graphs, greedy, as the server decodes
    served_text = served.run_batch(served.preprocess(texts[:64], _params(served, beam_size=1)))
    reference = greedy_loop(model.to(device), encode_source(tokenizer, texts[:64], 128), device)
    reference_text = decode_target(Tokenizer.from_file(str(folder / "target_tokenizer.json")), reference)
    same = sum(a == b for a, b in zip(reference_text, served_text, strict=True))
    out: dict[str, Any] = {"device": device, "torch": __import__("torch").__version__}
    out["identical_to_served_greedy"] = f"{same}/{len(served_text)}"
    sizes = [1, 8] if args.quick else [1, 64, 256]
    out["runs"] = []
    for size in sizes:  # batch 1 over the first 300 sentences: one launch per kernel per token adds up
        subset = texts[: 16 if args.quick else 300] if size == 1 else texts
        out["runs"] += throughput(model, tokenizer, subset, [size], device)
    return out


def precision_step(provider: str, args: argparse.Namespace) -> dict[str, Any]:
    """fp16 against fp32 on this provider: the fp16 gate run here, then both precisions served, interleaved."""
    import shutil

    from export.precision import add_variants
    from lstm_core.model_card import ModelCard

    repo = Path(tempfile.mkdtemp(prefix="lstm-serve-precision-"))
    out: dict[str, Any] = {"gates": {}, "refused": {}, "repository": str(repo)}
    for model in ("sentiment", "translation"):
        folder = repo / model / latest_version(model).name
        shutil.copytree(latest_version(model), folder)
        card = ModelCard.load(folder)
        limit = 256 if args.quick else None
        report = add_variants(folder, card, ["fp16"], limit=limit, measure_cost=False)
        report.card.save(folder)
        out["gates"][model] = report.card.variants["fp16"].gate if "fp16" in report.card.variants else None
        if "fp16" in report.refused:
            out["refused"][model] = report.refused["fp16"]
            shutil.rmtree(folder.parent)  # a forced fp16 server would refuse it: serve only what passed
    base = {"provider": provider, "model_repository": repo, **(GPU_SERVER_SETTINGS if provider == "cuda" else {})}
    servers = {p: launch_server(base | {"precision": p}, repo / f"logs-{p}", timeout=300) for p in ("fp32", "fp16")}
    texts, flickr = load_texts(2000), flickr_sentences("en", 200)
    loads = [("sentiment x1", "/v1/sentiment", [{"texts": [t]} for t in texts], 1, args.precision_concurrency)]
    loads.append(("sentiment x64", "/v1/sentiment", [{"texts": texts[i : i + 64]} for i in range(0, 1937, 64)], 64, 16))
    if "translation" not in out["refused"]:
        loads.append(("translation beam4", "/v1/translate", [{"texts": [t], "beam_size": 4} for t in flickr], 1, 64))
    runs: list[Run] = []
    try:
        for repeat in range(args.precision_repeats):
            for name, path, bodies, per_request, c in loads:
                order = ("fp32", "fp16") if repeat % 2 == 0 else ("fp16", "fp32")  # interleaved
                for precision in order:
                    run = load_run(servers[precision], f"{name} {precision}", path, bodies, per_request, c, args)
                    run.repeat = repeat
                    runs.append(run)
        out["model_info"] = {p: _model_info(s.url) for p, s in servers.items()}
    finally:
        out["exit_codes"] = {p: s.stop() for p, s in servers.items()}
    out["runs"] = [asdict(r) for r in runs]
    summary = {}
    for name, *_ in loads:
        medians = {
            p: statistics.median(r.extra["texts_s"] for r in runs if r.server == f"{name} {p}")
            for p in ("fp32", "fp16")
        }
        summary[name] = medians | {"fp16_over_fp32": medians["fp16"] / medians["fp32"]}
    out["texts_s_median"] = summary
    return out


def _metric_lines(url: str, name: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return [line for line in response.read().decode().splitlines() if line.startswith(name)]


def _model_info(url: str) -> list[str]:
    return _metric_lines(url, "lstm_serve_model_info")


def _gpu_memory_mib(url: str) -> float | None:
    """The device's memory in use (the service's NVML gauge), MiB; None where NVML or a GPU is missing."""
    lines = _metric_lines(url, "lstm_serve_gpu_memory_used_bytes")
    return float(lines[0].split()[-1]) / 2**20 if lines else None


# ------------------------------------------------------------------------------------------ reporting


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    model = result.get("model_throughput") or []
    for prov in sorted({r["provider"] for r in model}):
        rows = [r for r in model if r["provider"] == prov]
        axes[0].plot([r["batch"] for r in rows], [r["sequences_s"] for r in rows], marker="o", label=prov)
    axes[0].set(xscale="log", yscale="log", xlabel="batch (real SST-2 sentences)", ylabel="sequences/s")
    axes[0].set_title("sentiment graph alone (Runtime.run)")
    runs = result.get("server", {}).get("runs", [])
    for name in dict.fromkeys(r["server"] for r in runs):
        rows = sorted((r for r in runs if r["server"] == name), key=lambda r: r["level"])
        levels = [r["level"] for r in rows]
        axes[1].plot(levels, [r["extra"]["texts_s"] for r in rows], marker="o", label=name)
        axes[2].plot(levels, [r["p99_ms"] for r in rows], marker="o", label=f"{name} p99")
        axes[2].plot(levels, [r["p50_ms"] for r in rows], "--", marker=".", label=f"{name} p50")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrency (closed loop)", ylabel="texts/s")
    axes[1].set_title("server: texts/s")
    axes[2].set(xscale="log", yscale="log", xlabel="concurrency (closed loop)", ylabel="ms")
    axes[2].set_title("server: latency")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"lstm-serve gpu-check on {result['machine'].get('gpu') or 'CPU'} ({result['when']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables(result: dict[str, Any]) -> str:
    lines = ["| provider | batch | padded length | ms/batch | sequences/s |", "|---|---|---|---|---|"]
    for r in result.get("model_throughput") or []:
        lines.append(
            f"| {r['provider']} | {r['batch']} | {r['padded_length']} | {r['ms_per_batch']:.2f} "
            f"| {r['sequences_s']:,.0f} |"
        )
    lines += [
        "",
        "| load | concurrency | req/s | texts/s | p50 ms | p99 ms | GPU busy | server CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("server", {}).get("runs", []):
        busy = r["extra"]["gpu_busy"]
        lines.append(
            f"| {r['server']} | {r['level']:g} | {r['throughput']:,.0f} | {r['extra']['texts_s']:,.0f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {'-' if busy is None else f'{busy:.0%}'} "
            f"| {r['extra']['server_cpu_ms_per_request']:.2f} | {r['errors'] or '-'} |"
        )
    torch_runs = (result.get("torch_greedy") or {}).get("runs", [])
    if torch_runs:
        lines += ["", "| PyTorch greedy loop | batch | sentences/s |", "|---|---|---|"]
        device = result["torch_greedy"]["device"]
        lines += [f"| {device} | {r['batch']} | {r['sentences_s']:,.1f} |" for r in torch_runs]
    return "\n".join(lines)


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _gpu_name() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    except Exception:
        return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU provider when no GPU is there (CI)")
    p.add_argument("--provider", choices=("auto", "cpu"), default="auto", help="cpu: check the CPU path even on a GPU")
    p.add_argument("--quick", action="store_true", help="small sizes and short runs (the CI test of this script)")
    p.add_argument("--skip-server", action="store_true", help="only the in-process checks")
    p.add_argument(
        "--server-workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0],
        help="LSTM_SERVE_WORKERS of the server (0 = auto); a list (1,0) serves and measures each in turn",
    )
    p.add_argument(
        "--client-processes",
        type=int,
        default=max(1, (os.cpu_count() or 1) // 4),
        help="load-generating processes (default: a quarter of the cores); one cannot load a multi-process server",
    )
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per load run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each load run")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 256])
    p.add_argument("--multi-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16, 64])
    p.add_argument("--translation-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 256])
    p.add_argument("--precision-concurrency", type=int, default=256, help="single-text c of the fp16/fp32 step")
    p.add_argument("--precision-repeats", type=int, default=2, help="interleaved repeats of the fp16/fp32 step")
    p.add_argument("--skip-precision", action="store_true", help="leave out the fp16-vs-fp32 step")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "gpu_check")
    args = p.parse_args(list(argv))
    if args.quick:
        args.duration, args.warmup = min(args.duration, 1.0), min(args.warmup, 0.3)
        args.concurrency, args.multi_concurrency, args.translation_concurrency = [1, 8], [2], [2]
        args.precision_concurrency, args.precision_repeats = 8, 1
        args.client_processes = 2  # CI exercises the forked client too
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    from service.runtime import cuda_available

    has_gpu = cuda_available() and args.provider == "auto"
    if not has_gpu and not (args.allow_cpu or args.provider == "cpu"):
        print("gpu-check: onnxruntime offers no CUDA provider here (install onnxruntime-gpu on a GPU machine)")
        return 2
    provider = "cuda" if has_gpu else "cpu"
    n_sent, n_tr = (256, 32) if args.quick else (4096, 1000)
    sizes = (1, 8, 32) if args.quick else (1, 8, 32, 128, 512, 1024, 2048, 4096)
    result: dict[str, Any] = {
        "command": "python -m bench.gpu_check " + " ".join(argv or []),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "gpu": _gpu_name(),
        },
        "provider": provider,
        "failures": {},
    }
    texts = load_texts(n_sent)
    flickr_en, flickr_de = flickr_sentences("en", n_tr), flickr_sentences("de", n_tr)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("provider", lambda: check_provider(provider)),
        ("sentiment_parity", lambda: check_sentiment_parity(provider, texts)),
        ("translation_parity", lambda: check_translation_parity(provider, flickr_en, flickr_de)),
        ("model_throughput", lambda: model_throughput(provider, texts, sizes, 0.5 if args.quick else 1.5)),
    ]
    if has_gpu:  # the same graph on the machine's CPU cores, for scale
        steps.append(("model_throughput_cpu", lambda: model_throughput("cpu", texts, sizes[:5], 1.0)))
    if not args.skip_server:
        steps.append(("server", lambda: _server_step(provider, args)))
    if has_gpu and _torch_cuda():  # issue 11's reference loop; the GPU image has a CUDA torch
        steps.append(("torch_greedy", lambda: torch_greedy_step("cuda", args)))
    if has_gpu and not args.skip_precision:  # fp16 is a CUDA variant: its gate and speed mean nothing on CPU
        steps.append(("precision", lambda: precision_step(provider, args)))
    for name, step in steps:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result[name] = step()
            print(json.dumps(result[name], default=str)[:2000], flush=True)
        except Exception as exc:  # record and go on: one failing step must not lose the others' figures
            result["failures"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    if "model_throughput_cpu" in result:
        result["model_throughput"] = result["model_throughput"] + result.pop("model_throughput_cpu")
    result["table"] = tables(result)
    print(result["table"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    if result["failures"]:
        print(f"gpu-check FAILED: {result['failures']}")
        return 1
    return 0


def _server_step(provider: str, args: argparse.Namespace) -> dict[str, Any]:
    """One server per ``--server-workers`` value, one after the other; with several, run names say which."""
    runs: list[Run] = []
    servers = []
    for workers in args.server_workers:
        label = "" if len(args.server_workers) == 1 else f" [workers={workers or 'auto'}]"
        server_runs_, info = server_runs(provider, args, workers, label)
        runs += server_runs_
        servers.append(info)
    return {"servers": servers, "runs": [asdict(r) for r in runs]}


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
