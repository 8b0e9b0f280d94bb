"""Detection quality of the example models on held-out synthetic images, printed with the results."""

from __future__ import annotations

import pytest

from model_export.examples.config import example_config
from model_export.examples.evaluate import evaluate_map

HELD_OUT = 200
MIN_MAP = 0.9


def _report(capsys, record_property, name: str, value: float, per_class: dict) -> None:
    record_property(f"{name}_map50", round(value, 4))
    classes = ", ".join(f"{k} {v:.3f}" for k, v in per_class.items())
    with capsys.disabled():
        print(f"\n[mAP] {name}: mAP@0.5 = {value:.4f} on {HELD_OUT} held-out images ({classes})")


def test_torch_example_map(capsys, record_property):
    import torch

    from model_export.examples.evaluate import torch_detector
    from model_export.examples.torch_detector import build_model

    torch.set_num_threads(2)
    model = build_model()
    model.load_state_dict(torch.load(example_config("pytorch").weights, weights_only=True))
    value, per_class = evaluate_map(torch_detector(model.eval()), count=HELD_OUT)
    _report(capsys, record_property, "shapes-torch", value, per_class)
    assert value >= MIN_MAP, f"shapes-torch mAP@0.5 {value:.4f} < {MIN_MAP} ({per_class})"


@pytest.mark.tensorflow
def test_tf_example_map(capsys, record_property):
    pytest.importorskip("tensorflow", reason="TensorFlow is the optional tensorflow extra (pip install .[tensorflow]); make test installs it")
    from model_export.examples.tf_detector import load_example, tf_detector

    value, per_class = evaluate_map(tf_detector(load_example()), count=HELD_OUT)
    _report(capsys, record_property, "shapes-tf", value, per_class)
    assert value >= MIN_MAP, f"shapes-tf mAP@0.5 {value:.4f} < {MIN_MAP} ({per_class})"
