"""The C++ runtime (``slipway_runtime``, libtorch inside) from its wheel: the pytorch-cpp-cpu image.

The wheel does its own pre- and postprocessing in C++ (the same contract as model_export), so
this backend only converts its results. It hands the wheel the decoded PIL image (pixels as
bytes), so neither it nor the wheel needs numpy. The self-contained wheel vendors libtorch and refuses to
load next to the ``torch`` package (two copies would abort the process); that refusal, like a
missing wheel, becomes this backend's error state with the runtime's own message.
"""

from __future__ import annotations

from typing import Any

from serving.backends.base import Backend, BackendError, Detection
from serving.manifest import label_for


class CppBackend(Backend):
    name = "cpp"
    # The wheel takes a PIL image's bytes directly: the pytorch-cpp-cpu image has no numpy.
    input_kind = "pil"

    def load(self) -> None:
        try:
            import slipway_runtime
        except ModuleNotFoundError as exc:
            if exc.name != "slipway_runtime":
                raise
            raise BackendError(
                "BACKEND=cpp needs the C++ runtime wheel 'slipway-runtime' (module slipway_runtime), "
                "which is not installed"
            ) from exc
        self._runtime = slipway_runtime
        self._detector = slipway_runtime.Detector(
            str(self.model_dir), threads=self.threads, onednn_fusion=bool(self.options.get("onednn_fusion", True))
        )

    def _predict(self, image: Any) -> list[Detection]:
        # A PIL RGB image: the runtime reads its pixels as bytes, so this image needs no numpy.
        return [self._convert(d) for d in self._detector.predict(image)]

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
            **self._fusion(),
        }

    def _fusion(self) -> dict[str, Any]:
        detector = getattr(self, "_detector", None)
        if detector is None:
            return {}
        out = {"onednn_fusion": bool(self.options.get("onednn_fusion", True)) and not detector.fusion_error,
               "fused_partitions": detector.fusion_groups}
        if detector.fusion_error:
            out["fusion_error"] = detector.fusion_error
        return out
