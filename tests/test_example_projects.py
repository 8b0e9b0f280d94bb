"""The projects kept beside Slipway's own examples, checked as a user would write them.

- examples/street: a PyTorch detector of realistic size in its own folder (model code, weights,
  COCO golden set, release.toml). Built from its entry point and weights, it must be what its
  README promises and detect on its golden images at least as well as its release gate asks.
- tests/projects/tf-only: a TensorFlow-only project; its plan has no wheels.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tomllib

from slipway.cli import main

ROOT = Path(__file__).resolve().parent.parent
STREET = ROOT / "examples" / "street"
TF_ONLY = ROOT / "tests" / "projects" / "tf-only"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _copy(project: Path, tmp_path: Path) -> Path:
    """The project in a folder of its own outside the checkout, as a user's repository would be."""
    dest = tmp_path / project.name
    shutil.copytree(project, dest, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    return dest


def test_tf_only_project_plans_without_wheels(tmp_path, capsys):
    project = _copy(TF_ONLY, tmp_path)
    out = tmp_path / "dist"
    code = main(["plan", "--config", str(project / "release.toml"), "--event", "local", "--sha", SHA,
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    plan = json.loads(captured.out)
    assert plan["matrix"]["wheels"] == []
    assert [e["model"] for e in plan["matrix"]["export"]] == ["blobs"]
    assert {e["variant"] for e in plan["matrix"]["images"]} == {"tensorflow-cpu", "tfserving-client"}
    assert all(e["kind"] != "wheel" for e in plan["matrix"]["smoke"])
    assert all(e["kind"] != "wheels" for e in plan["matrix"]["publish"])


def test_tf_only_project_uses_no_pytorch():
    """Its code is its own: no PyTorch, and nothing of Slipway's example models."""
    for path in TF_ONLY.rglob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "model_export" not in text, path


# -- the street example -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def street():
    """release.toml's model entry, the model built from its entry point and weights, the golden set."""
    torch = pytest.importorskip("torch")
    from model_export.torch_export import PreparedTorch

    config = tomllib.loads((STREET / "release.toml").read_text())
    model_cfg = config["models"][0]
    sys.path.insert(0, str(STREET))
    try:
        spec = model_cfg["input"]
        cfg = SimpleNamespace(
            name=model_cfg["name"], entry_point=model_cfg["entry-point"], weights=STREET / model_cfg["weights"],
            labels=tuple(model_cfg["labels"]), output=SimpleNamespace(**{
                k.replace("-", "_"): v for k, v in model_cfg["output"].items()}),
        )
        from model_export.preprocess import InputSpec

        torch.set_num_threads(2)
        # Slipway's own loader: entry point, strict weights, the output contract on the input spec.
        prepared = PreparedTorch(cfg, cfg.name, InputSpec.from_any(spec), log=lambda _: None)
        coco = json.loads((STREET / model_cfg["golden"]["annotations"]).read_text())
        images_dir = STREET / model_cfg["golden"]["images"]
        yield SimpleNamespace(config=model_cfg, cfg=cfg, prepared=prepared, coco=coco, images_dir=images_dir,
                              module=importlib.import_module(model_cfg["entry-point"].partition(":")[0]))
    finally:
        sys.path.remove(str(STREET))
        for name in [m for m in sys.modules if m == "streetnet" or m.startswith("streetnet.")]:
            del sys.modules[name]


def _golden(street) -> tuple[list[np.ndarray], list[list[dict]]]:
    from PIL import Image

    labels = list(street.config["labels"])
    names = {c["id"]: c["name"] for c in street.coco["categories"]}
    images, truth = [], []
    for entry in street.coco["images"]:
        image = np.asarray(Image.open(street.images_dir / entry["file_name"]).convert("RGB"))
        assert image.shape[:2] == (entry["height"], entry["width"])
        images.append(image)
        truth.append([{"box": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                       "class_id": labels.index(names[a["category_id"]])}
                      for a in street.coco["annotations"] if a["image_id"] == entry["id"]])
    return images, truth


@pytest.mark.slow
def test_street_model_is_of_realistic_size(street):
    spec = street.config["input"]
    assert street.prepared.parameters >= 2_000_000
    assert max(spec["height"], spec["width"]) >= 320 and spec["height"] != spec["width"]
    assert (spec["height"], spec["width"]) == (street.module.INPUT_HEIGHT, street.module.INPUT_WIDTH)
    assert len(street.config["labels"]) >= 5 and tuple(street.config["labels"]) == street.module.LABELS
    assert street.cfg.weights.stat().st_size < 10 * 1024 * 1024
    # Golden set: 8-16 small files, COCO categories named exactly as the model's labels.
    assert 8 <= len(street.coco["images"]) <= 16
    assert sorted(c["name"] for c in street.coco["categories"]) == sorted(street.config["labels"])
    assert all(p.stat().st_size < 200_000 for p in street.images_dir.iterdir())


@pytest.mark.slow
def test_street_model_scripts_and_matches_eager(street):
    import torch

    model = street.prepared.model
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, street.config["input"]["height"], street.config["input"]["width"])
    with torch.inference_mode():
        for want, got in zip(model(x), scripted(x), strict=True):
            assert want.shape == got.shape and torch.allclose(want.float(), got.float(), atol=1e-4)


@pytest.mark.slow
def test_street_model_detects_on_its_golden_set(street):
    from model_export.compare import mean_average_precision

    images, truth = _golden(street)
    # Slipway's eager reference (its preprocessing and postprocessing, the release's threshold):
    # what smoke's accuracy gate scores the deployed model on.
    detections = street.prepared.reference(images)
    m, per_class = mean_average_precision(truth, detections, len(street.config["labels"]), iou=0.5)
    assert m >= street.config["min-map50"], (m, per_class)
    assert all(len(d) > 0 for d in detections)


@pytest.mark.slow
def test_street_model_exports_to_onnx_and_matches_eager(street, tmp_path):
    """Its GroupNorm heads through Slipway's ONNX exporter, then ONNX Runtime against eager."""
    import onnxruntime as ort

    from model_export.compare import compare_detections
    from model_export.postprocess import postprocess_batch
    from model_export.preprocess import preprocess_batch

    images, _ = _golden(street)
    info = street.prepared.export("onnx", tmp_path, images)
    session = ort.InferenceSession(str(tmp_path / info["file"]), providers=["CPUExecutionProvider"])
    x = preprocess_batch(images, street.prepared.spec)
    boxes, scores, classes = session.run(None, {info["input"]: x})
    spec = street.prepared.spec
    got = postprocess_batch(boxes, scores, classes, input_size=(spec.height, spec.width),
                            image_sizes=[im.shape[:2] for im in images], output=street.cfg.output,
                            labels=street.cfg.labels)
    want = street.prepared.reference(images)
    assert sum(len(d) for d in want) > 0
    for w, g in zip(want, got, strict=True):
        result = compare_detections(w, g, iou=0.99, score=1e-4)
        assert result.ok, result.table()
