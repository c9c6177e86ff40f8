"""``observe_many`` leaves a histogram exactly as observing each value would, in both metric modes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
from prometheus_client import values as prometheus_values

from service.metrics import LATENCY_BUCKETS, observe_many


def exposed(registry: CollectorRegistry, label: str) -> list[tuple[str, float]]:
    text = generate_latest(registry).decode()
    rows = [line.replace(f'model="{label}"', "").rsplit(" ", 1) for line in text.splitlines() if label in line]
    return sorted((name, float(value)) for name, value in rows)


@pytest.mark.parametrize("multiprocess_mode", [False, True])
def test_observe_many_equals_observing_one_by_one(
    multiprocess_mode: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    # Waits across the buckets, on their bounds exactly, below the first and above the last.
    waits = [rng.expovariate(200) for _ in range(500)] + [LATENCY_BUCKETS[3], LATENCY_BUCKETS[-1], 0.0, 99.0]
    if multiprocess_mode:  # what a child of the supervisor gets (prometheus-client picks it at import)
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        monkeypatch.setattr(prometheus_values, "ValueClass", prometheus_values.MultiProcessValue())
    results = []
    for label in ("each", "many"):
        registry = CollectorRegistry()
        histogram = Histogram("wait_seconds", "w", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        child = histogram.labels(label)
        if label == "each":
            for wait in waits:
                child.observe(wait)
        else:
            observe_many(child, waits)
        if multiprocess_mode:  # read back the way /metrics does: from the files
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        results.append(exposed(registry, label))
    each, many = results
    assert len(each) == len(many) == len(LATENCY_BUCKETS) + 3  # every bucket, +Inf, _count and _sum
    assert [name for name, _ in each] == [name for name, _ in many]
    for (_, one), (_, bulk) in zip(each, many, strict=True):
        assert one == pytest.approx(bulk, rel=1e-12)  # exact counts; _sum adds in another order
