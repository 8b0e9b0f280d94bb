"""What the TensorFlow backends share: a SavedModel's serving outputs -> detections.

The signature has already resized, run NMS and scaled boxes to the original image (the contract
in docs/architecture.md); its outputs are padded, and ``num_detections`` says how many are real.
This is the same reading model_export's verification applies to the SavedModel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

REQUIRED_OUTPUTS = ("boxes", "scores", "classes", "num_detections")


def detections_from_outputs(outputs: Mapping[str, Any], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Outputs of ONE image (leading batch dimension of 1, or none) -> detections."""
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise ValueError(f"the model's outputs lack {', '.join(missing)} (got {', '.join(sorted(outputs))})")
    # Plain lists (TF Serving's JSON) or numpy arrays (TensorFlow in process); no numpy needed here.
    boxes, scores, classes, num = (_as_list(outputs[k]) for k in REQUIRED_OUTPUTS)
    if boxes and isinstance(boxes[0], list) and boxes[0] and isinstance(boxes[0][0], list):
        boxes, scores, classes = boxes[0], scores[0], classes[0]  # drop the batch dimension of 1
    while isinstance(num, list):
        num = num[0]
    count = min(int(num), len(scores))
    out = []
    for j in range(count):
        c = int(classes[j])
        out.append(
            {
                "box": [float(v) for v in boxes[j]],
                "score": float(scores[j]),
                "class_id": c,
                "label": labels[c] if 0 <= c < len(labels) else str(c),
            }
        )
    return out


def _as_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value
