"""Provider choice and session options of the onnxruntime wrapper (this machine has no GPU)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from bench.servers import launch_server
from service.runtime import CPU, ProviderUnavailable, Runtime, RuntimeOptions, cuda_available

MODEL = Path(__file__).resolve().parents[1] / "model_repository" / "sentiment" / "1" / "model.onnx"


def test_auto_falls_back_to_cpu_and_cpu_is_cpu() -> None:
    if cuda_available():
        pytest.fail("these tests describe a machine without a GPU; run the GPU checks instead")
    assert Runtime(RuntimeOptions(provider="auto")).provider == CPU
    assert Runtime(RuntimeOptions(provider="cpu")).device == "cpu"


def test_cuda_asked_without_a_gpu_is_refused_with_the_reason() -> None:
    with pytest.raises(ProviderUnavailable, match="provider=cuda"):
        Runtime(RuntimeOptions(provider="cuda"))


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


def test_server_with_provider_cuda_stays_alive_but_not_ready(tmp_path: Path) -> None:
    server = launch_server({"provider": "cuda"}, tmp_path, wait_for="/healthz")
    try:
        server.wait_for_log("provider=cuda")
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and "provider=cuda" in ready.json()["models"]["*"]
    finally:
        assert server.stop() == 0
