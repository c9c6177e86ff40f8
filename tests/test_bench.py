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


def test_translation_models_compares_two_repositories_and_writes_json_and_png(tmp_path: Path) -> None:
    """The shipped translation model against a copy of itself: both served, measured, BLEU the same."""
    import shutil

    from bench import translation_models
    from bench.servers import REPO_ROOT

    candidate = tmp_path / "repository"
    shutil.copytree(REPO_ROOT / "model_repository" / "translation", candidate / "translation")
    out = tmp_path / "models"
    args = ["--precisions", "fp32", "--concurrency", "2", "--repeats", "1", "--duration", "0.5", "--warmup", "0"]
    assert translation_models.main([str(candidate), *args, "--bleu-sentences", "32", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 5_000
    assert {r["server"] for r in result["runs"]} == {"shipped fp32", "candidate fp32"}
    assert all(r["ok"] > 0 and r["errors"] == {} for r in result["runs"])
    bleu = result["bleu"]
    assert bleu["shipped fp32"]["beam4"] == bleu["candidate fp32"]["beam4"]  # the same files answer alike
    assert result["exit_codes"] == {"shipped fp32": 0, "candidate fp32": 0}


def test_ab_serves_a_baseline_commit_beside_this_tree_and_pairs_the_runs(tmp_path: Path) -> None:
    """``bench.ab`` against this checkout's own HEAD from a worktree: both servers answer every request,
    each load gets one ratio per repeat, JSON + PNG written, both servers exit 0."""
    import subprocess

    from bench import ab
    from bench.servers import REPO_ROOT

    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    worktree, out = tmp_path / "baseline", tmp_path / "ab"
    args = ["--baseline", head.stdout.strip(), "--baseline-worktree", str(worktree), "--repeats", "2"]
    try:
        assert ab.main([*args, "--duration", "0.5", "--warmup", "0", "--out", str(out)]) == 0
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 5_000
    assert result["exit_codes"] == {"baseline": 0, "main": 0}
    assert {(r["server"], r["mode"], r["repeat"]) for r in result["runs"]} == {
        (server, load, rep) for server in ("baseline", "main") for load, _, _ in ab.LOADS for rep in (0, 1)
    }
    assert all(r["ok"] > 0 and r["errors"] == {} for r in result["runs"])
    for summary in result["summary"].values():
        assert len(summary["throughput_ratios"]) == 2 and summary["throughput_ratio_median"] > 0


def test_gpu_batching_interleaves_the_variants_and_gives_medians(tmp_path: Path) -> None:
    """``bench.gpu_batching`` on the CPU provider: every variant's server up at once, each load measured
    once per repeat, all answered, the medians table printed, JSON + PNG written, every server exits 0."""
    from bench import gpu_batching

    out = tmp_path / "gpu_batching"
    variants = json.dumps([{}, {"model_instances": 2}])
    argv = ["--allow-cpu", "--quick", "--variants", variants, "--repeats", "2", "--out", str(out)]
    assert gpu_batching.main(argv) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 5_000 and result["repeats"] == 2
    assert [e["exit_code"] for e in result["results"]] == [0, 0]
    for entry in result["results"]:
        assert sorted(r["repeat"] for r in entry["runs"]) == [0, 0, 1, 1]  # x1 and x64, twice
        assert all(r["ok"] > 0 and r["errors"] == {} for r in entry["runs"])
        rows = gpu_batching.medians(entry)
        assert {(row["load"], row["repeats"]) for row in rows} == {("x1", 2), ("x64", 2)}
        assert all(row["texts_s"] > 0 and row["mean_batch"] >= 1 for row in rows)
    assert "model_instances=2" in gpu_batching.table(result)
