"""Postprocessing of a detector's top-K candidates (the contract in docs/architecture.md).

Drop scores below the threshold, class-aware greedy NMS, keep at most ``max_detections`` sorted by
score descending, scale boxes from model-input pixels back to the original image and clip.
The C++ runtime implements the same algorithm; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OutputSpec:
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 50

    @classmethod
    def from_any(cls, spec: Any) -> OutputSpec:
        if isinstance(spec, OutputSpec):
            return spec
        get = spec.get if isinstance(spec, Mapping) else lambda k, d=None: getattr(spec, k, d)
        return cls(
            score_threshold=float(get("score_threshold", 0.3)),
            nms_iou=float(get("nms_iou", 0.5)),
            max_detections=int(get("max_detections", 50)),
        )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes a [A, 4] and b [B, 4] (x1, y1, x2, y2)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-aware greedy NMS; returns kept indices in descending score order.

    A box is suppressed when its IoU with a kept box of the same class is strictly greater than
    ``iou_threshold``. Ties in score keep the earlier candidate (stable sort).
    """
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order
    iou = box_iou(boxes[order], boxes[order])
    same = classes[order][:, None] == classes[order][None, :]
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= same[i] & (iou[i] > iou_threshold)
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    output: Any,
    labels: Sequence[str],
) -> list[dict]:
    """Candidates of ONE image -> detections.

    ``boxes`` [K, 4] in model-input pixels, ``scores`` [K], ``classes`` [K]; ``input_size`` and
    ``image_size`` are (height, width) of the model input and of the original image.
    """
    spec = OutputSpec.from_any(output)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    mask = scores >= spec.score_threshold
    boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
    keep = nms(boxes, scores, classes, spec.nms_iou)[: spec.max_detections]
    in_h, in_w = input_size
    img_h, img_w = image_size
    scale = np.array([img_w / in_w, img_h / in_h, img_w / in_w, img_h / in_h], dtype=np.float32)
    limit = np.array([img_w, img_h, img_w, img_h], dtype=np.float32)
    out = []
    for i in keep:
        box = np.clip(boxes[i] * scale, 0.0, limit)
        c = int(classes[i])
        out.append({
            "box": [float(v) for v in box],
            "score": float(scores[i]),
            "class_id": c,
            "label": labels[c] if 0 <= c < len(labels) else str(c),
        })
    return out


def expand_candidates(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-box class scores -> the candidates layout of ``postprocess``.

    ``boxes`` [N, M, 4] with one score per class ``scores`` [N, M, C] (what a Keras detector
    returns before NMS) -> boxes [N, M*C, 4], scores [N, M*C], classes [N, M*C]: each
    (box, class) pair is one candidate.
    """
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    n, m, c = scores.shape
    return (
        np.repeat(boxes[:, :, None, :], c, axis=2).reshape(n, m * c, 4),
        scores.reshape(n, m * c),
        np.tile(np.arange(c, dtype=np.int64), (n, m)),
    )


def postprocess_batch(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    *,
    input_size: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]],
    output: Any,
    labels: Sequence[str],
) -> list[list[dict]]:
    """The same for a batch: ``boxes`` [N, K, 4] etc., one (height, width) per image."""
    return [
        postprocess(boxes[i], scores[i], classes[i], input_size=input_size, image_size=image_sizes[i],
                    output=output, labels=labels)
        for i in range(len(image_sizes))
    ]
