"""Slipway's own distribution: what the wheel and sdist carry, and Slipway installed from the wheel
(not editable) planning a project in a folder of its own, with nothing of this checkout in reach.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from installed import ROOT, clean_env

from slipway import records

pytestmark = pytest.mark.slow

# Repository folder -> where the wheel puts it (pyproject.toml, [tool.hatch.build.targets.wheel]).
WHEEL_PLACES = {
    "scripts/slipway": "slipway",
    "serving": "serving",
    "model_export": "model_export",
    "dockerfiles": "slipway/_resources/dockerfiles",
    "native": "slipway/_resources/native",
}
REQUIREMENTS = ("requirements.txt", "requirements-pytorch.txt", "requirements-tensorflow.txt")


def tracked(folder: str) -> list[str]:
    """Files git tracks under ``folder`` (what a clean clone has), as repository paths."""
    res = subprocess.run(["git", "ls-files", "--", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in res.stdout.splitlines() if line]


def shipped_sources() -> list[str]:
    """Every tracked file that must ship: the five folders, less the example models."""
    return [f for folder in WHEEL_PLACES for f in tracked(folder) if not f.startswith("model_export/examples/")]


def in_wheel(path: str) -> str:
    for folder, place in WHEEL_PLACES.items():
        if path.startswith(folder + "/"):
            return place + path[len(folder):]
    raise AssertionError(path)


def test_wheel_carries_everything_a_release_needs(slipway_dists):
    with zipfile.ZipFile(slipway_dists["wheel"]) as zf:
        names = set(zf.namelist())
    missing = [f for f in shipped_sources() if in_wheel(f) not in names]
    assert missing == [], f"not in {slipway_dists['wheel'].name}: {missing}"
    for name in REQUIREMENTS:
        assert f"slipway/_resources/{name}" in names
    # Every package (a folder with __init__.py) under scripts/slipway, serving and model_export.
    packages = {in_wheel(f) for f in shipped_sources() if f.endswith("/__init__.py") and not f.startswith(
        ("dockerfiles/", "native/"))}
    assert {"slipway/__init__.py", "slipway/stages/__init__.py", "slipway/benchmark/__init__.py",
            "serving/__init__.py", "serving/backends/__init__.py", "model_export/__init__.py"} <= packages
    assert packages <= names
    # What a release needs, named: the Dockerfiles, the runtime's sources for `slipway wheels`.
    for needed in ("dockerfiles/pytorch.Dockerfile", "dockerfiles/tensorflow.Dockerfile",
                   "native/pyproject.toml", "native/thin/pyproject.toml", "native/CMakeLists.txt",
                   "native/tools/repair_wheel.py", "native/tools/check_wheel.py",
                   "native/third_party/nlohmann-json/include/nlohmann/json.hpp",
                   "native/third_party/nlohmann-json/LICENSE.MIT",
                   "native/include/slipway/detector.hpp", "native/cmake/SlipwayRuntimeConfig.cmake.in"):
            assert f"slipway/_resources/{needed}" in names, needed
    # The JSON Schemas of the records, beside the module that reads them.
    assert {f"slipway/schemas/{name}" for name in records.json_schemas()} <= names
    # The example models, build trees and caches stay out.
    assert not [n for n in names if n.startswith("model_export/examples")]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so", ".whl"))]
    assert not [n for n in names if n.startswith(("tests/", "scripts/", ".github/"))]


def test_sdist_carries_the_sources_in_their_places(slipway_dists):
    with tarfile.open(slipway_dists["sdist"]) as tf:
        prefix = tf.getnames()[0].split("/")[0]
        names = {n.removeprefix(prefix + "/") for n in tf.getnames()}
    missing = [f for f in [*shipped_sources(), *REQUIREMENTS, "pyproject.toml", "hatch_build.py"] if f not in names]
    assert missing == [], f"not in {slipway_dists['sdist'].name}: {missing}"
    assert not [n for n in names if n.startswith("model_export/examples")]
    assert not [n for n in names if n.startswith(("tests/", ".github/"))]


TINY_MODEL = '''
"""A project's own detector, in the project's folder (not part of Slipway)."""


def build_model():
    raise RuntimeError("planning never builds the model")
'''

PROJECT_TOML = """
[project]
name = "street-scenes"
version = "2.4.1"

[[models]]
name = "street"
framework = "pytorch"
entry-point = "street_pkg.model:build_model"
weights = "weights/street.pt"
labels = ["car", "person"]
input = { height = 96, width = 160 }
package = "street-detector"
golden = { hook = "street_pkg.model:golden" }

[[variants]]
name = "pytorch-cpu"
model = "street"
runtime = "torchscript"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "pytorch-cpu"

[[variants]]
name = "pytorch-cpp-cpu"
model = "street"
runtime = "cpp"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "pytorch-cpp-cpu"
"""


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's project folder outside the checkout (and not a git checkout)."""
    folder = tmp_path / "street-scenes"
    (folder / "street_pkg").mkdir(parents=True)
    (folder / "street_pkg" / "__init__.py").write_text("")
    (folder / "street_pkg" / "model.py").write_text(textwrap.dedent(TINY_MODEL))
    (folder / "weights").mkdir()
    (folder / "weights" / "street.pt").write_bytes(b"not read by plan")
    (folder / "release.toml").write_text(PROJECT_TOML)
    return folder


def test_installed_slipway_plans_a_project_outside_the_checkout(installed_slipway, project):
    help_ = installed_slipway.slipway("--help", cwd=project, check=True)
    assert "plan" in help_.stdout and "release" in help_.stdout
    res = installed_slipway.slipway("plan", cwd=project, check=True)
    plan = json.loads(res.stdout)
    assert plan["project"] == "street-scenes" and plan["version"] == "2.4.1"
    assert [i["variant"] for i in plan["matrix"]["images"]] == ["pytorch-cpu", "pytorch-cpp-cpu"]
    assert {i["dockerfile"] for i in plan["matrix"]["images"]} == {"dockerfiles/pytorch.Dockerfile"}
    # Names and versions: the project's package, Slipway's runtime at Slipway's version, unpublished.
    assert plan["packages"] == [{"model": "street", "package": "street-detector", "import": "street_detector"}]
    assert plan["runtime"]["publish"] is False
    # Not a git checkout: said so, and no made-up commit.
    assert plan["sha"] == "unknown" and plan["short_sha"] == "unknown"
    assert any("not a git checkout" in n for n in plan["notes"]) and "not a git checkout" in res.stderr

    # Where the installed Slipway finds its resources: inside its own installation.
    probe = """
        import json
        from slipway import paths
        from slipway.stages import wheels
        print(json.dumps({
            "dockerfile": str(paths.resolve("dockerfiles/pytorch.Dockerfile")),
            "native": str(wheels.native_dir()),
            "requirements": str(paths.resource("requirements-pytorch.txt")),
            "serving": str(paths.resource("serving")),
            "model_export": str(paths.resource("model_export")),
            "examples": __import__("importlib.util").util.find_spec("model_export.examples") is not None,
        }))
    """
    res = subprocess.run([str(installed_slipway.python), "-c", textwrap.dedent(probe)], cwd=project,
                         env=clean_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert found.pop("examples") is False, "the example models must not be installed"
    for what, path in found.items():
        assert path.startswith(str(installed_slipway.venv)), f"{what}: {path} is not inside the installed Slipway"
        assert Path(path).exists(), path


def test_installed_slipway_refuses_a_missing_dockerfile_naming_it(installed_slipway, project):
    toml = project / "release.toml"
    toml.write_text(toml.read_text().replace("dockerfiles/pytorch.Dockerfile", "docker/mine.Dockerfile", 1))
    res = installed_slipway.slipway("plan", cwd=project)
    assert res.returncode == 2
    assert "variants[0].dockerfile" in res.stderr and "docker/mine.Dockerfile" in res.stderr
    # A project's own Dockerfile beside its release.toml is found.
    (project / "docker").mkdir()
    (project / "docker" / "mine.Dockerfile").write_text("FROM scratch AS pytorch-cpu\n")
    installed_slipway.slipway("plan", cwd=project, check=True)
