"""What only a GPU machine can check: CUDA sessions of both shipped models, and their parity with CPU.

Skipped where onnxruntime has no CUDA provider (CI); run with the rest of ``make test`` on a GPU host,
next to ``make gpu-check``, which measures throughput. The verification script itself runs here on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import gpu_check
from bench.load import load_texts
from service.runtime import cuda_available

gpu = pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu and a CUDA GPU")


@gpu
def test_both_models_run_on_cuda_sessions() -> None:
    sessions = gpu_check.check_provider("cuda")["sessions"]
    assert set(sessions.values()) == {gpu_check.CUDA}, sessions


@gpu
def test_cuda_sessions_get_the_arena_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime takes the arena strategy and the cap (it reports its provider options back as strings)."""
    from service.runtime import CUDA, Runtime, RuntimeOptions

    runtime = Runtime(RuntimeOptions(provider="cuda", cuda_mem_limit_mb=2048))
    session = runtime.session(gpu_check.latest_version("sentiment") / "model.onnx")
    options = session.get_provider_options()[CUDA]
    assert options["arena_extend_strategy"] == "kSameAsRequested" and options["gpu_mem_limit"] == str(2 << 30)


@gpu
def test_sentiment_on_gpu_matches_cpu() -> None:
    texts = load_texts(256)
    result = gpu_check.check_sentiment_parity("cuda", texts, batch=32)
    assert result["max_abs_diff"] < gpu_check.SENTIMENT_TOLERANCE and result["label_agreement"] == 1.0


@gpu
def test_translation_on_gpu_matches_cpu() -> None:
    en = gpu_check.flickr_sentences("en", 48)
    de = gpu_check.flickr_sentences("de", 48)
    result = gpu_check.check_translation_parity("cuda", en, de, batch=16)
    assert result["beam1"]["differing"] <= 2 and result["beam4"]["differing"] <= 2


def test_gpu_check_runs_end_to_end_on_the_cpu_provider(tmp_path: Path) -> None:
    """The verification script, run as CI can run it: every step passes and JSON + PNG are written."""
    out = tmp_path / "gpu_check"
    code = gpu_check.main(["--provider", "cpu", "--quick", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert code == 0 and result["failures"] == {}
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert set(result["provider"]["sessions"].values()) == {"CPUExecutionProvider"}
    assert result["sentiment_parity"]["max_abs_diff"] == 0.0
    assert result["translation_parity"]["beam4"]["identical_share"] == 1.0
    served = {r["server"] for r in result["server"]["runs"]}
    assert served == {"sentiment x1", "sentiment x64", "translation beam4"}
    assert all(r["ok"] > 0 and not r["errors"] for r in result["server"]["runs"])
    assert np.isfinite([r["sequences_s"] for r in result["model_throughput"]]).all()
    # the device's memory as the server's NVML gauge reads it (None where NVML or a GPU is missing)
    (memory,) = [s["gpu_memory_mib"] for s in result["server"]["servers"]]
    assert set(memory) == {"ready", "after_load"} and all(v is None or v > 0 for v in memory.values())


def test_gpu_check_refuses_a_machine_without_cuda_unless_told() -> None:
    if cuda_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--quick"]) == 2
