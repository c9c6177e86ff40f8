"""Generate ``deploy/grafana/dashboards/lstm-serve.json``, the provisioned Grafana dashboard.

WHY a generator: a hand-edited dashboard JSON repeats the datasource, the ``$model`` filter and the
quantile boilerplate in dozens of places, and one typo there only shows up as an empty panel. Here each
query shape is written once; the tests check that the committed JSON is exactly this script's output and
that every expression in it parses and names only metrics the service exports.

Run ``python deploy/grafana/build_dashboard.py`` after editing, and commit both files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "lstm-serve.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # = uid in provisioning/datasources/prometheus.yml
# "All" is `.+`, not `.*`: request series with model="" are the health/readiness probes (Docker's
# HEALTHCHECK hits /readyz every 10 s) and would otherwise pad the request rate and the error ratio.
MODEL = 'model=~"$model"'
ALL_MODELS = ".+"
OK = MODEL + ', status=~"2.."'
SERVER_ERROR = MODEL + ', status=~"5.."'
# Errors that happen before a model is known (unknown route, body too large, probes failing) have model="";
# the error panel shows them too, whatever model is selected.
NOT_OK = 'model=~"$model|", status!~"2.."'
RATE = "[$__rate_interval]"
# Share of a model's queue capacity (lstm_serve_queue_capacity_items): the LstmServeQueueNearFull alert's line.
QUEUE_ALERT_FILL = 0.8
NO_GPU = "no GPU data (CPU provider or NVML absent)"


def rate(metric: str, selector: str = MODEL) -> str:
    return f"rate({metric}{{{selector}}}{RATE})"


def quantile(q: float, histogram: str, by: str = "model", selector: str = MODEL) -> str:
    """``histogram_quantile`` over a classic histogram, aggregated ``by`` (plus ``le``; empty: all series)."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket', selector)}))"


def mean(histogram: str, by: str = "model", selector: str = MODEL) -> str:
    total, count = rate(histogram + "_sum", selector), rate(histogram + "_count", selector)
    return f"sum by ({by}) ({total}) / sum by ({by}) ({count})"


def target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def quantile_targets(histogram: str, selector: str = MODEL, by: str = "model") -> list[dict[str, Any]]:
    return [
        target(quantile(q, histogram, by, selector), f"{{{{{by}}}}} p{round(q * 100)}", ref)
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


class Layout:
    """Places panels left to right on Grafana's 24-column grid and hands out panel ids."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = 0
        self.y = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(self._base("row", title, 24, 1) | {"collapsed": False, "panels": []})
        self.y += 1

    def add(self, kind: str, title: str, width: int, height: int, targets: list[dict[str, Any]], **extra: Any) -> None:
        if self.x + width > 24:
            self._newline()
        panel = self._base(kind, title, width, height) | {"datasource": DATASOURCE, "targets": targets} | extra
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def _base(self, kind: str, title: str, width: int, height: int) -> dict[str, Any]:
        grid = {"h": height, "w": width, "x": self.x, "y": self.y}
        return {"id": len(self.panels) + 1, "type": kind, "title": title, "gridPos": grid}


def field_config(unit: str, no_value: str | None = None, **custom: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if no_value is not None:
        defaults["noValue"] = no_value
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


def timeseries(
    layout: Layout,
    title: str,
    targets: list[dict[str, Any]],
    unit: str,
    description: str,
    width: int = 8,
    **config: Any,
) -> None:
    layout.add(
        "timeseries",
        title,
        width,
        8,
        targets,
        description=description,
        fieldConfig=field_config(unit, **config),
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    layout: Layout,
    title: str,
    expr: str,
    unit: str,
    description: str,
    thresholds: list[tuple[str, float | None]],
    legend: str = "",
) -> None:
    steps = [{"color": color, "value": value} for color, value in thresholds]
    layout.add(
        "stat",
        title,
        4,
        4,
        [target(expr, legend, "A")],
        description=description,
        fieldConfig={"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        options={"colorMode": "background", "graphMode": "area", "reduceOptions": {"calcs": ["lastNotNull"]}},
    )


def heatmap(layout: Layout, title: str, histogram: str, unit: str, description: str) -> None:
    expr = f"sum by (le) (increase({histogram}_bucket{{{MODEL}}}{RATE}))"
    layout.add(
        "heatmap",
        title,
        8,
        8,
        [target(expr, "{{le}}", "A", format="heatmap")],
        description=description,
        options={"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1, "color": {"scheme": "Oranges"}},
    )


def overview(layout: Layout) -> None:
    layout.row("Overview")
    stat(
        layout,
        "Targets up",
        'sum(up{job="lstm-serve"})',
        "none",
        "Scraped service instances that answer /metrics.",
        [("red", None), ("green", 1)],
    )
    stat(
        layout,
        "Requests / s",
        f"sum({rate('lstm_serve_requests_total')})",
        "reqps",
        "All answered requests, every status.",
        [("blue", None)],
    )
    stat(
        layout,
        "5xx ratio",
        f"sum({rate('lstm_serve_requests_total', SERVER_ERROR)}) / sum({rate('lstm_serve_requests_total')})",
        "percentunit",
        "Share of requests answered 5xx (503 overload, 504 deadline, 500 bugs). Alert at 5%.",
        [("green", None), ("orange", 0.01), ("red", 0.05)],
    )
    stat(
        layout,
        "p99 latency (2xx)",
        quantile(0.99, "lstm_serve_request_duration_seconds", "", OK),
        "s",
        "p99 of successful requests over all models. Alert at 1 s.",
        [("green", None), ("orange", 0.5), ("red", 1)],
    )
    stat(
        layout,
        "Queue fill",
        f"max(lstm_serve_queue_items{{{MODEL}}} / lstm_serve_queue_capacity_items{{{MODEL}}})",
        "percentunit",
        f"Fullest model queue, as a share of its capacity. Alert above {QUEUE_ALERT_FILL:.0%} for 5 minutes.",
        [("green", None), ("orange", QUEUE_ALERT_FILL / 2), ("red", QUEUE_ALERT_FILL)],
    )
    stat(
        layout,
        "In-flight requests",
        f"sum(lstm_serve_inflight_requests{{{MODEL}}})",
        "none",
        "Requests accepted and not yet answered.",
        [("blue", None)],
    )


def traffic(layout: Layout) -> None:
    layout.row("Traffic and errors")
    timeseries(
        layout,
        "Request rate by model / endpoint / status",
        [
            target(
                f"sum by (model, endpoint, status) ({rate('lstm_serve_requests_total')})",
                "{{model}} {{endpoint}} {{status}}",
                "A",
            )
        ],
        "reqps",
        "Answered requests per second.",
    )
    timeseries(
        layout,
        "Error rate by model / status (non-2xx)",
        [
            target(
                f"sum by (model, endpoint, status) ({rate('lstm_serve_requests_total', NOT_OK)})",
                "{{model}} {{endpoint}} {{status}}",
                "A",
            )
        ],
        "reqps",
        "4xx: clients' mistakes; 5xx: overload (503), deadlines (504) or bugs (500). Includes answers without a "
        "model (unknown routes, oversized bodies, probes).",
    )
    timeseries(
        layout,
        "Rejected by reason",
        [target(f"sum by (model, reason) ({rate('lstm_serve_rejected_total')})", "{{model}} {{reason}}", "A")],
        "reqps",
        "Refused requests/items: queue_full (503), timeout (504), cancelled (client gone), invalid.",
    )


def latency(layout: Layout) -> None:
    layout.row("Latency")
    timeseries(
        layout,
        "Request latency p50 / p95 / p99 (2xx)",
        quantile_targets("lstm_serve_request_duration_seconds", OK),
        "s",
        "End-to-end server time of successful requests, per model.",
    )
    timeseries(
        layout,
        "Queue wait p50 / p95 / p99",
        quantile_targets("lstm_serve_queue_duration_seconds"),
        "s",
        "Time an item waited for a batch. Growing while inference time is flat = saturated.",
    )
    timeseries(
        layout,
        "Inference time per batch p50 / p95 / p99",
        quantile_targets("lstm_serve_inference_duration_seconds"),
        "s",
        "onnxruntime time of one batch (the compute part of the latency).",
    )


def batching(layout: Layout) -> None:
    layout.row("Batching")
    timeseries(
        layout,
        "Batch size (items): mean, p50, p95",
        [target(mean("lstm_serve_batch_size"), "{{model}} mean", "M"), *quantile_targets("lstm_serve_batch_size")[:2]],
        "none",
        "Items per batch. Near 1 under load = batching not kicking in; at max = raise max_batch_size.",
    )
    heatmap(
        layout,
        "Batch size distribution",
        "lstm_serve_batch_size",
        "none",
        "How many batches had each size (powers-of-two buckets).",
    )
    timeseries(
        layout,
        "Padding ratio: mean, p95",
        [
            target(mean("lstm_serve_batch_padding_ratio"), "{{model}} mean", "M"),
            target(quantile(0.95, "lstm_serve_batch_padding_ratio"), "{{model}} p95", "B"),
        ],
        "percentunit",
        "Share of padded tokens that are padding: compute spent on nothing.",
        min=0,
        max=1,
    )
    heatmap(
        layout,
        "Padding ratio distribution",
        "lstm_serve_batch_padding_ratio",
        "percentunit",
        "How many batches had each padding share; mass near 0 means the length grouping works.",
    )
    timeseries(
        layout,
        "Padded tokens per batch: mean, p95",
        [
            target(mean("lstm_serve_batch_tokens"), "{{model}} mean", "M"),
            target(quantile(0.95, "lstm_serve_batch_tokens"), "{{model}} p95", "B"),
        ],
        "none",
        "items × longest item per batch, capped by max_batch_tokens.",
    )
    timeseries(
        layout,
        "Items / s",
        [target(f"sum by (model) ({rate('lstm_serve_items_total')})", "{{model}}", "A")],
        "ops",
        "Texts computed per second (a request may carry several).",
    )


def decoding(layout: Layout) -> None:
    """Step-level decoding (translation, decode_mode=continuous): the running set and its steps."""
    layout.row("Step-level decoding")
    timeseries(
        layout,
        "Live decoder rows",
        [target(f"sum by (model) (lstm_serve_decoder_rows{{{MODEL}}})", "{{model}}", "A")],
        "none",
        "Rows (sentences × beams) in the running set; capped by decode_max_rows. Drops at once when clients go.",
    )
    timeseries(
        layout,
        "Decoder step time: p50, p95, p99",
        quantile_targets("lstm_serve_decoder_step_duration_seconds"),
        "s",
        "One step of the whole running set, admission (encoder) included.",
    )
    timeseries(
        layout,
        "Tokens generated / s",
        [target(f"sum by (model) ({rate('lstm_serve_decoder_tokens_total')})", "{{model}}", "A")],
        "ops",
        "One token per live sentence per step. Time in queue before the first step: 'Queue wait' above.",
    )


def resources(layout: Layout) -> None:
    layout.row("Queue, provider and resources")
    queue_line = {"thresholdsStyle": {"mode": "line"}}
    layout.add(
        "timeseries",
        "Queue depth",
        8,
        8,
        [
            target(f"sum by (model) (lstm_serve_queue_items{{{MODEL}}})", "{{model}} queued", "A"),
            target(f"sum by (model) (lstm_serve_inflight_requests{{{MODEL}}})", "{{model}} in flight", "B"),
            target(
                f"{QUEUE_ALERT_FILL} * sum by (model) (lstm_serve_queue_capacity_items{{{MODEL}}})",
                "{{model}} alert level",
                "C",
            ),
        ],
        description=f"Queued items and in-flight requests per model; the alert level is {QUEUE_ALERT_FILL:.0%} "
        "of the model's queue capacity (max_queue_items).",
        fieldConfig={
            "defaults": {
                "unit": "none",
                "custom": queue_line,
            },
            "overrides": [],
        },
    )
    layout.add(
        "table",
        "Served models and provider",
        8,
        8,
        [
            target(
                f"max by (model, version, provider) (lstm_serve_model_info{{{MODEL}}})",
                "",
                "A",
                format="table",
                instant=True,
            )
        ],
        description="Each served model version and the onnxruntime provider it runs on (CUDA or CPU).",
        transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}],
    )
    timeseries(
        layout,
        "Memory: GPU used, process RSS",
        [
            target("sum by (instance) (lstm_serve_gpu_memory_used_bytes)", "GPU {{instance}}", "A"),
            target('process_resident_memory_bytes{job="lstm-serve"}', "RSS {{instance}}", "B"),
        ],
        "bytes",
        "GPU memory in use on device 0 (NVML) and the service process's resident memory.",
        no_value=NO_GPU,
    )
    timeseries(
        layout,
        "GPU utilisation",
        [target("avg by (instance) (lstm_serve_gpu_utilization_ratio)", "{{instance}}", "A")],
        "percentunit",
        "NVML utilisation of device 0; empty on CPU deployments.",
        no_value=NO_GPU,
        min=0,
        max=1,
    )


def dashboard() -> dict[str, Any]:
    layout = Layout()
    for section in (overview, traffic, latency, batching, decoding, resources):
        section(layout)
    model_query = "label_values(lstm_serve_model_info, model)"
    return {
        "uid": "lstm-serve",
        "title": "lstm-serve",
        "description": "Traffic, errors, latency, batching, queue and provider of the lstm-serve service.",
        "tags": ["lstm-serve"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {
            "list": [
                {
                    "name": "model",
                    "label": "model",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {"query": model_query, "refId": "model"},
                    "definition": model_query,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ALL_MODELS,
                    "refresh": 2,
                    "sort": 1,
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                }
            ]
        },
        "annotations": {"list": []},
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
