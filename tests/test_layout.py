"""How many processes a server runs, by provider, CPUs and the ``workers`` setting."""

from __future__ import annotations

import pytest

from service.layout import ProcessLayout, available_cpus, process_layout
from service.settings import Settings


@pytest.mark.parametrize(
    ("workers", "provider", "cpus", "expected"),
    [
        (0, "cpu", 2, ProcessLayout(1, (0,), False)),  # this machine: one process, no IPC hop
        (0, "cpu", 8, ProcessLayout(4, (0,), False)),
        (0, "cpu", 64, ProcessLayout(4, (0,), False)),
        (2, "cpu", 2, ProcessLayout(2, (0,), False)),
        (1, "cpu", 64, ProcessLayout(1, (0,), False)),
    ],
)
def test_cpu_layouts(workers: int, provider: str, cpus: int, expected: ProcessLayout) -> None:
    assert process_layout(Settings(workers=workers, provider=provider), cpus=cpus) == expected


def test_cuda_layouts_feed_each_gpu_from_most_cores() -> None:
    settings = Settings(workers=0, provider="cuda", cuda_device_ids=[0, 1])
    assert process_layout(settings, cpus=16, cuda=True) == ProcessLayout(8, (0, 1), True)
    assert process_layout(settings, cpus=3, cuda=True) == ProcessLayout(2, (0, 1), True)
    assert process_layout(Settings(workers=1, provider="cuda"), cpus=16, cuda=True) == ProcessLayout(1, (0,), True)


def test_provider_cuda_without_a_gpu_is_laid_out_for_cpu() -> None:
    """The worker then reports why it is not ready; the layout does not pretend a GPU is there."""
    assert process_layout(Settings(workers=0, provider="cuda"), cpus=2, cuda=False) == ProcessLayout(1, (0,), False)


def test_available_cpus_is_positive_and_within_the_host() -> None:
    import os

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
