"""What the V2 protocol costs per request: native JSON vs V2 JSON vs V2 binary tensors, one server.

The three request kinds carry the same single SST-2 dev sentence and go through the same batcher, so
the differences are the wire formats' parsing and encoding (the V2 bodies are built by tritonclient,
exactly as its users and perf_analyzer send them; binary asks for binary outputs too). Runs are
interleaved (native, json, binary / binary, json, native / ...) so the noise of a shared machine hits
all three alike; the table quotes medians over ``--repeats``. When it starts the server itself it also
reports the server's CPU time per request (``/proc``), which a busy shared machine disturbs far less
than throughput.

Run: ``python -m bench.v2_compare [--url http://127.0.0.1:8000]`` (without ``--url`` it starts a server).
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
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as httpclient

from bench.client import encode_post
from bench.load import Run, load_texts, print_table, run_closed
from bench.servers import REPO_ROOT, ServerHandle, cpu_seconds, launch_server

KINDS = ("native", "v2_json", "v2_binary")


def v2_request(url: str, text: str, binary: bool) -> bytes:
    """One raw HTTP request for /v2/models/sentiment/infer, body and headers as tritonclient makes them."""
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("label", "probabilities")]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    extra = "" if json_size is None else f"Inference-Header-Content-Length: {json_size}\r\n"
    head = (
        f"POST /v2/models/sentiment/infer HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def requests_for(url: str, texts: Sequence[str]) -> dict[str, list[bytes]]:
    return {
        "native": [encode_post(url, "/v1/sentiment", json.dumps({"texts": [t]}).encode()) for t in texts],
        "v2_json": [v2_request(url, t, binary=False) for t in texts],
        "v2_binary": [v2_request(url, t, binary=True) for t in texts],
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.v2_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="measure this running server (default: start one)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument(
        "--warmup", type=float, default=0.0, help="unmeasured seconds before each run (0: CPU/request counts all)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per level and kind (medians are quoted)")
    p.add_argument("--texts", type=int, default=2000, help="how many SST-2 dev sentences to cycle through")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "v2_compare.json")
    return p.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv or [])
    server: ServerHandle | None = None
    if args.url is None:
        server = launch_server({}, Path(tempfile.mkdtemp(prefix="lstm-serve-v2-")))
    url = args.url or server.url
    reqs = requests_for(url, load_texts(args.texts))
    runs: list[Run] = []
    pid = server.process.pid if server is not None else None
    try:
        for c in args.concurrency:
            for rep in range(args.repeats):
                for kind in KINDS if rep % 2 == 0 else KINDS[::-1]:
                    before = cpu_seconds(pid) if pid else 0.0
                    run = run_closed(kind, url, reqs[kind], c, args, rep)
                    if pid and args.warmup == 0 and run.ok:
                        run.extra["server_cpu_ms_per_request"] = (cpu_seconds(pid) - before) * 1000 / run.ok
                    runs.append(run)
                    print(
                        f"c={c} rep={rep} {kind}: {run.throughput:.0f} req/s p50 {run.p50_ms:.2f} ms "
                        f"server CPU {run.extra.get('server_cpu_ms_per_request', float('nan')):.3f} ms/request "
                        f"{run.errors or ''}"
                    )
    finally:
        if server is not None:
            server.stop()
    table = print_table(runs, list(KINDS))
    for c in args.concurrency:
        for kind in KINDS:
            cpu = [r.extra["server_cpu_ms_per_request"] for r in runs if r.server == kind and r.level == c and r.extra]
            if cpu:
                line = f"c={c} {kind}: server CPU {statistics.median(cpu):.3f} ms/request (median of {len(cpu)})"
                table += "\n" + line
                print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python -m bench.v2_compare " + " ".join(argv or []),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "table": table,
        "runs": [asdict(r) for r in runs],
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
