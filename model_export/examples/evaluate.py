"""Detection quality of the example models on held-out synthetic images (mAP@0.5)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from model_export.compare import mean_average_precision
from model_export.examples import shapes
from model_export.postprocess import OutputSpec
from model_export.preprocess import InputSpec

# The input every example model is trained for; release.toml should say the same.
EXAMPLE_INPUT = InputSpec(height=128, width=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
# mAP is measured over the whole precision/recall curve, so with a low threshold; deployments
# use their own (higher) threshold from release.toml.
EVAL_OUTPUT = OutputSpec(score_threshold=0.05, nms_iou=0.5, max_detections=50)

Detect = Callable[[Sequence[np.ndarray]], list[list[dict]]]


def evaluate_map(detect: Detect, count: int = 200, offset: int = 0, batch: int = 32) -> tuple[float, dict]:
    """mAP@0.5 of ``detect`` (images -> detections per image) on ``count`` held-out images."""
    ground_truth, detections = [], []
    seeds = list(shapes.held_out_seeds(count, offset))
    for start in range(0, len(seeds), batch):
        chunk = [shapes.make_sample(s) for s in seeds[start : start + batch]]
        detections.extend(detect([s.image for s in chunk]))
        ground_truth.extend(s.ground_truth() for s in chunk)
    m, per_class = mean_average_precision(ground_truth, detections, len(shapes.LABELS), iou=0.5)
    return m, {shapes.LABELS[c]: ap for c, ap in per_class.items()}


def torch_detector(model, input_spec=EXAMPLE_INPUT, output_spec=EVAL_OUTPUT) -> Detect:
    """Eager PyTorch model -> Detect, with the numpy pre/postprocessing of the contract."""
    import torch

    from model_export.postprocess import postprocess_batch
    from model_export.preprocess import preprocess_batch

    spec = InputSpec.from_any(input_spec)

    def detect(images: Sequence[np.ndarray]) -> list[list[dict]]:
        x = torch.from_numpy(preprocess_batch(images, spec))
        with torch.inference_mode():
            boxes, scores, classes = model(x)
        return postprocess_batch(
            boxes.numpy(), scores.numpy(), classes.numpy(), input_size=(spec.height, spec.width),
            image_sizes=[im.shape[:2] for im in images], output=output_spec, labels=shapes.LABELS,
        )

    return detect
