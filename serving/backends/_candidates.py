"""What the backends that run a PyTorch-exported model share: preprocess -> model -> candidates -> detections.

The pre- and postprocessing are ``model_export``'s, the very functions verification runs, so the
service cannot drift from the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_export.postprocess import postprocess
from model_export.preprocess import preprocess


class CandidatesMixin:
    """prepare = the contract's preprocess; finish = its postprocess of one image of the batch."""

    manifest: dict[str, Any]
    staged = True

    def _input_size(self) -> tuple[int, int]:
        inp = self.manifest["input"]
        return int(inp["height"]), int(inp["width"])

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.manifest["input"])

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return self._preprocess(image)

    def finish(self, image: np.ndarray, outputs, index: int) -> list[dict[str, Any]]:
        boxes, scores, classes = outputs
        return self._postprocess(image, boxes, scores, classes, index)

    def _postprocess(self, image: np.ndarray, boxes, scores, classes, index: int = 0) -> list[dict[str, Any]]:
        """Candidates of image ``index`` of the batch -> detections in the image's pixels."""
        return postprocess(
            np.asarray(boxes)[index],
            np.asarray(scores)[index],
            np.asarray(classes)[index],
            input_size=self._input_size(),
            image_size=(int(image.shape[0]), int(image.shape[1])),
            output=self.manifest["output"],
            labels=self.manifest.get("labels") or [],
        )

    def _batch_outputs_ok(self, outputs, size: int) -> str | None:
        """Why ``outputs`` are not the candidates of a batch of ``size`` images, or None."""
        try:
            boxes, scores, classes = outputs
        except (TypeError, ValueError):
            return f"the model returned {type(outputs).__name__}, not (boxes, scores, classes)"
        shapes = [tuple(np.shape(v)) for v in (boxes, scores, classes)]
        if any(not s or s[0] != size for s in shapes):
            return f"a batch of {size} images gave outputs of shapes {shapes}"
        return None
