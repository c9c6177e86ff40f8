"""How many processes of each kind a server runs: front ends for HTTP, one inference process per device.

``workers`` = 1 keeps today's single process (no IPC hop, so nothing is added to a c=1 request).
``workers`` > 1 runs that many front ends and one inference worker per device. ``workers`` = 0 picks:
- on CUDA, ``cpus - gpus`` front ends (at most 8, at least 2): the GPU is idle unless many cores feed it
  (the H200 run in docs/benchmarks.md: one process kept it 4-20% busy);
- on CPU, ``cpus // 2`` front ends (at most 4): the model runs on the same cores, so half of them
  are left to onnxruntime; on a 2-core machine that is 1, a single process.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings

MAX_AUTO_FRONTENDS_CUDA = 8
MAX_AUTO_FRONTENDS_CPU = 4


@dataclass(frozen=True, slots=True)
class ProcessLayout:
    frontends: int
    devices: tuple[int, ...]  # one inference worker each (CUDA device ids; (0,) on CPU)
    cuda: bool


def uses_cuda(settings: Settings) -> bool:
    if settings.provider == "cpu":
        return False
    from service.runtime import cuda_available  # onnxruntime only when the answer depends on it

    return cuda_available()  # provider=cuda without a GPU: the worker says why it is not ready


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (containers, Kubernetes).

    ``os.cpu_count()`` reports the host's cores; a pod limited to 2 CPUs on a 64-core node must not
    start 8 front ends.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def process_layout(settings: Settings, cpus: int | None = None, cuda: bool | None = None) -> ProcessLayout:
    """``cpus`` and ``cuda`` stand in for what this machine has (tests)."""
    cpus = cpus or available_cpus()
    cuda = uses_cuda(settings) if cuda is None else cuda
    devices = tuple(settings.cuda_device_ids or [0]) if cuda else (0,)
    frontends = settings.workers
    if frontends == 0:
        if cuda:
            frontends = max(2, min(cpus - len(devices), MAX_AUTO_FRONTENDS_CUDA))
        else:
            frontends = max(1, min(cpus // 2, MAX_AUTO_FRONTENDS_CPU))
    return ProcessLayout(frontends, devices if frontends > 1 else devices[:1], cuda)
