"""The Python face of the C++ Detector: contract-shaped detections, input checks, benchmarks."""

from __future__ import annotations

import os
import statistics
from typing import Any

import numpy as np

from slipway_runtime import _core

Error = _core.Error

STAGES = ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def _as_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {dtype} {shape}")
    return np.ascontiguousarray(image)


class Detector:
    """One exported model. ``model``: the export folder (with model.json) or its TorchScript file.

    ``threads`` sets libtorch's intra-op threads for this detector's calls; ``interop_threads``
    (0: libtorch's default) can only be chosen once per process.
    """

    def __init__(self, model: str | os.PathLike, threads: int = 2, interop_threads: int = 0, warmup_runs: int = 2):
        self._impl = _core.Detector(os.fspath(model), int(threads), int(interop_threads), int(warmup_runs))
        self.info: dict[str, Any] = self._impl.info
        self.labels: list[str] = list(self.info["labels"])
        self.last_timings: dict[str, float] = {}

    @property
    def threads(self) -> int:
        return self._impl.threads

    def set_num_threads(self, threads: int) -> None:
        self._impl.threads = int(threads)

    def predict_arrays(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """boxes float32 [N, 4] (x1, y1, x2, y2, image pixels), scores float32 [N], classes int64 [N]."""
        boxes, scores, classes, _labels, timings = self._impl.predict_arrays(_as_image(image))
        self.last_timings = timings
        return boxes, scores, classes

    def predict(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Detections as the service answers them, best first."""
        boxes, scores, classes, labels, timings = self._impl.predict_arrays(_as_image(image))
        self.last_timings = timings
        return [
            {"box": [float(v) for v in boxes[i]], "score": float(scores[i]), "class_id": int(classes[i]),
             "label": labels[i]}
            for i in range(len(scores))
        ]

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The float32 [1, 3, H, W] input predict() feeds the model (for parity checks)."""
        return self._impl.preprocess(_as_image(image))

    def benchmark(self, image: np.ndarray, iterations: int = 50, warmup: int = 5) -> dict[str, Any]:
        """Per-stage timings measured inside C++ over ``iterations`` predict() calls, in ms.

        ``inference_ms`` is the TorchScript module's forward alone; ``total_ms`` is the whole
        predict (preprocess + forward + postprocess), so ``total / inference`` is the overhead
        of the runtime around the model.
        """
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        image = _as_image(image)
        for _ in range(warmup):
            self._impl.predict_arrays(image)
        runs = [self._impl.predict_arrays(image)[4] for _ in range(iterations)]
        out: dict[str, Any] = {"iterations": iterations, "threads": self.threads,
                               "image": [int(image.shape[0]), int(image.shape[1])]}
        for stage in STAGES:
            values = sorted(r[stage] for r in runs)
            out[stage] = {
                "median": statistics.median(values),
                "p95": values[min(len(values) - 1, round(0.95 * (len(values) - 1)))],
                "min": values[0],
                "mean": statistics.fmean(values),
            }
        return out


def bench(model: str | os.PathLike, image: np.ndarray, threads: int = 2, iterations: int = 50,
          warmup: int = 5) -> dict[str, Any]:
    """Load ``model`` and time ``image`` through it: see Detector.benchmark."""
    return Detector(model, threads=threads).benchmark(image, iterations=iterations, warmup=warmup)
