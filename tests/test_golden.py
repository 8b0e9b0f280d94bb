"""A model's own golden set: release.toml's ``golden`` (COCO folder or hook), what plan and export
refuse, accuracy against the ground truth (mAP@0.5, precision, recall) and the ``min-map50`` gate,
and that an export never goes stale: a change to the project's model code re-exports, and publish
refuses an export that no longer matches its sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from plans import bare_plan

from model_export import golden as golden_mod
from model_export.compare import accuracy, precision_recall
from model_export.errors import ExportError
from model_export.examples import shapes
from slipway import config as config_mod
from slipway import records
from slipway.config import load_config
from slipway.context import StageContext
from slipway.errors import CheckError, ConfigError, PublishError

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "model_export" / "examples" / "weights" / "shapes_torch.pt"
HOOK = "model_export.examples.shapes:golden"


def coco_folder(folder: Path, count: int = 5, *, seed: int = 4242, suffix: str = ".png",
                sizes: tuple[tuple[int, int], ...] = ((192, 128), (128, 176), (160, 160))) -> Path:
    """A COCO golden folder rendered with the shapes generator, images of several non-square
    sizes; returns the annotations file (beside ``images/``)."""
    samples = []
    for i in range(count):
        s = shapes.make_sample(seed + i, size=sizes[i % len(sizes)])
        samples.append((s.image, [{"box": [float(v) for v in b], "label": shapes.LABELS[int(c)]}
                                  for b, c in zip(s.boxes, s.classes, strict=True)]))
    return golden_mod.write_coco(folder, samples, shapes.LABELS, suffix=suffix)


def release_toml(folder: Path, golden: str, *, labels: str = '["circle", "square", "triangle"]',
                 entry_point: str = "model_export.examples.torch_detector:build_model", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "release.toml"
    path.write_text(textwrap.dedent(f"""\
        [project]
        name = "golden-test"
        version = "0.1.0"

        [[models]]
        name = "det"
        framework = "pytorch"
        entry-point = "{entry_point}"
        weights = "{WEIGHTS.as_posix()}"
        labels = {labels}
        exporters = ["torchscript"]
        input = {{ height = 128, width = 128, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }}
        golden = {golden}
        {extra}
        [wheels]
        enabled = false
        """))
    return path


COCO = '{ images = "golden/images", annotations = "golden/annotations.json" }'


def config_problems(path: Path) -> list:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


# --------------------------------------------------------------------------------------------
# release.toml: what plan refuses


def test_the_minimum_is_the_same_number_on_both_sides():
    assert config_mod.MIN_GOLDEN_IMAGES == golden_mod.MIN_GOLDEN_IMAGES == 4


def test_coco_and_hook_forms_parse_with_paths_relative_to_the_file(tmp_path):
    coco_folder(tmp_path / "golden")
    cfg = load_config(release_toml(tmp_path, COCO, extra="min-map50 = 0.5"))
    model = cfg.model("det")
    assert model.golden.images == (tmp_path / "golden" / "images").resolve()
    assert model.golden.annotations.is_file() and model.golden.hook is None and model.min_map50 == 0.5
    hook = load_config(release_toml(tmp_path / "h", f'{{ hook = "{HOOK}", count = 6, seed = 3 }}')).model("det")
    assert (hook.golden.hook, hook.golden.count, hook.golden.seed, hook.min_map50) == (HOOK, 6, 3, None)


def test_a_model_without_golden_set_is_refused_naming_it(tmp_path):
    path = release_toml(tmp_path, "0")
    path.write_text(path.read_text().replace("golden = 0\n", ""))
    problems = config_problems(path)
    assert [(p.key, p.file) for p in problems] == [("models[0].golden", str(path))]
    assert "model 'det' must name its golden set" in problems[0].message


def test_a_category_that_is_not_a_label_is_refused_naming_label_model_and_file(tmp_path):
    ann = coco_folder(tmp_path / "golden")
    data = json.loads(ann.read_text())
    data["categories"][1]["name"] = "lamppost"
    ann.write_text(json.dumps(data))
    problems = config_problems(release_toml(tmp_path, COCO))
    assert len(problems) == 1
    p = problems[0]
    assert p.key == "models[0].golden.annotations" and p.value == "golden/annotations.json"
    assert "'lamppost'" in p.message and "model 'det'" in p.message
    assert "annotations.json" in str(p) and "release.toml" in str(p)


def test_an_empty_golden_folder_is_refused_naming_model_and_folder(tmp_path):
    ann = coco_folder(tmp_path / "golden")
    for f in (tmp_path / "golden" / "images").iterdir():
        f.unlink()
    (tmp_path / "golden" / "images" / "README.txt").write_text("not an image")
    problems = config_problems(release_toml(tmp_path, COCO))
    assert [(p.key, p.value) for p in problems] == [("models[0].golden.images", "golden/images")]
    assert "no images" in problems[0].message and "model 'det'" in problems[0].message
    assert ann.exists()


def test_too_few_images_missing_files_and_malformed_coco_are_refused(tmp_path):
    coco_folder(tmp_path / "few", count=3)
    few = config_problems(release_toml(tmp_path, COCO.replace("golden/", "few/")))
    assert any(p.key == "models[0].golden.images" and "3 golden image(s)" in p.message and "at least 4" in p.message
               for p in few)

    ann = coco_folder(tmp_path / "missing")
    (tmp_path / "missing" / "images" / "001.png").unlink()
    missing = config_problems(release_toml(tmp_path / "m", '{ images = "../missing/images", '
                                                          'annotations = "../missing/annotations.json" }'))
    assert any("'001.png'" in p.message and "not in the golden folder" in p.message for p in missing)

    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = [1, 2, 3]
    del data["categories"]
    ann.write_text(json.dumps(data))
    (tmp_path / "missing" / "images" / "001.png").touch()
    bad = config_problems(release_toml(tmp_path / "m", '{ images = "../missing/images", '
                                                      'annotations = "../missing/annotations.json" }'))
    messages = [p.message for p in bad]
    assert "malformed COCO: 'categories' must be a list" in messages

    ann.write_text("{ not json")
    broken = config_problems(release_toml(tmp_path / "m", '{ images = "../missing/images", '
                                                         'annotations = "../missing/annotations.json" }'))
    assert broken[0].key == "models[0].golden.annotations" and "not valid JSON" in broken[0].message


def test_both_forms_at_once_and_a_missing_folder_are_refused(tmp_path):
    both = config_problems(release_toml(tmp_path / "a", f'{{ hook = "{HOOK}", images = "x" }}'))
    assert any(p.key == "models[0].golden" and "not both" in p.message for p in both)
    gone = config_problems(release_toml(tmp_path / "b", COCO))
    assert {(p.key, p.message) for p in gone} == {
        ("models[0].golden.images", "folder does not exist"),
        ("models[0].golden.annotations", "file does not exist"),
    }
    small = config_problems(release_toml(tmp_path / "c", f'{{ hook = "{HOOK}", count = 2 }}'))
    assert [p.key for p in small] == ["models[0].golden.count"]


def test_plan_exits_2_on_a_golden_problem(tmp_path):
    coco_folder(tmp_path / "golden", count=3)
    path = release_toml(tmp_path, COCO)
    res = subprocess.run([sys.executable, "-m", "slipway.cli", "plan", "--config", str(path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "models[0].golden.images" in res.stderr and "at least 4" in res.stderr


# --------------------------------------------------------------------------------------------
# Accuracy: hand-checkable numbers


def _gt(box, c):
    return {"box": box, "class_id": c, "label": shapes.LABELS[c]}


def _det(box, score, c):
    return {"box": box, "score": score, "class_id": c, "label": shapes.LABELS[c]}


def test_precision_recall_and_map_on_a_hand_checked_case():
    # Image 0: two circles; image 1: one square. Detections: a hit on each circle (0.9, 0.6), a
    # miss at 0.8 (no overlap), a square hit at 0.7, and a low-score square duplicate at 0.2.
    gt = [[_gt([0, 0, 10, 10], 0), _gt([20, 20, 30, 30], 0)], [_gt([5, 5, 15, 15], 1)]]
    dets = [
        [_det([0, 0, 10, 10], 0.9, 0), _det([50, 50, 60, 60], 0.8, 0), _det([20, 20, 30, 30], 0.6, 0)],
        [_det([5, 5, 15, 15], 0.7, 1), _det([5, 5, 15, 15], 0.2, 1)],
    ]
    # Circle AP: ranked hit, miss, hit -> precision 1 at recall 0.5, 2/3 at recall 1 -> 0.5 + 0.5 * 2/3.
    # Square AP: 1.0 (the duplicate comes after full recall). mAP = (5/6 + 1) / 2 = 11/12.
    acc = accuracy(gt, dets, shapes.LABELS, score_threshold=0.5)
    assert acc["ap50_per_label"] == {"circle": round(5 / 6, 6), "square": 1.0}
    assert acc["map50"] == pytest.approx(11 / 12, abs=1e-6)
    # At 0.5: four detections kept, three hits, three boxes -> precision 0.75, recall 1.
    assert (acc["precision"], acc["recall"], acc["true_positives"], acc["detections"]) == (0.75, 1.0, 3, 4)
    # At 0.65 the circle at 0.6 drops out: precision 2/3, recall 2/3.
    p, r, tp, kept, n = precision_recall(gt, dets, 0.65)
    assert (p, r, tp, kept, n) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 2, 3, 3)
    # Nothing detected: precision undefined, recall 0; no ground truth: recall undefined.
    assert precision_recall(gt, [[], []], 0.5)[:2] == (None, 0.0)
    assert precision_recall([[], []], dets, 0.5)[1] is None


def test_accuracy_matches_classes_by_label_name_not_by_position():
    # Ground truth written by a model whose labels are in another order: by name it still scores 1.
    gt = [[{"box": [0, 0, 10, 10], "class_id": 5, "label": "square"}]]
    dets = [[_det([0, 0, 10, 10], 0.9, 1)]]
    assert accuracy(gt, dets, shapes.LABELS, 0.3)["map50"] == 1.0
    assert accuracy(gt, dets, ["square", "circle", "triangle"], 0.3)["map50"] == 1.0
    # Same class id, another name: no match.
    same_id = [[{"box": [0, 0, 10, 10], "score": 0.9, "class_id": 5, "label": "circle"}]]
    assert accuracy(gt, same_id, shapes.LABELS, 0.3)["map50"] == 0.0


# --------------------------------------------------------------------------------------------
# The min-map50 gate


def _ctx(tmp_path: Path, extra: str) -> StageContext:
    cfg = load_config(release_toml(tmp_path, f'{{ hook = "{HOOK}", count = 4 }}', extra=extra))
    return StageContext(config=cfg, plan=bare_plan("0.1.0"), out=tmp_path / "out", root=tmp_path)


def test_min_map50_gate_fails_below_and_passes_at_or_above(tmp_path):
    from slipway.stages.smoke import gate_accuracy

    def result(**fields) -> records.SmokeResult:
        return records.SmokeResult(**{"artifact": "image:pytorch-cpu", "kind": "image", "model": "det", "ok": True,
                                      **fields})

    ctx = _ctx(tmp_path, "min-map50 = 0.8")
    low = gate_accuracy(ctx, result(accuracy={"map50": 0.7512}))
    assert low.ok is False and low.min_map50 == 0.8
    assert "image:pytorch-cpu" in low.error and "model 'det'" in low.error
    assert "0.7512" in low.error and "min-map50 0.8" in low.error and "models[0].min-map50" in low.error
    high = gate_accuracy(ctx, result(accuracy={"map50": 0.8}))
    assert high.ok is True and high.error is None
    # A mismatch already reported keeps its message; the gate adds its own.
    both = gate_accuracy(ctx, result(artifact="wheel:x.whl", kind="wheel", ok=False, error="2 differ",
                                     accuracy={"map50": 0.1}))
    assert both.error.startswith("2 differ; wheel:x.whl: mAP@0.5 0.1000")
    ungated = gate_accuracy(_ctx(tmp_path / "u", ""), result(accuracy={"map50": 0.0}))
    assert ungated.ok is True


def test_min_map50_fails_the_smoke_stage_with_exit_4(tmp_path, monkeypatch):
    """Through the stage: a wheel whose answers match the reference but score below min-map50."""
    from test_smoke_fixtures import write_fake_export

    from slipway.stages import smoke

    ctx = _ctx(tmp_path, "min-map50 = 0.9")
    ctx = StageContext(config=ctx.config, out=tmp_path / "out", root=tmp_path,
                       plan=bare_plan("0.1.0", project="golden-test", matrix={"smoke": [{
                           "kind": "wheel", "artifact": "wheels", "variant": "", "device": "cpu", "arches": "amd64"}]}))
    model_dir = write_fake_export(ctx.out / "models" / "det", name="det")
    # The wheel will agree with the export exactly; the export itself misses the ground truth of
    # image 1 (the only 'square'): mAP@0.5 (1 + 0) / 2, precision and recall 2/3.
    ref_path = model_dir / "golden" / "reference.json"
    reference = json.loads(ref_path.read_text())
    for g in reference["images"][1]["ground_truth"]:
        g["box"] = [v + 40 for v in g["box"]]
    ref_path.write_text(json.dumps(reference))
    (ctx.out / "wheels").mkdir(parents=True)
    (ctx.out / "wheels" / "slipway_runtime-0.1.0-py3-none-any.whl").write_bytes(b"stand-in")

    def fake_smoke_wheel(wheel, model_dir, **kw):
        # Answer with the reference detections, shifted off the ground truth on every other image.
        from slipway.smoketest import compare_golden

        return compare_golden(model_dir, lambda entry, path: ([records.dump(d) for d in entry.detections], 0.001),
                              iou=0.99, score=1e-4)

    monkeypatch.setattr(smoke, "smoke_wheel", fake_smoke_wheel)
    with pytest.raises(CheckError) as info:
        smoke.run(ctx, wheels=True, variants=[])
    assert info.value.exit_code == 4
    text = str(info.value)
    assert "wheel:slipway_runtime-0.1.0-py3-none-any.whl" in text and "model 'det'" in text
    assert "below min-map50 0.9" in text
    result = json.loads((ctx.out / "smoke" / "wheel-slipway_runtime-0.1.0-py3-none-any.whl.json").read_text())
    assert result["accuracy"]["map50"] == 0.5 and result["ok"] is False and result["min_iou"] == 1.0
    assert (result["accuracy"]["precision"], result["accuracy"]["recall"]) == (0.666667, 0.666667)
    assert "| 0.500 (0.67 / 0.67) |" in (ctx.out / "smoke" / "table.md").read_text()

    # The same answers pass a lower bar.
    ctx2 = _ctx(tmp_path / "pass", "min-map50 = 0.5")
    ctx2 = StageContext(config=ctx2.config, out=ctx.out, root=tmp_path / "pass", plan=ctx.plan)
    assert smoke.run(ctx2, wheels=True, variants=[])["results"]["wheels"]["ok"] is True


# --------------------------------------------------------------------------------------------
# Export: a COCO folder end to end, the hook, and what export refuses

torch = pytest.importorskip("torch")


def _example(golden, **overrides):
    from model_export.examples.config import example_config

    return example_config("pytorch", exporters=("torchscript",), golden=golden, **overrides)


def test_coco_golden_set_of_jpeg_and_png_of_several_sizes_exports_end_to_end(tmp_path):
    from model_export.export import export_model

    ann = coco_folder(tmp_path / "golden", count=4, suffix=".jpg")
    coco_folder(tmp_path / "png", count=2, seed=9000, sizes=((224, 112),))
    # One set of both kinds: move the PNGs in under other names and merge their annotations.
    data, extra = json.loads(ann.read_text()), json.loads((tmp_path / "png" / "annotations.json").read_text())
    for e in extra["images"]:
        new = f"p{e['file_name']}"
        (tmp_path / "png" / "images" / e["file_name"]).rename(tmp_path / "golden" / "images" / new)
        image_id = e["id"] + 100
        data["images"].append({**e, "id": image_id, "file_name": new})
        data["annotations"] += [{**a, "id": a["id"] + 100, "image_id": image_id} for a in extra["annotations"]
                                if a["image_id"] == e["id"]]
    ann.write_text(json.dumps(data))
    golden = SimpleNamespace(images=tmp_path / "golden" / "images", annotations=ann)
    manifest = export_model(_example(golden), tmp_path / "out", version="1.0.0", git_commit="x",
                            log=lambda _: None)
    assert manifest["verification"]["ok"]
    assert manifest["golden"]["source"] == {"kind": "coco", "images": "images", "annotations": "annotations.json"}
    ref = json.loads((tmp_path / "out" / "golden" / "reference.json").read_text())["images"]
    assert [e["source"] for e in ref] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg", "p000.png", "p001.png"]
    assert {(e["width"], e["height"]) for e in ref} == {(192, 128), (128, 176), (160, 160), (224, 112)}
    for e in ref:
        png = np.asarray(Image.open(tmp_path / "out" / "golden" / e["file"]))
        assert png.shape == (e["height"], e["width"], 3) and e["file"].endswith(".png")
        assert e["ground_truth"] and all(g["label"] in shapes.LABELS for g in e["ground_truth"])
    # The eager model on its own ground truth, over its own labels.
    acc = manifest["golden"]["eager_accuracy"]
    assert acc["map50"] > 0.8 and acc["recall"] > 0.8, acc
    assert set(acc["ap50_per_label"]) <= set(shapes.LABELS)


def test_hook_with_a_label_the_model_does_not_have_is_refused_naming_model_and_hook(tmp_path, monkeypatch):
    from model_export.export import export_model

    (tmp_path / "street_golden.py").write_text(textwrap.dedent("""\
        import numpy as np
        def make(count, seed):
            return [(np.zeros((64, 96, 3), np.uint8), [{"box": [1, 2, 30, 40], "label": "car"}])] * count
        def broken(count, seed):
            raise RuntimeError("no camera")
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExportError) as info:
        export_model(_example(SimpleNamespace(hook="street_golden:make", count=4, seed=0)), tmp_path / "o",
                     version="0", git_commit="x", log=lambda _: None)
    message = str(info.value)
    assert "model 'shapes-torch'" in message and "street_golden.py" in message
    assert "'street_golden:make' returned bad data" in message and "label 'car'" in message
    assert not (tmp_path / "o").exists()
    with pytest.raises(ExportError, match=r"street_golden\.py.*'street_golden:broken' raised RuntimeError: no camera"):
        export_model(_example(SimpleNamespace(hook="street_golden:broken", count=4, seed=0)), tmp_path / "o",
                     version="0", git_commit="x", log=lambda _: None)


def test_a_model_that_detects_nothing_on_its_golden_set_is_refused_naming_model_and_file(tmp_path):
    from model_export.export import export_model

    flat = [(np.full((96, 128, 3), 127, np.uint8), [{"box": [10, 10, 40, 40], "label": "circle"}])] * 4
    ann = golden_mod.write_coco(tmp_path / "golden", flat, shapes.LABELS)
    golden = SimpleNamespace(images=tmp_path / "golden" / "images", annotations=ann)
    with pytest.raises(ExportError) as info:
        export_model(_example(golden), tmp_path / "out", version="0", git_commit="x", log=lambda _: None)
    message = str(info.value)
    assert "model 'shapes-torch'" in message and str(ann) in message
    assert "makes no detection at all on its 4 golden images" in message
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Nothing stale

MODEL_CODE = '''\
from torch import nn

from model_export.examples.torch_detector import build_model as _shapes


class Detector(nn.Module):
    """The shapes detector behind the project's own forward()."""

    def __init__(self):
        super().__init__()
        self.inner = _shapes()

    def load_state_dict(self, state, strict=True, assign=False):
        return self.inner.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, x):
        boxes, scores, classes = self.inner(x)
        return boxes + 0.0, scores, classes


def build_model():
    return Detector()
'''


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    return subprocess.run([sys.executable, "-m", "slipway.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)


@pytest.fixture
def project(tmp_path):
    """A project of its own: package ``street/`` (model code), release.toml, the shapes weights."""
    folder = tmp_path / "project"
    (folder / "street").mkdir(parents=True)
    (folder / "street" / "__init__.py").write_text("")
    (folder / "street" / "model.py").write_text(MODEL_CODE)
    variant = textwrap.dedent("""
        [[variants]]
        name = "pytorch-cpu"
        model = "det"
        runtime = "torchscript"
        dockerfile = "dockerfiles/pytorch.Dockerfile"
        target = "pytorch-cpu"
        """)
    config = release_toml(folder, f'{{ hook = "{HOOK}", count = 4, seed = 20201215 }}',
                          entry_point="street.model:build_model")
    config.write_text(config.read_text() + variant)
    out = tmp_path / "out"
    res = _cli("plan", "--config", str(config), "--out", str(out), "-o", str(out / "plan.json"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return SimpleNamespace(folder=folder, config=config, out=out,
                           args=("--config", str(config), "--out", str(out), "--plan", str(out / "plan.json")))


def test_a_change_to_the_model_code_alone_re_exports(project):
    res = _cli("export", *project.args, cwd=project.folder.parent)
    assert res.returncode == 0, res.stderr
    reference = project.out / "models" / "det" / "golden" / "reference.json"
    before = json.loads(reference.read_text())["images"]
    inputs = json.loads((project.out / "models" / "det" / "model.json").read_text())["inputs"]
    assert inputs["model_code"].startswith("package street: ")
    res = _cli("export", *project.args, cwd=project.folder.parent)
    assert res.returncode == 0 and "unchanged since the last export" in res.stderr

    # forward() changes; the weights file does not.
    model_py = project.folder / "street" / "model.py"
    model_py.write_text(model_py.read_text().replace("boxes + 0.0", "boxes + 6.0"))
    res = _cli("export", *project.args, cwd=project.folder.parent)
    assert res.returncode == 0, res.stderr
    assert "unchanged" not in res.stderr and "exported and verified" in res.stderr
    after = json.loads(reference.read_text())["images"]
    moved = [d["box"] for e in after for d in e["detections"]]
    assert moved and moved != [d["box"] for e in before for d in e["detections"]]
    new_inputs = json.loads((project.out / "models" / "det" / "model.json").read_text())["inputs"]
    assert {k for k in inputs if inputs[k] != new_inputs[k]} == {"model_code"}


def test_export_inputs_do_not_depend_on_where_the_project_is_or_how_exporters_are_spelled(tmp_path):
    from slipway.stages.export import export_inputs

    inputs = []
    for where in ("a", "b"):
        coco_folder(tmp_path / where / "golden")
        cfg = load_config(release_toml(tmp_path / where, COCO))
        ctx = StageContext(config=cfg, plan=bare_plan("1.0.0"), out=tmp_path / where / "out", root=cfg.root)
        model = cfg.model("det")
        inputs.append(export_inputs(ctx, model))
        # The export stage gives the model the plan's exporters; unset in release.toml, that is the default.
        unset = model.model_copy(update={"exporters": None})
        default = model.model_copy(update={"exporters": ("torchscript", "onnx")})
        assert export_inputs(ctx, unset) == export_inputs(ctx, default) != export_inputs(ctx, model)
    assert inputs[0] == inputs[1]
    assert inputs[0]["golden"] and inputs[0]["model_code"].startswith("module torch_detector.py: ")


def test_a_stale_export_is_never_published(project):
    from slipway.stages.export import stale_parts
    from slipway.stages.publish.gate import check_exports

    res = _cli("export", *project.args, cwd=project.folder.parent)
    assert res.returncode == 0, res.stderr
    cfg = load_config(project.config)
    plan = json.loads((project.out / "plan.json").read_text())
    ctx = StageContext(config=cfg, plan=plan, out=project.out, root=cfg.root)
    model_dir = project.out / "models" / "det"
    assert stale_parts(ctx, cfg.model("det"), model_dir) == []
    check_exports(ctx, {})  # current: nothing to refuse

    (project.folder / "street" / "heads.py").write_text("SCALE = 2\n")  # any file of the package counts
    assert stale_parts(ctx, cfg.model("det"), model_dir) == ["model_code"]
    res = _cli("publish", *project.args, cwd=project.folder.parent)
    assert res.returncode == 6, res.stderr
    assert "model 'det'" in res.stderr and "the export is stale" in res.stderr and "model_code" in res.stderr
    assert "nothing was published" in res.stderr
    assert not (project.out / "release.json").exists()

    # A smoke result recorded against another export of the model does not pass for this one either.
    (project.folder / "street" / "heads.py").unlink()
    with pytest.raises(PublishError, match="smoke-tested against another export of model 'det'"):
        check_exports(ctx, {"image:pytorch-cpu": records.SmokeSummaryEntry(model="det", ok=True, export_inputs="0" * 64)})
    # Nor an image built from another export.
    (project.out / "images.json").write_text(json.dumps(
        {"pytorch-cpu": {"variant": "pytorch-cpu", "model": "det", "runtime": "torchscript", "device": "cpu",
                         "image": "127.0.0.1:5000/x/det-pytorch-cpu", "export_inputs": "1" * 64}}))
    with pytest.raises(PublishError, match="image of variant 'pytorch-cpu': built from another export of model 'det'"):
        check_exports(ctx, {})
