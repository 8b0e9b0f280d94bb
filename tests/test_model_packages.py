"""Model packages: a project's model as a wheel of the project's own name, on Slipway's runtime.

Two projects' packages go into one fresh venv (no torch) beside the self-contained runtime wheel;
each ``load()``s its own model and answers its own golden images as its own export does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import pytest
from native_fixtures import _env, last_json

import slipway
from slipway.modelpkg import build_model_package, runtime_requirement
from slipway.plan import import_name

pytestmark = pytest.mark.slow

# Two projects: the example detector, and the same network released by another team under its own
# names, labels and threshold (a model of its own as far as packaging goes: its own model.json).
RELABEL_HOOK = """
from model_export.examples.shapes import LABELS, golden


def _relabelled(names, count, seed):
    rename = dict(zip(LABELS, names))
    return [(image, [{**box, "label": rename[box["label"]]} for box in boxes]) for image, boxes in golden(count, seed)]


def street_scenes(count, seed):
    return _relabelled(("circle", "square", "triangle"), count, seed)


def harbour_cams(count, seed):
    return _relabelled(("buoy", "crate", "sail"), count, seed)
"""

PROJECTS = {
    "street-scenes": {"package": "street-detector", "labels": ("circle", "square", "triangle"), "threshold": 0.3},
    "harbour-cams": {"package": "harbour-cams-shapes", "labels": ("buoy", "crate", "sail"), "threshold": 0.6},
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, dict]:
    from model_export.examples.config import example_config
    from model_export.export import export_model

    root = tmp_path_factory.mktemp("model-packages")
    # The other team's golden set names its own labels: the shapes hook, relabelled by a hook of
    # that project's own (a module on the project's path, as a project's hook would be).
    (root / "relabel_golden.py").write_text(RELABEL_HOOK)
    sys.path.insert(0, str(root))
    out = {}
    try:
        for project, spec in PROJECTS.items():
            export = root / project / "models" / "shapes"
            export.parent.mkdir(parents=True)
            golden = SimpleNamespace(hook=f"relabel_golden:{project.replace('-', '_')}", count=8, seed=20_201_215)
            config = example_config("pytorch", exporters=("torchscript",), labels=spec["labels"],
                                    output={"score_threshold": spec["threshold"]}, golden=golden)
            export_model(config, export, version="2.0.0", git_commit="unknown", log=lambda _m: None)
            wheel = build_model_package(export, root / project / "wheels", distribution=spec["package"],
                                        module=import_name(spec["package"]), version="2.0.0", project=project,
                                        model="shapes", slipway_version=slipway.__version__)
            out[project] = {"wheel": wheel, "export": export, "module": import_name(spec["package"]), **spec}
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("relabel_golden", None)
    return out


def test_model_package_contents_and_metadata(packages):
    pkg = packages["street-scenes"]
    assert pkg["wheel"].name == "street_detector-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(pkg["wheel"]) as zf:
        names = set(zf.namelist())
        metadata = zf.read("street_detector-2.0.0.dist-info/METADATA").decode()
        record = zf.read("street_detector-2.0.0.dist-info/RECORD").decode()
    assert {"street_detector/__init__.py", "street_detector/model/model.json",
            "street_detector/model/model.torchscript.pt", "street_detector/model/golden/reference.json"} <= names
    assert all(n.startswith(("street_detector/", "street_detector-2.0.0.dist-info/")) for n in names)
    assert "Name: street-detector\n" in metadata and "Version: 2.0.0\n" in metadata
    assert f"Requires-Dist: {runtime_requirement(slipway.__version__)}\n" in metadata
    assert len(record.splitlines()) == len(names)
    # The same inputs give the same bytes (a rebuild publishes nothing new).
    again = build_model_package(pkg["export"], pkg["wheel"].parent / "again", distribution=pkg["package"],
                                module=pkg["module"], version="2.0.0", project="street-scenes", model="shapes",
                                slipway_version=slipway.__version__)
    assert again.read_bytes() == pkg["wheel"].read_bytes()
    res = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(pkg["wheel"])],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


CHECK = """
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
import importlib
out = {}
for module in sys.argv[1:]:
    pkg = importlib.import_module(module)
    detector = pkg.load()
    reference = json.loads((pkg.MODEL_DIR / "golden" / "reference.json").read_text())["images"]
    got = []
    for entry in reference:
        image = np.asarray(Image.open(pkg.MODEL_DIR / "golden" / entry["file"]).convert("RGB"))
        got.append([{"label": d["label"], "box": [float(v) for v in d["box"]], "score": float(d["score"])}
                    for d in detector.predict(image)])
    out[module] = {"file": pkg.__file__, "labels": pkg.manifest()["labels"], "detections": got,
                   "reference": [e["detections"] for e in reference], "version": pkg.__version__}
print(json.dumps(out))
"""


def test_two_projects_packages_in_one_venv_each_load_their_own_model(packages, native_wheels, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheels = [str(native_wheels["self-contained"]), *(str(p["wheel"]) for p in packages.values())]
    res = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *wheels,
                          "numpy", "pillow"], env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], env=_env(), capture_output=True,
                            text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"street-detector", "harbour-cams-shapes", "slipway-runtime"} <= names and "torch" not in names

    # From an empty folder, with nothing of this checkout on the path.
    got = last_json(subprocess.run([str(python), "-c", CHECK, *(p["module"] for p in packages.values())],
                                   env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600))
    for project, pkg in packages.items():
        answer = got[pkg["module"]]
        assert answer["file"].startswith(str(venv)), answer["file"]
        assert tuple(answer["labels"]) == pkg["labels"] and answer["version"] == "2.0.0"
        assert any(answer["detections"]), f"{project}: no detections on its golden images"
        for detections, reference in zip(answer["detections"], answer["reference"], strict=True):
            assert [d["label"] for d in detections] == [d["label"] for d in reference], project
            assert all(d["label"] in pkg["labels"] and d["score"] >= pkg["threshold"] for d in detections)
            for d, r in zip(detections, reference, strict=True):
                assert abs(d["score"] - r["score"]) < 1e-3
                assert max(abs(a - b) for a, b in zip(d["box"], r["box"], strict=True)) < 0.5
    street, harbour = (got[p["module"]]["detections"] for p in packages.values())
    assert street != harbour, "two models answered the same: each package must load its own"


# --------------------------------------------------------------------------------------------
# Publishing: a project publishes its own names only; Slipway's own release also its runtime


PROJECT_TOML = """
[project]
name = "{name}"
version = "{version}"

[[models]]
name = "street"
framework = "pytorch"
entry-point = "street_pkg.model:build_model"
weights = "weights/street.pt"
labels = ["circle", "square"]
exporters = ["torchscript"]
input = {{ height = 32, width = 32 }}
package = "{name}-street-detector"
golden = {{ hook = "street_pkg.model:golden" }}

[wheels]
publish-runtime = {publish_runtime}

[registries]
images = "127.0.0.1:5000/{name}"
packages = "http://127.0.0.1:8765/"
"""


@pytest.mark.services
@pytest.mark.parametrize("publish_runtime", [False, True], ids=["a-project", "slipways-own-release"])
def test_dry_run_publish_lists_the_projects_names(local_services, tmp_path, publish_runtime):
    """A project's dry-run publish uploads its model package and nothing of Slipway's; with
    publish-runtime (Slipway's own release, at Slipway's version) the runtime goes out too."""
    from test_smoke_fixtures import make_replay_wheel, run_id, write_fake_export

    from slipway import records
    from slipway.config import load_config
    from slipway.context import StageContext
    from slipway.plan import Trigger, make_plan
    from slipway.stages import publish, smoke, wheels

    name = run_id()
    folder = tmp_path / name
    (folder / "weights").mkdir(parents=True)
    # Planning checks that the weights exist; the export is replayed below, so any bytes do.
    (folder / "weights" / "street.pt").write_bytes(b"weights, as far as planning goes")
    version = slipway.__version__ if publish_runtime else "3.1.4"
    (folder / "release.toml").write_text(PROJECT_TOML.format(
        name=name, version=version, publish_runtime=str(publish_runtime).lower()))
    config = load_config(folder / "release.toml")
    plan = make_plan(config, Trigger(event="local", sha="unknown", dry_run=True))
    assert records.dump(plan.runtime) == {"version": slipway.__version__, "publish": publish_runtime}
    ctx = StageContext(config=config, plan=plan, out=folder / "dist", root=config.root)
    (ctx.out).mkdir()
    records.write(ctx.out / "plan.json", plan)
    model_dir = write_fake_export(ctx.out / "models" / "street", name="street", config=folder / "release.toml",
                                  version=version)
    (model_dir / "model.torchscript.pt").write_bytes(b"a TorchScript file, as far as packaging goes")
    # Slipway's runtime where the wheels stage puts it (a replay double: the real one is in
    # test_two_projects_packages_in_one_venv_each_load_their_own_model).
    runtime = make_replay_wheel(wheels.runtime_dir(ctx), dist="slipway-runtime", model_dir=model_dir,
                                version=slipway.__version__)
    [package] = wheels.build_packages(ctx, ctx.out / "wheels")
    smoked = smoke.run(ctx, artifact="wheels")
    artifacts = json.loads((ctx.out / "smoke" / "summary.json").read_text())["artifacts"]
    assert artifacts[f"wheel:{package.name}"]["ok"], (smoked, artifacts)
    assert artifacts[f"wheel:{package.name}"]["wheel_kind"] == "model-package"

    result = publish.run(ctx)
    release = result["release"]
    assert isinstance(release, records.ReleaseRecord)
    assert records.read(ctx.out / "release.json", records.ReleaseRecord) == release
    actions = records.read(ctx.out / "publish-plan.json", records.PublishPlan).actions
    uploads = sorted(a.ref for a in actions if a.action == "upload")
    released = sorted(w.file for w in release.wheels)
    expected = sorted([package.name, *([runtime.name] if publish_runtime else [])])
    assert released == expected, released
    assert len(uploads) == len(expected)
    if not publish_runtime:
        text = "".join(records.dumps(a) for a in actions) + records.dumps(release)
        assert "slipway_runtime" not in text and "slipway-runtime" not in text.replace(
            package.requires, "")
    assert "would" in result["summary"] and "dry run" in result["summary"]
