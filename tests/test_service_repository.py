"""Model repository rules (highest version, pins, refusing folders that do not match their card) and
settings precedence; plus a real server on a tampered folder staying not ready with a clear log line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from bench.servers import launch_server
from service.repository import check_version, scan
from service.settings import Settings

SHIPPED = Path(__file__).resolve().parents[1] / "model_repository" / "sentiment" / "1"


def copy_version(repo: Path, version: str, serving: dict | None = None) -> Path:
    target = repo / "sentiment" / version
    shutil.copytree(SHIPPED, target)
    card = json.loads((target / "model.json").read_text())
    card["version"] = version
    if serving is not None:
        card["serving"] = serving
    (target / "model.json").write_text(json.dumps(card))
    return target


def test_shipped_folder_matches_its_card() -> None:
    mv = check_version("sentiment", "1", SHIPPED)
    assert mv.problem is None and mv.card is not None and mv.card.task == "sentiment"


def test_highest_version_is_served_unless_pinned(tmp_path: Path) -> None:
    copy_version(tmp_path, "1")
    copy_version(tmp_path, "10")
    copy_version(tmp_path, "2")
    (chosen,) = scan(tmp_path)
    assert chosen.version == "10" and chosen.problem is None
    (pinned,) = scan(tmp_path, {"sentiment": "2"})
    assert pinned.version == "2" and pinned.problem is None
    (missing,) = scan(tmp_path, {"sentiment": "7"})
    assert missing.problem and "not found" in missing.problem


def test_tampered_or_mislabelled_folders_are_refused(tmp_path: Path) -> None:
    folder = copy_version(tmp_path, "1")
    with (folder / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    (mv,) = scan(tmp_path)
    assert mv.problem and "tokenizer.json" in mv.problem
    (folder / "model.onnx").unlink()
    assert "model.onnx" in (check_version("sentiment", "1", folder).problem or "")
    other = copy_version(tmp_path / "other", "3")
    assert "folder is sentiment/4" in (check_version("sentiment", "4", other).problem or "")


def test_settings_env_wins_over_model_card_which_wins_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    serving = {"max_batch_size": 16, "max_delay_ms": 0.5}
    defaults = Settings().batching_for(serving)
    assert defaults.max_batch_size == 16 and defaults.max_delay_ms == 0.5
    assert defaults.max_queue_items == Settings().max_queue_items
    monkeypatch.setenv("LSTM_SERVE_MAX_BATCH_SIZE", "1")
    assert Settings().batching_for(serving).max_batch_size == 1
    assert Settings().batching_for(serving).max_delay_ms == 0.5
    monkeypatch.setenv("LSTM_SERVE_MODEL_VERSIONS", '{"sentiment": "1"}')
    assert Settings().model_versions == {"sentiment": "1"}


def test_on_cuda_the_batching_defaults_are_the_gpu_ones_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operator > model card > provider default: a GPU gets rounds of 1,024 cut by the calibrated cost alone
    (no padding cap) unless someone said otherwise."""
    on_gpu = Settings().batching_for({}, cuda=True)
    assert (on_gpu.max_batch_size, on_gpu.max_batch_tokens, on_gpu.max_queue_items) == (1024, 131072, 16384)
    assert on_gpu.max_padding_ratio == 1.0 and Settings().batching_for({}).max_padding_ratio == 0.3
    assert on_gpu.max_delay_ms == Settings().max_delay_ms  # not a GPU knob
    assert Settings().batching_for({}, cuda=False).max_batch_size == 32
    assert Settings().batching_for({"max_batch_size": 64}, cuda=True).max_batch_size == 64  # the card's
    monkeypatch.setenv("LSTM_SERVE_MAX_BATCH_SIZE", "8")
    assert Settings().batching_for({"max_batch_size": 64}, cuda=True).max_batch_size == 8  # the operator's
    assert Settings().batching_for({}, cuda=True).max_queue_items == 16384  # the knobs left unset stay GPU ones


def test_model_instances_auto_is_two_on_cuda_one_on_cpu_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """0 (the default) resolves by provider: overlapping rounds pay on a GPU, and cost a core on a CPU."""
    monkeypatch.delenv("LSTM_SERVE_MODEL_INSTANCES", raising=False)
    assert Settings().model_instances == 0
    assert (Settings().instances_for(cuda=True), Settings().instances_for(cuda=False)) == (2, 1)
    monkeypatch.setenv("LSTM_SERVE_MODEL_INSTANCES", "3")
    assert (Settings().instances_for(cuda=True), Settings().instances_for(cuda=False)) == (3, 3)
    with pytest.raises(ValueError):
        Settings(model_instances=-1)


def test_yaml_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("max_batch_size: 8\nrequest_timeout_s: 2.5\n")
    monkeypatch.setenv("LSTM_SERVE_CONFIG_FILE", str(config))
    monkeypatch.setenv("LSTM_SERVE_REQUEST_TIMEOUT_S", "4")
    settings = Settings()
    assert settings.max_batch_size == 8 and settings.request_timeout_s == 4.0


def test_server_on_a_tampered_folder_stays_not_ready(tmp_path: Path) -> None:
    folder = copy_version(tmp_path / "repo", "1")
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    server = launch_server({"model_repository": tmp_path / "repo"}, tmp_path / "logs", wait_for="/healthz")
    try:
        server.wait_for_log("refusing model")
        server.settle()  # every front end has the worker's state
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and "model.onnx" in ready.json()["models"]["sentiment"]
        refused = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["hello"]})
        assert refused.status_code == 503 and "model.onnx" in refused.json()["error"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        assert server.stop() == 0
    assert "refusing model sentiment version 1" in server.log()


def test_readme_settings_table_matches_the_code() -> None:
    readme = (SHIPPED.parents[2] / "README.md").read_text()
    table = re.findall(r"^\| `(LSTM_SERVE_[A-Z_]+)` \| `([^`]*)` \| (.*) \|$", readme, re.MULTILINE)
    rows = {variable: default for variable, default, _ in table}
    meanings = {variable: meaning.replace("`", "") for variable, _, meaning in table}
    expected = {f"LSTM_SERVE_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(rows) - {"LSTM_SERVE_CONFIG_FILE"} == set(expected)
    for variable, field in expected.items():
        default = field.default
        if isinstance(default, str | int | float | bool):
            assert rows[variable] == str(default), variable
        assert meanings[variable] == field.description, variable  # the table says what the code says
