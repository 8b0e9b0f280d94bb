"""model_export: preprocessing, postprocessing, matching, and the PyTorch export + verification gate."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_export import artifacts
from model_export.compare import average_precision, compare_detections, mean_average_precision
from model_export.errors import ExportError
from model_export.examples import shapes
from model_export.examples.config import example_config
from model_export.examples.torch_detector import build_model
from model_export.export import export_model, run_verification
from model_export.postprocess import nms, postprocess
from model_export.preprocess import InputSpec, preprocess, preprocess_batch, preprocess_torch

SPEC = InputSpec(height=128, width=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
LABELS = shapes.LABELS


def det(box, score=0.9, class_id=0):
    return {"box": list(map(float, box)), "score": score, "class_id": class_id, "label": LABELS[class_id]}


# -- synthetic data ---------------------------------------------------------------------------------


def test_shapes_are_determined_by_the_seed():
    a, b, c = shapes.make_sample(7), shapes.make_sample(7), shapes.make_sample(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image) or not np.array_equal(a.boxes, c.boxes)


def test_shapes_have_valid_boxes_and_several_sizes():
    sizes = set()
    for s in shapes.samples(range(40)):
        h, w = s.image.shape[:2]
        sizes.add((w, h))
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
        assert 1 <= len(s.boxes) <= 4 and len(s.boxes) == len(s.classes)
        assert np.all(s.boxes[:, 0] >= 0) and np.all(s.boxes[:, 2] <= w) and np.all(s.boxes[:, 3] <= h)
        assert np.all(s.boxes[:, 2] > s.boxes[:, 0]) and np.all(s.boxes[:, 3] > s.boxes[:, 1])
        assert set(s.classes.tolist()) <= {0, 1, 2}
    assert len(sizes) >= 3 and any(size != (128, 128) for size in sizes)


# -- preprocessing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(120, 160), (160, 192), (128, 128), (77, 301), (64, 64)])
def test_numpy_preprocessing_matches_torch_interpolate(h, w):
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = preprocess(image, SPEC)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    want = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False, antialias=False)
    want = ((want / 255 - 0.5) / 0.25).numpy()
    assert got.shape == (1, 3, 128, 128) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - preprocess_torch(image, SPEC).numpy()).max() < 1e-4


def _preprocess_by_the_formula(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The contract written out the slow way: every output pixel from its four source pixels, in
    float32, rows blended first, then columns, then (x / 255 - mean) / std."""
    f32 = np.float32

    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out, dtype=f32) + f32(0.5)) * f32(n_in / n_out) - f32(0.5), f32(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        w1 = (src - i0.astype(f32)).astype(f32)
        return i0, np.minimum(i0 + 1, n_in - 1), (f32(1) - w1).astype(f32), w1

    (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = weights(image.shape[0], spec.height), weights(image.shape[1], spec.width)
    out = np.empty((3, spec.height, spec.width), dtype=f32)
    px = image.astype(f32)
    for c in range(3):
        for i in range(spec.height):
            row = px[y0[i], :, c] * wy0[i] + px[y1[i], :, c] * wy1[i]
            out[c, i] = row[x0] * wx0 + row[x1] * wx1
        out[c] = (out[c] / f32(255) - f32(spec.mean[c])) / f32(spec.std[c])
    return out[None]


@pytest.mark.parametrize(("h", "w"), [(96, 160), (128, 128), (300, 40), (40, 300), (1, 1), (129, 257), (64, 1000)])
def test_preprocessing_equals_the_formula_bit_for_bit_at_every_size(h, w):
    # The fast path gathers bytes before converting, and narrows to the columns it reads for an
    # image over twice the model's width (64x1000): the same float32 operations in the same order.
    spec = InputSpec(height=64, width=96, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = np.random.default_rng(h * 7 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(image, spec), _preprocess_by_the_formula(image, spec))


def test_preprocessing_rejects_non_rgb_images():
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess(np.zeros((10, 10), dtype=np.uint8), SPEC)
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess(np.zeros((10, 10, 3), dtype=np.float32), SPEC)


def test_preprocess_batch_stacks_images_of_different_sizes():
    images = [shapes.make_sample(s).image for s in range(3)]
    batch = preprocess_batch(images, SPEC)
    assert batch.shape == (3, 3, 128, 128)
    assert np.array_equal(batch[1], preprocess(images[1], SPEC)[0])


# -- postprocessing ---------------------------------------------------------------------------------


def test_postprocess_threshold_nms_per_class_limit_scale_and_clip():
    boxes = np.array(
        [
            [10, 10, 50, 50],  # kept
            [12, 12, 52, 52],  # same class, IoU ~0.82 with the first: suppressed
            [11, 11, 51, 51],  # other class, same place: kept (class-aware)
            [100, 100, 140, 140],  # reaches past the 128 input and past the image after scaling: clipped
            [60, 60, 70, 70],  # below threshold
        ],
        dtype=np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1], dtype=np.float32)
    classes = np.array([0, 0, 1, 2, 0])
    out = postprocess(
        boxes,
        scores,
        classes,
        input_size=(128, 128),
        image_size=(64, 256),
        output={"score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 50},
        labels=LABELS,
    )
    assert [d["score"] for d in out] == pytest.approx([0.9, 0.7, 0.6])
    assert [d["label"] for d in out] == ["circle", "square", "triangle"]
    assert out[0]["box"] == pytest.approx([20, 5, 100, 25])  # x * 2, y * 0.5
    assert out[2]["box"] == pytest.approx([200, 50, 256, 64])  # clipped to the 256x64 image
    limited = postprocess(
        boxes,
        scores,
        classes,
        input_size=(128, 128),
        image_size=(128, 128),
        output={"score_threshold": 0.3, "nms_iou": 0.5, "max_detections": 2},
        labels=LABELS,
    )
    assert [d["score"] for d in limited] == pytest.approx([0.9, 0.7])


def test_nms_threshold_is_strict():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=np.float32)  # IoU exactly 1/3
    keep_equal = nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 1 / 3)
    keep_below = nms(boxes, np.array([0.9, 0.8]), np.array([0, 0]), 0.3)
    assert keep_equal.tolist() == [0, 1] and keep_below.tolist() == [0]


# -- matching and mAP -------------------------------------------------------------------------------


def test_compare_identical_and_slightly_different():
    ref = [det([0, 0, 10, 10], 0.9), det([20, 20, 40, 40], 0.8, 1)]
    same = compare_detections(ref, list(reversed(ref)))
    assert same.ok and same.min_iou == 1.0 and same.max_score_diff == 0.0 and same.matched == 2
    moved = compare_detections(ref, [det([0, 0, 10, 11], 0.9), det([20, 20, 40, 40], 0.80005, 1)])
    assert not moved.ok and moved.min_iou == pytest.approx(100 / 110)
    assert moved.max_score_diff == pytest.approx(5e-5) and "IoU 0.90909" in moved.table()
    scored = compare_detections(ref, [det([0, 0, 10, 10], 0.9), det([20, 20, 40, 40], 0.81, 1)])
    assert not scored.ok and scored.max_score_diff == pytest.approx(0.01)


def test_compare_reports_unmatched_and_wrong_class():
    ref = [det([0, 0, 10, 10], 0.9, 0)]
    result = compare_detections(ref, [det([0, 0, 10, 10], 0.9, 2)])
    assert not result.ok and {u["side"] for u in result.unmatched} == {"ref", "got"}
    assert compare_detections([], []).ok


def test_average_precision_hand_computed():
    gt = [[{"box": [0, 0, 10, 10], "class_id": 0}], [{"box": [0, 0, 10, 10], "class_id": 0}]]
    perfect = [[det([0, 0, 10, 10], 0.9)], [det([0, 0, 10, 10], 0.8)]]
    assert average_precision(gt, perfect, 0) == pytest.approx(1.0)
    # A false positive ranked first: precision 0 at rank 1, 1/2 and 2/3 at the two hits.
    # Interpolated: recall 0.5 at precision 2/3, recall 1.0 at 2/3 -> AP = 2/3.
    with_fp = [[det([0, 0, 10, 10], 0.8), det([50, 50, 60, 60], 0.95)], [det([0, 0, 10, 10], 0.7)]]
    assert average_precision(gt, with_fp, 0) == pytest.approx(2 / 3)
    missed = [[det([0, 0, 10, 10], 0.8)], []]
    assert average_precision(gt, missed, 0) == pytest.approx(0.5)
    assert average_precision(gt, perfect, 1) is None
    m, per_class = mean_average_precision(gt, with_fp, 3)
    assert m == pytest.approx(2 / 3) and set(per_class) == {0}


# -- the detector -----------------------------------------------------------------------------------


def test_detector_scripts_and_matches_eager():
    model = build_model().eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        eager, script = model(x), scripted(x)
    boxes, scores, classes = eager
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100) and classes.dtype == torch.int64
    for a, b in zip(eager, script, strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


# -- export -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "shapes-torch"
    logs: list[str] = []
    manifest = export_model(
        example_config("pytorch"), out, version="1.2.3", git_commit="f" * 40, log=logs.append
    )
    return out, manifest, logs


def test_export_writes_the_contract_folder(torch_export):
    out, manifest, _ = torch_export
    assert json.loads((out / "model.json").read_text()) == manifest
    assert {p.name for p in out.iterdir()} == {"model.json", "model.torchscript.pt", "model.onnx", "golden"}
    assert manifest["name"] == "shapes-torch" and manifest["version"] == "1.2.3"
    assert (
        manifest["framework"] == "pytorch"
        and manifest["framework_version"] == torch.__version__.split("+")[0]
    )
    assert manifest["output"] == {
        "format": "candidates",
        "score_threshold": 0.3,
        "nms_iou": 0.5,
        "max_detections": 50,
    }
    assert manifest["input"]["height"] == 128 and manifest["input"]["mean"] == [0.5, 0.5, 0.5]
    assert manifest["labels"] == list(LABELS) and manifest["git_commit"] == "f" * 40
    assert manifest["parameters"] == sum(p.numel() for p in build_model().parameters())
    assert (
        manifest["exporters"]["torchscript"]["method"] == "script"
        and manifest["exporters"]["torchscript"]["frozen"]
    )
    assert manifest["exporters"]["onnx"]["dynamic_axes"] == {"batch": 0}


def test_manifest_checksums_match_the_files(torch_export):
    out, manifest, _ = torch_export
    listed = []
    for entry in manifest["files"].values():
        for f in entry.get("files", [entry]):
            data = (out / f["path"]).read_bytes()
            assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
            listed.append(f["path"])
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"model.json"}
    assert set(listed) == on_disk


def test_golden_reference_has_ground_truth_and_eager_detections(torch_export):
    out, manifest, _ = torch_export
    ref = json.loads((out / manifest["golden"]["reference"]).read_text())
    assert len(ref["images"]) == 8
    assert sum(len(e["detections"]) for e in ref["images"]) >= 8
    for e in ref["images"]:
        sample = shapes.make_sample(20_201_215 + int(e["file"][:3]))
        assert e["source"] == f"model_export.examples.shapes:golden#{int(e['file'][:3])}"
        assert (e["height"], e["width"]) == sample.image.shape[:2]
        assert e["ground_truth"] == [{**g, "label": LABELS[g["class_id"]]} for g in sample.ground_truth()]
        assert np.array_equal(artifacts.read_golden(out)[0][int(e["file"][:3])], sample.image)


def test_verification_passed_for_every_format(torch_export):
    _, manifest, logs = torch_export
    runs = {r["format"]: r for r in manifest["verification"]["runs"]}
    assert set(runs) == {"torchscript", "onnx"} and manifest["verification"]["ok"]
    for r in runs.values():
        assert r["ok"] and r["min_iou"] >= 0.99 and r["max_score_diff"] <= 1e-4 and r["detections"] > 0
    assert any("verifying" in line for line in logs)


def test_onnx_has_a_dynamic_batch(torch_export):
    import onnxruntime as ort

    out, _, _ = torch_export
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    x = preprocess_batch([shapes.make_sample(s).image for s in range(3)], SPEC)
    boxes, scores, classes = session.run(None, {"images": x})
    assert boxes.shape == (3, 100, 4) and scores.shape == (3, 100) and classes.shape == (3, 100)


def test_verification_gate_fails_on_a_mismatch(torch_export, tmp_path):
    out, _, _ = torch_export
    tampered = tmp_path / "shapes-torch"
    shutil.copytree(out, tampered)
    ref_path = tampered / "golden" / "reference.json"
    ref = json.loads(ref_path.read_text())
    first = next(e for e in ref["images"] if e["detections"])
    first["detections"][0]["box"][2] += 3.0
    ref_path.write_text(json.dumps(ref))
    with pytest.raises(ExportError) as info:
        run_verification(tampered, ["torchscript", "onnx"], "shapes-torch")
    message = str(info.value)
    assert "shapes-torch" in message and "verification failed" in message
    assert "model.torchscript.pt" in message and f"image {first['file']}" in message and "differs" in message


def test_trace_is_accepted_for_a_model_without_data_dependent_control_flow(tmp_path):
    cfg = example_config("pytorch", exporters=("torchscript",), torchscript_method="trace",
                         golden=SimpleNamespace(hook="model_export.examples.shapes:golden", count=4, seed=1))
    manifest = export_model(cfg, tmp_path / "m", version="0", git_commit="x", log=lambda _: None)
    assert manifest["exporters"]["torchscript"]["method"] == "trace" and manifest["verification"]["ok"]


def test_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(
            example_config("pytorch"), tmp_path / "m", version="0", git_commit="x", log=lambda _: None
        )
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


# -- bad inputs -------------------------------------------------------------------------------------

BAD_MODELS = {
    "broken_import": """
        import slipway_no_such_package_for_tests  # noqa: F401
        def build_model():
            raise AssertionError("never reached")
    """,
    "unscriptable": """
        from model_export.examples.torch_detector import ShapesDetector
        class Unscriptable(ShapesDetector):
            def forward(self, x):
                # A generator expression: fine in Python, not compilable by TorchScript.
                return tuple(t for t in ShapesDetector.forward(self, x))
        def build_model():
            return Unscriptable()
    """,
    "data_dependent": """
        from model_export.examples.torch_detector import ShapesDetector
        class DataDependent(ShapesDetector):
            def forward(self, x):
                boxes, scores, classes = ShapesDetector.forward(self, x)
                if x.mean() > 0:
                    scores = scores * 0.5
                return boxes, scores, classes
        def build_model():
            return DataDependent()
    """,
}


@pytest.fixture
def bad_models(tmp_path, monkeypatch):
    """Modules with bad models, importable under names unique to this test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    names = {}
    for kind, source in BAD_MODELS.items():
        name = f"bad_{kind}_{tmp_path.name.replace('-', '_')}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        names[kind] = name
    monkeypatch.syspath_prepend(str(folder))
    return names


def _assert_fails_cleanly(tmp_path: Path, cfg, *fragments: str) -> str:
    parent = tmp_path / "models"
    parent.mkdir()
    with pytest.raises(ExportError) as info:
        export_model(cfg, parent / cfg.name, version="0", git_commit="x", log=lambda _: None)
    message = str(info.value)
    assert cfg.name in message
    for fragment in fragments:
        assert fragment in message, message
    assert list(parent.iterdir()) == [], "a failed export left files behind"
    return message


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    cfg = example_config("pytorch", weights=missing)
    _assert_fails_cleanly(tmp_path, cfg, str(missing), "weights file not found")


def test_entry_point_that_does_not_import(tmp_path, bad_models):
    cfg = example_config("pytorch", entry_point=f"{bad_models['broken_import']}:build_model")
    _assert_fails_cleanly(
        tmp_path,
        cfg,
        f"{bad_models['broken_import']}.py",
        "does not import",
        "slipway_no_such_package_for_tests",
    )


def test_entry_point_module_that_does_not_exist(tmp_path):
    cfg = example_config("pytorch", entry_point="model_export.examples.no_such_module:build_model")
    _assert_fails_cleanly(tmp_path, cfg, "model_export.examples.no_such_module", "does not import")


def test_model_that_cannot_be_scripted(tmp_path, bad_models):
    cfg = example_config("pytorch", entry_point=f"{bad_models['unscriptable']}:build_model")
    _assert_fails_cleanly(
        tmp_path, cfg, f"{bad_models['unscriptable']}.py", "cannot be compiled by torch.jit.script"
    )


def test_corrupt_weights_file(tmp_path):
    good = example_config("pytorch").weights.read_bytes()
    corrupt = tmp_path / "truncated.pt"
    corrupt.write_bytes(good[: len(good) // 2])
    cfg = example_config("pytorch", weights=corrupt)
    _assert_fails_cleanly(tmp_path, cfg, str(corrupt), "cannot read the weights file")


def test_weights_of_another_model(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    cfg = example_config("pytorch", weights=other)
    _assert_fails_cleanly(tmp_path, cfg, str(other), "weights do not fit the model", "Missing key")


def test_input_spec_with_the_wrong_channel_count(tmp_path):
    cfg = example_config("pytorch", input={"channels": 1, "mean": (0.5,), "std": (0.25,)})
    _assert_fails_cleanly(
        tmp_path, cfg, "shapes_torch.pt", "input spec says 1 channels", "first convolution expects 3"
    )


def test_input_spec_too_small_for_the_model(tmp_path):
    cfg = example_config("pytorch", input={"height": 32, "width": 32})
    _assert_fails_cleanly(tmp_path, cfg, "shapes_torch.pt", "model fails on the input spec [N, 3, 32, 32]")


def test_trace_refused_for_data_dependent_control_flow(tmp_path, bad_models):
    cfg = example_config(
        "pytorch",
        entry_point=f"{bad_models['data_dependent']}:build_model",
        torchscript_method="trace",
        exporters=("torchscript",),
    )
    _assert_fails_cleanly(
        tmp_path,
        cfg,
        f"{bad_models['data_dependent']}.py",
        "'trace' is refused",
        "data-dependent",
        "use torchscript_method = 'script'",
    )


def test_exporter_not_valid_for_the_framework(tmp_path):
    cfg = example_config("pytorch", exporters=("saved_model",))
    _assert_fails_cleanly(tmp_path, cfg, "not valid for pytorch")
