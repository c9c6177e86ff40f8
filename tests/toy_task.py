"""A third task that exists only in the tests: proof that a task is one module and no edit to the core.

``bytecount``: how many UTF-8 bytes each text has, times a request parameter ``scale``, computed by a
real (tiny) ONNX graph on the service's onnxruntime. The server finds it through the ``task_modules``
setting (``LSTM_SERVE_TASK_MODULES='["tests.toy_task"]'``) and derives its native route, its V2 checks
and its metric labels from the ``Wire`` below. ``build_version`` writes a version folder for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lstm_core.checksums import sha256_of
from lstm_core.model_card import DatasetInfo, GraphSpec, ModelCard, TensorSpec
from lstm_core.padding import pad_batch
from service.pipelines.base import CostProbe, Item, NotCalibrated, Pipeline, Wire
from service.pipelines.registry import register_pipeline

GRAPH_FILE = "count.onnx"


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: int = Field(1, ge=1, le=10, description="multiply each count by this")


@register_pipeline("bytecount")
class ByteCountPipeline(Pipeline[CountParams]):
    wire = Wire(
        native_path="/v1/bytecount",
        results_field="counts",
        result_type=int,
        schema_name="ByteCount",
        outputs=("count",),
        params=CountParams,
        example=("héllo",),
    )

    def __init__(self, card: ModelCard, folder: Path, runtime: Any) -> None:
        super().__init__(card, folder, runtime)
        if runtime is not None:  # None in a front-end process
            self.session = runtime.session(folder / GRAPH_FILE)

    def preprocess(self, texts: Sequence[str], params: CountParams) -> list[Item]:
        rows = [np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) for text in texts]
        return [Item(row, len(row), params.scale) for row in rows]

    def run_batch(self, items: Sequence[Item]) -> list[int]:
        _, lengths = pad_batch([item.data for item in items])
        scale = np.asarray(items[0].key, dtype=np.int64)
        (counts,) = self.runtime.run(self.session, ["count"], {"lengths": lengths, "scale": scale})
        return [int(c) for c in counts]

    def v2_columns(self, results: Sequence[int]) -> dict[str, np.ndarray]:
        return {"count": np.asarray(results, dtype=np.int64)}

    def warmup_batches(self, max_batch_size: int) -> list[list[Item]]:
        return [[Item(np.zeros(4, dtype=np.int64), 4, 1)]]

    def cost_probe(self) -> CostProbe:
        raise NotCalibrated("one multiplication per row: there is no length-driven cost to measure")


def build_version(folder: Path) -> Path:
    """Write ``folder`` as version 1 of model ``toy`` (task bytecount): the ONNX graph and its model card."""
    from onnx import TensorProto, helper, save  # onnx is a training/test dependency, not a serving one

    graph = helper.make_graph(
        [helper.make_node("Mul", ["lengths", "scale"], ["count"])],
        "bytecount",
        [
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("scale", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"])],
    )
    folder.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / GRAPH_FILE))
    card = ModelCard(
        name="toy",
        version="1",
        task="bytecount",
        inputs=[TensorSpec(name="text", dtype="BYTES", shape=[-1, 1])],
        outputs=[TensorSpec(name="count", dtype="INT64", shape=[-1, 1])],
        graphs={
            GRAPH_FILE: GraphSpec(
                inputs=[
                    TensorSpec(name="lengths", dtype="INT64", shape=[-1]),
                    TensorSpec(name="scale", dtype="INT64", shape=[]),
                ],
                outputs=[TensorSpec(name="count", dtype="INT64", shape=[-1])],
            )
        },
        files={GRAPH_FILE: sha256_of(folder / GRAPH_FILE)},
        max_length=2000,
        dataset=DatasetInfo(name="none", version="0", splits={}, sha256={}),
        created=datetime.now(UTC).isoformat(),
        git_commit="test",
    )
    card.save(folder)
    return folder
