"""``model.json``: the model card and the only contract between export and serving.

Export writes it, the service reads it; one schema for both. ``task`` is any task name: the service
looks up the pipeline registered for it, so a new task needs no change here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lstm_core.checksums import sha256_of

MODEL_CARD_FILENAME = "model.json"


class TensorSpec(BaseModel):
    """One tensor: shape uses -1 for a dynamic axis (batch first)."""

    name: str
    dtype: str  # ONNX/V2 style: INT64, FP32, BYTES, ...
    shape: list[int]


class GraphSpec(BaseModel):
    """The inputs and outputs of one ONNX file in the version folder."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class DatasetInfo(BaseModel):
    name: str
    version: str
    splits: dict[str, int] = Field(description="split name -> number of examples")
    sha256: dict[str, str] = Field(description="data file (relative to data/) -> sha256")


class ModelCard(BaseModel):
    """What a version folder holds and how it was made.

    ``inputs``/``outputs`` are the tensors the model is served with (what the V2 protocol shows:
    a BYTES ``text`` in, task outputs out); ``graphs`` gives the ONNX-level inputs/outputs of each
    file, and ``files`` the sha256 of every file the service loads, so a folder whose files do not
    match its card is refused.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str
    task: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the pipeline that serves it")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    graphs: dict[str, GraphSpec]
    files: dict[str, str]
    labels: list[str] | None = None
    max_length: int
    dataset: DatasetInfo
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] = Field(default_factory=dict)
    created: str
    git_commit: str
    serving: dict[str, Any] = Field(
        default_factory=dict,
        description="per-model serving defaults: batching knobs, task defaults, the measured cost_model",
    )

    @classmethod
    def load(cls, folder: Path) -> ModelCard:
        return cls.model_validate_json((folder / MODEL_CARD_FILENAME).read_text())

    def save(self, folder: Path) -> Path:
        path = folder / MODEL_CARD_FILENAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    def mismatched_files(self, folder: Path) -> list[str]:
        """Names of files that are missing or whose sha256 differs from the card (empty = all good)."""
        bad = []
        for filename, expected in self.files.items():
            path = folder / filename
            if not path.is_file() or sha256_of(path) != expected:
                bad.append(filename)
        return bad
