"""``model.json``: the model card and the only contract between export and serving.

Export writes it, the service reads it; one schema for both. ``task`` is any task name: the service
looks up the pipeline registered for it, so a new task needs no change here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lstm_core.checksums import sha256_of

MODEL_CARD_FILENAME = "model.json"

Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "fp16")


def variant_file(graph_file: str, precision: str) -> str:
    """The file of a graph's precision variant: ``model.onnx`` -> ``model.int8.onnx`` (fp32 keeps the name)."""
    if precision == "fp32":
        return graph_file
    stem, dot, suffix = graph_file.rpartition(".")
    return f"{stem}.{precision}.{suffix}" if dot else f"{graph_file}.{precision}"


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


class Variant(BaseModel):
    """One precision of the version's graphs, as export built and gated it.

    ``files`` maps each graph file of the card's ``graphs`` to the file holding this precision of it
    (the same name for fp32); ``sha256`` gives each of those files' checksum (also in the card's
    ``files``); ``provider`` is the onnxruntime provider the variant is meant for (None: any); ``gate``
    the figures of the accuracy gate it passed at export (where it ran, against what, the thresholds);
    ``serving`` may hold the ``cost_model`` measured on this variant.
    """

    precision: Precision
    provider: str | None = None
    files: dict[str, str]
    sha256: dict[str, str]
    gate: dict[str, Any] = Field(default_factory=dict)
    serving: dict[str, Any] = Field(default_factory=dict)


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
    variants: dict[str, Variant] = Field(
        default_factory=dict,
        description="precision -> the variant export built and gated (empty: the graphs as listed, fp32 only)",
    )

    def precision_variants(self) -> dict[str, Variant]:
        """The variants the folder offers; a card without ``variants`` offers its graphs as fp32."""
        if self.variants:
            return dict(self.variants)
        files = {name: name for name in self.graphs}
        return {"fp32": Variant(precision="fp32", files=files, sha256={f: self.files.get(f, "") for f in files})}

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
