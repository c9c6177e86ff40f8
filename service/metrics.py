"""Prometheus metrics, named exactly as docs/design.md says (prefix ``lstm_serve_``).

Labels are only ``model``, ``version``, ``endpoint`` (a route template, never a raw path), ``status``,
``reason`` and ``provider``, so cardinality stays bounded whatever clients send. Each app owns its own
registry (plus process metrics such as ``process_resident_memory_bytes``), so several apps can live in
one test process.
"""

from __future__ import annotations

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
)

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

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self.queue_items = Gauge(f"{PREFIX}_queue_items", "Items waiting in the batch queue.", mv, registry=reg)
        # The queue's bound, so alerts and dashboards read "how full" without copying the setting.
        self.queue_capacity_items = Gauge(
            f"{PREFIX}_queue_capacity_items", "Most items the batch queue holds before 503.", mv, registry=reg
        )
        self.inflight_requests = Gauge(f"{PREFIX}_inflight_requests", "Requests being served.", mv, registry=reg)
        # Step-level decoding (service.continuous): the running set, each decoder step, tokens produced.
        self.decoder_rows = Gauge(
            f"{PREFIX}_decoder_rows", "Live decoder rows (sentences x beams) in the running set.", mv, registry=reg
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
            "1 for each served model version, with its provider.",
            (*mv, "provider"),
            registry=reg,
        )
        self._gpu = _GpuMetrics(reg)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type, refreshing GPU gauges where NVML answers."""
        self._gpu.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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
        self.memory = Gauge(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use (device 0).", registry=registry)
        self.util = Gauge(f"{PREFIX}_gpu_utilization_ratio", "GPU utilisation 0..1 (device 0).", registry=registry)

    def refresh(self) -> None:
        if self._nvml is None:
            return
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        self.memory.set(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        self.util.set(nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
