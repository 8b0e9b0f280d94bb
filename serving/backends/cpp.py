"""The C++ runtime (``slipway_runtime``, libtorch inside) from its wheel: the pytorch-cpp-cpu image.

The wheel does its own pre- and postprocessing in C++ (the same contract as model_export), so
this backend only converts its results. ``slipway_runtime`` vendors libtorch: a process that has
also imported the ``torch`` package aborts (two copies register the same operators), so the
backend refuses to load in that case instead of letting the process die.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from serving.backends.base import Backend, BackendError, Detection
from serving.manifest import label_for


class CppBackend(Backend):
    name = "cpp"

    def load(self) -> None:
        if "torch" in sys.modules:
            raise BackendError(
                "the cpp backend cannot share a process with the torch package (both load libtorch and the "
                "process would abort); run it in an image or environment without torch"
            )
        try:
            import slipway_runtime
        except ImportError as exc:
            raise BackendError(
                f"BACKEND=cpp needs the C++ runtime wheel 'slipway-runtime' (module slipway_runtime): {exc}"
            ) from exc
        self._runtime = slipway_runtime
        self._detector = slipway_runtime.Detector(str(self.model_dir))
        set_threads = getattr(self._detector, "set_num_threads", None)
        if callable(set_threads):
            set_threads(self.threads)

    def _predict(self, image: np.ndarray) -> list[Detection]:
        return [self._convert(d) for d in self._detector.predict(np.ascontiguousarray(image))]

    def _convert(self, det: Any) -> Detection:
        """The binding may return dicts or small objects; the service answers the contract's dicts."""
        get = det.get if isinstance(det, dict) else lambda key, default=None: getattr(det, key, default)
        class_id = int(get("class_id"))
        return {
            "box": [float(v) for v in get("box")],
            "score": float(get("score")),
            "class_id": class_id,
            "label": get("label") or label_for(self.manifest, class_id),
        }

    def describe(self) -> dict[str, Any]:
        runtime = getattr(self, "_runtime", None)
        return {
            "device": "cpu",
            "runtime": f"slipway_runtime {getattr(runtime, '__version__', '?')}" if runtime else None,
        }
