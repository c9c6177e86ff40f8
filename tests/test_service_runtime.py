"""Provider choice and session options of the onnxruntime wrapper.

The provider choice is tested with injected provider lists, so every branch runs on any machine; what
needs a real GPU is in ``tests/test_gpu.py`` (skipped on CPU machines, run by ``make gpu-check`` hosts).
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from bench.servers import launch_server
from service.runtime import (
    CPU,
    CUDA,
    ProviderUnavailable,
    Runtime,
    RuntimeOptions,
    cuda_available,
    cuda_provider_options,
)
from service.settings import Settings

MODEL = Path(__file__).resolve().parents[1] / "model_repository" / "sentiment" / "1" / "model.onnx"
HAS_GPU = cuda_available()


@pytest.mark.parametrize(
    ("asked", "offered", "chosen"),
    [
        ("auto", [CUDA, CPU], CUDA),
        ("auto", [CPU], CPU),
        ("cuda", [CUDA, CPU], CUDA),
        ("cpu", [CUDA, CPU], CPU),
        ("cpu", [CPU], CPU),
    ],
)
def test_provider_choice_follows_what_onnxruntime_offers(asked: str, offered: list[str], chosen: str) -> None:
    runtime = Runtime(RuntimeOptions(provider=asked), available_providers=offered)  # type: ignore[arg-type]
    assert runtime.provider == chosen
    assert runtime.device == ("cuda" if chosen == CUDA else "cpu")


def test_cuda_asked_where_onnxruntime_has_no_cuda_is_refused_with_the_reason() -> None:
    with pytest.raises(ProviderUnavailable, match=r"provider=cuda but onnxruntime offers \['CPUExecutionProvider'\]"):
        Runtime(RuntimeOptions(provider="cuda"), available_providers=[CPU])


def test_cuda_arena_grows_by_what_is_asked_and_is_capped_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cap by default; ``LSTM_SERVE_CUDA_MEM_LIMIT_MB`` reaches onnxruntime as ``gpu_mem_limit`` in bytes."""
    assert cuda_provider_options(Settings().runtime_options()) == {
        "device_id": "0",
        "arena_extend_strategy": "kSameAsRequested",
    }
    monkeypatch.setenv("LSTM_SERVE_CUDA_MEM_LIMIT_MB", "4096")
    monkeypatch.setenv("LSTM_SERVE_CUDA_DEVICE_IDS", "[1]")
    options = cuda_provider_options(Settings().runtime_options())
    assert options == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(4 << 30)}
    monkeypatch.setenv("LSTM_SERVE_CUDA_MEM_LIMIT_MB", "-1")
    with pytest.raises(ValueError, match="cuda_mem_limit_mb"):
        Settings()


def test_auto_matches_this_machine() -> None:
    assert Runtime(RuntimeOptions(provider="auto")).provider == (CUDA if HAS_GPU else CPU)
    assert Runtime(RuntimeOptions(provider="cpu")).device == "cpu"


@pytest.mark.skipif(HAS_GPU, reason="a CUDA session really runs on CUDA here (tests/test_gpu.py)")
def test_cuda_chosen_but_falling_back_at_session_creation_serves_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime-gpu without a usable GPU falls back to CPU when the session is made: auto follows it."""
    runtime = Runtime(RuntimeOptions(provider="auto"), available_providers=[CUDA, CPU])
    with caplog.at_level(logging.WARNING):
        session = runtime.session(MODEL)
    assert session.get_providers()[0] == CPU and runtime.provider == CPU
    assert "CUDA unavailable at session creation" in caplog.text
    strict = Runtime(RuntimeOptions(provider="cuda"), available_providers=[CUDA, CPU])
    with pytest.raises(ProviderUnavailable, match="provider=cuda but onnxruntime runs it on CPUExecutionProvider"):
        strict.session(MODEL)


def test_sessions_get_the_chosen_options_and_run() -> None:
    runtime = Runtime(RuntimeOptions(provider="cpu", intra_op_threads=1, graph_optimization="extended"))
    options = runtime.session_options()
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = runtime.session(MODEL)
    assert session.get_providers() == [CPU]
    (probabilities,) = runtime.run(
        session, ["probabilities"], {"input_ids": np.array([[5, 6, 7]], dtype=np.int64), "lengths": np.array([3])}
    )
    assert probabilities.shape == (1, 2) and abs(float(probabilities.sum()) - 1.0) < 1e-5


@pytest.mark.skipif(HAS_GPU, reason="with a GPU, provider=cuda serves (tests/test_gpu.py)")
def test_server_with_provider_cuda_stays_alive_but_not_ready(tmp_path: Path) -> None:
    server = launch_server({"provider": "cuda"}, tmp_path, wait_for="/healthz")
    try:
        server.wait_for_log("provider=cuda")
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and "provider=cuda" in ready.json()["models"]["*"]
    finally:
        assert server.stop() == 0
