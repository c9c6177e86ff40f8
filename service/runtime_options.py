"""The onnxruntime knobs as plain data, apart from ``runtime.py`` so that reading settings never loads onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProviderChoice = Literal["auto", "cuda", "cpu"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
# auto = int8 on CPU, fp16 on CUDA (when the model card has them); else the named variant, or refuse the model.
PrecisionChoice = Literal["auto", "fp32", "int8", "fp16"]


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    provider: ProviderChoice = "auto"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: GraphOptimization = "all"
    cuda_device_id: int = 0
    #: onnxruntime's CUDA arena limit in MiB (0 = no limit).
    cuda_mem_limit_mb: int = 0
    #: Use the IOBinding paths on CPU too (tests: the GPU code runs in CI, bound to CPU OrtValues).
    io_binding: bool = False
    precision: PrecisionChoice = "auto"
