"""``lstm-serve bench``: load-test the service (closed loop over concurrency, open-loop rate sweep).

Two ways to run it:
- ``--url http://host:port``: measure one running server.
- ``--compare``: start two real servers side by side, batching on (defaults) and off
  (``max_batch_size=1``), and measure them interleaved (on, off, off, on, ...) in the same run, so
  the noise of a shared machine hits both alike; results quote medians over ``--repeats``.

Requests are real single sentences from SST-2 dev (``data/sst2/dev.tsv.gz``). Latency in the open loop
is measured from each request's scheduled time (no coordinated omission). Writes ``<out>.json`` and
``<out>.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import platform
import random
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.client import HttpConnection, connect, encode_post, host_port
from bench.servers import REPO_ROOT, ServerHandle, launch_server

DEV_FILE = REPO_ROOT / "data" / "sst2" / "dev.tsv.gz"
PATH = "/v1/sentiment"


@dataclass
class Run:
    server: str
    mode: str  # closed | open
    level: float  # concurrency (closed) or offered rate req/s (open)
    repeat: int
    seconds: float
    ok: int
    errors: dict[str, int]
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def load_texts(limit: int) -> list[str]:
    with gzip.open(DEV_FILE, "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t")[0] for line in handle][1:]
    return rows[:limit]


def encode_requests(url: str, texts: Sequence[str]) -> list[bytes]:
    return [encode_post(url, PATH, json.dumps({"texts": [t]}).encode()) for t in texts]


def _summary(
    server: str, mode: str, level: float, repeat: int, seconds: float, lat: list[float], statuses: Counter
) -> Run:
    ok = statuses.get(200, 0)
    arr = np.asarray(lat) * 1000.0 if lat else np.asarray([float("nan")])
    p50, p90, p99 = (float(np.percentile(arr, q)) for q in (50, 90, 99))
    errors = {str(k): v for k, v in statuses.items() if k != 200}
    return Run(server, mode, level, repeat, seconds, ok, errors, ok / seconds, p50, p90, p99)


async def closed_loop(url: str, requests: list[bytes], concurrency: int, seconds: float, warmup: float) -> tuple:
    """``concurrency`` clients, each sending its next request as soon as the last answer arrived."""
    host, port = host_port(url)
    conns = [await connect(host, port) for _ in range(concurrency)]
    latencies: list[float] = []
    statuses: Counter = Counter()
    begin = time.perf_counter()
    measure_from, end = begin + warmup, begin + warmup + seconds

    async def client(index: int) -> None:
        conn: HttpConnection = conns[index]
        k = index
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                status, _ = await conn.request(requests[k % len(requests)])
            except ConnectionError:
                statuses["connection_error"] += 1
                conn = await connect(host, port)
                continue
            t1 = time.perf_counter()
            k += concurrency
            if t0 >= measure_from:
                latencies.append(t1 - t0)
                statuses[status] += 1
            if conn.closed:
                conn = await connect(host, port)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    for conn in conns:
        conn.close()
    return latencies, statuses


class ClientProcesses:
    """``closed_loop`` spread over forked client processes, started now and collected by ``join``.

    Why: one Python client process tops out at a few thousand requests/s, below what a multi-process
    server on a 16-core GPU machine answers. Start these *before* any sampler thread, so that nothing
    is forked with a lock held; each child runs its share of the connections and sends back its
    latencies and status counts.
    """

    def __init__(
        self, url: str, requests: list[bytes], concurrency: int, seconds: float, warmup: float, processes: int
    ) -> None:
        context = multiprocessing.get_context("fork")
        processes = max(1, min(processes, concurrency))
        # One process: the client runs here, in ``join`` (no fork for what this process can do itself).
        self._inline = (url, requests, concurrency, seconds, warmup) if processes == 1 else None
        self._children = []
        if self._inline is not None:
            return
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        for index, share in enumerate(shares):
            receive, send = context.Pipe(duplex=False)
            rotated = requests[index:] + requests[:index]  # each child starts at other texts
            child = context.Process(target=self._run, args=(send, url, rotated, share, seconds, warmup), daemon=True)
            child.start()
            send.close()
            self._children.append((child, receive))

    @staticmethod
    def _run(send: Any, url: str, requests: list[bytes], concurrency: int, seconds: float, warmup: float) -> None:
        latencies, statuses = asyncio.run(closed_loop(url, requests, concurrency, seconds, warmup))
        send.send((latencies, dict(statuses)))
        send.close()

    def join(self) -> tuple[list[float], Counter]:
        if self._inline is not None:
            return asyncio.run(closed_loop(*self._inline))
        latencies: list[float] = []
        statuses: Counter = Counter()
        for child, receive in self._children:
            child_latencies, child_statuses = receive.recv()
            latencies += child_latencies
            statuses.update(child_statuses)
            child.join()
        return latencies, statuses


async def open_loop(url: str, requests: list[bytes], rate: float, seconds: float, seed: int = 0) -> tuple:
    """Poisson arrivals at ``rate`` req/s whatever the answers; a free keep-alive connection or a new one."""
    host, port = host_port(url)
    rng = random.Random(seed)
    idle: list[HttpConnection] = [await connect(host, port) for _ in range(min(int(rate // 50) + 4, 256))]
    latencies: list[float] = []
    statuses: Counter = Counter()
    tasks: set[asyncio.Task] = set()

    async def one(raw: bytes, scheduled: float) -> None:
        conn = idle.pop() if idle else await connect(host, port)
        try:
            status, _ = await conn.request(raw)
        except ConnectionError:
            statuses["connection_error"] += 1
            return
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] += 1
        if not conn.closed:
            idle.append(conn)

    start = time.perf_counter()
    end = start + seconds
    next_at, k = start, 0
    while next_at < end:
        now = time.perf_counter()
        while next_at <= now and next_at < end:  # a late dispatcher catches up, but never past the window
            task = asyncio.ensure_future(one(requests[k % len(requests)], next_at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for conn in idle:
        conn.close()
    statuses["_elapsed"] = time.perf_counter() - start  # arrivals span `seconds`; answers may come later
    return latencies, statuses


def run_closed(name: str, url: str, reqs: list[bytes], c: int, args: argparse.Namespace, rep: int) -> Run:
    lat, st = asyncio.run(closed_loop(url, reqs, c, args.duration, args.warmup))
    return _summary(name, "closed", c, rep, args.duration, lat, st)


def run_open(name: str, url: str, reqs: list[bytes], rate: float, args: argparse.Namespace, rep: int) -> Run:
    """Throughput here is answers per second until the last answer (below the offered rate when saturated)."""
    lat, st = asyncio.run(open_loop(url, reqs, rate, args.duration, seed=rep))
    elapsed = st.pop("_elapsed")
    return _summary(name, "open", rate, rep, elapsed, lat, st)


def median_by(runs: list[Run], server: str, mode: str, level: float, key: str) -> float:
    values = [getattr(r, key) for r in runs if (r.server, r.mode, r.level) == (server, mode, level)]
    return statistics.median(values) if values else float("nan")


def print_table(runs: list[Run], servers: list[str]) -> str:
    lines = ["| mode | level | server | req/s (median) | p50 ms | p90 ms | p99 ms | errors |", "|---" * 8 + "|"]
    levels = sorted({(r.mode, r.level) for r in runs}, key=lambda x: (x[0] != "closed", x[1]))
    for mode, level in levels:
        for s in servers:
            sel = [r for r in runs if (r.server, r.mode, r.level) == (s, mode, level)]
            if not sel:
                continue
            errs = Counter()
            for r in sel:
                errs.update(r.errors)
            lines.append(
                f"| {mode} | {level:g} | {s} | {median_by(runs, s, mode, level, 'throughput'):.0f} "
                f"| {median_by(runs, s, mode, level, 'p50_ms'):.2f} | {median_by(runs, s, mode, level, 'p90_ms'):.2f} "
                f"| {median_by(runs, s, mode, level, 'p99_ms'):.2f} | {dict(errs) or '-'} |"
            )
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def plot(runs: list[Run], servers: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for s in servers:
        closed = sorted({r.level for r in runs if r.server == s and r.mode == "closed"})
        if closed:
            axes[0].plot(closed, [median_by(runs, s, "closed", c, "throughput") for c in closed], marker="o", label=s)
            for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
                axes[1].plot(
                    closed,
                    [median_by(runs, s, "closed", c, key) for c in closed],
                    style,
                    marker="o",
                    label=f"{s} {key[:3]}",
                )
        rates = sorted({r.level for r in runs if r.server == s and r.mode == "open"})
        if rates:
            axes[2].plot(rates, [median_by(runs, s, "open", x, "p99_ms") for x in rates], marker="o", label=f"{s} p99")
            axes[2].plot(
                rates, [median_by(runs, s, "open", x, "p50_ms") for x in rates], "--", marker=".", label=f"{s} p50"
            )
    axes[0].set(xscale="log", xlabel="concurrency (closed loop)", ylabel="requests/s", title="throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrency (closed loop)", ylabel="ms", title="latency")
    axes[2].set(yscale="log", xlabel="offered rate req/s (open loop)", ylabel="ms", title="latency vs rate")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(labels: Sequence[str], values: Sequence[float], path: Path, ylabel: str, title: str) -> None:
    """One bar per measured variant (the in-process overhead benches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(labels), list(values))
    ax.set(ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_soak(soak_result: dict[str, Any], path: Path, title: str) -> None:
    """RSS and throughput over the soak: memory must stay flat under sustained load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = soak_result["samples"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([x["t"] for x in samples], [x["rss_mb"] for x in samples], marker="o", label="RSS (MiB)")
    ax.set(xlabel="seconds of closed-loop load (c=64)", ylabel="MiB", ylim=(0, max(x["rss_mb"] for x in samples) * 1.3))
    twin = ax.twinx()
    twin.plot([x["t"] for x in samples[1:]], [x["req_s"] for x in samples[1:]], "g--", label="req/s")
    twin.set_ylabel("req/s")
    ax.grid(alpha=0.3)
    fig.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lstm-serve bench", description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help="measure this running server")
    target.add_argument(
        "--compare", action="store_true", help="start batching on/off servers and measure them interleaved"
    )
    p.add_argument("--concurrency", type=_ints, default=_ints("1,4,16,64,256"), help="closed-loop levels")
    p.add_argument("--rates", type=_floats, default=_floats("250,500,750,1000,1250"), help="open-loop req/s")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each closed-loop run")
    p.add_argument("--repeats", type=int, default=3, help="runs per level and server (medians are quoted)")
    p.add_argument("--texts", type=int, default=2000, help="how many SST-2 dev sentences to cycle through")
    p.add_argument("--soak", type=float, default=0.0, help="then: seconds of c=64 on the batched server, RSS sampled")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "sentiment_cpu")
    p.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for spawned servers (both)")
    return p.parse_args(list(argv))


def soak(server: ServerHandle, reqs: list[bytes], seconds: float) -> dict[str, Any]:
    """Closed loop at c=64 for ``seconds`` in 10 s slices, RSS after each: is memory flat under load?"""
    samples = [{"t": 0.0, "rss_mb": server.rss() / 2**20, "req_s": 0.0}]
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        _, st = asyncio.run(closed_loop(server.url, reqs, 64, 10.0, 0.0))
        samples.append(
            {"t": round(time.monotonic() - start, 1), "rss_mb": server.rss() / 2**20, "req_s": st.get(200, 0) / 10}
        )
        print(f"soak t={samples[-1]['t']:.0f}s rss={samples[-1]['rss_mb']:.1f} MiB {samples[-1]['req_s']:.0f} req/s")
    return {"seconds": seconds, "samples": samples}


def interleaved(servers: list[str], repeats: int, measure: Callable[[str, int], Run]) -> list[Run]:
    """Each repeat measures every server, the order flipped every repeat (on,off / off,on / ...)."""
    runs = []
    for rep in range(repeats):
        for name in servers if rep % 2 == 0 else servers[::-1]:
            r = measure(name, rep)
            runs.append(r)
            print(
                f"{r.mode} {r.level:g} rep={rep} {name}: {r.throughput:.0f} req/s p50 {r.p50_ms:.2f} "
                f"p99 {r.p99_ms:.2f} ms errors {r.errors or '-'}",
                flush=True,
            )
    return runs


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # so SIGTERM also stops the servers this run started (the finally below)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    signal.signal(signal.SIGTERM, _interrupt)
    texts = load_texts(args.texts)
    spawned: dict[str, ServerHandle] = {}
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    if args.compare or args.url is None:
        logs = Path(tempfile.mkdtemp(prefix="lstm-serve-bench-"))
        spawned["batching_on"] = launch_server(extra_env, logs)
        spawned["batching_off"] = launch_server({**extra_env, "max_batch_size": 1}, logs)
        targets = {name: h.url for name, h in spawned.items()}
    else:
        targets = {"server": args.url}
    servers = list(targets)
    reqs = {name: encode_requests(url, texts) for name, url in targets.items()}
    runs: list[Run] = []
    rss: dict[str, dict[str, float]] = {n: {"loaded_mb": h.rss() / 2**20} for n, h in spawned.items()}
    try:
        for c in args.concurrency:
            runs += interleaved(
                servers, args.repeats, lambda name, rep, c=c: run_closed(name, targets[name], reqs[name], c, args, rep)
            )
        for rate in args.rates:
            runs += interleaved(
                servers,
                max(1, args.repeats // 2),
                lambda name, rep, rate=rate: run_open(name, targets[name], reqs[name], rate, args, rep),
            )
        for name, handle in spawned.items():
            rss[name]["after_load_mb"] = handle.rss() / 2**20
        soak_result = soak(spawned["batching_on"], reqs["batching_on"], args.soak) if args.soak and spawned else None
    finally:
        exit_codes = {name: handle.stop() for name, handle in spawned.items()}
    table = print_table(runs, servers)
    summary: dict[str, Any] = {}
    if {"batching_on", "batching_off"} <= set(servers):
        if 64 in args.concurrency:
            on_t, off_t = (median_by(runs, s, "closed", 64, "throughput") for s in ("batching_on", "batching_off"))
            on_p99, off_p99 = (median_by(runs, s, "closed", 64, "p99_ms") for s in ("batching_on", "batching_off"))
            summary["c64_throughput_ratio"] = on_t / off_t
            summary["c64_p99_ms"] = {"on": on_p99, "off": off_p99}
        if 1 in args.concurrency:
            on_p50, off_p50 = (median_by(runs, s, "closed", 1, "p50_ms") for s in ("batching_on", "batching_off"))
            summary["c1_p50_ms"] = {"on": on_p50, "off": off_p50, "difference": on_p50 - off_p50}
        print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "lstm-serve bench " + " ".join(argv or []),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "servers": {n: spawned[n].overrides if n in spawned else targets[n] for n in servers},
        "rss": rss,
        "exit_codes": exit_codes,
        "summary": summary,
        "runs": [asdict(r) for r in runs],
        "soak": soak_result,
        "table": table,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, servers, args.out.with_suffix(".png"), f"lstm-serve {PATH} ({result['when']})")
    if soak_result:
        plot_soak(
            soak_result, args.out.with_name(args.out.name + "_rss.png"), f"lstm-serve RSS under load ({result['when']})"
        )
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0
