"""Prometheus metrics, named exactly as docs/design.md says (prefix ``lstm_serve_``).

Labels are only ``model``, ``version``, ``endpoint`` (a route template, never a raw path), ``status``,
``reason``, ``provider`` and ``precision`` (fp32/int8/fp16), so cardinality stays bounded whatever
clients send. Each app owns its own registry (plus process metrics such as
``process_resident_memory_bytes``), so several apps can live in one test process.

With several processes (``workers`` > 1) the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` and every
process writes its samples there (prometheus-client's multiprocess mode); ``/metrics``, answered by any
front end, merges them, so operators see one server with the same names and labels: counters and
histograms add up, each gauge says how (``livesum``: queued items and requests in flight over live
processes; ``livemax``: the queue bound, model info). ``process_resident_memory_bytes`` and
``process_cpu_seconds_total`` then add up every live process of the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# `_created` series double the exposition size and no dashboard or alert reads them.
disable_created_metrics()

PREFIX = "lstm_serve"
# Geometric, 100 µs .. ~30 s: sub-millisecond CPU batches up to multi-second overloaded requests.
LATENCY_BUCKETS = tuple(round(0.0001 * 2 ** (i / 2), 6) for i in range(37))
SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 items
TOKEN_BUCKETS = tuple(float(2**i) for i in range(18))  # 1 .. 131072 padded tokens
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    """All collectors of one app, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None, pids: Callable[[], list[int]] | None = None) -> None:
        """``pids``: the processes of a multi-process server, for the summed process metrics."""
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        mv = ("model", "version")
        reg = self.registry

        def hist(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = mv) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=reg)

        self.request_duration = hist(
            "request_duration_seconds",
            "Time from request start to response, per endpoint and HTTP status.",
            LATENCY_BUCKETS,
            (*mv, "endpoint", "status"),
        )
        self.queue_duration = hist("queue_duration_seconds", "Time an item waited in the batch queue.", LATENCY_BUCKETS)
        self.inference_duration = hist("inference_duration_seconds", "onnxruntime time of one batch.", LATENCY_BUCKETS)
        self.batch_size = hist("batch_size", "Items in one batch.", SIZE_BUCKETS)
        self.batch_tokens = hist("batch_tokens", "Padded tokens (items x longest) in one batch.", TOKEN_BUCKETS)
        self.batch_padding_ratio = hist(
            "batch_padding_ratio", "Share of a batch's padded tokens that are padding.", RATIO_BUCKETS
        )
        self.requests_total = Counter(
            f"{PREFIX}_requests_total",
            "Requests answered, per endpoint and status.",
            (*mv, "endpoint", "status"),
            registry=reg,
        )
        self.items_total = Counter(f"{PREFIX}_items_total", "Items (texts) computed.", mv, registry=reg)
        self.rejected_total = Counter(
            f"{PREFIX}_rejected_total", "Requests or items refused, per reason.", (*mv, "reason"), registry=reg
        )
        self.queue_items = Gauge(
            f"{PREFIX}_queue_items", "Items waiting in the batch queue.", mv, registry=reg, multiprocess_mode="livesum"
        )
        # The queue's bound, so alerts and dashboards read "how full" without copying the setting.
        self.queue_capacity_items = Gauge(
            f"{PREFIX}_queue_capacity_items",
            "Most items the batch queue holds before 503.",
            mv,
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.inflight_requests = Gauge(
            f"{PREFIX}_inflight_requests", "Requests being served.", mv, registry=reg, multiprocess_mode="livesum"
        )
        # What slow or stalled uploads hold: falls back to 0 when their bodies are complete, dropped or timed out.
        self.request_body_bytes = Gauge(
            f"{PREFIX}_request_body_bytes",
            "Bytes of request bodies being received.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        # Step-level decoding (service.continuous): the running set, each decoder step, tokens produced.
        self.decoder_rows = Gauge(
            f"{PREFIX}_decoder_rows",
            "Decoder rows (sentences x beams) in the running set, finished rows not yet retired included.",
            mv,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.decoder_step_duration = hist(
            "decoder_step_duration_seconds",
            "Time of one decoder step of the running set (admission and encoder included).",
            LATENCY_BUCKETS,
        )
        self.decoder_tokens_total = Counter(
            f"{PREFIX}_decoder_tokens_total",
            "Tokens generated: one per live sentence per decoder step.",
            mv,
            registry=reg,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "1 for each served model version, with its provider and the precision variant it serves.",
            (*mv, "provider", "precision"),
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._gpu = _GpuMetrics(reg)
        self._pids = pids

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, refreshing GPU gauges where NVML answers."""
        self._gpu.refresh()
        if not multiprocess_dir():
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        PlatformCollector(registry=merged)
        if self._pids is not None:
            merged.register(AllProcessesCollector(self._pids))
        return generate_latest(merged), CONTENT_TYPE_LATEST


BULK_FROM = 16  # values; below this the numpy calls cost more than the writes they save


def observe_many(child: Histogram, values: Sequence[float]) -> None:
    """``child.observe(v)`` for every value, with one write per bucket touched and one for the sum.

    Why: the batcher observes each item's queue wait; in multiprocess mode every observe is two mmap
    writes with a pid check, about half of the worker's own per-item time at rounds of 1,024 items
    (docs/benchmarks.md). The result is the same as observing one by one: a value falls in the first
    bucket whose upper bound is at least the value. Few values (CPU batches), or a client without the
    attributes this relies on, take the plain loop.
    """
    bounds, buckets, total = (getattr(child, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if len(values) < BULK_FROM or bounds is None or buckets is None or total is None:
        for value in values:
            child.observe(value)
        return
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    total.inc(float(np.sum(values)))
    for index in np.flatnonzero(counts):
        buckets[index].inc(int(counts[index]))


def multiprocess_dir() -> str | None:
    """Where the processes of a multi-process server write their samples (None: one process)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class AllProcessesCollector:
    """``process_resident_memory_bytes`` and ``process_cpu_seconds_total`` summed over the server's processes.

    The standard process collector describes the process that answers ``/metrics``; with several
    processes that would be one front end, and the dashboard's memory panel would miss the rest.
    """

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Iterator[Metric]:
        rss = cpu = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # exited since the table was read
                continue
            cpu += (int(fields[11]) + int(fields[12])) / self.tick
            rss += int(fields[21]) * self.page
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of all server processes.", rss)
        yield CounterMetricFamily("process_cpu_seconds_total", "CPU seconds of all live server processes.", cpu)


class _GpuMetrics:
    """GPU memory/utilisation gauges, only when ``pynvml`` is installed and a GPU answers (else absent)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._nvml = None
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no NVML, no GPU: the gauges are simply absent
            return
        # No label: the service uses one GPU (device 0), and "gpu" is not one of the allowed labels.
        mode = "mostrecent"  # with several processes: one device, whichever process read it last
        self.memory = Gauge(
            f"{PREFIX}_gpu_memory_used_bytes",
            "GPU memory in use (device 0).",
            registry=registry,
            multiprocess_mode=mode,
        )
        self.util = Gauge(
            f"{PREFIX}_gpu_utilization_ratio",
            "GPU utilisation 0..1 (device 0).",
            registry=registry,
            multiprocess_mode=mode,
        )

    def refresh(self) -> None:
        if self._nvml is None:
            return
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        self.memory.set(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        self.util.set(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
