"""The service's Prometheus metrics, kept by ``prometheus_client`` in one registry per app.

Every label value comes from a fixed set, so no client can grow the series: the route is the
template (``/v1/models/{name}:predict``) or ``unmatched``, the method one of ``METHODS`` or
``other``, the status a three-digit code the service answers (499: the client went away first),
the rejection code one of the service's own error codes, the stage one of ``STAGES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

# No *_created series: they double the output and nothing here reads them.
prometheus_client.disable_created_metrics()

# Seconds; spans a few-millisecond ONNX inference up to a slow first request on a cold GPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Stages of a predict request are often well under a millisecond.
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Where a predict request's time goes, in order: the body arriving, waiting for a slot, the image
# decoded, preprocessed, the model, postprocessing, the answer encoded.
STAGES = ("read", "queue", "decode", "preprocess", "infer", "postprocess", "encode")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


# (name, help, value) of each gauge, read when /metrics is scraped.
GaugeSource = Callable[[], Iterable[tuple[str, str, float, dict[str, str]]]]


class _Gauges:
    """A collector that reads the service's live numbers (in flight, queued, ready) at scrape time."""

    def __init__(self, source: GaugeSource):
        self.source = source

    def collect(self):
        for name, help_text, value, labels in self.source():
            family = GaugeMetricFamily(name, help_text, labels=list(labels))
            family.add_metric(list(labels.values()), value)
            yield family


class Metrics:
    def __init__(self, gauges: GaugeSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("slipway_requests_total", "HTTP requests answered, by method, route and status.",
                                ["method", "route", "status"], registry=r)
        self.request_latency = Histogram("slipway_request_duration_seconds",
                                         "Time from request received to response sent.", ["method", "route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.inference_latency = Histogram("slipway_inference_duration_seconds",
                                           "Time spent in the backend's predict, per model.", ["model"],
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("slipway_rejected_requests_total",
                                "Predict requests refused as the client's fault, by error code.", ["code"], registry=r)
        self.stages = Histogram("slipway_stage_seconds", "Time of each stage of a predict request.", ["stage"],
                                buckets=STAGE_BUCKETS, registry=r)
        self.batch_size = Histogram("slipway_batch_size", "Images per forward pass (dynamic batching).",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        # Children by label, looked up once: labels() takes a lock and builds a key per call.
        self._stage = {stage: self.stages.labels(stage) for stage in STAGES}
        if gauges is not None:
            r.register(_Gauges(gauges))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(method, route, status_label(status)).inc()
        self.request_latency.labels(method, route).observe(seconds)

    def observe_inference(self, model: str, seconds: float) -> None:
        self.inference_latency.labels(model).observe(seconds)

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            child = self._stage.get(stage)
            if child is not None:
                child.observe(seconds)

    def observe_rejection(self, code: str) -> None:
        self.rejected.labels(code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
