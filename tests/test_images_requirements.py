"""A project's requirements.txt adds to the service's requirements in every image, never replaces them.

Real builds through ``slipway images`` (the shared Dockerfile, the local engine): a project
requirement ends up in the image beside the service's packages; one that conflicts with the
service's pins fails the build with pip's message and names the project's file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_smoke_fixtures import run_id, write_fake_export

from slipway import engine
from slipway.config import load_config
from slipway.context import StageContext
from slipway.errors import BuildError
from slipway.plan import Trigger, make_plan
from slipway.stages import images

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PROJECT = """
[project]
name = "{name}"
version = "0.0.1"

[[models]]
name = "tiny"
framework = "pytorch"
entry-point = "tiny_pkg.model:build_model"
weights = "weights/tiny.pt"
labels = ["circle", "square", "triangle"]
exporters = ["onnx"]
golden = {{ hook = "tiny_pkg.model:golden" }}
input = {{ height = 128, width = 128 }}

[[variants]]
name = "onnx-cpu"
model = "tiny"
runtime = "onnx"
dockerfile = "dockerfiles/pytorch.Dockerfile"
target = "onnx-cpu"

[wheels]
enabled = false

[registries]
images = "127.0.0.1:5000/{name}"
"""


def _project(folder: Path, requirements: str | None) -> StageContext:
    """A project folder of its own (Slipway's Dockerfile, no symlinks to this checkout) and its context."""
    name = run_id()
    folder.mkdir(parents=True)
    (folder / "weights").mkdir()
    (folder / "weights" / "tiny.pt").write_bytes(b"unused: the export is written directly")
    (folder / "release.toml").write_text(PROJECT.format(name=name))
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    config = load_config(folder / "release.toml")
    plan = make_plan(config, Trigger(event="local", sha="unknown"))
    out = folder / "dist"
    write_fake_export(out / "models" / "tiny", name="tiny")
    return StageContext(config=config, plan=plan, out=out, root=config.root)


def _remove(ctx: StageContext) -> None:
    for entry in ctx.plan.matrix.images:
        engine.remove_image(f"{entry.image}:{ctx.plan.version}")


def test_staged_project_requirements(tmp_path):
    """Staged as requirements-project.txt (comments only without one); Slipway's own pins unchanged."""
    ctx = _project(tmp_path / "with", "six==1.17.0\n")
    build = images.stage_context(ctx, ctx.plan.matrix.images[0], local_torch=False)
    assert (build / "requirements-project.txt").read_text() == "six==1.17.0\n"
    from slipway.paths import resource

    assert (build / "requirements.txt").read_text() == resource("requirements.txt").read_text()
    assert not (build / "model_export" / "examples").exists()
    ctx = _project(tmp_path / "without", None)
    build = images.stage_context(ctx, ctx.plan.matrix.images[0], local_torch=False)
    assert all(line.startswith("#") for line in (build / "requirements-project.txt").read_text().splitlines())


def test_project_requirement_is_installed_beside_the_service(local_services, tmp_path):
    ctx = _project(tmp_path / "project", "# the project's own extra package\nsix==1.17.0\n")
    try:
        images.run(ctx)
        record = json.loads((ctx.out / "images.json").read_text())["onnx-cpu"]
        probe = ("import importlib.metadata as m, json; "
                 "print(json.dumps({p: m.version(p) for p in ('six', 'fastapi', 'uvicorn', 'numpy', 'onnxruntime')}))")
        res = engine.run(record["tag"], ["python", "-c", probe], timeout=300)
        versions = json.loads(res.stdout.strip().splitlines()[-1])
        assert versions["six"] == "1.17.0"
        pins = {line.split("==")[0]: line.split("==")[1] for line in
                (ctx.out / "build" / "onnx-cpu" / "requirements.txt").read_text().splitlines() if "==" in line}
        assert versions["fastapi"] == pins["fastapi"] and versions["numpy"] == pins["numpy"]
        assert versions["uvicorn"] == pins["uvicorn"]
    finally:
        _remove(ctx)
        shutil.rmtree(tmp_path / "project", ignore_errors=True)


@pytest.mark.parametrize("buildkit", ["1", "0"], ids=["buildkit", "classic-builder"])
def test_a_conflicting_project_requirement_fails_the_build_naming_the_file(local_services, tmp_path, monkeypatch,
                                                                          buildkit):
    # Both builders run the Dockerfile (no syntax directive). The service pins numpy; the project
    # asks for another version.
    monkeypatch.setenv("DOCKER_BUILDKIT", buildkit)
    ctx = _project(tmp_path / "project", "numpy==1.26.4\n")
    stopped_before = {c["Id"] for c in engine.client().api.containers(all=True, filters={"status": "exited"})}
    try:
        with pytest.raises(BuildError) as err:
            images.run(ctx)
        # The failed step's container is not left behind (the classic builder keeps it by default).
        stopped = {c["Id"] for c in engine.client().api.containers(all=True, filters={"status": "exited"})}
        assert stopped <= stopped_before
        message = str(err.value)
        assert str(ctx.root / "requirements.txt") in message
        assert "cannot be installed on top of the service's pinned requirements" in message
        assert "numpy==1.26.4" in message and "ResolutionImpossible" in message
        assert "executor failed" not in message  # pip's own lines, not the builder's
    finally:
        _remove(ctx)
        shutil.rmtree(tmp_path / "project", ignore_errors=True)
