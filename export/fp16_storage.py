"""fp16 storage for fp32 graphs: weights stored as fp16 + Cast(to=FLOAT), math in fp32.

Why: it halves a version folder (both shipped models would be over their size limits with their
precision variants otherwise) while onnxruntime folds the casts at load, so the served graph computes
in fp32 exactly as before, on weights rounded once through fp16. The torch model is rounded the same
way (``round_to_fp16``) before an export's parity check, so parity compares equal weights.
``export.precision.plain_fp32`` undoes it exactly before the precision variants are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:  # torch only where a torch model is exported: building variants must not need it
    from torch import nn

MIN_FP16_ELEMENTS = 1024  # small tensors (biases) stay fp32: no size to win, no precision to lose


def round_to_fp16(model: nn.Module) -> None:
    """Round the torch weights exactly as the fp16 initializers will be, so parity compares equal weights."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.numel() >= MIN_FP16_ELEMENTS:
                p.copy_(p.half().float())


def drop_transposed_copies(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Replace initializers that are the transpose of another one by a Transpose node.

    The tied output projection (``x @ tgt_embed.weight.T``) is constant-folded by the exporter into a
    second, transposed copy of the target embedding — 3 MB of the decoder for nothing. onnxruntime
    folds the Transpose back at load, so the served math is unchanged.
    """
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer if len(i.dims) == 2}
    by_shape: dict[tuple, list[str]] = {}
    for name, array in arrays.items():
        by_shape.setdefault(array.shape, []).append(name)
    nodes, dropped = [], set()
    for name, array in arrays.items():
        if array.size < MIN_FP16_ELEMENTS or name in dropped:
            continue
        for other in by_shape.get(array.shape[::-1], []):
            if other != name and other not in dropped and np.array_equal(arrays[other], array.T):
                nodes.append(helper.make_node("Transpose", [name], [other], perm=[1, 0], name=f"{other}__transpose"))
                dropped.add(other)
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return nodes


def _fp16_casts(graph: onnx.GraphProto, exact_only: bool, min_elements: int) -> list[onnx.NodeProto]:
    """Rewrite large fp32 initializers as fp16 (``exact_only``: only those fp16 holds exactly); the Casts back.

    The caller puts the returned nodes at the front of the graph, so every reader gets fp32 again.
    """
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        half = array.astype(np.float16)
        if array.size < min_elements or (exact_only and not np.array_equal(half.astype(np.float32), array)):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name=f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__cast"))
    return casts


def store_fp16(path: Path) -> None:
    """Rewrite large fp32 initializers as fp16 + Cast(to=FLOAT); the graph's math stays fp32."""
    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    transposes = drop_transposed_copies(graph)
    casts = _fp16_casts(graph, exact_only=False, min_elements=MIN_FP16_ELEMENTS)
    for node in reversed(casts + transposes):  # casts first: the transposes read their outputs
        graph.node.insert(0, node)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def store_exact_fp16(graph: onnx.GraphProto, min_elements: int = MIN_FP16_ELEMENTS) -> int:
    """Store large fp32 initializers that fp16 holds exactly as fp16 + Cast(to=FLOAT): same values, half the bytes."""
    casts = _fp16_casts(graph, exact_only=True, min_elements=min_elements)
    for node in reversed(casts):
        graph.node.insert(0, node)
    return len(casts)
