"""The autoscaler model (bench/autoscale_sim.py): its inputs are the measured figures and the manifests' policy."""

from __future__ import annotations

import json
import statistics

import yaml

from bench import autoscale_sim as sim
from service.settings import Settings
from tests import deploy_support as ds


def medians(path: str, mode: str = "closed") -> dict[int, float]:
    runs = json.loads((ds.REPO_ROOT / path).read_text())["runs"]
    levels: dict[int, list[float]] = {}
    for run in runs:
        if run["server"] == "batching_on" and run["mode"] == mode:
            levels.setdefault(int(run["level"]), []).append(run["throughput"])
    return {level: statistics.median(values) for level, values in levels.items()}


def test_service_model_uses_the_measured_throughputs() -> None:
    shared, idle = medians("bench/results/sentiment_cpu.json"), medians("bench/results/sentiment_cpu_idle.json")
    expected = {1: idle[1], 4: shared[4], 16: shared[16], sim.MAX_BATCH: shared[64]}  # c=64 runs full batches
    assert {k: round(v) for k, v in sim.MEASURED_THROUGHPUT.items()} == {k: round(v) for k, v in expected.items()}


def test_model_policy_is_the_manifests_policy() -> None:
    scaled = yaml.safe_load((ds.DEPLOY / "kubernetes" / "components" / "keda" / "scaledobject.yaml").read_text())
    spec = scaled["spec"]
    thresholds = [float(t["metadata"]["threshold"]) for t in spec["triggers"]]
    assert thresholds == [sim.INFLIGHT_TARGET, sim.QUEUE_TARGET]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (sim.MIN_REPLICAS, sim.MAX_REPLICAS)
    assert spec["pollingInterval"] == sim.POLL_S
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == sim.DOWN_STABILISATION_S
    defaults = Settings()
    assert (defaults.max_batch_size, defaults.max_queue_items) == (sim.MAX_BATCH, sim.MAX_QUEUE_ITEMS)


def test_one_replica_saturates_and_in_flight_grows_with_load() -> None:
    rows = [sim.steady(rate, seconds=20.0) for rate in (250, 750, 1100)]
    assert [r["inflight"] for r in rows] == sorted(r["inflight"] for r in rows)
    assert rows[0]["p99_ms"] < 50 < rows[-1]["p99_ms"]


def test_a_short_day_scales_out_and_back(tmp_path) -> None:
    result = sim.simulate(peak=3000.0, hour_s=20.0, startup_s=10.0, spike=1.5, seed=3)
    replicas = [row["replicas_ready"] for row in result["series"]]
    assert min(replicas) == sim.MIN_REPLICAS and max(replicas) > sim.MIN_REPLICAS
    assert max(replicas) <= sim.MAX_REPLICAS
    summary = sim.summarise(result, 20.0)
    assert summary["answered"] > 0
    sim.plot(result, tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").stat().st_size > 0
