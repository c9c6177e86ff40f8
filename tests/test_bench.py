"""The load generator against a real server: closed and open loop run, answers are all 200, JSON + PNG written.

Functional only: the numbers it measures are reported in docs/benchmarks.md, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.load import main
from bench.servers import ServerHandle


def test_bench_measures_a_running_server_and_writes_json_and_png(live_server: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    args = ["--url", live_server.url, "--concurrency", "1,4", "--rates", "50", "--duration", "0.5"]
    assert main([*args, "--repeats", "1", "--warmup", "0", "--texts", "200", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    modes = {(r["mode"], r["level"]) for r in result["runs"]}
    assert modes == {("closed", 1), ("closed", 4), ("open", 50)}
    for run in result["runs"]:
        assert run["ok"] > 0 and run["errors"] == {}, run
        assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"]
