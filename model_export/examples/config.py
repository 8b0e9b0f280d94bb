"""Configuration of the example models, as the attribute objects ``export_model`` reads.

release.toml describes the same models for the real pipeline; this lets tests and scripts export
an example without the slipway CLI.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from model_export.examples.shapes import LABELS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_EXAMPLES = {
    "pytorch": {
        "name": "shapes-torch",
        "entry_point": "model_export.examples.torch_detector:build_model",
        "weights": WEIGHTS_DIR / "shapes_torch.pt",
        "exporters": ("torchscript", "onnx"),
    },
    "tensorflow": {
        "name": "shapes-tf",
        "entry_point": "model_export.examples.tf_detector:build_model",
        "weights": WEIGHTS_DIR / "shapes_tf.weights.h5",
        "exporters": ("saved_model", "frozen_graph"),
    },
}


def example_config(framework: str, **overrides: Any) -> SimpleNamespace:
    """The example model of ``framework``; ``input``/``output`` overrides are merged key by key."""
    base = _EXAMPLES[framework]
    input_spec = {"height": 128, "width": 128, "channels": 3, "dtype": "uint8", "resize": "stretch",
                  "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), **overrides.pop("input", {})}
    output_spec = {"score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 50, **overrides.pop("output", {})}
    fields = {
        "name": base["name"], "framework": framework, "entry_point": base["entry_point"],
        "weights": base["weights"], "labels": LABELS, "input": SimpleNamespace(**input_spec),
        "output": SimpleNamespace(**output_spec), "exporters": base["exporters"], "torchscript_method": "script",
        "golden": SimpleNamespace(hook="model_export.examples.shapes:golden", count=8, seed=20_201_215),
        "min_map50": None,
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)
