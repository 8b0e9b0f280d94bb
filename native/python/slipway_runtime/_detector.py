"""The Python face of the C++ Detector: contract-shaped detections, input checks, benchmarks.

numpy is optional: ``predict`` also takes raw RGB bytes or a PIL image, so a deployment that
decodes with PIL needs no numpy (about 56 MB with its BLAS). Only the calls that return arrays
(``predict_arrays``, ``preprocess``) and numpy input need it.
"""

from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING, Any

from slipway_runtime import _core

if TYPE_CHECKING:
    import numpy as np

Error = _core.Error

STAGES = ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def _numpy():
    try:
        import numpy
    except ModuleNotFoundError as exc:
        raise ImportError("this call returns numpy arrays: pip install numpy (or slipway-runtime[numpy])") from exc
    return numpy


def _is_ndarray(image: Any) -> bool:
    # Without importing numpy: an array can only exist where numpy is already imported.
    return type(image).__module__ == "numpy" and type(image).__name__ == "ndarray"


def _as_image(image: Any) -> np.ndarray:
    np = _numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {dtype} {shape}")
    return np.ascontiguousarray(image)


def _pixels(image: Any, size: tuple[int, int] | None) -> tuple[Any, int, int]:
    """(C-contiguous RGB bytes buffer, height, width) from an array, a PIL image or raw bytes."""
    if _is_ndarray(image):
        array = _as_image(image)
        return array, int(array.shape[0]), int(array.shape[1])
    if hasattr(image, "mode") and hasattr(image, "tobytes") and hasattr(image, "size"):  # a PIL image
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got PIL mode {image.mode!r}: use image.convert('RGB')")
        width, height = image.size
        return image.tobytes(), int(height), int(width)
    if isinstance(image, (bytes, bytearray, memoryview)):
        if size is None:
            raise ValueError("raw RGB bytes need size=(height, width)")
        height, width = size
        return image, int(height), int(width)
    raise ValueError(f"expected a uint8 RGB image: a numpy array [H, W, 3], a PIL RGB image or bytes with "
                     f"size=(height, width), got {type(image).__name__}")


class Detector:
    """One exported model. ``model``: the export folder (with model.json) or its TorchScript file.

    ``threads`` sets libtorch's intra-op threads for this detector's calls; ``interop_threads``
    (0: libtorch's default) can only be chosen once per process. ``warmup_runs`` forward passes
    at load time keep TorchScript's profiling and compiling out of the first ``predict``.
    ``onednn_fusion`` lets libtorch's oneDNN Graph fuser compile the model (about 3x faster on the
    example detector, same detections); it needs ``warmup_runs >= 2``, which prove it while
    loading: a model the fuser fails on is loaded again unfused and ``fusion_error`` says why.
    libtorch holds the switch per process: construct Detectors that disagree one at a time.
    """

    def __init__(self, model: str | os.PathLike, threads: int = 2, interop_threads: int = 0, warmup_runs: int = 3,
                 onednn_fusion: bool = True):
        self._impl = _core.Detector(os.fspath(model), int(threads), int(interop_threads), int(warmup_runs),
                                    bool(onednn_fusion))
        self.info: dict[str, Any] = self._impl.info
        self.labels: list[str] = list(self.info["labels"])
        self.last_timings: dict[str, float] = {}

    @property
    def fusion_groups(self) -> int:
        """Fused oneDNN Graph partitions the optimised model runs: 0 unfused, -1 unknown (warmup_runs < 2)."""
        return self._impl.fusion_groups

    @property
    def fusion_error(self) -> str:
        """Why the oneDNN fuser was given up while loading (the model then runs unfused); "" if it was not."""
        return self._impl.fusion_error

    @property
    def threads(self) -> int:
        return self._impl.threads

    def set_num_threads(self, threads: int) -> None:
        self._impl.threads = int(threads)

    def predict_arrays(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """boxes float32 [N, 4] (x1, y1, x2, y2, image pixels), scores float32 [N], classes int64 [N] (needs numpy)."""
        boxes, scores, classes, _labels, timings = self._impl.predict_arrays(_as_image(image))
        self.last_timings = timings
        return boxes, scores, classes

    def predict(self, image: Any, size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """Detections as the service answers them, best first.

        ``image``: a numpy uint8 array [H, W, 3], a PIL image in mode RGB, or height * width * 3
        RGB bytes (row-major) with ``size=(height, width)``.
        """
        pixels, height, width = _pixels(image, size)
        detections, self.last_timings = self._impl.predict(pixels, height, width)
        return detections

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The float32 [1, 3, H, W] input predict() feeds the model (for parity checks; needs numpy)."""
        return self._impl.preprocess(_as_image(image))

    def benchmark(self, image: Any, iterations: int = 50, warmup: int = 5,
                  size: tuple[int, int] | None = None) -> dict[str, Any]:
        """Per-stage timings measured inside C++ over ``iterations`` predict() calls, in ms.

        ``inference_ms`` is the TorchScript module's forward alone; ``total_ms`` is the whole
        predict (preprocess + forward + postprocess), so ``total / inference`` is the overhead
        of the runtime around the model.
        """
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        pixels, height, width = _pixels(image, size)
        for _ in range(warmup):
            self._impl.predict(pixels, height, width)
        runs = [self._impl.predict(pixels, height, width)[1] for _ in range(iterations)]
        out: dict[str, Any] = {"iterations": iterations, "threads": self.threads, "image": [height, width]}
        for stage in STAGES:
            values = sorted(r[stage] for r in runs)
            out[stage] = {
                "median": statistics.median(values),
                "p95": values[min(len(values) - 1, round(0.95 * (len(values) - 1)))],
                "min": values[0],
                "mean": statistics.fmean(values),
            }
        return out


def bench(model: str | os.PathLike, image: Any, threads: int = 2, iterations: int = 50,
          warmup: int = 5, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Load ``model`` and time ``image`` through it: see Detector.benchmark."""
    return Detector(model, threads=threads).benchmark(image, iterations=iterations, warmup=warmup, size=size)
