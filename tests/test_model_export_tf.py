"""TensorFlow export of the shapes example: SavedModel + frozen graph, verification, bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from model_export.errors import ExportError
from model_export.examples import shapes
from model_export.examples.config import example_config
from model_export.export import export_model

pytestmark = pytest.mark.tensorflow
tf = pytest.importorskip("tensorflow", reason="TensorFlow is the optional tensorflow extra (pip install .[tensorflow]); make test installs it")


@pytest.fixture(scope="module")
def tf_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "shapes-tf"
    manifest = export_model(example_config("tensorflow"), out, version="1.2.3", git_commit="e" * 40,
                            log=lambda _: None)
    return out, manifest


def test_tf_export_writes_the_contract_folder(tf_export):
    out, manifest = tf_export
    assert json.loads((out / "model.json").read_text()) == manifest
    assert {p.name for p in out.iterdir()} == {"model.json", "saved_model", "frozen_graph.pb", "golden"}
    assert manifest["framework"] == "tensorflow" and manifest["framework_version"] == tf.__version__
    assert manifest["output"]["format"] == "detections"
    assert manifest["parameters"] > 0 and manifest["labels"] == list(shapes.LABELS)
    assert manifest["exporters"]["saved_model"]["signature"] == "serving_default"
    assert set(manifest["exporters"]["frozen_graph"]["outputs"]) == {"boxes", "scores", "classes", "num_detections"}
    saved = manifest["files"]["saved_model"]
    assert any(f["path"] == "saved_model/saved_model.pb" for f in saved["files"])
    for f in saved["files"] + [manifest["files"]["frozen_graph"]]:
        data = (out / f["path"]).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]


def test_tf_verification_passed_for_both_formats(tf_export):
    _, manifest = tf_export
    runs = {r["format"]: r for r in manifest["verification"]["runs"]}
    assert set(runs) == {"saved_model", "frozen_graph"}
    for r in runs.values():
        assert r["ok"] and r["min_iou"] >= 0.99 and r["max_score_diff"] <= 1e-4 and r["detections"] > 0


def test_saved_model_signature_takes_uint8_images_of_any_size(tf_export):
    out, _ = tf_export
    signature = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, 3]
    ref = json.loads((out / "golden" / "reference.json").read_text())["images"]
    entry = next(e for e in ref if e["detections"])
    image = shapes.make_sample(20_201_215 + int(entry["file"][:3])).image  # the example's golden hook
    batch = signature(images=tf.constant(np.stack([image, image])))
    assert batch["boxes"].shape[0] == 2 and batch["num_detections"].dtype == tf.int32
    n = int(batch["num_detections"][1])
    assert n == len(entry["detections"])
    boxes = batch["boxes"][1, :n].numpy()
    assert np.all(boxes[:, 2] <= image.shape[1]) and np.all(boxes[:, 3] <= image.shape[0])
    assert np.allclose(boxes, [d["box"] for d in entry["detections"]], atol=0.05)


def _fails_cleanly(tmp_path: Path, cfg, *fragments: str) -> None:
    parent = tmp_path / "models"
    parent.mkdir()
    with pytest.raises(ExportError) as info:
        export_model(cfg, parent / cfg.name, version="0", git_commit="x", log=lambda _: None)
    message = str(info.value)
    assert cfg.name in message
    for fragment in fragments:
        assert fragment in message, message
    assert list(parent.iterdir()) == []


def test_tf_missing_weights(tmp_path):
    missing = tmp_path / "none.weights.h5"
    _fails_cleanly(tmp_path, example_config("tensorflow", weights=missing), str(missing), "weights file not found")


def test_tf_corrupt_weights(tmp_path):
    data = example_config("tensorflow").weights.read_bytes()
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(data[: len(data) // 3])
    _fails_cleanly(tmp_path, example_config("tensorflow", weights=corrupt), str(corrupt), "cannot read the weights file")


def test_tf_weights_of_a_different_model(tmp_path):
    from model_export.examples.tf_detector import build_model

    other = tmp_path / "narrow.weights.h5"
    build_model(width=16).save_weights(str(other))
    _fails_cleanly(tmp_path, example_config("tensorflow", weights=other), str(other), "weights do not fit the model")


def test_tf_input_spec_with_the_wrong_channel_count(tmp_path):
    cfg = example_config("tensorflow", input={"channels": 1, "mean": (0.5,), "std": (0.25,)})
    _fails_cleanly(tmp_path, cfg, "shapes_tf.weights.h5", "input spec says 1 channels", "model's input has 3")
