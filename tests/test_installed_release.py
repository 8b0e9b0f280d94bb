"""Slipway as another team uses it: installed from its own wheel into a fresh virtualenv (not
editable), releasing projects that live outside this checkout, against the real Docker engine,
registry and package index.

- The street example (examples/street: the team's own model code, weights, COCO golden set and
  model package name) is copied to a temporary folder and released with ``slipway release
  --local`` through every stage: export, wheels, images, smoke, bench, publish.
- The TensorFlow-only project (tests/projects/tf-only: no PyTorch, so no wheels) is released the
  same way through smoke.

Each copy gets names of this test session (registry repositories and the model package), so the
session's registry clean-up removes what it pushed and a second run never collides with the first.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest
from installed import ROOT, Installed
from test_smoke_fixtures import run_id

from slipway import services

pytestmark = [pytest.mark.docker, pytest.mark.services, pytest.mark.slow]

REGISTRY = "127.0.0.1:5000"


def _copy_project(source: Path, dest: Path, name: str, *, package: str | None = None) -> Path:
    """The project folder as its team has it, renamed for this session: project '<name>-<its name>',
    images under ``127.0.0.1:5000/<name>``, the model package (if any) named ``package``."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "dist", "build"))
    toml = dest / "release.toml"
    text = toml.read_text()
    text = re.sub(r'(?m)^name = "(.*)"$', lambda m: f'name = "{name}-{m.group(1)}"', text, count=1)
    text = re.sub(r'(?m)^images = ".*"$', f'images = "{REGISTRY}/{name}"', text)
    if "[registries]" not in text:
        text += f'\n[registries]\nimages = "{REGISTRY}/{name}"\npackages = "http://127.0.0.1:8765/"\n'
    if package:
        text = re.sub(r'(?m)^package = ".*"$', f'package = "{package}"', text)
    toml.write_text(text)
    return dest


def _release(installed: Installed, project: Path, *skip: str):
    args = ["release", "--local", *(a for s in skip for a in ("--skip", s))]
    # Every stage runs; the bench only briefly (its numbers are not what this test checks).
    quick_bench = {"SLIPWAY_BENCH_RUNS": "10", "SLIPWAY_BENCH_WARMUP": "3", "SLIPWAY_BENCH_SECONDS": "1",
                   "SLIPWAY_BENCH_READY_RUNS": "1", "SLIPWAY_BENCH_IMPORT_REPEATS": "0",
                   "SLIPWAY_BENCH_GRID": "0"}
    res = installed.slipway(*args, cwd=project, timeout=3000, env=quick_bench)
    assert res.returncode == 0, f"slipway {' '.join(args)} exited {res.returncode}:\n{res.stderr[-6000:]}"
    return res


def _remove_published(prefix: str, project: str) -> None:
    """What this test published besides images: its package files in the index slipway runs here,
    and the local release assets of its project."""
    folder = services.state_dir() / "index" / "packages"
    for f in folder.glob(f"{prefix}*") if folder.is_dir() else ():
        f.unlink()
    shutil.rmtree(services.state_dir() / "releases" / project, ignore_errors=True)


def test_street_example_releases_from_an_installed_slipway(installed_slipway: Installed, tmp_path: Path):
    name = run_id()
    package = f"{name}-street-detector"
    project = _copy_project(ROOT / "examples" / "street", tmp_path / "street", name, package=package)
    try:
        res = _release(installed_slipway, project)
        out = project / "dist" / "0.1.0"
        # Every stage ran, here, from the installed tool (nothing of this checkout on the path).
        for stage in ("export", "wheels", "images", "smoke", "bench", "publish"):
            assert re.search(rf"== {stage}: ok", res.stderr), f"stage {stage} did not end ok:\n{res.stderr[-4000:]}"
        assert str(ROOT) not in res.stderr.replace(str(tmp_path), "")

        # The project's own golden set, scored against its own ground truth, gates the release.
        manifest = json.loads((out / "models" / "street" / "model.json").read_text())
        assert manifest["labels"] == ["car", "bus", "person", "traffic_light", "sign", "tree"]
        summary = json.loads((out / "smoke" / "summary.json").read_text())["artifacts"]
        images = {k: v for k, v in summary.items() if k.startswith("image:")}
        assert set(images) == {"image:pytorch-cpu", "image:pytorch-cpp-cpu", "image:onnx-cpu"}
        for key, result in summary.items():
            assert result["ok"], (key, result)
        for key, result in images.items():
            assert result["accuracy"]["map50"] >= 0.7, (key, result["accuracy"])

        # What it publishes carries the project's names only: its images and its model package.
        wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
        assert wheels == [f"{package.replace('-', '_')}-0.1.0-py3-none-any.whl"], wheels
        assert not any(p.name.startswith("slipway") for p in (out / "wheels").iterdir())
        for variant in ("pytorch-cpu", "pytorch-cpp-cpu", "onnx-cpu"):
            tags = httpx.get(f"http://{REGISTRY}/v2/{name}/{name}-street-{variant}/tags/list", timeout=10)
            assert tags.status_code == 200 and "0.1.0" in tags.json()["tags"], (variant, tags.text)
        simple = httpx.get(f"http://127.0.0.1:8765/simple/{package}/", timeout=10)
        assert simple.status_code == 200 and f"{package.replace('-', '_')}-0.1.0" in simple.text

        # The bench measured the C++ runtime on this model, against eager PyTorch.
        cpp = json.loads((out / "bench" / "results.json").read_text())["inprocess"]["models"]["street"]["cpp"]
        assert cpp["available"] and cpp["speedup_vs_eager"]["p50"] > 0, cpp
    finally:
        _remove_published(package.replace("-", "_"), f"{name}-street")


def test_tensorflow_only_project_releases_through_smoke(installed_slipway: Installed, tmp_path: Path):
    name = run_id()
    project = _copy_project(ROOT / "tests" / "projects" / "tf-only", tmp_path / "tf-only", name)
    res = _release(installed_slipway, project, "bench", "publish")
    assert "== wheels: not planned" in res.stderr
    out = project / "dist" / "0.1.0"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["matrix"]["wheels"] == [] and plan["packages"] == []
    assert not (out / "wheels").exists() or not any((out / "wheels").iterdir())
    summary = json.loads((out / "smoke" / "summary.json").read_text())["artifacts"]
    assert {"image:tensorflow-cpu", "image:tfserving-client"} <= set(summary), sorted(summary)
    for key, result in summary.items():
        assert result["ok"], (key, result)
        if key.startswith("image:"):
            assert result["accuracy"]["map50"] >= 0.8, (key, result["accuracy"])
    assert "== smoke: ok" in res.stderr
