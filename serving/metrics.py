"""Prometheus text-format metrics, written by hand: a few metric families do not justify a dependency.

Every label value comes from a fixed set, so no client can grow the series: the route is the
template (``/v1/models/{name}:predict``) or ``unmatched``, the method one of ``METHODS`` or
``other``, the status a three-digit code the service answers (499: the client went away first),
the rejection code one of the service's own error codes.
"""

from __future__ import annotations

import threading
from collections import defaultdict

# Seconds; spans a few-millisecond ONNX inference up to a slow first request on a cold GPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        out = []
        for bound, count in zip(self.buckets, self.counts, strict=True):
            out.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {count}")
        out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.count}")
        out.append(f"{name}_sum{_labels(labels)} {_number(self.total)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.request_latency: dict[tuple[str, str], Histogram] = {}
        self.inference_latency: dict[str, Histogram] = {}
        self.rejected: dict[str, int] = defaultdict(int)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method_label(method)
        with self._lock:
            self.requests[(method, route, status_label(status))] += 1
            self.request_latency.setdefault((method, route), Histogram()).observe(seconds)

    def observe_inference(self, model: str, seconds: float) -> None:
        with self._lock:
            self.inference_latency.setdefault(model, Histogram()).observe(seconds)

    def observe_rejection(self, code: str) -> None:
        with self._lock:
            self.rejected[code] += 1

    def render(self, *, model: str, backend: str, ready: bool, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        with self._lock:
            lines = [
                "# HELP slipway_requests_total HTTP requests answered, by method, route and status.",
                "# TYPE slipway_requests_total counter",
            ]
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(
                    f"slipway_requests_total{_labels({'method': method, 'route': route, 'status': status})} {count}"
                )
            lines += [
                "# HELP slipway_request_duration_seconds Time from request received to response sent.",
                "# TYPE slipway_request_duration_seconds histogram",
            ]
            for (method, route), hist in sorted(self.request_latency.items()):
                lines += hist.lines("slipway_request_duration_seconds", {"method": method, "route": route})
            lines += [
                "# HELP slipway_inference_duration_seconds Time spent in the backend's predict, per model.",
                "# TYPE slipway_inference_duration_seconds histogram",
            ]
            for name, hist in sorted(self.inference_latency.items()):
                lines += hist.lines("slipway_inference_duration_seconds", {"model": name})
            lines += [
                "# HELP slipway_rejected_requests_total Predict requests refused as the client's fault, by error code.",
                "# TYPE slipway_rejected_requests_total counter",
            ]
            for code, count in sorted(self.rejected.items()):
                lines.append(f"slipway_rejected_requests_total{_labels({'code': code})} {count}")
            lines += [
                "# HELP slipway_model_ready 1 when the model is loaded, warmed up and its backend reachable.",
                "# TYPE slipway_model_ready gauge",
                f"slipway_model_ready{_labels({'model': model, 'backend': backend})} {1 if ready else 0}",
            ]
            for name, (help_text, value) in sorted((gauges or {}).items()):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        return "\n".join(lines) + "\n"
