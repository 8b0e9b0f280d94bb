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
    manifest: dict[str, Any]

    def _input_size(self) -> tuple[int, int]:
        inp = self.manifest["input"]
        return int(inp["height"]), int(inp["width"])

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.manifest["input"])

    def _postprocess(self, image: np.ndarray, boxes, scores, classes) -> list[dict[str, Any]]:
        """Candidates of the batch's only image -> detections in the image's pixels."""
        return postprocess(
            np.asarray(boxes)[0],
            np.asarray(scores)[0],
            np.asarray(classes)[0],
            input_size=self._input_size(),
            image_size=(int(image.shape[0]), int(image.shape[1])),
            output=self.manifest["output"],
            labels=self.manifest.get("labels") or [],
        )
