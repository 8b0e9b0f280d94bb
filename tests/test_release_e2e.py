"""The thin release end to end, against the real Docker engine, registry and index.

plan -> export (TorchScript) -> image (pytorch-cpu) -> smoke (real HTTP predict on golden images,
checked against the model's own detections) -> publish to the local registry. Then the same
release again: what did not change is reused, and the registry is left as it was.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from image_cleanup import owns
from release_configs import small_release

from slipway.cli import main

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _config(tmp_path: Path, project: str, variant: str = "pytorch-cpu", runtime: str = "torchscript") -> Path:
    return small_release(tmp_path / "release.toml", project, "127.0.0.1:5000/slipway-e2e", variant=variant,
                         runtime=runtime)


def test_thin_release_end_to_end(local_services, tmp_path, capsys):
    project = owns(f"e2e-{uuid.uuid4().hex[:8]}")
    config = _config(tmp_path, project)
    out = tmp_path / "dist"
    args = [
        "release",
        "--config",
        str(config),
        "--local",
        "--out",
        str(out),
        "--skip",
        "wheels",
        "--skip",
        "bench",
    ]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    # The summary table: every stage, its status and time.
    for stage in ("plan", "export", "images", "smoke", "publish"):
        assert any(line.startswith(stage) and " ok " in line for line in err.splitlines()), err

    repo = f"slipway-e2e/{project}-pytorch-cpu"
    catalog = httpx.get("http://127.0.0.1:5000/v2/_catalog?n=1000", timeout=10).json()["repositories"]
    assert repo in catalog
    tags = httpx.get(f"http://127.0.0.1:5000/v2/{repo}/tags/list", timeout=10).json()["tags"]
    assert {"0.1.0", "0.1", "latest"} <= set(tags)
    # The project folder is not a git checkout: no made-up commit, so no sha- tag.
    assert not any(t.startswith("sha-") for t in tags)
    assert json.loads((out / "plan.json").read_text())["sha"] == "unknown"

    smoke = json.loads((out / "smoke" / "image-pytorch-cpu.json").read_text())
    assert smoke["ok"] and smoke["images"] == 4
    assert smoke["min_iou"] >= 0.99 and smoke["max_score_diff"] <= 1e-4
    # The served model finds the shapes that are really there, not just "something".
    assert smoke["map50_vs_ground_truth"] >= 0.9
    # Bad requests against the running container: each a JSON 4xx, and the service still answers.
    assert smoke["requests"]["failed"] == [] and smoke["requests"]["cases"] >= 8

    first = json.loads((out / "release.json").read_text())["images"]["pytorch-cpu"]

    # Second run: the export is reused, the image comes from cache, the registry is unchanged.
    assert main(args) == 0
    stages = json.loads((out / "stages.json").read_text())
    assert stages["export"]["summary"] == "0 exported, 1 reused"
    second = json.loads((out / "release.json").read_text())["images"]["pytorch-cpu"]
    assert second["image_id"] == first["image_id"]
    assert second["tags"] == first["tags"]


def test_cpp_image_answers_without_torch_or_numpy(local_services, native_wheels, tmp_path, capsys):
    """pytorch-cpp-cpu from the self-contained wheel the native tests built: smoke-tested over
    HTTP against the golden outputs and the ground truth, with the bad-request cases, and it holds
    neither torch nor numpy."""
    project = owns(f"e2e-{uuid.uuid4().hex[:8]}")
    config = _config(tmp_path, project, variant="pytorch-cpp-cpu", runtime="cpp")
    out = tmp_path / "dist"
    (out / "wheels").mkdir(parents=True)
    wheel = native_wheels["self-contained"]
    (out / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    args = ["release", "--config", str(config), "--local", "--out", str(out),
            "--skip", "wheels", "--skip", "bench", "--skip", "publish"]
    assert main(args) == 0, capsys.readouterr().err

    smoke = json.loads((out / "smoke" / "image-pytorch-cpp-cpu.json").read_text())
    assert smoke["ok"] and smoke["images"] == 4
    assert smoke["min_iou"] >= 0.99 and smoke["max_score_diff"] <= 1e-4
    assert smoke["map50_vs_ground_truth"] >= 0.9
    assert smoke["requests"]["failed"] == [] and smoke["requests"]["cases"] >= 8

    from slipway import engine

    record = json.loads((out / "images.json").read_text())["pytorch-cpp-cpu"]
    res = engine.run(
        record["tag"], ["-c",
        # Probed before the import: once loaded, the runtime's guard answers any probe for torch.
        "import importlib.util as u, json; found = {m: u.find_spec(m) is not None for m in ('numpy', 'torch')}; "
        "import slipway_runtime; print(json.dumps(found | {'kind': slipway_runtime.KIND}))"],
        entrypoint="python", check=False, timeout=120,
    )
    assert res.exit_status == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"numpy": False, "torch": False,
                                                               "kind": "self-contained"}
